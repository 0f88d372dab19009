"""The step images as the operator's Jobs run them: one tiny iteration on the tiny random Llama,
every pod of `spin render`'s Jobs played in the images (tests/images/pods.py) — `spin init-run`
then `spin generate` in the generator image (transformers on CPU: no GPU here), then `spin
convert`, `spin train` and `spin evaluate` in the trainer image — as uid 65532, read-only root,
HOME=/tmp, HF_HOME on the run volume, on a run directory mounted from the host, with the model
cache (SPIN_CACHE_DIR) mounted read-only. The host then reads what the images wrote."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
import yaml

from spin_operator.builders.pod import DATA_MOUNT
from tests.images.buildah import UID, Container, Volume, image_config
from tests.images.pods import ImageKubelet, render
from tests.runtime.lm_eval_tasks import write_lm_eval_tasks

pytestmark = pytest.mark.slow

SPIN = Path(sys.executable).parent / "spin"
REPO = Path(__file__).resolve().parents[2]


def _make_variable(name: str) -> str:
    """A variable's default in the Makefile (`NAME ?= value`)."""
    found = re.search(rf"^{name} \?= (\S+)$", (REPO / "Makefile").read_text(), re.M)
    assert found, f"the Makefile sets no {name}"
    return found.group(1)


#: The harness `make lmeval` installs for the test suite; the trainer image must carry the same.
LM_EVAL_VERSION = _make_variable("LM_EVAL_VERSION")
CACHE = "/cache/spinrun"
#: Tests never reach a hub (tests/conftest.py); neither do the containers.
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "TQDM_DISABLE": "1", "SPIN_CACHE_DIR": CACHE}


def spinrun(images: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "spin.dev/v1alpha1",
        "kind": "SpinRun",
        "metadata": {"name": "img"},
        "spec": {
            "model": {"builtin": "tiny-random-llama"},
            "dataset": {"builtin": {"name": "addition-3digit", "trainSize": 8, "testSize": 4}},
            "iterations": 1,
            "images": {"generator": images["generator"], "trainer": images["trainer"], "pullPolicy": "Never"},
            "generation": {"shards": 2, "maxNewTokens": 6, "batchSize": 8},
            "training": {"gpusPerNode": 0, "perDeviceBatchSize": 2, "maxSteps": 1, "maxLength": 64, "maxPromptLength": 48,
                         "precision": "fp32", "gradientCheckpointing": False, "loggingSteps": 1, "reportTo": []},
            # the trainer image's own lm-evaluation-harness, on local tasks the test writes to the volume
            "evaluation": {"maxSamples": 4, "lmEval": {"enabled": True, "tasks": [{"name": "spin_choice"}, {"name": "spin_sum"}],
                                                       "includePath": f"{DATA_MOUNT}/tasks", "batchSize": "4",
                                                       "version": LM_EVAL_VERSION}},
            "storage": {"newClaim": {"size": "1Gi"}},
        },
    }


@pytest.fixture(scope="module")
def step_containers(images: dict[str, str]) -> Iterator[dict[str, Container]]:
    with ExitStack() as stack:
        yield {images[n]: stack.enter_context(Container(images[n])) for n in ("generator", "trainer")}


def test_the_trainer_image_pins_the_lm_eval_version_the_test_suite_runs() -> None:
    dockerfile = (REPO / "images" / "trainer.Dockerfile").read_text()
    assert f"ARG LM_EVAL_VERSION={LM_EVAL_VERSION}\n" in dockerfile
    assert "ENV SPIN_LM_EVAL=/opt/lm-eval/bin/lm_eval" in dockerfile


@pytest.mark.parametrize("name", ["generator", "trainer"])
def test_step_image_config_matches_the_operators_pods(images: dict[str, str], name: str) -> None:
    cfg = image_config(images[name])
    assert cfg["User"] == f"{UID}:{UID}" and cfg["Entrypoint"] == ["spin"]


def test_one_iteration_runs_in_the_step_images_on_a_host_run_directory(
    images: dict[str, str], step_containers: dict[str, Container], tmp_path: Path, tiny_model_dir: Path
) -> None:
    spec_file = tmp_path / "img.yaml"
    spec_file.write_text(yaml.safe_dump(spinrun(images)))
    objects = render(spec_file, 0)
    jobs = [o for o in objects if o["kind"] == "Job"]
    assert [j["metadata"]["name"] for j in jobs] == ["img-it0-gen", "img-it0-convert", "img-it0-train", "img-it0-eval"]
    # the claim: group 65532 writable, as fsGroup makes it on a cluster
    data = tmp_path / "data"
    data.mkdir()
    os.chown(data, 0, UID)
    data.chmod(0o2775)
    cache = Path(os.environ["SPIN_CACHE_DIR"])
    write_lm_eval_tasks(data / "tasks", seen_at=f"{DATA_MOUNT}/tasks")
    owner_only = [str(p) for p in tiny_model_dir.rglob("*") if not p.stat().st_mode & 0o004]
    assert not owner_only, f"{owner_only}: written owner-only by an older spinrun; delete {cache} to rebuild it"
    kubelet = ImageKubelet(tmp_path / "pods", data, step_containers, objects, extra_env=OFFLINE,
                           extra_volumes=[Volume(cache, CACHE, read_only=True)])

    for job in jobs:
        for pod in kubelet.run_job(job):
            assert pod.ok, f"{pod.job}[{pod.index}] failed:\n{pod.log()}"

    run_dir = data / "runs" / "img"
    for path in ["spec.json", "iter-0/generated/shard-0-of-2.jsonl", "iter-0/generated/shard-1-of-2.jsonl",
                 "iter-0/data/train.parquet", "iter-0/model/model.safetensors", "iter-0/metrics.json", "iter-0/DONE"]:
        assert (run_dir / path).is_file(), f"{path} missing; the run directory holds {sorted(map(str, run_dir.rglob('*')))}"
    written = list(run_dir.rglob("*"))
    assert {p.stat().st_uid for p in written} == {UID}, "everything was written by the images' user"
    unreadable = [str(p) for p in written if stat.S_IMODE(p.stat().st_mode) & (0o055 if p.is_dir() else 0o044)
                  != (0o055 if p.is_dir() else 0o044)]
    assert not unreadable, f"not readable by the host's other users: {unreadable}"
    metrics = json.loads((run_dir / "iter-0" / "metrics.json").read_text())
    assert metrics["train"]["history"] and "reward_margin" in metrics["eval"]
    lm = metrics["lm_eval"]
    assert lm["executable"] == "/opt/lm-eval/bin/lm_eval" and lm["harness_version"] == LM_EVAL_VERSION
    assert "version_warning" not in lm and set(lm["tasks"]) == {"spin_choice", "spin_sum"}
    assert lm["tasks"]["spin_choice"]["score_metric"] == "acc_norm,none"
    status = subprocess.run([str(SPIN), "status", str(run_dir)], capture_output=True, text=True)
    assert status.returncode == 0 and "iteration 0: done" in status.stdout, status.stdout + status.stderr
