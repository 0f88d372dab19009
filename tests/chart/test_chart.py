"""The Helm chart, the Dockerfiles and the operator's RBAC, checked with the real tools:
`helm lint`/`helm template` (helm v4 from `make tools`), Kubernetes' own JSON schemas
(kubernetes-validate) and hadolint. The operator's RBAC is enforced by the real apiserver in the
e2e and install tests (tests/operator/test_e2e.py, test_install.py)."""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import tomllib
import yaml

from tests.chart.rbac import CHART, REPO, TEST_REGISTRY, check_requests, find_helm, operator_rules, with_registry

HELM = find_helm()
pytestmark = pytest.mark.skipif(HELM is None, reason="helm not found on PATH or in .tools/: run `make tools`")

#: Kubernetes versions the rendered objects must be valid for: the chart's kubeVersion floor
#: and the newest schema kubernetes-validate bundles.
KUBE_VERSIONS = ("1.29.0", kubernetes_validate.utils.latest_version())
#: Kinds that are CRDs of other projects: no Kubernetes schema to check them against.
FOREIGN_KINDS = {"ServiceMonitor"}

#: Value sets the chart must accept; each is linted, rendered and schema-checked.
VARIANTS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "namespaced": {"watchNamespaces": ["team-a", "team-b"]},
    "metrics-servicemonitor": {
        "metrics": {"enabled": True, "port": 9090, "serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}}
    },
    "no-metrics": {"metrics": {"enabled": False}},
    "custom-images": {
        "images": {
            "operator": {"repository": "registry.example.com:5000/ml/spinrun-operator", "tag": "1.2.3"},
            "generator": {"repository": "registry.example.com:5000/ml/spinrun-generator", "tag": "1.2.3-cu129"},
            "trainer": {"repository": "registry.example.com:5000/ml/spinrun-trainer", "tag": "sha256:" + "a" * 64},
            "pullPolicy": "Always",
        },
        "imagePullSecrets": [{"name": "regcred"}],
    },
    "pytorchjob": {"pytorchjob": {"enabled": True}},
    "trainjob": {"trainjob": {"enabled": True}},
    "kueue": {"kueue": {"enabled": True}},
    "gang": {"gangScheduling": {"enabled": True}},
    "dashboard": {"dashboard": {"enabled": True, "labels": {"grafana_dashboard": "1"}, "namespace": "monitoring"}},
    "existing-service-account": {
        "serviceAccount": {"create": False, "name": "spin-sa"},
        "rbac": {"create": True, "userRoles": False},
    },
}


