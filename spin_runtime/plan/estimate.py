"""What a run will cost before it runs, from stated assumptions: prompts, tokens to generate,
training tokens, optimizer steps per iteration and GPU-hours on a named GPU type. Pure: no I/O;
`spin_runtime.sizing` supplies what it reads (the model's config.json, counts of a run's data).

Every number the estimate rests on is a named constant here and is printed beside the result
(`format_estimate`), so a reader can check or replace it (`spin plan --mfu/--params/--gen-tokens-per-s`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from spin_runtime.api.spec import SpinRunSpec, Training
from spin_runtime.plan import hparams, stages

#: Peak dense bf16 tensor FLOP/s per GPU (vendor data sheets, without sparsity).
PEAK_BF16_FLOPS: dict[str, float] = {
    "H100": 989e12,  # SXM
    "H200": 989e12,
    "B200": 2250e12,
    "A100": 312e12,
    "L40S": 362e12,
    "L4": 121e12,
    "A10": 125e12,
}

#: Output tokens/s of one vLLM engine on one GPU serving a 7B bf16 model, greedy, offline batch of
#: hundreds of prompts with ~256-token answers: an order of magnitude, not a measurement of yours.
VLLM_TOKENS_PER_S_7B: dict[str, float] = {
    "H100": 5000.0,
    "H200": 6000.0,
    "B200": 10000.0,
    "A100": 2500.0,
    "L40S": 1800.0,
    "L4": 600.0,
    "A10": 700.0,
}
#: The model size the vLLM table is for; throughput is scaled by REFERENCE_PARAMS / N ...
REFERENCE_PARAMS = 7e9
#: ... but by at most this much for small models (decoding becomes overhead-bound).
MAX_THROUGHPUT_SCALE = 4.0
#: The transformers engine (the paper's HF path: padded batches, no paged attention) against vLLM.
TRANSFORMERS_ENGINE_FACTOR = 0.25

#: Model-FLOPs utilisation of SPIN training (ZeRO-3, bf16, gradient checkpointing) by default.
DEFAULT_MFU = 0.35
#: FLOPs per token and parameter: forward + backward of the policy, forward of the opponent.
POLICY_FLOPS_PER_PARAM = 6
LORA_POLICY_FLOPS_PER_PARAM = 4  # LoRA: no weight gradients for the frozen base
OPPONENT_FLOPS_PER_PARAM = 2
#: Tokens of the chat template around a generated answer (end-of-turn markers), for the bound.
TEMPLATE_TOKENS = 8

#: Parameter counts of models people run SPIN with, by lower-case hub id (from their configs).
KNOWN_PARAMS: dict[str, int] = {
    "huggingfaceh4/zephyr-7b-sft-full": 7_241_732_096,
    "alignment-handbook/zephyr-7b-sft-full": 7_241_732_096,
    "huggingfaceh4/mistral-7b-sft-beta": 7_241_732_096,
    "mistralai/mistral-7b-v0.1": 7_241_732_096,
    "ucla-agi/zephyr-7b-sft-full-spin-iter0": 7_241_732_096,
    "ucla-agi/zephyr-7b-sft-full-spin-iter1": 7_241_732_096,
    "ucla-agi/zephyr-7b-sft-full-spin-iter2": 7_241_732_096,
    "ucla-agi/zephyr-7b-sft-full-spin-iter3": 7_241_732_096,
    "meta-llama/llama-2-7b-hf": 6_738_415_616,
    "meta-llama/llama-2-13b-hf": 13_015_864_320,
    "meta-llama/llama-2-70b-hf": 68_976_648_192,
    "meta-llama/meta-llama-3-8b": 8_030_261_248,
    "meta-llama/meta-llama-3-8b-instruct": 8_030_261_248,
    "meta-llama/llama-3.1-8b": 8_030_261_248,
    "meta-llama/llama-3.1-8b-instruct": 8_030_261_248,
    "meta-llama/llama-3.1-70b": 70_553_706_496,
    "meta-llama/llama-3.1-70b-instruct": 70_553_706_496,
    "qwen/qwen2.5-7b": 7_615_616_512,
    "qwen/qwen2.5-7b-instruct": 7_615_616_512,
    "huggingfacetb/smollm2-135m": 134_515_008,
    "huggingfacetb/smollm2-135m-instruct": 134_515_008,
    "huggingfacetb/smollm2-360m-instruct": 361_821_120,
    "huggingfacetb/smollm2-1.7b-instruct": 1_711_376_384,
}

_SIZE_IN_NAME = re.compile(r"(?<![0-9.])(\d+(?:\.\d+)?)([bm])(?![a-z0-9])", re.IGNORECASE)


# --------------------------------------------------------------------------- parameters


@dataclass(frozen=True)
class ParamCount:
    """The parameter count N the FLOPs rest on, and where it came from (printed)."""

    n: int | None
    source: str


def params_from_config(config: Mapping[str, Any]) -> int | None:
    """Parameters of a Llama-style decoder (Llama, Mistral, Qwen2, SmolLM) from its config.json:
    embeddings, attention (grouped KV heads, optional biases), gated MLP, norms and an untied
    LM head. None for other architectures (mixtures of experts included)."""
    try:
        vocab, hidden, layers = int(config["vocab_size"]), int(config["hidden_size"]), int(config["num_hidden_layers"])
        inter, heads = int(config["intermediate_size"]), int(config["num_attention_heads"])
    except (KeyError, TypeError, ValueError):
        return None
    if any(k in config for k in ("num_local_experts", "num_experts", "n_routed_experts")):
        return None
    kv_heads = int(config.get("num_key_value_heads") or heads)
    head_dim = int(config.get("head_dim") or hidden // heads)
    attn = hidden * heads * head_dim + 2 * hidden * kv_heads * head_dim + heads * head_dim * hidden
    if config.get("attention_bias"):
        attn += heads * head_dim + 2 * kv_heads * head_dim
    per_layer = attn + 3 * hidden * inter + 2 * hidden
    head = 0 if config.get("tie_word_embeddings", False) else vocab * hidden
    return vocab * hidden + layers * per_layer + hidden + head


def params_from_name(name: str) -> ParamCount:
    """N of a hub model without downloading anything: the known-model table, else a size written
    in its name (`...-7b`, `...-135M`, said to be a guess), else unknown."""
    key = name.lower()
    if key in KNOWN_PARAMS:
        return ParamCount(KNOWN_PARAMS[key], f"known-model table ({name})")
    found = _SIZE_IN_NAME.findall(key.rsplit("/", 1)[-1])
    if found:
        number, unit = found[-1]
        n_params = int(float(number) * (1e9 if unit.lower() == "b" else 1e6))
        return ParamCount(n_params, f"guessed from the name {name!r} ({number}{unit.upper()}); pass --params to set it")
    return ParamCount(None, f"unknown for {name!r}: not in the known-model table; pass --params")


# --------------------------------------------------------------------------- counts


@dataclass(frozen=True)
class PromptCounts:
    """Training and held-out prompts of the run; `exact` False when they are upper bounds
    (dataset.maxSamples of a hub split whose size is unknown before loading it)."""

    train: int | None
    test: int | None
    exact: bool


def prompt_counts(spec: SpinRunSpec) -> PromptCounts:
    """The prompts the spec asks for, without reading data: exact for built-in tasks, at most
    maxSamples/testSize for files and hub splits."""
    dataset = spec.dataset
    builtin = dataset.builtin
    if builtin is not None:
        train = builtin.train_size if dataset.max_samples is None else min(builtin.train_size, dataset.max_samples)
        return PromptCounts(train, min(builtin.test_size, dataset.test_size), True)
    return PromptCounts(dataset.max_samples, dataset.test_size, False)


@dataclass(frozen=True)
class Measured:
    """What a run directory holds for one iteration: generated answers and their tokens, and the
    tokens of its training pairs (`sampled` of `pairs` tokenised, scaled to all)."""

    generated_rows: int | None = None
    generated_tokens: int | None = None
    pairs: int | None = None
    train_tokens: int | None = None
    sampled: int | None = None


def world_size(training: Training) -> int:
    """Training processes: nodes × GPUs per node (one process on a CPU-only pod)."""
    return training.nodes * max(1, training.gpus_per_node)


def steps_per_epoch(pairs: int, training: Training) -> int:
    """Optimizer steps of one epoch as the HF Trainer counts them: batches per process
    ceil(pairs / (perDeviceBatchSize × world)), then ceil over gradient accumulation."""
    if pairs <= 0:
        return 0
    batches = math.ceil(pairs / (training.per_device_batch_size * world_size(training)))
    return max(1, math.ceil(batches / training.gradient_accumulation_steps))


def epochs_trained(training: Training, epochs: float) -> float:
    """Epochs an iteration trains: its schedule's, or fewer when training.selectEpoch names the
    epoch after which training stops."""
    stop = training.stop_epoch
    return epochs if stop is None else min(float(stop), epochs)


def optimizer_steps(pairs: int, training: Training, epochs: float) -> int:
    """Optimizer steps of an iteration: ceil(epochs × steps per epoch) (to training.selectEpoch's
    epoch when it names one), or training.maxSteps."""
    if training.max_steps is not None:
        return training.max_steps
    return math.ceil(epochs_trained(training, epochs) * steps_per_epoch(pairs, training))


def pair_tokens_bound(spec: SpinRunSpec) -> int:
    """Most tokens one pair puts through the model: the chosen sequence is at most maxLength, the
    rejected one at most maxPromptLength + maxNewTokens + template tokens (and maxLength)."""
    training = spec.training
    rejected = min(training.max_length, training.max_prompt_length + spec.generation.max_new_tokens + TEMPLATE_TOKENS)
    return training.max_length + rejected


def training_flops(tokens_per_epoch: float, n_params: int, epochs: float, precompute_ref: bool, lora: bool) -> float:
    """FLOPs of one iteration's training: per epoch (policy factor)·N per token; the opponent's
    forward 2N per token every epoch, or once when its log-probs are precomputed."""
    policy = LORA_POLICY_FLOPS_PER_PARAM if lora else POLICY_FLOPS_PER_PARAM
    opponent_passes = 1.0 if precompute_ref else epochs
    return tokens_per_epoch * n_params * (policy * epochs + OPPONENT_FLOPS_PER_PARAM * opponent_passes)


def sft_arm_flops(pairs: int, max_length: int, n_params: int, epochs: float, lora: bool) -> float:
    """FLOPs of one iteration's continued-SFT arm (evaluation.sftBaseline): per epoch (policy
    factor)·N per token of every pair's real sequence (≤ maxLength); no opponent."""
    policy = LORA_POLICY_FLOPS_PER_PARAM if lora else POLICY_FLOPS_PER_PARAM
    return pairs * max_length * n_params * policy * epochs


