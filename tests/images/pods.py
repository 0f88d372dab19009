"""A kubelet for the Jobs `spin render` prints, running their pods in the local images: each
index's init container, then its container, through buildah as the pod spec says (image,
command, runAsUser/runAsGroup, readOnlyRootFilesystem, env, the Job completion index) with the
pod's volumes on host folders: the claim is `data`, a ConfigMap is written out and mounted
read-only, an emptyDir is a fresh folder shared by the pod's containers."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.images.buildah import Container, Volume

VENV_BIN = Path(sys.executable).parent


def render(spec_file: Path, iteration: int, namespace: str = "spin") -> list[dict[str, Any]]:
    """The objects the operator creates for one iteration (`spin render`, the operator's own builders)."""
    out = subprocess.run([str(VENV_BIN / "spin"), "render", str(spec_file), "--namespace", namespace,
                          "--iteration", str(iteration)], capture_output=True, text=True, check=True)
    return [o for o in yaml.safe_load_all(out.stdout) if o]


@dataclass
class PodResult:
    """What one pod (one index of a Job) did: its containers' argv and outputs."""

    job: str
    index: int
    runs: list[subprocess.CompletedProcess[str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(r.returncode == 0 for r in self.runs)

    def log(self, n: int = 4000) -> str:
        return "\n".join(f"$ {' '.join(r.args[-12:])}\n{r.stdout}{r.stderr}" for r in self.runs)[-n:]


class ImageKubelet:
    """Runs rendered Jobs' pods in buildah containers (one working container per image)."""

    def __init__(self, work: Path, data: Path, containers: Mapping[str, Container], objects: Sequence[dict[str, Any]],
                 *, extra_env: Mapping[str, str] | None = None, extra_volumes: Sequence[Volume] = ()) -> None:
        self.work = work
        self.data = data
        self.containers = containers
        self.configmaps = {o["metadata"]["name"]: o for o in objects if o["kind"] == "ConfigMap"}
        self.extra_env = dict(extra_env or {})
        self.extra_volumes = list(extra_volumes)

    def run_job(self, job: dict[str, Any], timeout: float = 900) -> list[PodResult]:
        """Every index of `job`, one after the other; stops at the first failed pod."""
        spec = job["spec"]
        n = int(spec.get("completions") or 1)
        results = []
        for index in range(n):
            result = self.run_pod(job, index if spec.get("completionMode") == "Indexed" else None, timeout)
            results.append(result)
            if not result.ok:
                break
        return results

    def run_pod(self, job: dict[str, Any], index: int | None, timeout: float) -> PodResult:
        name = job["metadata"]["name"]
        pod = job["spec"]["template"]["spec"]
        folder = self.work / f"{name}-{index or 0}"
        volumes = self._volumes(pod, folder)
        result = PodResult(name, index or 0)
        for c in [*pod.get("initContainers", []), *pod["containers"]]:
            done = self.run_container(pod, c, volumes, index, timeout)
            result.runs.append(done)
            if done.returncode != 0:
                break
        return result

    def run_container(self, pod: dict[str, Any], c: dict[str, Any], volumes: Mapping[str, Path], index: int | None,
                      timeout: float) -> subprocess.CompletedProcess[str]:
        sc = {**pod.get("securityContext", {}), **c.get("securityContext", {})}
        user = f"{sc['runAsUser']}:{sc.get('runAsGroup', sc['runAsUser'])}"
        env = dict(self.extra_env)
        for e in c.get("env") or []:
            if "value" in e:
                env[e["name"]] = e["value"]
            elif "fieldRef" in (e.get("valueFrom") or {}) and index is not None:
                env[e["name"]] = str(index)
            else:
                raise NotImplementedError(f"env {e['name']}: only values and the completion index are played here")
        if index is not None:
            env["JOB_COMPLETION_INDEX"] = str(index)
        mounts = [Volume(volumes[m["name"]], m["mountPath"], bool(m.get("readOnly"))) for m in c.get("volumeMounts", [])]
        if c["command"][0] == "torchrun":
            raise NotImplementedError("torchrun Jobs (several nodes or GPUs) are not played here")
        container = self.containers[c["image"]]
        argv = [*c["command"], *c.get("args", [])]
        return container.run(argv, user=user, env=env, volumes=[*mounts, *self.extra_volumes],
                             read_only=bool(sc.get("readOnlyRootFilesystem")), timeout=timeout)

    def _volumes(self, pod: dict[str, Any], folder: Path) -> dict[str, Path]:
        out: dict[str, Path] = {}
        for v in pod["volumes"]:
            if "persistentVolumeClaim" in v:
                out[v["name"]] = self.data
            elif "configMap" in v:
                cm = self.configmaps[v["configMap"]["name"]]
                path = folder / v["name"]
                path.mkdir(parents=True, exist_ok=True)
                for key, text in cm["data"].items():
                    (path / key).write_text(text if isinstance(text, str) else json.dumps(text))
                    (path / key).chmod(v["configMap"].get("defaultMode", 0o644))
                out[v["name"]] = path
            elif "emptyDir" in v:
                path = folder / v["name"]
                path.mkdir(parents=True, exist_ok=True)
                path.chmod(0o1777)
                out[v["name"]] = path
            else:
                raise NotImplementedError(f"volume {v['name']}: {sorted(v)}")
        return out
