"""`spin fetch RUN --to DIR` (registered on `spin` through the spin.commands entry point): a
cluster run's report, metrics.json files and step logs copied from its volume to a local folder
by a short-lived reader pod (builders/reader.py), while the run goes on, after it finished, and
after `kubectl delete spinrun` (the claim outlives the run unless deleteWithRun)."""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import io
import secrets
import sys
import tarfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spin_operator.builders.meta import LABEL_RUN, claim_name, pvc_name
from spin_operator.builders.pod import run_dir_at
from spin_operator.builders.reader import FETCHED, reader_pod
from spin_runtime.api.load import SpecError, validate_data
from spin_runtime.api.spec import API_VERSION, GROUP, PLURAL, PodSecurity, SpinRun
from spin_runtime.errors import SpinError

#: Where a deleted run's directory is looked for unless --sub-path says otherwise (Storage.subPath's default).
DEFAULT_SUB_PATH = "runs"
IMAGE_HINT = (
    "pass --image with your trainer image (what the operator runs: kubectl get deploy -n spinrun-system "
    "spin-operator -o jsonpath='{.spec.template.spec.containers[0].env[?(@.name==\"SPIN_TRAINER_IMAGE\")].value}')"
)


class FetchError(SpinError):
    """The run's files could not be fetched (the message says why and what to pass)."""


@dataclass(frozen=True)
class Source:
    """Where a run's directory is: its claim, the path inside the reader pod, the image and
    security context the reader runs with."""

    claim: str
    run_path: str
    image: str
    security: PodSecurity


def source_of(name: str, run: SpinRun | None, job_images: list[str], *, claim: str | None = None,
              sub_path: str | None = None, image: str | None = None) -> Source:
    """Where to read run `name` from: the flags, else its SpinRun (when it still exists), else its
    Jobs' image and the defaults of a new claim. Pure."""
    spec = run.spec if run is not None else None
    found_claim = claim or (claim_name(name, spec) if spec is not None else pvc_name(name))
    path = sub_path if sub_path is not None else (spec.storage.sub_path if spec is not None else DEFAULT_SUB_PATH)
    chosen = image or (spec.images.trainer if spec is not None and spec.images.trainer else None) or next(iter(job_images), None)
    if not chosen:
        raise FetchError(f"no image to read run {name}'s volume with: {IMAGE_HINT}")
    return Source(found_claim, run_dir_at(path, name), chosen, spec.pod_security if spec is not None else PodSecurity())


def unpack(log: str, to: Path) -> list[Path]:
    """The files of the reader's base64 tar.gz in `to` (member paths kept inside it); their paths."""
    try:
        data = base64.b64decode("".join(log.split()), validate=True)
    except binascii.Error as e:
        raise FetchError(f"the reader pod's output is not what it should be ({e}): {log[:300]!r}") from e
    to.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            members = [m for m in tar.getmembers() if m.isfile()]
            tar.extractall(to, filter="data")
    except (tarfile.ReadError, EOFError, zlib.error) as e:
        raise FetchError(
            f"the reader pod's output ends early ({e}): a pod log is cut at the node's containerLogMaxSize (10 MiB "
            "by default); copy large files with kubectl cp from a pod that mounts the claim (docs/cluster.md)"
        ) from e
    return sorted(to / m.name for m in members)


def _clients(kubeconfig: str | None) -> tuple[Any, Any, Any, str]:
    try:
        from kubernetes import client, config
    except ImportError as e:  # the operator extra
        raise FetchError("spin fetch needs the kubernetes client: pip install 'spinrun[operator]'") from e
    api = config.new_client_from_config(kubeconfig) if kubeconfig else config.new_client_from_config()
    try:
        _, active = config.list_kube_config_contexts(config_file=kubeconfig)
        namespace = active["context"].get("namespace") or "default"
    except Exception:  # an in-cluster or unusual config: the default namespace
        namespace = "default"
    return client.CoreV1Api(api), client.BatchV1Api(api), client.CustomObjectsApi(api), namespace