def training_gpu_hours(flops: float, peak_flops: float, mfu: float) -> float:
    """GPU-hours to do `flops` at `mfu` of the peak (summed over GPUs: divide by GPUs for hours)."""
    return flops / (peak_flops * mfu) / 3600.0


def engine_tokens_per_s(gpu: str, n_params: int | None, engine: str, override: float | None = None) -> float | None:
    """Output tokens/s of one generation engine: the vLLM table scaled to N (or `override`, taken
    as given), times the transformers-engine factor for `engine: transformers`."""
    if override is not None:
        base = override
    else:
        if n_params is None or gpu not in VLLM_TOKENS_PER_S_7B:
            return None
        base = VLLM_TOKENS_PER_S_7B[gpu] * min(MAX_THROUGHPUT_SCALE, REFERENCE_PARAMS / n_params)
    return base * (TRANSFORMERS_ENGINE_FACTOR if engine == "transformers" else 1.0)


def generation_gpu_hours(tokens: float, tokens_per_s: float, gpus_per_engine: int) -> float:
    """GPU-hours to generate `tokens` with engines of `gpus_per_engine` GPUs at `tokens_per_s` each."""
    return tokens / tokens_per_s / 3600.0 * gpus_per_engine


# --------------------------------------------------------------------------- the estimate


