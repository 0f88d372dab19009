"""scripts/build_images.py's decisions that need no buildah: the Debian mirror taken from the
machine's apt sources, the host's pip settings carried into builds, and the empty mount targets
removed from a built image."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.images.buildah import build_script

b = build_script()


def test_mirror_is_the_apt_source_of_the_plain_suite_in_deb822(tmp_path: Path) -> None:
    sources = tmp_path / "debian.sources"
    sources.write_text(
        "Types: deb\n# a comment\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n"
        "Components: main\n\nTypes: deb\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\n"
        "Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
    )
    assert b.debian_mirror([sources]) == "http://mirror.example/debian"


def test_mirror_from_a_one_line_sources_list_with_options(tmp_path: Path) -> None:
    lst = tmp_path / "sources.list"
    lst.write_text("# deb http://old.example/debian bookworm main\n"
                   "deb [signed-by=/k.gpg arch=amd64] http://mirror.example/debian bookworm main\n")
    assert b.debian_mirror([tmp_path / "missing.sources", lst]) == "http://mirror.example/debian"


def test_no_bookworm_source_is_an_error_naming_what_to_add(tmp_path: Path) -> None:
    lst = tmp_path / "sources.list"
    lst.write_text("deb http://mirror.example/debian trixie main\n")
    with pytest.raises(b.BuildError, match="no apt source for the Debian suite 'bookworm'"):
        b.debian_mirror([lst])


def test_pip_settings_put_the_environment_over_files_under_global() -> None:
    listing = ("global.index-url='https://files.example/simple'\nglobal.timeout='60'\n"
               ":env:.timeout='180'\ninstall.no-compile='1'\nnot a setting\n")
    assert b.host_pip_settings(listing) == {
        "global": {"index-url": "https://files.example/simple", "timeout": "180"},
        "install": {"no-compile": "1"},
    }


def test_local_paths_of_pip_settings_mount_an_index_with_its_files(tmp_path: Path) -> None:
    (tmp_path / "pypi" / "simple").mkdir(parents=True)
    (tmp_path / "wheels").mkdir()
    cert = tmp_path / "ca.crt"
    cert.write_text("")
    settings = {"global": {
        "extra-index-url": f"file://{tmp_path}/pypi/simple https://files.example/simple",
        "find-links": f"{tmp_path}/wheels {tmp_path}/gone",
        "cert": str(cert),
        "timeout": "180",
    }}
    assert b.local_paths(settings) == sorted([tmp_path / "pypi", tmp_path / "wheels", cert])


def test_only_the_empty_mount_targets_a_build_made_are_removed(tmp_path: Path) -> None:
    root, base = tmp_path / "image", tmp_path / "base"
    for d in ("etc", "opt", "srv/data"):
        (base / d).mkdir(parents=True)
        (root / d).mkdir(parents=True)
    (root / "etc" / "pip.conf").write_text("")  # target of -v pip.conf:/etc/pip.conf
    (root / "opt" / "wheels").mkdir()  # target of -v /opt/wheels:/opt/wheels
    (root / "etc" / "xdg" / "pip").mkdir(parents=True)  # target and parents of -v .../constraints.txt
    (root / "etc" / "xdg" / "pip" / "constraints.txt").write_text("")
    (root / "opt" / "app").mkdir()
    (root / "opt" / "app" / "x").write_text("kept: the build wrote it")
    removed = b.remove_mountpoints(root, base, [Path("/etc/pip.conf"), Path("/opt/wheels"),
                                                Path("/etc/xdg/pip/constraints.txt"), Path("/opt/app"), Path("/srv/data")])
    assert sorted(map(str, removed)) == ["/etc/pip.conf", "/etc/xdg", "/etc/xdg/pip", "/etc/xdg/pip/constraints.txt",
                                         "/opt/wheels"]
    assert not (root / "etc" / "xdg").exists() and (root / "opt" / "app" / "x").exists() and (root / "srv" / "data").is_dir()


def test_pushed_images_take_the_names_the_chart_derives_from_registry_and_tag(tmp_path: Path) -> None:
    assert b.pushed_ref("registry.example.com:5000/ml/", "trainer", "3f2c1ab") == \
        "registry.example.com:5000/ml/spinrun-trainer:3f2c1ab"
    argv = b.push_command(b.IMAGES["operator"], "r.example.com/ml/spinrun-operator:t", tmp_path / "d", insecure=True)
    assert argv == ["buildah", "push", "--tls-verify=false", "--digestfile", str(tmp_path / "d"),
                    "localhost/spinrun-operator:local", "docker://r.example.com/ml/spinrun-operator:t"]
    assert "--tls-verify=false" not in b.push_command(b.IMAGES["operator"], "r/x:t", tmp_path / "d", insecure=False)
    hint = b.install_hint("r.example.com/ml", "3f2c1ab", {"operator": "sha256:" + "a" * 64})
    assert "--set images.registry=r.example.com/ml --set images.tag=3f2c1ab" in hint
    assert "--set images.operator.tag=sha256:" + "a" * 64 in hint


def test_the_release_tag_is_the_commit_and_never_reused_for_uncommitted_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    answers = {"rev-parse": "0123456789ab\n", "status": ""}
    monkeypatch.setattr(b, "run", lambda argv, **_: answers[argv[1]])
    monkeypatch.setattr(b, "inputs_hash", lambda image: f"hash-of-{image.name}")
    assert b.release_tag(["operator"]) == "0123456789ab"
    answers["status"] = " M spin_runtime/cli.py\n"
    dirty = b.release_tag(["operator"])
    assert dirty.startswith("0123456789ab-dirty-") and len(dirty) == len("0123456789ab-dirty-") + 8
    monkeypatch.setattr(b, "inputs_hash", lambda image: f"other-{image.name}")
    assert b.release_tag(["operator"]) != dirty, "other contents, another tag"