def run_helm(
    *args: str, values: dict[str, Any] | None = None, tmp: Path | None = None
) -> subprocess.CompletedProcess[str]:
    cmd = [HELM, *args]
    if values is not None:
        assert tmp is not None
        vf = tmp / "values.json"
        vf.write_text(json.dumps(values))  # JSON is YAML
        cmd += ["-f", str(vf)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


@cache
def _rendered(name: str) -> tuple[dict[str, Any], ...]:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        proc = run_helm(
            "template", "spin-operator", str(CHART), "-n", "spinrun-system", values=with_registry(VARIANTS[name]),
            tmp=Path(tmp),
        )
    assert proc.returncode == 0, f"helm template ({name}) failed:\n{proc.stderr}"
    return tuple(d for d in yaml.safe_load_all(proc.stdout) if d)


def rendered(name: str) -> list[dict[str, Any]]:
    return list(_rendered(name))


def of_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def deployment(name: str = "defaults") -> dict[str, Any]:
    (dep,) = of_kind(rendered(name), "Deployment")
    return dep


def container(name: str = "defaults") -> dict[str, Any]:
    (c,) = deployment(name)["spec"]["template"]["spec"]["containers"]
    return c


def env_of(c: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c["env"]}


# --------------------------------------------------------------------------- lint & render


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_helm_lint_passes(variant: str, tmp_path: Path) -> None:
    proc = run_helm("lint", "--strict", str(CHART), values=with_registry(VARIANTS[variant]), tmp=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_rendered_objects_match_kubernetes_schemas(variant: str) -> None:
    objects = rendered(variant)
    assert of_kind(objects, "Deployment"), "the chart rendered no Deployment"
    for obj in objects:
        if obj["kind"] in FOREIGN_KINDS:
            continue
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                pytest.fail(
                    f"{obj['kind']}/{obj['metadata']['name']} is invalid for Kubernetes {version}: {e.message} at {list(e.path)}"
                )


def test_schema_validation_catches_unknown_fields() -> None:
    """Guards the test above: strict validation must refuse a misspelt field."""
    bad = json.loads(json.dumps(deployment()))
    bad["spec"]["template"]["spec"]["containers"][0]["securityContex"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, KUBE_VERSIONS[-1], strict=True)


def test_crd_file_is_a_valid_customresourcedefinition() -> None:
    crd_file = CHART / "crds" / "spinruns.spin.dev.yaml"
    if not crd_file.is_file():
        pytest.skip(f"{crd_file.relative_to(REPO)} not generated yet (`make crd`)")
    docs = [d for d in yaml.safe_load_all(crd_file.read_text()) if d]
    assert len(docs) == 1, "crds/spinruns.spin.dev.yaml must hold exactly the SpinRun CRD"
    (crd,) = docs
    for version in KUBE_VERSIONS:
        kubernetes_validate.validate(crd, version, strict=True)
    assert crd["metadata"]["name"] == "spinruns.spin.dev"
    assert crd["spec"]["group"] == "spin.dev" and crd["spec"]["names"]["kind"] == "SpinRun"
    # The RBAC in the chart names the resource and its status subresource.
    assert crd["spec"]["names"]["plural"] == "spinruns"
    assert all("status" in v.get("subresources", {}) for v in crd["spec"]["versions"])


def test_notes_tell_the_next_commands(tmp_path: Path) -> None:
    proc = run_helm(
        "install", "spin-operator", str(CHART), "-n", "spinrun-system", "--dry-run=client", values=with_registry({}),
        tmp=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    notes = proc.stdout.split("NOTES:", 1)[1]
    for expected in (
        "kubectl apply -n NAMESPACE -f examples/spinrun-zephyr-7b.yaml",
        "kubectl get spinruns -n NAMESPACE -w",
        "kubectl wait -n NAMESPACE --for=condition=Complete spinrun/NAME --timeout=72h",
        "kubectl apply --server-side -f charts/spin-operator/crds/",
    ):
        assert expected in notes


# --------------------------------------------------------------------------- values schema

BAD_VALUES = [
    pytest.param({"metrics": {"port": "eighty"}}, "/metrics/port", id="wrong-type"),
    pytest.param({"watchNamespace": ["team-a"]}, "watchNamespace", id="unknown-top-level-key"),
    pytest.param({"images": {"trainer": {"repository": "x/trainer", "tga": "1"}}}, "tga", id="unknown-nested-key"),
    pytest.param({"images": {"pullPolicy": "Sometimes"}}, "/images/pullPolicy", id="bad-enum"),
    pytest.param({"watchNamespaces": ["Team_A"]}, "/watchNamespaces/0", id="bad-namespace-name"),
    pytest.param(
        {"images": {"generator": {"repository": "x/gen:latest"}}},
        "/images/generator/repository",
        id="tag-in-repository",
    ),
    pytest.param({"pytorchjob": {"enabled": "yes"}}, "/pytorchjob/enabled", id="string-for-bool"),
]


@pytest.mark.parametrize("values, named", BAD_VALUES)
@pytest.mark.parametrize("command", ["template", "lint", "install"])
def test_bad_values_are_refused_naming_the_value(
    command: str, values: dict[str, Any], named: str, tmp_path: Path
) -> None:
    args = {
        "template": ["template", "spin-operator", str(CHART)],
        "lint": ["lint", str(CHART)],
        "install": ["install", "spin-operator", str(CHART), "--dry-run=client"],
    }[command]
    proc = run_helm(*args, values=values, tmp=tmp_path)
    assert proc.returncode != 0, f"helm {command} accepted {values}"
    out = proc.stdout + proc.stderr
    assert named in out, f"the error does not name {named}:\n{out}"


def test_servicemonitor_without_metrics_is_refused(tmp_path: Path) -> None:
    proc = run_helm(
        "template",
        str(CHART),
        values=with_registry({"metrics": {"enabled": False, "serviceMonitor": {"enabled": True}}}),
        tmp=tmp_path,
    )
    assert proc.returncode != 0 and "metrics.serviceMonitor.enabled needs metrics.enabled" in proc.stderr


def test_every_value_is_documented_in_the_schema() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert schema.get("additionalProperties") is False

    def walk(vals: dict[str, Any], sch: dict[str, Any], path: str) -> None:
        for key, val in vals.items():
            prop = sch.get("properties", {}).get(key)
            assert prop is not None, f"values.yaml {path}{key} is missing from values.schema.json"
            assert prop.get("description"), f"values.schema.json {path}{key} has no description"
            if isinstance(val, dict) and prop.get("properties"):
                walk(val, prop, f"{path}{key}.")

    walk(values, schema, "")


def test_every_value_has_a_comment_in_values_yaml() -> None:
    """Each chart-defined key (a schema property) has a comment line right above it; the
    contents of free-form Kubernetes objects (resources, securityContext...) need none."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    lines = (CHART / "values.yaml").read_text().splitlines()
    stack: list[tuple[int, dict[str, Any]]] = [(-1, schema)]  # (indent, schema of the block)
    for i, line in enumerate(lines):
        m = re.match(r"^(\s*)([A-Za-z][A-Za-z0-9]*):", line)
        if not m:
            continue
        indent, key = len(m.group(1)), m.group(2)
        while stack[-1][0] >= indent:
            stack.pop()
        prop = stack[-1][1].get("properties", {}).get(key)
        if prop is None:
            continue  # inside a free-form object
        opens_block = line.rstrip().endswith(":") and "properties" in prop
        above = lines[i - 1].strip() if i else ""
        assert above.startswith("#") or opens_block, f"values.yaml line {i + 1} ({key}) has no comment above it"
        stack.append((indent, prop))


# --------------------------------------------------------------------------- the Deployment


def test_deployment_runs_the_spin_operator_console_script() -> None:
    assert container()["command"] == ["spin-operator"]
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts.get("spin-operator") == "spin_operator.main:main"
    main = REPO / "operator" / "spin_operator" / "main.py"
    if main.is_file():
        assert re.search(r"^def main\(", main.read_text(), re.M), f"{main.relative_to(REPO)} defines no main()"


def test_operator_watches_all_namespaces_by_default() -> None:
    args = container()["args"]
    assert "--all-namespaces" in args and "--namespace" not in args
    assert args[args.index("--metrics-port") + 1] == "8080"
    assert args[args.index("--liveness") + 1] == "http://0.0.0.0:8081/healthz"


def test_operator_watches_each_listed_namespace() -> None:
    args = container("namespaced")["args"]
    assert "--all-namespaces" not in args
    watched = [args[i + 1] for i, a in enumerate(args) if a == "--namespace"]
    assert watched == ["team-a", "team-b"]


@pytest.mark.parametrize("variant", ["defaults", "namespaced", "no-metrics", "metrics-servicemonitor"])
def test_the_operator_accepts_the_chart_arguments(variant: str) -> None:
    """The Deployment's args parsed by spin-operator's own argument parser."""
    main = pytest.importorskip("spin_operator.main", reason="the operator extra (kopf) is not installed")
    args = main.build_parser().parse_args(container(variant)["args"])
    clusterwide, namespaces = main.namespaces_from(args, {})
    expected = VARIANTS[variant].get("watchNamespaces", [])
    assert (clusterwide, namespaces) == (not expected, expected)
    metrics = {**{"enabled": True, "port": 8080}, **VARIANTS[variant].get("metrics", {})}
    assert args.metrics_port == (metrics["port"] if metrics["enabled"] else 0)
    assert args.liveness == "http://0.0.0.0:8081/healthz"


def test_deployment_is_a_single_recreated_replica() -> None:
    spec = deployment()["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}


def test_deployment_is_hardened() -> None:
    pod = deployment()["spec"]["template"]["spec"]
    psc, c = pod["securityContext"], container()
    csc = c["securityContext"]
    assert psc["runAsNonRoot"] is True and psc["runAsUser"] == 65532
    assert psc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert csc["runAsNonRoot"] is True
    assert csc["readOnlyRootFilesystem"] is True
    assert csc["allowPrivilegeEscalation"] is False
    assert csc["capabilities"]["drop"] == ["ALL"] and not csc["capabilities"].get("add")
    assert "privileged" not in csc or csc["privileged"] is False
    tmp = next(m for m in c["volumeMounts"] if m["mountPath"] == "/tmp")
    (vol,) = [v for v in pod["volumes"] if v["name"] == tmp["name"]]
    assert "emptyDir" in vol
    assert pod.get("hostNetwork") is not True and pod.get("hostPID") is not True


def test_probes_and_ports_match_the_operator_arguments() -> None:
    c = container("metrics-servicemonitor")
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"metrics": 9090, "health": 8081}
    assert c["args"][c["args"].index("--metrics-port") + 1] == "9090"
    for probe in ("livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    (svc,) = of_kind(rendered("metrics-servicemonitor"), "Service")
    assert svc["spec"]["ports"][0]["targetPort"] == "metrics"
    assert svc["spec"]["selector"].items() <= deployment()["spec"]["template"]["metadata"]["labels"].items()
    (sm,) = of_kind(rendered("metrics-servicemonitor"), "ServiceMonitor")
    assert sm["spec"]["endpoints"][0]["port"] == "metrics" and sm["metadata"]["labels"]["release"] == "prom"
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()


def test_metrics_can_be_turned_off() -> None:
    objects = rendered("no-metrics")
    assert not of_kind(objects, "Service") and not of_kind(objects, "ServiceMonitor")
    args = container("no-metrics")["args"]
    assert args[args.index("--metrics-port") + 1] == "0"  # 0 = spin-operator serves no metrics
    assert not of_kind(rendered("defaults"), "ServiceMonitor")


def test_without_a_registry_the_chart_refuses_to_render_and_says_what_to_set(tmp_path: Path) -> None:
    proc = run_helm("template", "spin-operator", str(CHART), "-n", "spinrun-system")
    assert proc.returncode != 0
    assert "images.registry must be set: no spinrun image is published anywhere" in proc.stderr
    assert "make push-images REGISTRY=" in proc.stderr and "--set images.tag=" in proc.stderr
    one = {"images": {"operator": {"repository": "r.example.com/op"}}}  # the operator alone named: the steps still need one
    proc = run_helm("template", "spin-operator", str(CHART), "-n", "spinrun-system", values=one, tmp=tmp_path)
    assert proc.returncode != 0 and "or set images.generator.repository" in proc.stderr


def test_step_images_reach_the_operator_environment(tmp_path: Path) -> None:
    env = env_of(container())
    assert env["SPIN_GENERATOR_IMAGE"] == f"{TEST_REGISTRY}/spinrun-generator:0.1.0"  # tag = appVersion
    assert env["SPIN_TRAINER_IMAGE"] == f"{TEST_REGISTRY}/spinrun-trainer:0.1.0"
    assert container()["image"] == f"{TEST_REGISTRY}/spinrun-operator:0.1.0"
    assert env["SPIN_IMAGE_PULL_POLICY"] == "IfNotPresent"
    tagged = {"images": {"registry": "r.example.com:5000/team", "tag": "3f2c1ab"}}
    proc = run_helm("template", "spin-operator", str(CHART), "-n", "spinrun-system", values=tagged, tmp=tmp_path)
    assert proc.returncode == 0, proc.stderr
    (dep,) = [d for d in yaml.safe_load_all(proc.stdout) if d and d["kind"] == "Deployment"]
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    assert c["image"] == "r.example.com:5000/team/spinrun-operator:3f2c1ab"
    assert env_of(c)["SPIN_TRAINER_IMAGE"] == "r.example.com:5000/team/spinrun-trainer:3f2c1ab"
    env = env_of(container("custom-images"))
    assert env["SPIN_GENERATOR_IMAGE"] == "registry.example.com:5000/ml/spinrun-generator:1.2.3-cu129"
    assert env["SPIN_TRAINER_IMAGE"] == "registry.example.com:5000/ml/spinrun-trainer@sha256:" + "a" * 64
    assert env["SPIN_IMAGE_PULL_POLICY"] == "Always"
    c = container("custom-images")
    assert c["image"] == "registry.example.com:5000/ml/spinrun-operator:1.2.3" and c["imagePullPolicy"] == "Always"
    assert deployment("custom-images")["spec"]["template"]["spec"]["imagePullSecrets"] == [{"name": "regcred"}]


# --------------------------------------------------------------------------- RBAC


def all_rules(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for o in objects if o["kind"] in ("Role", "ClusterRole") for r in o.get("rules", [])]


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_rbac_grants_no_secrets_and_no_wildcards(variant: str) -> None:
    for rule in all_rules(rendered(variant)):
        assert not {"secrets", "*"} & set(rule["resources"]), rule
        assert "*" not in rule["verbs"] and "*" not in rule["apiGroups"], rule
        assert not rule.get("nonResourceURLs"), rule


def grants(rules: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    return {(g, res, v) for r in rules for g in r["apiGroups"] for res in r["resources"] for v in r["verbs"]}


#: What the operator calls in a watched namespace (operator/spin_operator/kube/client.py, executor.py and
#: kopf), verb by verb; the chart must grant exactly this.
NAMESPACED_GRANTS = (
    {("spin.dev", "spinruns", v) for v in ("get", "list", "watch", "patch")}
    | {("spin.dev", "spinruns/status", "patch"), ("spin.dev", "spinruns/finalizers", "update")}
    | {("batch", "jobs", v) for v in ("list", "watch", "create", "patch", "delete")}
    | {("", r, v) for r in ("persistentvolumeclaims", "configmaps") for v in ("list", "watch", "create")}
    | {("", "services", v) for v in ("list", "watch", "create", "delete")}
    | {("", "pods", v) for v in ("list", "watch")}
    | {("", "events", "create")}
)
CRD_GRANTS = {("apiextensions.k8s.io", "customresourcedefinitions", v) for v in ("list", "watch")}
PYTORCHJOB_GRANTS = {("kubeflow.org", "pytorchjobs", v) for v in ("list", "create", "patch", "delete")}
TRAINJOB_GRANTS = {("trainer.kubeflow.org", "trainjobs", v) for v in ("list", "create", "patch", "delete")}


def test_cluster_wide_mode_uses_one_cluster_role_with_exactly_the_needed_rules() -> None:
    objects = rendered("defaults")
    assert not of_kind(objects, "Role") and not of_kind(objects, "RoleBinding")
    assert grants(operator_rules(objects)) == NAMESPACED_GRANTS | CRD_GRANTS


def test_namespaced_mode_uses_a_role_per_namespace_and_a_minimal_cluster_role() -> None:
    objects = rendered("namespaced")
    roles = {r["metadata"]["namespace"]: r for r in of_kind(objects, "Role")}
    bindings = {b["metadata"]["namespace"]: b for b in of_kind(objects, "RoleBinding")}
    assert set(roles) == set(bindings) == {"team-a", "team-b"}
    for role in roles.values():
        assert grants(role["rules"]) == NAMESPACED_GRANTS
    for b in bindings.values():
        assert b["subjects"] == [{"kind": "ServiceAccount", "name": "spin-operator", "namespace": "spinrun-system"}]
    cluster = [r for r in operator_rules(objects) if not r["_namespace"]]
    # kopf lists/watches namespaces only when it does not watch the whole cluster.
    assert grants(cluster) == CRD_GRANTS | {("", "namespaces", "list"), ("", "namespaces", "watch")}


def test_pytorchjob_rules_only_when_enabled() -> None:
    assert not grants(operator_rules(rendered("defaults"))) & PYTORCHJOB_GRANTS
    assert grants(operator_rules(rendered("pytorchjob"))) >= PYTORCHJOB_GRANTS
    assert env_of(container("pytorchjob"))["SPIN_PYTORCHJOB_ENABLED"] == "true"


def test_trainjob_rules_only_when_enabled() -> None:
    assert not grants(operator_rules(rendered("defaults"))) & TRAINJOB_GRANTS
    assert grants(operator_rules(rendered("trainjob"))) >= TRAINJOB_GRANTS
    assert env_of(container("trainjob"))["SPIN_TRAINJOB_ENABLED"] == "true"
    assert env_of(container("defaults"))["SPIN_TRAINJOB_ENABLED"] == "false"


def test_kueue_workload_rules_only_when_enabled() -> None:
    workload_grants = {("kueue.x-k8s.io", "workloads", v) for v in ("list", "patch")}
    assert not grants(operator_rules(rendered("defaults"))) & workload_grants
    assert grants(operator_rules(rendered("kueue"))) >= workload_grants
    assert env_of(container("kueue"))["SPIN_KUEUE_ENABLED"] == "true"


def test_pod_group_rules_only_when_gang_scheduling_is_enabled() -> None:
    podgroups = {("scheduling.x-k8s.io", "podgroups", "create")}
    assert not grants(operator_rules(rendered("defaults"))) & podgroups
    assert grants(operator_rules(rendered("gang"))) >= podgroups
    assert env_of(container("gang"))["SPIN_GANG_SCHEDULING_ENABLED"] == "true"


def test_bindings_name_the_service_account_the_pod_uses() -> None:
    for variant in ("defaults", "existing-service-account"):
        objects = rendered(variant)
        sa = deployment(variant)["spec"]["template"]["spec"]["serviceAccountName"]
        assert operator_rules(objects, service_account=sa), f"{variant}: no rules bound to {sa}"
    assert not of_kind(rendered("existing-service-account"), "ServiceAccount")


def test_user_roles_aggregate_into_edit_and_view() -> None:
    roles = {r["metadata"]["name"]: r for r in of_kind(rendered("defaults"), "ClusterRole")}
    edit, view = roles["spinrun-edit"], roles["spinrun-view"]
    assert edit["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-edit"] == "true"
    assert edit["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-admin"] == "true"
    assert view["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"] == "true"
    assert ("spin.dev", "spinruns", "create") in grants(edit["rules"])
    assert not {v for _, _, v in grants(view["rules"])} - {"get", "list", "watch"}
    assert "spinrun-edit" not in {
        r["metadata"]["name"] for r in of_kind(rendered("existing-service-account"), "ClusterRole")
    }


def test_request_normalisation_follows_the_api_server() -> None:
    from tests.chart.rbac import Request, normalize

    cases = {
        ("GET", "/apis/spin.dev/v1alpha1/spinruns", "watch=true"): Request("watch", "spin.dev", "spinruns"),
        ("GET", "/apis/spin.dev/v1alpha1/namespaces/a/spinruns", ""): Request("list", "spin.dev", "spinruns", "", "a"),
        ("PATCH", "/apis/spin.dev/v1alpha1/namespaces/a/spinruns/r/status", ""): Request(
            "patch", "spin.dev", "spinruns", "status", "a"
        ),
        ("POST", "/apis/batch/v1/namespaces/a/jobs", ""): Request("create", "batch", "jobs", "", "a"),
        ("DELETE", "/api/v1/namespaces/a/services/s", ""): Request("delete", "", "services", "", "a"),
        ("POST", "/api/v1/namespaces/a/events", ""): Request("create", "", "events", "", "a"),
        ("GET", "/api/v1/namespaces", "watch=1"): Request("watch", "", "namespaces"),
        ("GET", "/api/v1/namespaces/a", ""): Request("get", "", "namespaces"),
        ("GET", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", ""): Request(
            "list", "apiextensions.k8s.io", "customresourcedefinitions"
        ),
    }
    for (method, path, query), expected in cases.items():
        assert normalize({"method": method, "path": path, "query": query}) == expected, (method, path)
    assert normalize({"method": "GET", "path": "/apis/spin.dev/v1alpha1"}) is None
    assert normalize({"verb": "patch", "group": "spin.dev", "resource": "spinruns/status"}) == Request(
        "patch", "spin.dev", "spinruns", "status"
    )


def test_rbac_check_flags_a_forbidden_request() -> None:
    rules = operator_rules(rendered("defaults"))
    missing, _ = check_requests([{"verb": "get", "group": "", "resource": "secrets", "namespace": "a"}], rules)
    assert [str(r) for r in missing] == ["get core/secrets in a"]


# --------------------------------------------------------------------------- Grafana dashboard


def _exported_metrics() -> dict[str, set[str]]:
    """Every sample name the operator exports (metrics.py), with its label names."""
    metrics = pytest.importorskip("spin_operator.metrics", reason="the operator extra is not installed")
    from prometheus_client import REGISTRY
    from prometheus_client.metrics import MetricWrapperBase

    out: dict[str, set[str]] = {}
    for collector in (v for v in vars(metrics).values() if isinstance(v, MetricWrapperBase)):
        labels = set(collector._labelnames)
        base = collector._name
        kinds = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"], "gauge": [""]}[collector._type]
        for suffix in kinds:
            name = base + suffix if not (suffix == "_total" and base.endswith("_total")) else base
            out[name] = labels | ({"le"} if suffix == "_bucket" else set())
    assert "spinrun_runs" in out and REGISTRY is not None
    return out


def test_dashboard_ships_only_when_enabled_with_the_sidecar_label() -> None:
    assert not [o for o in rendered("defaults") if o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("-dashboard")]
    (cm,) = [o for o in rendered("dashboard") if o["kind"] == "ConfigMap"]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1" and cm["metadata"]["namespace"] == "monitoring"
    dash = json.loads(cm["data"]["spinrun.json"])
    assert dash["uid"] == "spinrun" and dash["panels"]
    assert dash == json.loads((CHART / "dashboards" / "spinrun.json").read_text())


def test_every_dashboard_query_uses_metrics_and_labels_the_operator_exports() -> None:
    dash = json.loads((CHART / "dashboards" / "spinrun.json").read_text())
    exported = _exported_metrics()
    titles = {p["title"] for p in dash["panels"]}
    assert {"SpinRuns by phase", "Step duration (p50, p95)", "Step retries", "Training progress per run",
            "Running step: share done and ETA", "Training loss and reward margin (running step)"} <= titles
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    exprs.append(next(v for v in dash["templating"]["list"] if v["name"] == "namespace")["query"]["query"])
    used = 0
    for expr in exprs:
        names = re.findall(r"\bspinrun_[a-z_]+", expr)
        assert names, f"no spinrun metric in {expr!r}"
        for name in names:
            assert name in exported, f"{name} (in {expr!r}) is not exported by the operator"
            used += 1
        for group in re.findall(r"by \(([^)]*)\)", expr):  # aggregation labels exist on the metric
            for label in (x.strip() for x in group.split(",")):
                assert any(label in exported[n] for n in names), f"label {label} of {expr!r} is on none of {names}"
        for label in re.findall(r"\{(\w+)=~?", expr):  # selector labels too
            assert all(label in exported[n] for n in names), f"selector label {label} missing in {expr!r}"
        for label in re.findall(r"\{\{(\w+)\}\}", " ".join(t.get("legendFormat", "") for p in dash["panels"] for t in p["targets"])):
            assert any(label in labels for labels in exported.values()), label
    assert used >= 8


# --------------------------------------------------------------------------- Dockerfiles

DOCKERFILES = sorted((REPO / "images").glob("*.Dockerfile"))


def find_hadolint() -> str | None:
    return shutil.which("hadolint") or (
        str(REPO / ".tools" / "hadolint") if (REPO / ".tools" / "hadolint").is_file() else None
    )


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments), continuation lines joined, comments dropped (as Docker does)."""
    out: list[tuple[str, str]] = []
    buf: list[str] = []
    for line in path.read_text().splitlines():
        s = line.strip()
        if s.startswith("#") or (not s and not buf):
            continue
        if s.endswith("\\"):
            buf.append(s[:-1].strip())
            continue
        buf.append(s)
        word, _, rest = " ".join(x for x in buf if x).partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = []
    return out


def dockerignore_allows(rel: str) -> bool:
    """Whether the root .dockerignore sends `rel` to the builder (last matching pattern wins)."""
    patterns = [
        p.strip() for p in (REPO / ".dockerignore").read_text().splitlines() if p.strip() and not p.startswith("#")
    ]
    included = True
    for pat in patterns:
        negate = pat.startswith("!")
        pat = pat.lstrip("!").rstrip("/")
        if fnmatch.fnmatch(rel, pat) or fnmatch.fnmatch(rel.split("/")[0], pat):
            included = negate
    return included


def test_there_are_three_images() -> None:
    assert {p.name for p in DOCKERFILES} == {"operator.Dockerfile", "generator.Dockerfile", "trainer.Dockerfile"}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_passes(dockerfile: Path) -> None:
    hadolint = find_hadolint()
    if hadolint is None:
        pytest.skip("hadolint not found on PATH or in .tools/: run `make tools`")
    proc = subprocess.run([hadolint, str(dockerfile)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_copy_sources_exist_and_reach_the_build_context(dockerfile: Path) -> None:
    copies = [args for ins, args in dockerfile_instructions(dockerfile) if ins in ("COPY", "ADD")]
    assert copies, f"{dockerfile.name} copies nothing"
    for args in copies:
        words = [w for w in args.split() if not w.startswith("--")]
        if "--from=" in args:
            continue  # from another stage
        for src in words[:-1]:
            assert (REPO / src).exists(), f"{dockerfile.name}: COPY source {src} does not exist in the repository"
            assert dockerignore_allows(src.rstrip("/")), (
                f"{dockerfile.name}: COPY source {src} is excluded by .dockerignore"
            )


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_images_are_pinned_and_non_root(dockerfile: Path) -> None:
    ins = dockerfile_instructions(dockerfile)
    args = dict(re.match(r"(\w+)=(\S+)", a).groups() for i, a in ins if i == "ARG" and "=" in a)
    for i, a in ins:
        if i != "FROM":
            continue
        image = a.split()[0]
        image = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), image)
        if image in {a.split()[-1] for i, a in ins if i == "FROM" and " AS " in a.upper()}:
            continue  # an earlier stage
        assert ":" in image.split("/")[-1] and not image.endswith(":latest"), (
            f"{dockerfile.name}: base {image} is not pinned by tag"
        )
    users = [a for i, a in ins if i == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), f"{dockerfile.name} must end as a non-root USER"
    text = dockerfile.read_text()
    assert not re.search(r"(?i)(token|password|secret)\s*=", text), f"{dockerfile.name} seems to set a secret"


def test_operator_image_installs_only_the_operator_extra() -> None:
    text = (REPO / "images" / "operator.Dockerfile").read_text()
    assert '".[operator]"' in text
    assert not re.search(r"\.\[[^\]]*(train|deepspeed|vllm)", text)
    assert re.search(r'ENTRYPOINT \["spin-operator"\]', text)
