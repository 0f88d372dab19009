"""Kubeflow Trainer v2 and JobSet on the cluster, as their own controllers: the managers built from
their Go modules (cluster/go/jobset, cluster/go/trainer) run as processes on loopback, each with its
upstream ClusterRole bound to a ServiceAccount of its own, leader election and certificate
management off. Their CRDs and webhook configurations are read from the module sources in Go's
module cache (the pinned versions' own manifests, with their kustomize JSON patches applied); each
webhook's `clientConfig.service` becomes a `url` on 127.0.0.1 with the cluster CA as caBundle, and
the manager serves a certificate for 127.0.0.1 that the cluster CA signed.

`start(state)` installs and starts both (JobSet first: Trainer watches JobSets), returning once
the apiserver reaches their webhooks; `stop(state)` stops them and removes what `start` installed."""

from __future__ import annotations

import base64
import contextlib
import copy
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from spin_cluster import build, manifests, procs
from spin_cluster import pki as pki_mod
from spin_cluster.api import ApiError, Client, path
from spin_cluster.components import JOBSET, TRAINER, Component
from spin_cluster.controlplane import ClusterError, State, http_ok, kubeconfig, wait_until
from spin_cluster.manifests import crd_exists, established, remove, url_of

FIELD_MANAGER = "spin-cluster"
#: The runtime Trainer's manifests ship for torchrun (the SpinRun default of training.trainingRuntime).
TORCH_RUNTIME = "manifests/base/runtimes/torch_distributed.yaml"


@dataclass(frozen=True)
class Controller:
    """One upstream controller manager and where its manifests are in its module."""

    #: the process name (in the cluster's state) and the name of its ServiceAccount
    name: str
    component: Component
    binary: str
    #: CRD files, relative to the module's root
    crds: tuple[str, ...]
    #: the file of the manager's ClusterRole
    role: str
    #: the kustomization folder of the webhook configurations
    webhooks: str
    #: where its ServiceAccount lives (as in the upstream install)
    namespace: str
    #: the install's namePrefix (jobset's config/default), for the cluster-scoped names
    name_prefix: str = ""


JOBSET_MANAGER = Controller("jobset-controller-manager", JOBSET, "jobset",
                            ("config/components/crd/bases/jobset.x-k8s.io_jobsets.yaml",),
                            "config/components/rbac/role.yaml", "config/components/webhook", "jobset-system", "jobset-")
TRAINER_MANAGER = Controller("kubeflow-trainer-controller-manager", TRAINER, "trainer-controller-manager",
                             tuple(f"manifests/base/crds/trainer.kubeflow.org_{p}.yaml"
                                   for p in ("clustertrainingruntimes", "trainingruntimes", "trainjobs")),
                             "manifests/base/rbac/role.yaml", "manifests/base/webhook", "kubeflow-system")
CONTROLLERS = (JOBSET_MANAGER, TRAINER_MANAGER)


# --------------------------------------------------------------------------- manifests


def load(file: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(file.read_text()) if d]


def _pointer(doc: Any, pointer: str) -> tuple[Any, str | int]:
    parts = [p.replace("~1", "/").replace("~0", "~") for p in pointer.lstrip("/").split("/")]
    for part in parts[:-1]:
        doc = doc[int(part)] if isinstance(doc, list) else doc[part]
    last = parts[-1]
    return doc, (len(doc) if last == "-" else int(last)) if isinstance(doc, list) else last


def json_patch(doc: dict[str, Any], ops: list[dict[str, Any]]) -> dict[str, Any]:
    """`doc` with the RFC 6902 `add`/`replace`/`remove` operations applied (what the upstream
    kustomizations use)."""
    out = copy.deepcopy(doc)
    for op in ops:
        parent, key = _pointer(out, op["path"])
        if op["op"] == "add" and isinstance(parent, list):
            parent.insert(int(key), copy.deepcopy(op["value"]))
        elif op["op"] in ("add", "replace"):
            parent[key] = copy.deepcopy(op["value"])
        elif op["op"] == "remove":
            del parent[key]
        else:
            raise ValueError(f"JSON patch operation {op['op']!r} is not supported")
    return out