@dataclass(frozen=True)
class Assumptions:
    """What the estimate assumes: the GPU type, its peak, the MFU and the parameter count."""

    gpu: str
    params: ParamCount
    mfu: float = DEFAULT_MFU
    gen_tokens_per_s: float | None = None  # an override of the table, per engine

    @property
    def peak_flops(self) -> float:
        return PEAK_BF16_FLOPS[self.gpu]


@dataclass(frozen=True)
class IterationEstimate:
    """One iteration: prompts answered, tokens generated (bound, measured), training pairs and
    tokens (bound, measured), optimizer steps and GPU-hours (from measured figures when present)."""

    iteration: int
    generates: bool
    prompts: int | None
    gen_tokens_bound: int | None
    gen_tokens_measured: int | None
    pairs: int | None
    pairs_measured: bool
    train_tokens_bound: int | None
    train_tokens_measured: int | None
    steps: int | None
    gen_gpu_hours: float | None
    train_gpu_hours: float | None
    gen_basis: str = "bound"
    train_basis: str = "bound"
    #: The continued-SFT arm's GPU-hours (None: no arm, or unknown).
    sft_gpu_hours: float | None = None


@dataclass(frozen=True)
class RunEstimate:
    """The estimate of a whole run, with the assumptions it rests on."""

    iterations: list[IterationEstimate]
    assumptions: Assumptions
    counts: PromptCounts
    notes: list[str] = field(default_factory=list)

    def total(self, name: str) -> float | None:
        values = [getattr(it, name) for it in self.iterations]
        return None if any(v is None for v in values) else sum(values)


