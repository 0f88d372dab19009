"""The session's real cluster does what a cluster does: the pinned release answers, RBAC is
enforced, the scheduler places pods by their GPU requests, claims are provisioned, and the process
kubelet runs a pod as its spec says (user, read-only root, volumes, projected token, env, DNS,
logs through the apiserver, SIGTERM and the grace period on deletion)."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from spin_cluster.api import ApiError, Client, Endpoint, path
from spin_cluster.components import KUBERNETES
from tests.kube import Kube, wait


def pod_body(name: str, script: str, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 5,
                 "containers": [{"name": "main", "image": "localhost/anything:1", "command": ["python", "-c", script]}]},
    }
    body["spec"].update(spec)
    return body


def wait_phase(kube: Kube, ns: str, name: str, phases: tuple[str, ...], timeout: float = 60) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        pod = kube.api.get(path("", "v1", "pods", ns, name))
        return pod if pod["status"].get("phase") in phases else None

    return wait(reached, timeout, f"pod {name} in {phases}")


def test_the_control_plane_is_the_pinned_release(kube: Kube) -> None:
    assert kube.api.get("/version")["gitVersion"] == KUBERNETES.version
    assert f"Server Version: {KUBERNETES.version}" in kube.kubectl("version").stdout


def test_rbac_is_enforced_for_a_service_account_without_rights(kube: Kube) -> None:
    with kube.namespace("rbac") as ns:
        kube.api.create(path("", "v1", "serviceaccounts", ns), {"apiVersion": "v1", "kind": "ServiceAccount",
                                                                  "metadata": {"name": "nobody"}})
        token = kube.api.create(path("", "v1", "serviceaccounts", ns, "nobody", "token"),
                                {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {}})["status"]["token"]
        nobody = Client(Endpoint(kube.state.server, token, str(kube.state.pki.ca)))
        with pytest.raises(ApiError) as refused:
            nobody.get(path("batch", "v1", "jobs", ns))
        assert refused.value.status == 403
        assert f'"system:serviceaccount:{ns}:nobody" cannot list resource "jobs"' in refused.value.message


def test_nodes_offer_fake_gpus_and_the_scheduler_counts_them(kube: Kube) -> None:
    nodes = kube.api.get(path("", "v1", "nodes"))["items"]
    assert {n["status"]["allocatable"]["nvidia.com/gpu"] for n in nodes} == {"8"}
    with kube.namespace("gpu") as ns:
        too_big = pod_body("too-big", "pass")
        too_big["spec"]["containers"][0]["resources"] = {"limits": {"nvidia.com/gpu": "16"}}
        kube.api.create(path("", "v1", "pods", ns), too_big)

        def unschedulable() -> str | None:
            pod = kube.api.get(path("", "v1", "pods", ns, "too-big"))
            cond = next((c for c in pod["status"].get("conditions") or [] if c["type"] == "PodScheduled"), {})
            return cond.get("message") if cond.get("reason") == "Unschedulable" else None

        message = wait(unschedulable, 30, "the scheduler to refuse the pod")
        assert "Insufficient nvidia.com/gpu" in message


def test_a_pod_runs_as_its_spec_says(kube: Kube) -> None:
    """User and groups, read-only root with an emptyDir /tmp, a ConfigMap volume, the projected
    ServiceAccount token that reaches the apiserver through the `kubernetes` Service, env from a
    fieldRef, its own hostname and address, cluster DNS, its log read back through the apiserver."""
    script = """
import json, os, socket, ssl, urllib.request
sa = '/var/run/secrets/kubernetes.io/serviceaccount'
facts = {'uid': os.getuid(), 'gid': os.getgid(), 'groups': sorted(os.getgroups()), 'hostname': socket.gethostname(),
         'node': os.environ['NODE'], 'cm': open('/etc/cfg/greeting').read(),
         'dns': socket.gethostbyname('kubernetes.default.svc.cluster.local'), 'api': os.environ['KUBERNETES_SERVICE_HOST']}
try:
    open('/written', 'w')
    facts['root'] = 'writable'
except OSError:
    facts['root'] = 'read-only'
open('/tmp/ok', 'w').write('x')
ctx = ssl.create_default_context(cafile=sa + '/ca.crt')
req = urllib.request.Request('https://kubernetes.default.svc/api/v1/namespaces/' + open(sa + '/namespace').read() + '/pods',
                             headers={'Authorization': 'Bearer ' + open(sa + '/token').read()})
try:
    urllib.request.urlopen(req, context=ctx)
    facts['whoami'] = 'allowed'
except urllib.error.HTTPError as e:
    facts['whoami'] = json.load(e)['message']
