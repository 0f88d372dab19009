"""Shared test setup: no network, a repo-local model cache, and the tiny random Llama."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Tests never reach a hub; converted/built models are cached inside the repo (git-ignored)
# and shared with subprocesses (`spin ...`, torchrun) through the environment.
os.environ.setdefault("SPIN_CACHE_DIR", str(REPO / ".cache" / "spinrun"))
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TQDM_DISABLE", "1")


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    """A saved tiny random Llama with SmolLM2's tokenizer (built once, then cached)."""
    from spin_runtime.api.spec import ModelSource
    from spin_runtime.modeling.models import resolve_source

    return Path(resolve_source(ModelSource(builtin="tiny-random-llama")))


@pytest.fixture()
def repo() -> Path:
    """The repository root."""
    return REPO