def _engine(spec: SpinRunSpec) -> str:
    """The engine the estimate assumes: transformers when asked for, vLLM otherwise (auto picks
    vLLM on GPUs)."""
    return "transformers" if spec.generation.engine == "transformers" else "vllm"


def estimate_run(
    spec: SpinRunSpec,
    assumptions: Assumptions,
    counts: PromptCounts | None = None,
    measured: Mapping[int, Measured] | None = None,
) -> RunEstimate:
    """Per-iteration estimate of the run. `counts` are the prompt counts (default: what the spec
    says without reading data); `measured` holds what a run directory already has."""
    counts = counts or prompt_counts(spec)
    measured = measured or {}
    tokens_per_s = engine_tokens_per_s(
        assumptions.gpu, assumptions.params.n, _engine(spec), assumptions.gen_tokens_per_s
    )
    iterations: list[IterationEstimate] = []
    for k in stages.iterations(spec):
        held = measured.get(k, Measured())
        generates = hparams.generated_by_run(spec, k)
        generation = _generation_cost(spec, generates, counts, held, tokens_per_s)
        training = _training_cost(spec, k, counts, held, assumptions)
        iterations.append(
            IterationEstimate(
                iteration=k,
                generates=generates,
                prompts=generation.prompts,
                gen_tokens_bound=generation.tokens_bound,
                gen_tokens_measured=generation.tokens_measured,
                pairs=training.pairs,
                pairs_measured=held.pairs is not None,
                train_tokens_bound=training.tokens_bound,
                train_tokens_measured=held.train_tokens,
                steps=training.steps,
                gen_gpu_hours=generation.gpu_hours,
                train_gpu_hours=training.gpu_hours,
                gen_basis="measured" if generation.tokens_measured is not None else "bound",
                train_basis="measured" if held.train_tokens is not None else "bound",
                sft_gpu_hours=training.sft_gpu_hours,
            )
        )
    return RunEstimate(iterations, assumptions, counts, _estimate_notes(spec, counts))


class _GenerationCost(NamedTuple):
    """One iteration's generation: prompts answered, tokens (bound, measured) and GPU-hours."""

    prompts: int | None
    tokens_bound: int | None
    tokens_measured: int | None
    gpu_hours: float | None


