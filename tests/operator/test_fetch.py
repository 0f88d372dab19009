"""`spin fetch`'s pure parts: where a run's files are read from (its spec, its Jobs, or the
defaults once it is deleted), the reader pod's script run here on a real run directory, and the
unpacking of what it prints (nothing lands outside the target folder)."""

from __future__ import annotations

import base64
import io
import subprocess
import tarfile
from pathlib import Path

import pytest

from spin_operator.builders.reader import FETCHED, LABEL_READER, reader_pod, reader_script
from spin_operator.fetch import FetchError, source_of, unpack
from spin_runtime.api.spec import SpinRun


def _run(**spec: object) -> SpinRun:
    return SpinRun.model_validate({"metadata": {"name": "r"}, "spec": spec})


def test_the_source_is_the_runs_claim_path_image_and_security_while_it_exists() -> None:
    run = _run(storage={"existingClaim": "shared", "subPath": "team/spin"}, images={"trainer": "reg/t:1"},
               podSecurity={"runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000})
    src = source_of("r", run, ["reg/other:2"])
    assert (src.claim, src.run_path, src.image, src.security.run_as_user) == ("shared", "/data/team/spin/r", "reg/t:1", 1000)
    assert source_of("r", _run(), ["reg/job:3"]).image == "reg/job:3", "else the image its Jobs ran"


def test_a_deleted_runs_source_is_its_new_claim_unless_the_flags_say_otherwise() -> None:
    src = source_of("r", None, [], image="reg/t:1")
    assert (src.claim, src.run_path, src.security.run_as_user) == ("r-data", "/data/runs/r", 65532)
    src = source_of("r", None, [], image="reg/t:1", claim="shared", sub_path="team")
    assert (src.claim, src.run_path) == ("shared", "/data/team/r")
    with pytest.raises(FetchError, match="pass --image"):
        source_of("r", None, [])


def test_the_reader_pod_mounts_the_claim_read_only_under_the_restricted_profile() -> None:
    pod = reader_pod("r-fetch-abc", "r", "r-data", "/data/runs/r", "reg/t:1")
    spec = pod["spec"]
    (c,) = spec["containers"]
    assert spec["volumes"] == [{"name": "data", "persistentVolumeClaim": {"claimName": "r-data", "readOnly": True}}]
    assert c["volumeMounts"][0]["readOnly"] and c["securityContext"]["readOnlyRootFilesystem"]
    assert spec["securityContext"]["runAsNonRoot"] and spec["restartPolicy"] == "Never"
    assert pod["metadata"]["labels"] == {LABEL_READER: "r"}, "not the operator's managed-by: it never counts the reader"


def test_the_reader_script_prints_the_run_files_that_exist_and_they_unpack(tmp_path: Path) -> None:
    run = tmp_path / "runs" / "r"
    for rel in ("spec.json", "report/summary.md", "report/index.html", "iter-0/metrics.json", "iter-0/logs/train.log",
                "iter-0/DONE", "iter-0/model/model.safetensors", "iter-1/logs/generate-0-of-2.log"):
        (run / rel).parent.mkdir(parents=True, exist_ok=True)
        (run / rel).write_text(rel)
    out = subprocess.run(["sh", "-c", reader_script(str(run))], capture_output=True, text=True, check=True).stdout
    assert max(len(line) for line in out.splitlines()) <= 76
    files = unpack(out, tmp_path / "got")
    got = sorted(str(p.relative_to(tmp_path / "got")) for p in files)
    assert got == ["iter-0/DONE", "iter-0/logs/train.log", "iter-0/metrics.json", "iter-1/logs/generate-0-of-2.log",
                   "report/index.html", "report/summary.md", "spec.json"], "no model: only what FETCHED names"
    assert (tmp_path / "got" / "report" / "summary.md").read_text() == "report/summary.md"
    assert "report" in FETCHED


def test_an_empty_run_directory_is_an_error_not_an_empty_archive(tmp_path: Path) -> None:
    done = subprocess.run(["sh", "-c", reader_script(str(tmp_path))], capture_output=True, text=True)
    assert done.returncode == 66 and "nothing to fetch" in done.stderr


def test_unpacking_keeps_every_file_inside_the_target(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        data = b"x"
        info = tarfile.TarInfo("../outside.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with pytest.raises(tarfile.OutsideDestinationError):
        unpack(base64.b64encode(buf.getvalue()).decode(), tmp_path / "got")
    assert not (tmp_path / "outside.txt").exists()
    with pytest.raises(FetchError, match="not what it should be"):
        unpack("this is not base64!", tmp_path / "got")
    whole = base64.b64encode(buf.getvalue()).decode()
    cut = base64.b64encode(buf.getvalue()[: len(buf.getvalue()) // 2]).decode()
    assert whole != cut
    with pytest.raises(FetchError, match="ends early.*containerLogMaxSize"):
        unpack(cut, tmp_path / "cut")