def kustomize(folder: Path) -> list[dict[str, Any]]:
    """The `resources` of a kustomization folder (local files) with its JSON `patches` applied to
    the objects their target selects (by kind and, when given, name)."""
    k = yaml.safe_load((folder / "kustomization.yaml").read_text())
    docs = [d for r in k.get("resources") or [] if r.endswith(".yaml") for d in load(folder / r)]
    for patch in k.get("patches") or []:
        ops = yaml.safe_load((folder / patch["path"]).read_text())
        if not isinstance(ops, list):
            raise ValueError(f"{folder / patch['path']}: only JSON 6902 patches are supported")
        target = patch.get("target") or {}
        docs = [json_patch(d, ops) if d.get("kind") == target.get("kind")
                and target.get("name", d["metadata"]["name"]) == d["metadata"]["name"] else d for d in docs]
    return docs


def webhook_configurations(controller: Controller, source: Path, url: str, ca: bytes) -> list[dict[str, Any]]:
    """The controller's webhook configurations with each `clientConfig.service` replaced by
    `url` + its path and the CA bundle `ca`."""
    out = []
    for doc in kustomize(source / controller.webhooks):
        if doc["kind"] not in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
            continue
        doc["metadata"] = {"name": controller.name_prefix + doc["metadata"]["name"]}
        for hook in doc["webhooks"]:
            service = hook["clientConfig"]["service"]
            hook["clientConfig"] = {"url": url + service.get("path", "/"), "caBundle": base64.b64encode(ca).decode()}
        out.append(doc)
    return out


def torch_runtime() -> dict[str, Any]:
    """Trainer's `torch-distributed` ClusterTrainingRuntime as its manifests ship it."""
    (doc,) = load(build.module_source(TRAINER) / TORCH_RUNTIME)
    return doc


# --------------------------------------------------------------------------- the API


def identity(state: State, controller: Controller, source: Path) -> Path:
    """A kubeconfig of the controller's own ServiceAccount, bound to its upstream ClusterRole."""
    api = state.client()
    (role,) = load(source / controller.role)
    role["metadata"] = {"name": controller.name_prefix + role["metadata"]["name"]}
    ns, account = controller.namespace, controller.name
    manifests.apply(api, [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}},
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": account, "namespace": ns}},
        role,
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": role["metadata"]["name"]},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role["metadata"]["name"]},
         "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": ns}]},
    ], FIELD_MANAGER)
    token = api.create(path("", "v1", "serviceaccounts", ns, account, "token"),
                       {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                        "spec": {"expirationSeconds": 86400}})["status"]["token"]
    target = state.root / "kubeconfigs" / f"{controller.name}.yaml"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(yaml.safe_dump(kubeconfig(state.server, state.pki.ca, f"system:serviceaccount:{ns}:{account}", token)))
    target.chmod(0o600)
    return target


# --------------------------------------------------------------------------- the managers


def _config(controller: Controller, folder: Path, health: int, webhook: int) -> dict[str, Any]:
    common = {"health": {"healthProbeBindAddress": f"127.0.0.1:{health}"},  # /readyz, /healthz
              "metrics": {"bindAddress": "0"},  # off: nothing scrapes it here
              "leaderElection": {"leaderElect": False}}
    if controller is JOBSET_MANAGER:
        return {"apiVersion": "config.jobset.x-k8s.io/v1alpha1", "kind": "Configuration", **common,
                "webhook": {"port": webhook, "host": "127.0.0.1", "certDir": str(folder / "certs")},
                "internalCertManagement": {"enable": False}}
    return {"apiVersion": "config.trainer.kubeflow.org/v1alpha1", "kind": "Configuration", **common,
            # the certificates are read from $TMPDIR/k8s-webhook-server/serving-certs (controller-runtime's default)
            "webhook": {"port": webhook, "host": "127.0.0.1"},
            "certManagement": {"enable": False}}


def start_manager(state: State, controller: Controller, binary: Path) -> procs.Proc:
    """Install the controller's CRDs, RBAC and webhooks and run its manager; returns once it is ready."""
    api = state.client()
    source = build.module_source(controller.component)
    crds = [d for f in controller.crds for d in load(source / f)]
    manifests.apply(api, crds, FIELD_MANAGER)
    for crd in crds:
        wait_until(lambda name=crd["metadata"]["name"]: established(api, name), 60, f"crd/{crd['metadata']['name']} Established")
    config_path = identity(state, controller, source)
    folder = state.root / controller.name
    certs = folder / "certs"
    pki_mod.issue_serving(state.pki, certs / "tls.crt", certs / "tls.key", controller.name, ["127.0.0.1", "localhost"])
    (folder / "tmp" / "k8s-webhook-server").mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        (folder / "tmp" / "k8s-webhook-server" / "serving-certs").symlink_to(certs)
    health, webhook = procs.free_port(), procs.free_port()
    (folder / "config.yaml").write_text(yaml.safe_dump(_config(controller, folder, health, webhook)))
    argv = [str(binary), f"--config={folder / 'config.yaml'}", f"--kubeconfig={config_path}", "--zap-log-level=info"]
    log = state.log(controller.name)
    proc, _ = procs.spawn(controller.name, argv, log, env={**os.environ, "TMPDIR": str(folder / "tmp")})
    state.procs.append(proc)
    state.save()
    wait_until(lambda: http_ok(f"http://127.0.0.1:{health}/readyz"), 120, f"{controller.name} /readyz", [log], proc)
    manifests.apply(api, webhook_configurations(controller, source, f"https://127.0.0.1:{webhook}", state.pki.ca.read_bytes()),
                    FIELD_MANAGER)
    return proc


