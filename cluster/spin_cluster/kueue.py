"""Kueue on the cluster, for the tests that need the real one: Kueue's controller manager built from
its Go module (components.KUEUE), run on loopback as one more process of the cluster; its CRDs read
from the module's own config/components/crd (in Go's module cache, never copied into this
repository); its webhooks (admission and CRD conversion) called by the apiserver through
`clientConfig.url: https://127.0.0.1:<port>/<path>`, served with a certificate our cluster CA signs.

What differs from Kueue's own install (config/default), and why:
- internal certificate management is off (it makes certificates for a Service name, and injects
  them into Service-based client configs): the webhook serves our certificate from `certDir`;
- Kueue then reads its metrics certificate from a fixed path, /etc/kueue/metrics/certs
  (cmd/kueue/main.go): it runs in a private mount namespace in which an overlay over /etc adds that
  folder (the host's /etc is untouched);
- leader election is off, only the batch/job integration is on, VisibilityOnDemand is off (its
  API server would take a fixed port), health and metrics listen on free loopback ports;
- only the webhooks of Kueue's own API and of batch Jobs are registered: the other frameworks'
  webhooks (pods, Deployments, StatefulSets, ...) are no-ops while their integration is off, and
  would put every pod create of the cluster through Kueue;
- it uses the cluster admin's kubeconfig (system:masters) instead of Kueue's RBAC: a test cluster.

`install` starts it and returns once the apiserver reaches its webhooks; `uninstall` removes every
trace (webhook configurations, the process, Kueue's objects and CRDs), so that later tests see a
cluster without Kueue's API."""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from spin_cluster import build, manifests, pki, procs
from spin_cluster.api import ApiError, path
from spin_cluster.components import KUEUE
from spin_cluster.controlplane import ClusterError, State, http_ok, wait_until

GROUP = "kueue.x-k8s.io"
#: Kueue's Workload version (its storage version in v0.17: v1beta1 is served and converted).
VERSION = "v1beta2"
NAMESPACE = "kueue-system"
PROC_NAME = "kueue"
#: Webhook configuration names as Kueue's kustomization names them (namePrefix kueue-).
MUTATING = "kueue-mutating-webhook-configuration"
VALIDATING = "kueue-validating-webhook-configuration"
#: The API groups whose webhooks are registered (see the module docstring).
WEBHOOK_GROUPS = {GROUP, "batch"}
FIELD_MANAGER = "spin-cluster-kueue"


@dataclass(frozen=True)
class Kueue:
    """A running Kueue: its process, ports and folder."""

    proc: procs.Proc
    webhook_port: int
    health_port: int
    metrics_port: int
    root: Path
    crds: tuple[str, ...]

    @property
    def log(self) -> Path:
        return self.root.parent / "logs" / f"{PROC_NAME}.log"


def _conversion_patched(module: Path) -> set[str]:
    """The CRDs whose conversion webhook Kueue's crd kustomization enables (the names of its
    `webhook_in_<plural>.yaml` patches that are not commented out)."""
    kustomization = yaml.safe_load((module / "config" / "components" / "crd" / "kustomization.yaml").read_text())
    out = set()
    for patch in kustomization.get("patches") or []:
        name = Path(patch["path"] if isinstance(patch, dict) else patch).name
        if name.startswith("webhook_in_"):
            out.add(name.removeprefix("webhook_in_").removesuffix(".yaml"))
    return out


def crds(module: Path, url: str, ca_bundle: str) -> list[dict[str, Any]]:
    """Kueue's CRDs as its kustomization renders them: the bases, with a conversion webhook at
    `url`/convert for the CRDs it patches."""
    converted = _conversion_patched(module)
    out = []
    for file in sorted((module / "config" / "components" / "crd" / "bases").glob("*.yaml")):
        crd = yaml.safe_load(file.read_text())
        if crd["spec"]["names"]["plural"] in converted:
            crd["spec"]["conversion"] = {"strategy": "Webhook", "webhook": {
                "clientConfig": {"url": f"{url}/convert", "caBundle": ca_bundle}, "conversionReviewVersions": ["v1"]}}
        out.append(crd)
    return out


