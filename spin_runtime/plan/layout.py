"""The run directory's layout: where each iteration's shards, data, model, metrics, logs and
markers live, relative to the run directory. Pure: no I/O."""

from __future__ import annotations

from typing import Literal

SPEC_FILE = "spec.json"


def iter_dir(k: int) -> str:
    """Folder of iteration k inside the run directory."""
    return f"iter-{k}"


def shard_path(k: int, shard: int, shards: int) -> str:
    """Generated answers of one shard (JSONL, rewritten whole on rerun)."""
    return f"{iter_dir(k)}/generated/shard-{shard}-of-{shards}.jsonl"


def data_path(k: int, split: Literal["train", "test"]) -> str:
    """Converted parquet with columns prompt, real, generated."""
    return f"{iter_dir(k)}/data/{split}.parquet"


def model_dir(k: int) -> str:
    """HF-format checkpoint trained in iteration k."""
    return f"{iter_dir(k)}/model"


def sft_model_dir(k: int) -> str:
    """HF-format checkpoint of the continued-SFT arm after iteration k (evaluation.sftBaseline)."""
    return f"{iter_dir(k)}/sft-model"


#: metrics.json: the prefix of the continued-SFT arm's keys in the "eval" section and of its
#: lm-eval section ("sft_lm_eval"); its training is the "sft" section.
SFT_METRICS_PREFIX = "sft_"


def metrics_path(k: int) -> str:
    """Train and eval metrics of iteration k."""
    return f"{iter_dir(k)}/metrics.json"


def logs_dir(k: int) -> str:
    """TensorBoard event files of iteration k's training (`spin train` clears this folder when it
    starts); the steps' own logs sit beside it in `iter-<k>/logs/` (`step_log_path`)."""
    return f"{iter_dir(k)}/logs/tensorboard"


def step_log_path(k: int, step: str) -> str:
    """Full output (stdout and stderr) of one step of iteration k as the local driver ran it,
    e.g. `iter-0/logs/generate-1-of-2.log` or `iter-0/logs/train.log`; replaced on rerun."""
    return f"{iter_dir(k)}/logs/{step}.log"


def progress_path(k: int, step: str) -> str:
    """Live progress of one step of iteration k (small JSON, rewritten atomically while it runs),
    e.g. `iter-0/progress/train.json`: read by the local driver, `spin status` and the operator."""
    return f"{iter_dir(k)}/progress/{step}.json"


def done_path(k: int) -> str:
    """Written last, once every step of iteration k is done."""
    return f"{iter_dir(k)}/DONE"


def checkpoints_dir(k: int, step: str = "train") -> str:
    """Resumable training checkpoints of iteration k's training step (`checkpoint-<step>/`), kept
    across attempts and removed once the step's model is saved."""
    return f"{iter_dir(k)}/checkpoints" if step == "train" else f"{iter_dir(k)}/{step}-checkpoints"


def epoch_dir(k: int, epoch: int) -> str:
    """The model at the end of epoch `epoch` (1-based) of iteration k (training.saveEpochs)."""
    return f"{iter_dir(k)}/epochs/epoch-{epoch}"
