"""Shared test setup: no network, a repo-local model cache, and the tiny random Llama."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]

# The cluster's binaries (built from source, minutes) are cached per user, not per checkout: a
# fresh clone reuses them. Decided before SPIN_CACHE_DIR is pointed into the repository below.
os.environ.setdefault("SPIN_CLUSTER_CACHE", str(Path(os.environ.get("SPIN_CACHE_DIR") or "~/.cache/spinrun").expanduser()
                                                / "cluster"))
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


@pytest.fixture(scope="session")
def kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The session's real cluster (tests/kube.py), started once, stopped at the end with nothing left behind."""
    from tests.kube import Kube, start, stop

    root = tmp_path_factory.mktemp("spin-cluster")
    control = tmp_path_factory.mktemp("instant")
    state = start(root, control)
    try:
        yield Kube(state, control)
    finally:
        stop(root)


@pytest.fixture(scope="session")
def admission(kube: Any) -> Any:
    """The session apiserver's answer to a SpinRun (tests/admission.py)."""
    from tests.admission import Admission

    return Admission(kube)


@pytest.fixture()
def repo() -> Path:
    """The repository root."""
    return REPO