def webhook_configurations(module: Path, url: str, ca_bundle: str) -> list[dict[str, Any]]:
    """Kueue's Mutating/ValidatingWebhookConfigurations (config/components/webhook/manifests.yaml)
    with each Service reference made `url` + its path, the webhooks of WEBHOOK_GROUPS only."""
    out = []
    manifests = (module / "config" / "components" / "webhook" / "manifests.yaml").read_text()
    for doc in yaml.safe_load_all(manifests):
        if not doc:
            continue
        doc["metadata"]["name"] = MUTATING if doc["kind"] == "MutatingWebhookConfiguration" else VALIDATING
        hooks = []
        for hook in doc["webhooks"]:
            if not any(set(rule["apiGroups"]) & WEBHOOK_GROUPS for rule in hook["rules"]):
                continue
            service = hook["clientConfig"]["service"]
            hook["clientConfig"] = {"url": f"{url}{service['path']}", "caBundle": ca_bundle}
            hook["timeoutSeconds"] = 10
            hooks.append(hook)
        doc["webhooks"] = hooks
        out.append(doc)
    return out


def configuration(webhook_port: int, health_port: int, metrics_port: int, cert_dir: Path) -> dict[str, Any]:
    """Kueue's Configuration (config.kueue.x-k8s.io/v1beta2) for a process on loopback."""
    return {
        "apiVersion": "config.kueue.x-k8s.io/v1beta2", "kind": "Configuration",
        "namespace": NAMESPACE,
        "health": {"healthProbeBindAddress": f"127.0.0.1:{health_port}"},
        "metrics": {"bindAddress": f"127.0.0.1:{metrics_port}"},
        "webhook": {"host": "127.0.0.1", "port": webhook_port, "certDir": str(cert_dir)},
        "leaderElection": {"leaderElect": False},
        "internalCertManagement": {"enable": False},
        "manageJobsWithoutQueueName": False,
        "integrations": {"frameworks": ["batch/job"]},
        "featureGates": {"VisibilityOnDemand": False},
    }


def install(state: State, timeout: float = 120) -> Kueue:
    """Kueue's namespace, CRDs and process, then its webhooks; returns once a dry-run create of a
    ResourceFlavor passed through them (the apiserver reaches Kueue over TLS)."""
    binary = build.ensure_all([KUEUE])["kueue"]
    module = build.module_source(KUEUE)
    root = state.root / "kueue"
    if root.exists():
        shutil.rmtree(root)
    certs = root / "certs"
    pki.issue_serving(state.pki, certs / "tls.crt", certs / "tls.key", "kueue-webhook", ["127.0.0.1", "localhost"])
    # the overlay's upper layer: /etc/kueue/metrics/certs inside Kueue's mount namespace
    metrics_certs = root / "etc-upper" / "kueue" / "metrics" / "certs"
    metrics_certs.mkdir(parents=True)
    for f in ("tls.crt", "tls.key"):
        shutil.copy2(certs / f, metrics_certs / f)
    (root / "etc-work").mkdir()
    ports = {k: procs.free_port() for k in ("webhook", "health", "metrics")}
    config = root / "config.yaml"
    config.write_text(yaml.safe_dump(configuration(ports["webhook"], ports["health"], ports["metrics"], certs)))
    url = f"https://127.0.0.1:{ports['webhook']}"
    ca_bundle = base64.b64encode(state.pki.ca.read_bytes()).decode()
    api = state.client(agent="spin-cluster-kueue")
    with contextlib.suppress(ApiError):
        api.create(path("", "v1", "namespaces"), {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}})
    applied = crds(module, url, ca_bundle)
    manifests.apply(api, applied, FIELD_MANAGER)
    names = [crd["metadata"]["name"] for crd in applied]
    for name in names:
        wait_until(lambda n=name: manifests.established(api, n), 60, f"crd/{name} Established")
    argv = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
            'mount -t overlay spin-kueue-etc -o "lowerdir=/etc,upperdir=$1,workdir=$2" /etc && shift 2 && exec "$@"',
            "sh", str(root / "etc-upper"), str(root / "etc-work"),
            str(binary), f"--config={config}", "--zap-log-level=2"]
    proc, _ = procs.spawn(PROC_NAME, argv, state.log(PROC_NAME), env={**os.environ, "KUBECONFIG": str(state.kubeconfig)})
    state.procs.append(proc)
    state.save()
    kueue = Kueue(proc, ports["webhook"], ports["health"], ports["metrics"], root, tuple(names))
    try:
        wait_until(lambda: http_ok(f"http://127.0.0.1:{ports['health']}/readyz"), timeout, "Kueue /readyz",
                   [kueue.log], proc)
        manifests.apply(api, webhook_configurations(module, url, ca_bundle), FIELD_MANAGER)
        probe = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ResourceFlavor", "metadata": {"name": "spin-kueue-probe"}}

        def webhooks_answer() -> bool:
            api.create(path(GROUP, VERSION, "resourceflavors"), probe, dryRun="All")
            return True

        wait_until(_passes(webhooks_answer), 60, "the apiserver to reach Kueue's webhooks", [kueue.log], proc)
    except BaseException:
        uninstall(state, kueue)
        raise
    return kueue


