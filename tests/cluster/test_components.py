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
