"""The pinned versions come from the committed go.mod files; the version flags follow hack/lib/version.sh."""

from __future__ import annotations

from pathlib import Path

import pytest

from spin_cluster.components import COMPONENTS, ETCD, KUBERNETES, KUEUE, KWOK, required_version, version_ldflags


def test_versions_are_read_from_the_committed_go_mod_files() -> None:
    assert KUBERNETES.version.startswith("v1.3")
    assert ETCD.version.startswith("v3.")
    assert KWOK.version.startswith("v0.") and KUEUE.version.startswith("v0.")
    for component in COMPONENTS:
        assert (component.go_dir / "go.sum").is_file(), f"{component.name}: go.sum must be committed (pinned build)"


def test_every_kubernetes_staging_module_is_replaced_with_the_matching_release() -> None:
    text = (KUBERNETES.go_dir / "go.mod").read_text()
    minor = KUBERNETES.version.removeprefix("v1.")
    replaced = [line.split() for line in text.splitlines() if "=> k8s.io/" in line]
    assert len(replaced) >= 30
    assert all(parts[-1] == f"v0.{minor}" for parts in replaced), replaced


def test_cache_key_changes_with_the_pins(tmp_path: Path) -> None:
    key = KUBERNETES.key
    assert key.startswith(f"kubernetes-{KUBERNETES.version}-") and key == KUBERNETES.key


def test_a_require_line_alone_or_in_a_block_is_found(tmp_path: Path) -> None:
    mod = tmp_path / "go.mod"
    mod.write_text("module x\n\nrequire (\n\tgithub.com/a/b v1.2.3 // indirect\n\tk8s.io/kubernetes v1.37.2\n)\n")
    assert required_version(mod, "k8s.io/kubernetes") == "v1.37.2"
    mod2 = tmp_path / "b" / "go.mod"
    mod2.parent.mkdir()
    mod2.write_text("module y\nrequire sigs.k8s.io/kwok v0.8.0\n")
    assert required_version(mod2, "sigs.k8s.io/kwok") == "v0.8.0"
    with pytest.raises(ValueError, match="does not require"):
        required_version(mod2, "k8s.io/kubernetes")


def test_version_ldflags_name_both_version_packages() -> None:
    flags = " ".join(version_ldflags("v1.37.2"))
    for package in ("k8s.io/client-go/pkg/version", "k8s.io/component-base/version"):
        assert f"-X '{package}.gitVersion=v1.37.2'" in flags
        assert f"-X '{package}.gitMajor=1'" in flags and f"-X '{package}.gitMinor=37'" in flags
    with pytest.raises(ValueError):
        version_ldflags("v1.37.2-dirty")


@pytest.mark.parametrize(("cached", "keep", "cleaned"), [(False, "", True), (False, "1", False), (True, "", False)])
def test_the_go_build_cache_is_emptied_after_a_build(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, cached: bool,
                                                     keep: str, cleaned: bool) -> None:
    """Go's build cache (gigabytes) only speeds up a rebuild after a pin changes: emptied after a build."""
    from spin_cluster import build

    calls: list[list[str]] = []
    monkeypatch.setattr(build, "built", lambda component: tmp_path if cached else None)
    monkeypatch.setattr(build, "ensure", lambda component, log=None: tmp_path)
    monkeypatch.setattr(build, "go_binary", lambda: "go")
    monkeypatch.setattr(build.subprocess, "run", lambda argv, **kw: calls.append(argv))
    monkeypatch.setenv(build.KEEP_GOCACHE_ENV, keep)
    binaries = build.ensure_all([KWOK])
    assert binaries == {"kwok": tmp_path / "kwok", "kwok-stages": tmp_path / "kwok-stages"}
    assert calls == ([["go", "clean", "-cache"]] if cleaned else [])


def test_jobset_is_pinned_to_the_version_trainer_requires() -> None:
    from spin_cluster.components import JOBSET, TRAINER

    assert JOBSET.version == required_version(TRAINER.go_dir / "go.mod", JOBSET.module)


def test_json_patches_add_replace_and_remove_as_kustomize_does() -> None:
    from spin_cluster.trainer import json_patch

    doc = {"metadata": {"name": "a"}, "webhooks": [{"name": "x"}, {"name": "y"}]}
    out = json_patch(doc, [{"op": "replace", "path": "/metadata/name", "value": "b"},
                           {"op": "add", "path": "/webhooks/1/objectSelector", "value": {"k": 1}},
                           {"op": "add", "path": "/webhooks/-", "value": {"name": "z"}},
                           {"op": "remove", "path": "/webhooks/0"}])
    assert out == {"metadata": {"name": "b"}, "webhooks": [{"name": "y", "objectSelector": {"k": 1}}, {"name": "z"}]}
    assert doc["metadata"]["name"] == "a", "the input is left as it was"


def test_webhooks_call_a_url_on_loopback_and_jobsets_pod_webhooks_see_only_jobset_pods() -> None:
    """Read from the pinned modules' manifests (Go's module cache; downloaded when absent)."""
    from spin_cluster import build
    from spin_cluster.trainer import CONTROLLERS, JOBSET_MANAGER, webhook_configurations

    for controller in CONTROLLERS:
        docs = webhook_configurations(
            controller, build.module_source(controller.component), "https://127.0.0.1:9443", b"CA")
        assert docs, controller.name
        hooks = [h for d in docs for h in d["webhooks"]]
        assert all(set(h["clientConfig"]) == {"url", "caBundle"} and h["clientConfig"]["url"].startswith("https://127.0.0.1:9443/")
                   for h in hooks)
        if controller is JOBSET_MANAGER:
            pods = [h for h in hooks if h["rules"][0]["resources"] == ["pods"]]
            assert len(pods) == 2 and all(h["objectSelector"]["matchExpressions"][0]["key"] == "jobset.sigs.k8s.io/jobset-name"
                                          for h in pods)
