"""What `spin plan` reads for its estimate, never downloading: the start model's parameter count
(its config.json when local or built in, else the known-model table), the prompt counts of
local data, and the tokens a run directory already holds (generated answers, training pairs).
The arithmetic is `plan.estimate`'s."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spin_runtime.api.spec import ModelSource, SpinRunSpec
from spin_runtime.errors import DataError
from spin_runtime.plan import estimate, hparams, layout, stages

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

#: Training pairs tokenised per iteration when measuring (evenly spaced; the total is scaled).
MEASURE_SAMPLE = 2000
#: The vocabulary of SmolLM2's tokenizer, which the built-in tiny model uses.
SMOLLM2_VOCAB = 49152


def _config_params(path: Path) -> int | None:
    try:
        return estimate.params_from_config(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return None


def model_params(source: ModelSource, override: int | None = None) -> estimate.ParamCount:
    """N of a model source: `override` (--params), else its config.json (local folder, built-in
    model, or a hub model's config already in the local HF cache), else the known-model table or
    a size in the name. Nothing is downloaded."""
    if override is not None:
        return estimate.ParamCount(override, "given with --params")
    from spin_runtime.modeling import models

    if source.builtin == "tiny-random-llama":
        n = estimate.params_from_config({**models.TINY_LLAMA_CONFIG, "vocab_size": SMOLLM2_VOCAB})
        return estimate.ParamCount(n, "the built-in tiny-random-llama's config")
    if source.builtin == "smollm2-135m-instruct":
        cached = models.cache_dir() / "smollm2-135m-instruct" / "config.json"
        n = _config_params(cached) if cached.exists() else None
        if n is not None:
            return estimate.ParamCount(n, f"config.json of the built-in smollm2-135m-instruct ({cached})")
        return estimate.params_from_name("HuggingFaceTB/SmolLM2-135M-Instruct")
    if source.path is not None:
        config = Path(source.path) / "config.json"
        n = _config_params(config) if config.exists() else None
        if n is not None:
            return estimate.ParamCount(n, f"{config}")
        return estimate.params_from_name(Path(source.path).name if not source.gguf_file else Path(source.gguf_file).stem)
    assert source.hub is not None
    cached = _hub_cached_config(source.hub, source.revision)
    if cached is not None and (n := _config_params(cached)) is not None:
        return estimate.ParamCount(n, f"config.json of {source.hub} in the local Hugging Face cache")
    return estimate.params_from_name(source.hub)


def _hub_cached_config(repo: str, revision: str | None) -> Path | None:
    """A hub model's config.json when it is already in the local HF cache (no network)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    found = try_to_load_from_cache(repo, "config.json", revision=revision)
    return Path(found) if isinstance(found, str) else None


def prompt_counts(spec: SpinRunSpec) -> estimate.PromptCounts:
    """Exact prompt counts for built-in tasks and local files (read here), the spec's upper
    bounds for hub datasets (not downloaded)."""
    if spec.dataset.hub is not None:
        return estimate.prompt_counts(spec)
    from spin_runtime.data.sft import load_sft

    train, test = load_sft(spec)
    return estimate.PromptCounts(len(train), len(test), True)


# --------------------------------------------------------------------------- measured


def local_tokenizer(spec: SpinRunSpec, run_dir: Path) -> PreTrainedTokenizerBase | None:
    """A tokenizer of the run found without downloading: a checkpoint in the run directory, the
    local or built-in start model, or a hub model's tokenizer in the local HF cache."""
    from spin_runtime.modeling import models

    for k in stages.iterations(spec):
        folder = run_dir / layout.model_dir(k)
        if (folder / "tokenizer_config.json").exists():
            return models.load_tokenizer(str(folder))
    source = spec.start_checkpoint or spec.model
    if source.hub is None:
        return models.load_tokenizer(models.resolve_source(source))
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(source.hub, revision=source.revision, local_files_only=True)
    except (OSError, ValueError):
        return None


def _answers_of_iteration(run_dir: Path, spec: SpinRunSpec, k: int) -> list[str] | None:
    """The answers iteration k generated: every shard file, else its converted parquet files."""
    shards = spec.generation.shards
    paths = [run_dir / layout.shard_path(k, i, shards) for i in range(shards)]
    if all(p.exists() for p in paths):
        out: list[str] = []
        for p in paths:
            for line in p.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    out.append(str(json.loads(line).get("generated") or ""))
        return out
    from spin_runtime.data.pairs import read_pairs

    parts = [run_dir / layout.data_path(k, s) for s in ("train", "test")]
    if not parts[0].exists():
        return None
    return [str(r["generated"] or "") for p in parts if p.exists() for r in read_pairs(p)]


def _sample(rows: Sequence[Any], n: int) -> list[Any]:
    if len(rows) <= n:
        return list(rows)
    step = len(rows) / n
    return [rows[int(i * step)] for i in range(n)]


def measure_run(spec: SpinRunSpec, run_dir: Path, sample: int = MEASURE_SAMPLE) -> tuple[dict[int, estimate.Measured], str]:
    """Per iteration, what `run_dir` holds: answers generated and their tokens, training pairs of
    the data window and their tokens as training tokenises them (on an evenly spaced sample,
    scaled). Returns the measurements and a sentence saying what was measured."""
    from spin_runtime.data.pairs import read_pairs
    from spin_runtime.modeling.scoring import encode_pairs

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DataError(f"{run_dir}: run directory not found (--run-dir)")
    tok = local_tokenizer(spec, run_dir)
    if tok is None:
        return {}, f"{run_dir}: no tokenizer found without downloading; nothing measured"
    out: dict[int, estimate.Measured] = {}
    notes: list[str] = []
    for k in stages.iterations(spec):
        gen_rows = gen_tokens = pairs = train_tokens = sampled = None
        if hparams.generated_by_run(spec, k):
            answers = _answers_of_iteration(run_dir, spec, k)
            if answers is not None:
                gen_rows = len(answers)
                gen_tokens = sum(len(ids) for ids in tok(answers, add_special_tokens=False)["input_ids"]) if answers else 0
        window = hparams.data_window(spec, k)
        paths = [run_dir / layout.data_path(j, "train") for j in window]
        if window and all(p.exists() for p in paths):
            rows = [r for p in paths for r in read_pairs(p)]
            pairs = len(rows)
            picked = _sample(rows, sample)
            sampled = len(picked)
            if picked:
                encoded = encode_pairs(
                    tok, picked, spec.training.max_prompt_length, spec.training.max_length,
                    system=spec.system_prompt, truncation=spec.training.truncation,
                )
                tokens = sum(2 * len(e.prompt) + len(e.real) + len(e.generated) for e in encoded)
                train_tokens = round(tokens * pairs / len(picked))
            else:
                train_tokens = 0
            if sampled < pairs:
                notes.append(f"iteration {k}: training tokens measured on {sampled:,} of {pairs:,} pairs, scaled")
        if any(v is not None for v in (gen_rows, pairs)):
            out[k] = estimate.Measured(gen_rows, gen_tokens, pairs, train_tokens, sampled)
    what = f"measured in {run_dir}: iterations {', '.join(map(str, out)) or 'none'}"
    return out, "; ".join([what, *notes])
