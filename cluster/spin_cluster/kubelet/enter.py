"""Starts one container of the process kubelet: run as `python -I enter.py CONFIG.json` (root), it
joins the pod's network namespace, takes the pod's hostname (a UTS namespace), makes a private mount namespace whose root is an overlay of the
host's root (writes land in the container's own upper folder; read-only when the container asks),
with a fresh /run and /dev, the pod's volumes and kubelet-managed files (/etc/hosts, /etc/resolv.conf,
/etc/hostname) bind-mounted at their mount paths, then chroots, takes the container's user, groups
and no_new_privs, and execs the command. The standard library only: this runs before anything else.

CONFIG: {netns, hostname, upper, work, merged, readonly, traversable: [host dirs the user must be able to
enter], mounts: [{source, target, readonly}], image_paths: [host folders the image is made of, bound again where a volume hides them], uid, gid, groups, no_new_privs, cwd, argv, env,
status: a host file where a start error is written}."""

from __future__ import annotations

import ctypes
import json
import os
import stat
import sys

CLONE_NEWNS = 0x00020000
CLONE_NEWNET = 0x40000000
CLONE_NEWUTS = 0x04000000
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
PR_SET_NO_NEW_PRIVS = 38
#: Exit code of a container that could not be started (as container runtimes report it).
START_ERROR = 128

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    _check(_libc.mount(source.encode() if source else None, target.encode(), fstype.encode() if fstype else None,
                       flags, data.encode() if data else None), f"mount {source} on {target}")


def secure_join(root: str, path: str) -> str:
    """`path` inside `root`, following symlinks as the container would see them (an absolute link
    target starts again at `root`, `..` never climbs above it)."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    resolved: list[str] = []
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = os.path.join(root, *resolved, part)
        if os.path.islink(candidate):
            hops += 1
            if hops > 40:
                raise OSError(f"too many symlinks resolving {path}")
            target = os.readlink(candidate)
            if target.startswith("/"):
                resolved = []
            parts = [p for p in target.split("/") if p not in ("", ".")] + parts
            continue
        resolved.append(part)
    return os.path.join(root, *resolved)


def _under(path: str, mount_path: str) -> bool:
    root = mount_path.rstrip("/") or "/"
    return path == root or path.startswith(root.rstrip("/") + "/")


def _mountpoint(merged: str, target: str, is_file: bool) -> str:
    where = secure_join(merged, target)
    if is_file:
        os.makedirs(os.path.dirname(where), exist_ok=True)
        if not os.path.exists(where):
            with open(where, "a"):
                pass
    else:
        os.makedirs(where, exist_ok=True)
    return where


def _dev(dev: str) -> None:
    """A container's /dev: a tmpfs with the usual devices bound from the host, its own /dev/shm."""
    mount("tmpfs", dev, "tmpfs", MS_NOSUID, "mode=755")
    for name in ("null", "zero", "full", "random", "urandom", "tty"):
        node = os.path.join(dev, name)
        with open(node, "a"):
            pass
        mount(f"/dev/{name}", node, None, MS_BIND)
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                         ("stderr", "/proc/self/fd/2"), ("ptmx", "pts/ptmx")):
        os.symlink(target, os.path.join(dev, name))
    for name in ("shm", "pts", "mqueue"):
        os.makedirs(os.path.join(dev, name))
    mount("shm", os.path.join(dev, "shm"), "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")


def setup(cfg: dict) -> None:  # type: ignore[type-arg]
    with open(cfg["netns"]) as ns:
        _check(_libc.setns(ns.fileno(), CLONE_NEWNET), "setns")
    _check(_libc.unshare(CLONE_NEWNS | CLONE_NEWUTS), "unshare")
    if cfg.get("hostname"):
        name = cfg["hostname"].encode()
        _check(_libc.sethostname(name, len(name)), "sethostname")
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    merged = cfg["merged"]
    mount("overlay", merged, "overlay", 0, f"lowerdir=/,upperdir={cfg['upper']},workdir={cfg['work']}")
    for d in ("proc", "sys"):
        mount(f"/{d}", secure_join(merged, d), None, MS_BIND | MS_REC)
    _dev(secure_join(merged, "dev"))
    # an image's /run starts empty (the host's holds its namespaces and sockets); /tmp stays the
    # root's: pods mount an emptyDir there, and the project's environment may live under it
    fresh = [secure_join(merged, "run")]
    for where in fresh:
        os.makedirs(where, exist_ok=True)
        mount("tmpfs", where, "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")
    for path in cfg.get("traversable", []):  # the image's directories the container's user must enter
        here = merged
        for part in [p for p in path.split("/") if p]:
            here = os.path.join(here, part)
            if os.path.isdir(here) and not os.path.islink(here):
                mode = os.stat(here).st_mode
                if not mode & stat.S_IXOTH:
                    os.chmod(here, stat.S_IMODE(mode) | stat.S_IXOTH)
    targets = [_mountpoint(merged, m["target"], os.path.isfile(m["source"])) for m in cfg["mounts"]]
    if cfg.get("readonly"):  # before the binds: the volumes stay as they are
        mount(None, merged, None, MS_REMOUNT | MS_RDONLY)
        for where in fresh:
            mount(None, where, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
    for m, where in zip(cfg["mounts"], targets, strict=True):
        mount(m["source"], where, None, MS_BIND | MS_REC)
        if m.get("readonly"):
            mount(None, where, None, MS_REMOUNT | MS_BIND | MS_RDONLY)
    for host in cfg.get("image_paths", []):  # what a volume hides of the image is the image's again
        if any(_under(host, m["target"]) for m in cfg["mounts"]) and os.path.isdir(host):
            where = secure_join(merged, host)
            os.makedirs(where, exist_ok=True)
            mount(host, where, None, MS_BIND | MS_REC)
            mount(None, where, None, MS_REMOUNT | MS_BIND | MS_RDONLY)
    os.chdir(merged)
    os.chroot(".")
    os.chdir(cfg.get("cwd") or "/")
    os.setgroups(cfg.get("groups", []))
    os.setgid(cfg.get("gid", 0))
    os.setuid(cfg.get("uid", 0))
    if cfg.get("no_new_privs"):
        _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")
    os.umask(0o022)


def main() -> None:
    with open(sys.argv[1]) as f:
        cfg = json.load(f)
    status = open(cfg["status"], "w")  # noqa: SIM115 - kept open across the chroot to report a start error
    try:
        setup(cfg)
        argv, env = cfg["argv"], cfg["env"]
        os.execvpe(argv[0], argv, env)
    except BaseException as e:  # the container never started: say why, as a runtime's StartError
        status.write(json.dumps({"reason": "StartError", "message": f"{type(e).__name__}: {e}"}))
        status.flush()
        print(f"spin-kubelet: cannot start the container: {e}", file=sys.stderr, flush=True)
        os._exit(START_ERROR)


if __name__ == "__main__":
    main()