def _generation_cost(
    spec: SpinRunSpec, generates: bool, counts: PromptCounts, held: Measured, tokens_per_s: float | None
) -> _GenerationCost:
    """What generating costs in one iteration: every training and held-out prompt (or the answers
    stored) times generation.maxNewTokens, the measured tokens when stored; none (0 GPU-hours)
    when the iteration's pairs are given (syntheticData)."""
    if not generates:
        return _GenerationCost(None, None, None, 0.0)
    prompts = held.generated_rows
    if prompts is None and counts.train is not None and counts.test is not None:
        prompts = counts.train + counts.test
    bound = prompts * spec.generation.max_new_tokens if prompts is not None else None
    tokens = held.generated_tokens if held.generated_tokens is not None else bound
    gpu_hours = None
    if tokens is not None and tokens_per_s:
        gpu_hours = generation_gpu_hours(tokens, tokens_per_s, spec.generation.tensor_parallel_size)
    return _GenerationCost(prompts, bound, held.generated_tokens, gpu_hours)


class _TrainingCost(NamedTuple):
    """One iteration's training: pairs, optimizer steps, tokens per epoch (bound) and GPU-hours."""

    pairs: int | None
    steps: int | None
    tokens_bound: int | None
    gpu_hours: float | None
    sft_gpu_hours: float | None


def _training_cost(
    spec: SpinRunSpec, k: int, counts: PromptCounts, held: Measured, assumptions: Assumptions
) -> _TrainingCost:
    """What training costs in iteration k: its pairs (measured, else training prompts × data-window
    iterations), the optimizer steps, and the FLOPs of the measured or bounded tokens on the GPU."""
    training = spec.training
    pairs = held.pairs
    if pairs is None and counts.train is not None:
        # given syntheticData assumed as large as a generated set
        pairs = counts.train * len(hparams.data_window(spec, k))
    epochs = hparams.hparams(spec, k).epochs
    steps = optimizer_steps(pairs, training, epochs) if pairs is not None else None
    per_epoch = steps_per_epoch(pairs, training) if pairs is not None else None
    epochs_run = (steps / per_epoch) if steps is not None and per_epoch else epochs_trained(training, epochs)
    bound = pairs * pair_tokens_bound(spec) if pairs is not None else None
    tokens = held.train_tokens if held.train_tokens is not None else bound
    n_params = assumptions.params.n
    gpu_hours = sft_hours = None
    if tokens is not None and n_params is not None:
        flops = training_flops(tokens, n_params, epochs_run, training.precompute_ref_log_probs, training.lora.enabled)
        gpu_hours = training_gpu_hours(flops, assumptions.peak_flops, assumptions.mfu)
    if spec.evaluation.sft_baseline.enabled and pairs is not None and n_params is not None:
        arm = sft_arm_flops(pairs, training.max_length, n_params, epochs_run, training.lora.enabled)
        sft_hours = training_gpu_hours(arm, assumptions.peak_flops, assumptions.mfu)
    return _TrainingCost(pairs, steps, bound, gpu_hours, sft_hours)


def _estimate_notes(spec: SpinRunSpec, counts: PromptCounts) -> list[str]:
    """What the counts behind the estimate are not sure of."""
    notes: list[str] = []
    if not counts.exact:
        notes.append(
            "prompt counts are upper bounds (dataset.maxSamples training + testSize held-out rows); "
            "the split may be smaller"
        )
    if spec.synthetic_data:
        notes.append("iterations with syntheticData are assumed to hold as many pairs as a generated set")
    return notes


# --------------------------------------------------------------------------- text


def _int(v: int | float | None) -> str:
    return "–" if v is None else f"{round(v):,}"


def _hours(v: float | None) -> str:
    if v is None:
        return "–"
    if 0 < v < 0.01:
        return f"{v:.1g}"
    return f"{v:.2f}" if v < 100 else f"{v:,.0f}"


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return [line.rstrip() for line in lines]