print(json.dumps(facts))
"""
    with kube.namespace("pod") as ns:
        kube.api.create(path("", "v1", "configmaps", ns), {"apiVersion": "v1", "kind": "ConfigMap",
                                                             "metadata": {"name": "cfg"}, "data": {"greeting": "hello"}})
        body = pod_body("facts", script, securityContext={"runAsUser": 65532, "runAsGroup": 65532, "fsGroup": 65532,
                                                          "runAsNonRoot": True},
                        volumes=[{"name": "tmp", "emptyDir": {}}, {"name": "cfg", "configMap": {"name": "cfg"}}])
        container = body["spec"]["containers"][0]
        container["securityContext"] = {"readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False}
        container["volumeMounts"] = [{"name": "tmp", "mountPath": "/tmp"}, {"name": "cfg", "mountPath": "/etc/cfg"}]
        container["env"] = [{"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}]
        kube.api.create(path("", "v1", "pods", ns), body)
        pod = wait_phase(kube, ns, "facts", ("Succeeded", "Failed"))
        log = kube.kubectl("logs", "-n", ns, "facts").stdout
        assert pod["status"]["phase"] == "Succeeded", log
        facts = json.loads(log.strip().splitlines()[-1])
        assert facts["uid"] == 65532 and facts["gid"] == 65532 and 65532 in facts["groups"]
        assert facts["root"] == "read-only" and facts["cm"] == "hello" and facts["hostname"] == "facts"
        assert facts["node"] == pod["spec"]["nodeName"]
        assert facts["dns"] == facts["api"] == str(kube.state.addresses.kubernetes_service)
        assert f'"system:serviceaccount:{ns}:default" cannot list resource "pods"' in facts["whoami"]
        assert pod["status"]["podIP"].startswith("10.") and pod["status"]["podIP"] != pod["status"]["hostIP"]
        terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
        assert terminated["exitCode"] == 0 and terminated["reason"] == "Completed"


def test_a_deleted_pod_gets_sigterm_then_its_grace_period(kube: Kube) -> None:
    script = """
import signal, sys, time
def stop(*_):
    print('got SIGTERM', flush=True)
    time.sleep(1)
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
print('ready', flush=True)
time.sleep(600)
"""
    with kube.namespace("grace") as ns:
        kube.api.create(path("", "v1", "pods", ns), pod_body("sleeper", script))
        wait_phase(kube, ns, "sleeper", ("Running",))
        wait(lambda: "ready" in kube.kubectl("logs", "-n", ns, "sleeper").stdout, 30, "the container to start")
        started = time.monotonic()
        kube.api.delete(path("", "v1", "pods", ns, "sleeper"))
        wait(lambda: not kube.api.get(path("", "v1", "pods", ns))["items"], 30, "the pod to go")
        assert 1.0 <= time.monotonic() - started < 5, "stopped by SIGTERM within the grace period"
        events = kube.api.get(path("", "v1", "events", ns))["items"]
        assert "Killing" in {e["reason"] for e in events}


def test_a_claim_is_provisioned_and_owned_by_the_pods_fs_group(kube: Kube) -> None:
    with kube.namespace("claim") as ns:
        kube.api.create(path("", "v1", "persistentvolumeclaims", ns), {
            "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "data"},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}})
        body = pod_body("writer", "open('/data/out', 'w').write('kept')",
                        securityContext={"runAsUser": 65532, "runAsGroup": 65532, "fsGroup": 65532},
                        volumes=[{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}])
        body["spec"]["containers"][0]["volumeMounts"] = [{"name": "data", "mountPath": "/data"}]
        kube.api.create(path("", "v1", "pods", ns), body)
        pod = wait_phase(kube, ns, "writer", ("Succeeded", "Failed"))
        assert pod["status"]["phase"] == "Succeeded", kube.kubectl("logs", "-n", ns, "writer").stdout
        folder = kube.claim_dir(ns, "data")
        assert (folder / "out").read_text() == "kept"
        assert folder.stat().st_gid == 65532


def test_down_stops_every_process_and_removes_the_pod_network(tmp_path: Path) -> None:
    """A second cluster beside the session's, with a pod running, brought down."""
    from spin_cluster import procs
    from spin_cluster.cluster import Options, down, up
    from spin_cluster.kubelet.network import NETNS_DIR

    root = tmp_path / "cluster"
    state = up(root, Options(nodes=1))
    try:
        api = state.client()
        api.create(path("", "v1", "pods", "default"), pod_body("sleeper", "import time; time.sleep(600)"))
        wait(lambda: api.get(path("", "v1", "pods", "default", "sleeper"))["status"].get("phase") == "Running", 60,
             "the pod to run")
        pids = [p.pid for p in state.procs]
        namespaces = [n.name for n in NETNS_DIR.iterdir() if n.name.startswith(state.addresses.netns_prefix)]
        assert namespaces, "the pod has a network namespace"

        def pod_pids() -> list[int]:
            return [int(p) for ns in namespaces
                    for p in subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()]

        # Running is reported once the container process is started; it joins the pod's network
        # namespace as it sets itself up (enter.py), a moment later on a loaded machine
        in_pod = wait(pod_pids, 30, "the pod's container in its network namespace")
    finally:
        down(root)
    assert not procs.sessions_members(set(pids)), "a control-plane process outlived `down`"
    assert not [p for p in in_pod if procs.start_ticks(p) is not None], "a container outlived `down`"
    assert not [n for n in NETNS_DIR.iterdir() if n.name.startswith(state.addresses.netns_prefix)]
    assert not Path(f"/sys/class/net/{state.addresses.bridge}").exists()
    assert not root.exists()


