"""Processes the cluster starts and must stop: each in a session of its own (so that it outlives
the command that started it and a stop reaches its children), recorded with its start time (a
recycled pid is never mistaken for it), stopped with SIGTERM, then SIGKILL after a grace period."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class Proc:
    """A started process: its name, pid, start time in clock ticks since boot (/proc/PID/stat), and
    the command line it was started with (to start it again: `controlplane.crashed`)."""

    name: str
    pid: int
    started: int
    argv: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "argv", tuple(self.argv))  # a list when read back from JSON

    def alive(self) -> bool:
        return start_ticks(self.pid) == self.started

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def start_ticks(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat (the start time), or None when there is no such process."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if fields[0] == "Z":  # a zombie has ended
        return None
    return int(fields[19])


def session_of(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[3])
    except (OSError, IndexError, ValueError):
        return None


def spawn(name: str, argv: Sequence[str], log: Path, env: Mapping[str, str] | None = None,
          cwd: Path | None = None) -> tuple[Proc, subprocess.Popen[bytes]]:
    """Start `argv` in a new session, its output appended to `log`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(list(argv), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=dict(env) if env is not None else None, cwd=cwd, start_new_session=True)
    ticks = None
    for _ in range(100):
        ticks = start_ticks(proc.pid)
        if ticks is not None or proc.poll() is not None:
            break
        time.sleep(0.01)
    return Proc(name, proc.pid, ticks or 0, tuple(argv)), proc


def sessions_members(sids: set[int]) -> list[int]:
    """Every live process whose session is one of `sids` (zombies count as ended)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*"):
        pid = int(stat.name)
        if session_of(pid) in sids and start_ticks(pid) is not None:
            out.append(pid)
    return out


def stop(procs: Sequence[Proc], grace: float = 10.0) -> None:
    """SIGTERM every process of each one's session, wait up to `grace` seconds, SIGKILL what is left."""
    live = [p for p in procs if p.alive()]
    sids = {p.pid for p in live}  # each was started as the leader of its own session
    members = sessions_members(sids)
    for pid in members:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and sessions_members(sids):
        time.sleep(0.05)
    _kill_sessions(sids)


def kill(procs: Sequence[Proc]) -> None:
    """SIGKILL every process of each one's session at once (a crash: no shutdown of any kind)."""
    _kill_sessions({p.pid for p in procs if p.alive()})


def _kill_sessions(sids: set[int]) -> None:
    """SIGKILL every member of these sessions and wait (up to 5 s) until none is left."""
    for pid in sessions_members(sids):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and sessions_members(sids):
        time.sleep(0.05)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])