def format_estimate(spec: SpinRunSpec, est: RunEstimate) -> str:
    """The estimate as text: a per-iteration table, totals, then every assumption it used."""
    lines = [
        f"Estimate on {est.assumptions.gpu} GPUs (GPU-hours summed over GPUs; 'm' = from measured tokens, "
        "else from the bounds)",
        "",
    ]
    lines += _table(_estimate_rows(spec, est))
    lines += _wall_clock_lines(spec, est)
    lines += ["", "Assumptions:"]
    lines += _rate_assumptions(spec, est.assumptions)
    lines += _count_assumptions(spec, est)
    return "\n".join(lines)


def _estimate_rows(spec: SpinRunSpec, est: RunEstimate) -> list[list[str]]:
    """The table's header, one row per iteration and the totals ('≤' marks bounds, 'm' measured
    hours); a column for the continued-SFT arm when the spec has one."""
    header = ["iter", "prompts", "gen tokens ≤", "gen measured", "pairs", "train tok/epoch ≤", "train measured",
              "opt steps", "gen GPU-h", "train GPU-h"]  # fmt: skip
    rows = [header]
    arm = spec.evaluation.sft_baseline.enabled
    for it in est.iterations:
        rows.append(
            [
                str(it.iteration),
                _int(it.prompts) if it.generates else "(given)",
                _int(it.gen_tokens_bound) if it.generates else "–",
                _int(it.gen_tokens_measured),
                _int(it.pairs) + ("" if it.pairs_measured or est.counts.exact else " ≤"),
                _int(it.train_tokens_bound),
                _int(it.train_tokens_measured),
                _int(it.steps),
                _hours(it.gen_gpu_hours) + ("" if it.gen_basis == "bound" or not it.generates else " m"),
                _hours(it.train_gpu_hours) + ("" if it.train_basis == "bound" else " m"),
            ]
        )
    gen_bounds = [it.gen_tokens_bound for it in est.iterations if it.generates]
    gen_sum = None if any(v is None for v in gen_bounds) else sum(v for v in gen_bounds if v is not None)
    rows.append(["total", "", _int(gen_sum), "", "", _int(est.total("train_tokens_bound")), "",
                 _int(est.total("steps")), _hours(est.total("gen_gpu_hours")),
                 _hours(est.total("train_gpu_hours"))])  # fmt: skip
    if arm:
        rows[0].append("SFT arm GPU-h")
        for row, it in zip(rows[1:-1], est.iterations, strict=True):
            row.append(_hours(it.sft_gpu_hours))
        rows[-1].append(_hours(est.total("sft_gpu_hours")))
    return rows


def _wall_clock_lines(spec: SpinRunSpec, est: RunEstimate) -> list[str]:
    """Hours from start to end, generation engines all at once, then training; nothing while a
    total is unknown."""
    gen_total, train_total = est.total("gen_gpu_hours"), est.total("train_gpu_hours")
    if gen_total is None or train_total is None:
        return []
    arm = est.total("sft_gpu_hours") if spec.evaluation.sft_baseline.enabled else None
    if arm is not None:
        train_total += arm
    engines, gpus_per_engine = spec.generation.shards, spec.generation.tensor_parallel_size
    world = world_size(spec.training)
    gen_wall = gen_total / (engines * gpus_per_engine)
    return [
        "",
        f"wall-clock ≈ {gen_wall:.2f} h generating ({engines} engine(s) × {gpus_per_engine} GPU(s), all at once) "
        f"+ {train_total / world:.2f} h training{' and the SFT arm' if arm is not None else ''} ({world} GPU(s)) "
        f"= {gen_wall + train_total / world:.2f} h; "
        f"{gen_total + train_total:.2f} GPU-hours",
    ]