def fetch(name: str, namespace: str | None, to: Path, *, kubeconfig: str | None = None, claim: str | None = None,
          sub_path: str | None = None, image: str | None = None, timeout: float = 300.0) -> list[Path]:
    """Copy run `name`'s report, metrics and logs into `to` through a reader pod; the files."""
    from kubernetes.client.exceptions import ApiException

    core, batch, custom, default_ns = _clients(kubeconfig)
    ns = namespace or default_ns
    run: SpinRun | None = None  # deleted (its claim and data stay), or a spec this spin cannot read
    try:
        body = custom.get_namespaced_custom_object(GROUP, API_VERSION.split("/")[1], ns, PLURAL, name)
    except ApiException as e:
        if e.status != 404:
            raise FetchError(f"reading spinrun {ns}/{name}: {e.status} {e.reason}") from e
    else:
        with contextlib.suppress(SpecError):
            run = validate_data({k: body[k] for k in ("apiVersion", "kind", "metadata", "spec") if k in body})
    jobs = batch.list_namespaced_job(ns, label_selector=f"{LABEL_RUN}={name}").items
    images = [c.image for j in jobs for c in j.spec.template.spec.containers if j.metadata.name.endswith(("-train", "-eval", "-convert"))]
    src = source_of(name, run, images, claim=claim, sub_path=sub_path, image=image)
    pod_name = f"{name}-fetch-{secrets.token_hex(3)}"
    core.create_namespaced_pod(ns, reader_pod(pod_name, name, src.claim, src.run_path, src.image, src.security))
    try:
        phase = _wait(core, ns, pod_name, timeout)
        log = core.read_namespaced_pod_log(pod_name, ns, container="reader")
        if phase != "Succeeded":
            raise FetchError(f"the reader pod {ns}/{pod_name} ({src.image}, claim {src.claim}, {src.run_path}) "
                             f"ended {phase}: {log.strip()[-500:] or 'no output'}")
        return unpack(log, to)
    finally:
        with contextlib.suppress(ApiException):
            core.delete_namespaced_pod(pod_name, ns, grace_period_seconds=0)


def _wait(core: Any, ns: str, pod: str, timeout: float) -> str:
    """The pod's phase once it ended; a FetchError naming why it did not start in time."""
    deadline = time.monotonic() + timeout
    while True:
        status = core.read_namespaced_pod(pod, ns).status
        if status.phase in ("Succeeded", "Failed"):
            return str(status.phase)
        if time.monotonic() > deadline:
            waiting = [c.state.waiting.reason for c in (status.container_statuses or []) if c.state and c.state.waiting]
            why = ", ".join(waiting) or next((c.message for c in status.conditions or [] if c.status == "False"), "") or status.phase
            raise FetchError(f"the reader pod {ns}/{pod} did not finish within {timeout:.0f} s ({why})")
        time.sleep(0.5)


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:  # type: ignore[type-arg]
    """Register `fetch` on `spin`'s subcommands."""
    s = sub.add_parser("fetch", help="copy a cluster run's report, metrics and step logs from its volume to a folder")
    s.add_argument("run", help="the SpinRun's name (it may be deleted already: its claim stays)")
    s.add_argument("-n", "--namespace", help="its namespace (default: the kubeconfig context's)")
    s.add_argument("--to", required=True, type=Path, help="the local folder to write into")
    s.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG or ~/.kube/config)")
    s.add_argument("--image", help="image of the reader pod (default: the run's trainer image)")
    s.add_argument("--claim", help="the claim holding the run (default: the run's, or <run>-data once it is deleted)")
    s.add_argument("--sub-path", help=f"storage.subPath of the run (default: the run's, or {DEFAULT_SUB_PATH})")
    s.add_argument("--timeout", type=float, default=300.0, help="seconds the reader pod may take (default 300)")
    s.set_defaults(func=_cmd_fetch)
    return s


def _cmd_fetch(args: argparse.Namespace) -> int:
    try:
        files = fetch(args.run, args.namespace, args.to, kubeconfig=args.kubeconfig, claim=args.claim,
                      sub_path=args.sub_path, image=args.image, timeout=args.timeout)
    except FetchError as e:
        print(f"spin fetch: {e}", file=sys.stderr)
        return 1
    report = args.to / "report" / "index.html"
    print(f"spin fetch: {len(files)} files of run {args.run} in {args.to} ({', '.join(FETCHED)})")
    if report.exists():
        print(f"report: {report}")
    return 0
