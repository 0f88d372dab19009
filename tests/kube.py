"""The test session's real cluster (spin-cluster: etcd, kube-apiserver, kube-controller-manager,
kube-scheduler built from source, our process kubelet) and what tests do with it: a namespace of
their own, the SpinRun CRD applied, the operator's identity made from the chart's own RBAC, the
instant image's control file, the apiserver's audit log."""

from __future__ import annotations

import contextlib
import itertools
import json
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from spin_cluster.api import ApiError, Client, path
from spin_cluster.cluster import Options, down, up
from spin_cluster.controlplane import State
from spin_cluster.kubelet.config import REGISTRY_FILE, ImageConfig

REPO = Path(__file__).resolve().parents[1]
CRD_FILE = REPO / "charts" / "spin-operator" / "crds" / "spinruns.spin.dev.yaml"
#: The image whose steps finish at once (tests/operator/instant.py); its pods are real.
INSTANT_IMAGE = "localhost/spin-instant:test"
#: The namespace the chart's operator identity lives in (as after `helm install -n spinrun-system`).
OPERATOR_NAMESPACE = "spinrun-system"
#: The audit log's user names of the operator's ServiceAccounts (one per rendering of the chart).
OPERATOR_USERS = f"system:serviceaccount:{OPERATOR_NAMESPACE}:"
_names = itertools.count()


def start(root: Path, control: Path) -> State:
    """A cluster for the test session: two GPU nodes; the instant image carries the control folder."""
    control.mkdir(parents=True, exist_ok=True)
    control.chmod(0o777)  # the steps run as the images' non-root user
    instant = ImageConfig("localhost/spin-instant:*", path=[str(REPO / "tests" / "operator" / "instant_bin")],
                          env={"PYTHONPATH": str(REPO), "SPIN_INSTANT_CONTROL": "/spin-instant"},
                          mounts=[{"source": str(control), "target": "/spin-instant"}])
    return up(root, Options(nodes=2, images=[instant]))