def _rate_assumptions(spec: SpinRunSpec, assumptions: Assumptions) -> list[str]:
    """The assumptions behind the GPU-hours: N, FLOPs per token, the GPU's rate, generation throughput."""
    training = spec.training
    n_params = assumptions.params.n
    policy = LORA_POLICY_FLOPS_PER_PARAM if training.lora.enabled else POLICY_FLOPS_PER_PARAM
    opponent = "once (precomputeRefLogProbs)" if training.precompute_ref_log_probs else "every epoch"
    source = assumptions.params.source
    lora = "; LoRA: no weight gradients of the frozen base" if training.lora.enabled else ""
    tokens_per_s = engine_tokens_per_s(assumptions.gpu, n_params, _engine(spec), assumptions.gen_tokens_per_s)
    return [
        f"  N = {n_params:,} parameters: {source}" if n_params is not None else f"  N unknown: {source}",
        f"  training FLOPs = {policy}N per token per epoch (policy forward + backward{lora}) + "
        f"{OPPONENT_FLOPS_PER_PARAM}N per token for the opponent's forward, {opponent}; attention-score FLOPs ignored",
        f"  {assumptions.gpu}: peak bf16 {assumptions.peak_flops / 1e12:,.0f} TFLOP/s (dense) × model-FLOPs "
        f"utilisation {assumptions.mfu:g} = {assumptions.peak_flops * assumptions.mfu / 1e12:,.0f} TFLOP/s per GPU",
        f"  generation: {_throughput_source(spec, assumptions)}"
        + (f" → {tokens_per_s:,.0f} tokens/s per engine" if tokens_per_s else ""),
    ]


def _throughput_source(spec: SpinRunSpec, assumptions: Assumptions) -> str:
    """Where the generation throughput comes from: given, or the vLLM table scaled to N."""
    gpu, n_params = assumptions.gpu, assumptions.params.n
    if assumptions.gen_tokens_per_s is not None:
        source = f"{assumptions.gen_tokens_per_s:,.0f} output tokens/s per engine (given)"
    elif gpu in VLLM_TOKENS_PER_S_7B and n_params is not None:
        scale = min(MAX_THROUGHPUT_SCALE, REFERENCE_PARAMS / n_params)
        source = (
            f"vLLM {VLLM_TOKENS_PER_S_7B[gpu]:,.0f} output tokens/s per {gpu} for a 7B bf16 model (offline batch, "
            f"greedy), scaled by 7B/N = ×{scale:.2f} (at most ×{MAX_THROUGHPUT_SCALE:g})"
        )
    else:
        source = "no vLLM throughput for this GPU/model: pass --gen-tokens-per-s"
    if _engine(spec) == "transformers":
        source += f"; generation.engine transformers: ×{TRANSFORMERS_ENGINE_FACTOR:g} of vLLM"
    return source


def _count_assumptions(spec: SpinRunSpec, est: RunEstimate) -> list[str]:
    """The rules behind the counts: tokens to generate, tokens per pair, optimizer steps, and the notes."""
    generation, training = spec.generation, spec.training
    lines = [
        f"  tokens to generate ≤ prompts × generation.maxNewTokens ({generation.max_new_tokens}); measured = "
        "tokens of the stored answers",
        f"  training tokens per pair ≤ maxLength ({training.max_length}, real) + min(maxLength, maxPromptLength "
        f"{training.max_prompt_length} + maxNewTokens {generation.max_new_tokens} + {TEMPLATE_TOKENS} template "
        f"tokens) (generated) = {pair_tokens_bound(spec):,}; pairs = training prompts × data-window iterations",
        f"  optimizer steps = ceil(epochs × ceil(ceil(pairs / (perDeviceBatchSize {training.per_device_batch_size} "
        f"× {world_size(training)} process(es))) / gradientAccumulationSteps {training.gradient_accumulation_steps}))"
        + (f"; training.maxSteps {training.max_steps} overrides" if training.max_steps is not None else ""),
    ]
    if spec.evaluation.sft_baseline.enabled:
        lines.append(
            f"  continued-SFT arm (evaluation.sftBaseline): {POLICY_FLOPS_PER_PARAM}N per token per epoch on ≤ maxLength "
            f"({training.max_length}) tokens per pair (prompt and real answer), the same optimizer steps, no opponent"
        )
    if training.gpus_per_node == 0:
        gpu = est.assumptions.gpu
        lines.append(f"  training.gpusPerNode is 0 (CPU): the GPU-hours are those of the same steps on {gpu} GPUs")
    lines += [f"  {note}" for note in est.notes]
    return lines