def test_kwok_nodes_complete_job_pods_without_processes(tmp_path: Path) -> None:
    """A cluster of kwok nodes only (what scale tests need): the real Job controller and scheduler,
    pods faked by kwok with its default stages."""
    from spin_cluster.cluster import Options, down, up

    root = tmp_path / "cluster"
    state = up(root, Options(nodes=0, kwok_nodes=2))
    try:
        api = state.client()
        api.create(path("batch", "v1", "jobs", "default"), {
            "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "many"},
            "spec": {"completions": 20, "parallelism": 20, "completionMode": "Indexed", "template": {"spec": {
                "restartPolicy": "Never", "containers": [{"name": "c", "image": "none", "command": ["false"]}]}}}})

        def complete() -> dict[str, Any] | None:
            job = api.get(path("batch", "v1", "jobs", "default", "many"))
            done = any(c["type"] == "Complete" and c["status"] == "True" for c in job["status"].get("conditions") or [])
            return job if done else None

        job = wait(complete, 90, "the Job to complete on kwok's nodes")
        assert job["status"]["succeeded"] == 20
        pods = api.get(path("", "v1", "pods", "default"))["items"]
        assert {p["spec"]["nodeName"] for p in pods} <= {"kwok-node-0", "kwok-node-1"} and len(pods) == 20
    finally:
        down(root)


def test_a_volume_over_the_projects_folder_does_not_hide_the_image(kube: Kube) -> None:
    """Every image is the host's root with the project's environment; a pod's volume mounted where
    that environment lives (an emptyDir at /tmp, with the checkout under /tmp in CI) must not hide
    it, as a real image's files are not under the pod's volumes."""
    from tests.kube import REPO

    with kube.namespace("hidden") as ns:
        body = pod_body("spin", "pass", volumes=[{"name": "scratch", "emptyDir": {}}])
        container = body["spec"]["containers"][0]
        container["command"] = ["spin", "validate", str(REPO / "examples" / "spinrun-local.yaml")]
        container["volumeMounts"] = [{"name": "scratch", "mountPath": str(REPO.parent)}]
        kube.api.create(path("", "v1", "pods", ns), body)
        pod = wait_phase(kube, ns, "spin", ("Succeeded", "Failed"))
        assert pod["status"]["phase"] == "Succeeded", kube.kubectl("logs", "-n", ns, "spin").stdout


def test_a_left_over_veth_of_the_clusters_index_is_removed_before_pods_need_its_name() -> None:
    """A pod namespace deleted while a process still held it kept its veth pair; the next cluster
    on that index failed every pod given that address number (`RTNETLINK answers: File exists`)."""
    from spin_cluster.addresses import MAX_CLUSTERS, Addresses
    from spin_cluster.kubelet.network import PodNetwork, host_veth, stale_veths

    addrs = Addresses(MAX_CLUSTERS - 1)  # the last index: not used by a running cluster here
    link = host_veth(addrs, 2)
    subprocess.run(["ip", "link", "add", link, "type", "veth", "peer", "name", f"{link}x"], check=True)
    try:
        assert stale_veths(addrs) == [link]
        PodNetwork(addrs).teardown()
        assert stale_veths(addrs) == []
    finally:
        subprocess.run(["ip", "link", "del", link], check=False, capture_output=True)


def test_a_removed_pods_veth_goes_even_while_a_process_holds_its_namespace() -> None:
    """Found with `helm uninstall` then a new run in one cluster: the operator pod's namespace was
    still held when it was deleted, its veth pair lived on, and the next pod given its address number
    failed at once (exit 137, `RTNETLINK answers: File exists`). The host end now goes by name."""
    from spin_cluster.addresses import MAX_CLUSTERS, Addresses
    from spin_cluster.kubelet.network import PodNetwork, host_veth, stale_veths

    addrs = Addresses(MAX_CLUSTERS - 1)  # the last index: not used by a running cluster here
    link = host_veth(addrs, 3)
    subprocess.run(["ip", "link", "add", link, "type", "veth", "peer", "name", f"{link}x"], check=True)
    try:
        net = PodNetwork(addrs)
        net._used[3] = "a-pod-uid"  # the number the pod held (its namespace is gone or still held)
        net.remove_pod("a-pod-uid")
        assert stale_veths(addrs) == [] and 3 not in net._used
    finally:
        subprocess.run(["ip", "link", "del", link], check=False, capture_output=True)