def _admitted(api: Client, doc: dict[str, Any]) -> bool:
    """Whether a dry-run create of `doc` passes the webhooks (an error calling one: not yet)."""
    try:
        api.create(url_of(doc, name=False), doc, dryRun="All")
        return True
    except ApiError as e:
        if "failed calling webhook" in e.message or e.status >= 500:
            return False
        if e.status == 409:
            return True
        raise


def start(state: State) -> list[procs.Proc]:
    """JobSet and Trainer on the cluster, and Trainer's torch-distributed ClusterTrainingRuntime;
    returns once the apiserver reaches both managers' webhooks."""
    binaries = build.ensure_all([JOBSET, TRAINER])
    api = state.client()
    started = []
    try:
        for controller in CONTROLLERS:
            started.append(start_manager(state, controller, binaries[controller.binary]))
        probe = {"apiVersion": "jobset.x-k8s.io/v1alpha2", "kind": "JobSet",
                 "metadata": {"name": "spin-cluster-probe", "namespace": "default"},
                 "spec": {"replicatedJobs": [{"name": "probe", "template": {"spec": {"template": {"spec": {
                     "restartPolicy": "Never", "containers": [{"name": "probe", "image": "probe"}]}}}}}]}}
        wait_until(lambda: _admitted(api, probe), 60, "the apiserver to reach JobSet's webhooks",
                   [state.log(JOBSET_MANAGER.name)])
        runtime = torch_runtime()
        wait_until(lambda: _admitted(api, runtime), 60, "the apiserver to reach Trainer's webhooks",
                   [state.log(TRAINER_MANAGER.name)])
        manifests.apply(api, [runtime], FIELD_MANAGER)
    except BaseException:
        stop(state)
        raise
    return started


def stop(state: State) -> None:
    """Remove Trainer's runtime (while Trainer runs: it holds a finalizer while TrainJobs use it),
    stop both managers, remove their webhook configurations, CRDs and RBAC."""
    api = state.client()
    with contextlib.suppress(ApiError, OSError, ClusterError, build.BuildError):
        runtime = torch_runtime()
        remove(api, [runtime])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                api.get(url_of(runtime))
            except ApiError:
                break
            time.sleep(0.2)
    managers = [p for p in state.procs if p.name in {c.name for c in CONTROLLERS}]
    procs.stop(managers)
    state.procs = [p for p in state.procs if p not in managers]
    state.save()
    for controller in reversed(CONTROLLERS):
        with contextlib.suppress(OSError, ClusterError, build.BuildError):
            source = build.module_source(controller.component)
            remove(api, webhook_configurations(controller, source, "https://127.0.0.1", b""))
            (role,) = load(source / controller.role)
            name = controller.name_prefix + role["metadata"]["name"]
            remove(api, [{"kind": "ClusterRoleBinding", "metadata": {"name": name}},
                         {"kind": "ClusterRole", "metadata": {"name": name}}])
            remove(api, [d for f in controller.crds for d in load(source / f)])
    for controller in CONTROLLERS:
        for crd in (d for f in controller.crds for d in _safe_load(controller, f)):
            with contextlib.suppress(AssertionError, ClusterError):
                wait_until(lambda n=crd["metadata"]["name"]: _gone(api, n), 60, f"crd/{crd['metadata']['name']} to go")


def _safe_load(controller: Controller, file: str) -> list[dict[str, Any]]:
    try:
        return load(build.module_source(controller.component) / file)
    except (OSError, ClusterError, build.BuildError):
        return []


def _gone(api: Client, crd: str) -> bool:
    with contextlib.suppress(ApiError):
        return not crd_exists(api, crd)
    return False