def _passes(check: Any) -> Any:
    def run() -> bool:
        try:
            return bool(check())
        except ApiError:
            return False

    return run


def uninstall(state: State, kueue: Kueue | None = None, timeout: float = 60) -> None:
    """Remove Kueue from the cluster: its webhook configurations (no request waits on a stopped
    Kueue), the process, the finalizers Kueue can no longer remove, its CRDs (awaited: gone from
    discovery) and its namespace. Safe to call twice, and for a half-made install."""
    api = state.client(agent="spin-cluster-kueue")
    for plural, name in (("mutatingwebhookconfigurations", MUTATING), ("validatingwebhookconfigurations", VALIDATING)):
        with contextlib.suppress(ApiError):
            api.delete(path("admissionregistration.k8s.io", "v1", plural, name=name))
    ours = [p for p in state.procs if p.name == PROC_NAME]
    procs.stop(ours)
    state.procs[:] = [p for p in state.procs if p.name != PROC_NAME]
    state.save()
    names = list(kueue.crds) if kueue else [
        c["metadata"]["name"] for c in api.get(path("apiextensions.k8s.io", "v1", "customresourcedefinitions"))["items"]
        if c["spec"]["group"] == GROUP]
    for name in names:
        try:
            crd = _retrying(lambda n=name: api.get(path("apiextensions.k8s.io", "v1", "customresourcedefinitions", name=n)))
        except ApiError as e:
            if e.status == 404:
                continue
            raise
        plural, scope = crd["spec"]["names"]["plural"], crd["spec"]["scope"]
        storage = next(v["name"] for v in crd["spec"]["versions"] if v["storage"])
        # a CRD's storage answers 429 "(re)initializing" for a moment after the CRD changed
        for obj in _retrying(lambda p=plural, v=storage: api.get(path(GROUP, v, p)))["items"]:
            if obj["metadata"].get("finalizers"):
                ns = obj["metadata"].get("namespace") if scope == "Namespaced" else None
                with contextlib.suppress(ApiError):
                    api.patch(path(GROUP, storage, plural, ns, obj["metadata"]["name"]), {"metadata": {"finalizers": None}})
        with contextlib.suppress(ApiError):
            api.delete(path("apiextensions.k8s.io", "v1", "customresourcedefinitions", name=name))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        groups = api.get("/apis")["groups"]
        left = [n for n in names if manifests.crd_exists(api, n)]
        if not left and not any(g["name"] == GROUP for g in groups):
            break
        time.sleep(0.2)
    else:
        raise ClusterError(f"Kueue's CRDs still served {timeout:.0f} s after their deletion: {left}")
    with contextlib.suppress(ApiError):
        api.delete(path("", "v1", "namespaces", name=NAMESPACE))


def _retrying(call: Any, timeout: float = 30) -> Any:
    """`call()`, again while the apiserver answers that it passes (429, 5xx)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return call()
        except ApiError as e:
            if not e.passing or time.monotonic() > deadline:
                raise
        time.sleep(0.2)