@dataclass
class Kube:
    """The session's cluster, seen from the tests (everything as the admin unless said)."""

    state: State
    control_dir: Path
    _crd: bool = False
    _identities: dict[str, tuple[Path, dict[str, str]]] = field(default_factory=dict)
    _kueue: Any = None
    _trainer: bool = False

    @property
    def api(self) -> Client:
        return self.state.client(agent="spin-tests")

    @property
    def kubeconfig(self) -> Path:
        return self.state.kubeconfig

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        from spin_cluster import build
        from spin_cluster.components import KUBERNETES

        folder = build.built(KUBERNETES)
        binary = str(folder / "kubectl") if folder else "kubectl"
        proc = subprocess.run([binary, "--kubeconfig", str(self.kubeconfig), *args], input=input, capture_output=True,
                              text=True, timeout=120)
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed: {proc.stderr}")
        return proc

    # ------------------------------------------------------------------ objects

    def apply(self, docs: list[dict[str, Any]]) -> None:
        """`kubectl apply --server-side` of these objects, as a user would."""
        self.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-",
                     input="\n---\n".join(yaml.safe_dump(d) for d in docs))

    def ensure_crd(self) -> None:
        """The SpinRun CRD as the chart ships it, admitted by the apiserver and Established."""
        if self._crd:
            return
        self.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD_FILE))
        self.wait_established("spinruns.spin.dev")
        self._crd = True

    def wait_established(self, name: str, timeout: float = 60.0) -> None:
        """Until the CRD `name` is Established. (`kubectl wait --for=condition=Established` fails at
        once, instead of waiting, when it reads the CRD before the apiserver wrote any condition.)"""
        url = path("apiextensions.k8s.io", "v1", "customresourcedefinitions", name=name)
        deadline = time.monotonic() + timeout
        conditions: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            conditions = (self.api.get(url).get("status") or {}).get("conditions") or []
            if any(c["type"] == "Established" and c["status"] == "True" for c in conditions):
                return
            time.sleep(0.2)
        raise AssertionError(f"crd/{name} not Established after {timeout:.0f} s: {conditions}")

    @contextlib.contextmanager
    def namespace(self, prefix: str = "t") -> Iterator[str]:
        """A fresh namespace with its default ServiceAccount; on exit its SpinRuns and Jobs go
        first (a namespace deletion waits on Job pods whose per-index finalizer the Job
        controller keeps while it cannot create their replacements), then the namespace."""
        name = f"{prefix}-{next(_names)}-{int(time.time() * 1000) % 100000}"
        self.api.create(path("", "v1", "namespaces"), {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
        wait(lambda: _exists(self.api, path("", "v1", "serviceaccounts", name, "default")), 30, "the default ServiceAccount")
        try:
            yield name
        finally:
            self.clean_namespace(name)

    def clean_namespace(self, name: str) -> None:
        with contextlib.suppress(ApiError):
            if self._crd:
                self.api.request("DELETE", path("spin.dev", "v1alpha1", "spinruns", name))
            self.api.request("DELETE", path("batch", "v1", "jobs", name), {"propagationPolicy": "Background"})
            self.api.request("DELETE", path("", "v1", "pods", name))
        with contextlib.suppress(AssertionError):
            wait(lambda: not self.api.get(path("", "v1", "pods", name)).get("items"), 60, f"the pods of {name} to go")
        with contextlib.suppress(ApiError):
            self.api.delete(path("", "v1", "namespaces", name=name))

    # ------------------------------------------------------------------ Kueue

    def kueue_up(self) -> Any:
        """The real Kueue (spin_cluster.kueue: built from its Go module, on loopback), installed on
        first use and kept for the following tests until `kueue_down`."""
        from spin_cluster import kueue

        if self._kueue is None:
            self._kueue = kueue.install(self.state)
        return self._kueue

    def kueue_down(self) -> None:
        """No Kueue: its webhooks, process, objects and CRDs removed (none are served any more)."""
        from spin_cluster import kueue

        if self._kueue is not None:
            kueue.uninstall(self.state, self._kueue)
            self._kueue = None

    def trainer_up(self) -> None:
        """Kubeflow Trainer v2 and JobSet (spin_cluster.trainer: their managers built from their Go
        modules, CRDs, RBAC, webhooks and the torch-distributed runtime from their manifests),
        started on first use and kept for the following tests until `trainer_down`."""
        from spin_cluster import trainer

        if not self._trainer:
            trainer.start(self.state)
            self._trainer = True

    def trainer_down(self) -> None:
        """No Trainer or JobSet: the runtime, managers, webhooks, RBAC and CRDs removed."""
        from spin_cluster import trainer

        if self._trainer:
            trainer.stop(self.state)
            self._trainer = False

    # ------------------------------------------------------------------ the operator's identity

    def operator_identity(self, values: dict[str, Any] | None = None) -> tuple[Path, dict[str, str]]:
        """(a kubeconfig with the token of the operator's ServiceAccount, bound by exactly the RBAC
        the chart renders with `values`, so a verb the chart forgets fails the test; the plain
        environment variables the chart gives the operator container)."""
        key = json.dumps(values or {}, sort_keys=True)
        if key in self._identities:
            return self._identities[key]
        from tests.chart.rbac import render

        release = f"spin-{len(self._identities)}"
        ns = OPERATOR_NAMESPACE
        with contextlib.suppress(ApiError):
            self.api.create(path("", "v1", "namespaces"), {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        # the aggregated user roles are cluster-wide, one set per cluster: left to a real install
        rendered = render({**(values or {}), "rbac": {"create": True, "userRoles": False}}, namespace=ns, release=release)
        deployment = next(d for d in rendered if d["kind"] == "Deployment")
        env = {e["name"]: str(e["value"]) for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]
               if "value" in e}
        docs = [d for d in rendered if d["kind"] in ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")]
        for doc in docs:
            if doc["kind"] in ("ServiceAccount", "Role", "RoleBinding"):
                doc["metadata"].setdefault("namespace", ns)
        self.apply(docs)
        account = next(d["metadata"]["name"] for d in docs if d["kind"] == "ServiceAccount")
        token = self.api.create(path("", "v1", "serviceaccounts", ns, account, "token"),
                                {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                                 "spec": {"expirationSeconds": 86400}})["status"]["token"]
        from spin_cluster.controlplane import kubeconfig

        config = kubeconfig(self.state.server, self.state.pki.ca, f"system:serviceaccount:{ns}:{account}", token)
        target = self.state.root / "identities" / f"{release}.yaml"
        target.parent.mkdir(exist_ok=True)
        target.write_text(yaml.safe_dump(config))
        self._identities[key] = (target, env)
        return target, env

    # ------------------------------------------------------------------ the registry

    def set_unpushed(self, *images: str) -> None:
        """The image tags the registry lacks now: the kubelet's pulls of them fail (ErrImagePull,
        ImagePullBackOff) until they leave the list; none given: every image is pushed."""
        file = self.state.root / REGISTRY_FILE
        tmp = file.with_suffix(".tmp")
        tmp.write_text(json.dumps(sorted(images)))
        tmp.rename(file)

    # ------------------------------------------------------------------ the instant image

    def control(self, **control: Any) -> None:
        """The instant steps' control (hold, fail, exit); resets the failure counts and starts."""
        for f in ("counts.json", "starts.jsonl"):
            (self.control_dir / f).unlink(missing_ok=True)
        self.set_control(**control)

    def set_control(self, **control: Any) -> None:
        tmp = self.control_dir / ".control.tmp"
        tmp.write_text(json.dumps(control))
        tmp.rename(self.control_dir / "control.json")

    def current_control(self) -> dict[str, Any]:
        file = self.control_dir / "control.json"
        return json.loads(file.read_text()) if file.exists() else {}

    def starts(self) -> list[tuple[str, int]]:
        """(job, index) of every instant step that started, in order."""
        file = self.control_dir / "starts.jsonl"
        if not file.exists():
            return []
        return [(d["job"], d["index"]) for d in map(json.loads, file.read_text().splitlines()) if d]

    # ------------------------------------------------------------------ audit

    def audit(self, namespace: str | None = None) -> list[dict[str, Any]]:
        """The audit events (ResponseComplete) of users other than the control plane's own. The
        apiserver may be writing the last line as it is read: only whole lines count (an event cut
        short is read whole on the next call)."""
        out = []
        text = self.state.audit_log.read_text()
        for line in text[: text.rfind("\n") + 1].splitlines():
            event = json.loads(line)
            if event.get("stage") != "ResponseComplete":
                continue
            if namespace is not None and (event.get("objectRef") or {}).get("namespace") != namespace:
                continue
            out.append(event)
        return out

    def creations(self, namespace: str, resource: str, user_prefix: str = "system:serviceaccount:") -> list[str]:
        """Names of the objects of `resource` that `user_prefix` users created (201) in `namespace`."""
        return [e["objectRef"].get("name", "") for e in self.audit(namespace)
                if e["verb"] == "create" and e["objectRef"].get("resource") == resource
                and not e["objectRef"].get("subresource") and e["user"]["username"].startswith(user_prefix)
                and (e.get("responseStatus") or {}).get("code") == 201]

    def rbac_refused(self, since: str, outages: Sequence[tuple[str, str]] = ()) -> list[dict[str, Any]]:
        """The operator's requests since `since` (audit time, to the second) that RBAC refused (the
        authorizer's decision: a 403 of admission, e.g. quota, is not RBAC's), outside `outages`."""
        return [e for e in self.audit() if e["user"]["username"].startswith(OPERATOR_USERS) and e["stageTimestamp"] >= since
                and not any(a <= e["stageTimestamp"][:19] <= b for a, b in outages)
                and (e.get("annotations") or {}).get("authorization.k8s.io/decision") == "forbid"]

    def claim_dir(self, namespace: str, claim: str) -> Path:
        """The host folder of a claim (its PersistentVolume's hostPath)."""
        pvc = self.api.get(path("", "v1", "persistentvolumeclaims", namespace, claim))
        pv = self.api.get(path("", "v1", "persistentvolumes", name=pvc["spec"]["volumeName"]))
        return Path(pv["spec"]["hostPath"]["path"])


def _exists(api: Client, url: str) -> bool:
    try:
        api.get(url)
        return True
    except ApiError as e:
        if e.status == 404:
            return False
        raise


def wait(pred: Callable[[], Any], timeout: float, what: str, interval: float = 0.1,
         errors: tuple[type[BaseException], ...] = (ApiError,), detail: Callable[[], str] | None = None) -> Any:
    """The first truthy value of `pred` within `timeout` seconds (`errors` count as not yet); on
    timeout the error says what was awaited, and `detail()` what the cluster looked like."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = pred()
        except errors:
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}" + (f"; {detail()}" if detail else ""))
        time.sleep(interval)


def stop(root: Path) -> None:
    down(root)
