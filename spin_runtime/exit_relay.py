"""`spin torchrun ARGS...`: torchrun, exiting with its workers' deterministic exit code. torchrun
itself exits 1 whatever a worker exited with, so a pod's podFailurePolicy could never see a bad
spec (78), bad data (65), a bad model (66) or a usage error (2) and would retry an 8-GPU training
that can only fail again. Each worker records its exit code in a folder this wrapper gives it
(`SPIN_EXIT_CODE_DIR`); torchrun's failure becomes the workers' code when one of them exited
with a deterministic one. SIGTERM and SIGINT are passed on to torchrun (a pod's deletion)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from spin_runtime.errors import DETERMINISTIC_EXIT_CODES, EXIT_BAD_DATA, EXIT_BAD_MODEL, EXIT_BAD_SPEC, EXIT_USAGE

#: The folder where each worker writes its exit code (set by the wrapper for its torchrun).
EXIT_CODE_DIR_ENV = "SPIN_EXIT_CODE_DIR"
#: Which deterministic code wins when workers differ: the one that says most about the cause.
_PRECEDENCE = (EXIT_BAD_SPEC, EXIT_BAD_MODEL, EXIT_BAD_DATA, EXIT_USAGE)


def record_exit(code: int, env: Mapping[str, str] | None = None) -> None:
    """Write this worker's exit code where the wrapper reads it (nothing outside `spin torchrun`)."""
    folder = (os.environ if env is None else env).get(EXIT_CODE_DIR_ENV)
    if not folder or code == 0:
        return
    path = Path(folder) / f"worker-{os.getpid()}"
    tmp = path.with_suffix(".tmp")
    try:
        tmp.write_text(str(int(code)))
        os.replace(tmp, path)
    except OSError:
        pass  # the wrapper then reports torchrun's own code: a retry, never a lost failure


def relayed_code(torchrun_code: int, worker_codes: Iterable[int]) -> int:
    """The wrapper's exit code: 0 on success; the most telling deterministic code a worker
    exited with; else torchrun's own (a signal as 128 + its number, as a shell reports it)."""
    if torchrun_code == 0:
        return 0
    codes = set(worker_codes) & set(DETERMINISTIC_EXIT_CODES)
    for code in _PRECEDENCE:
        if code in codes:
            return code
    return 128 - torchrun_code if torchrun_code < 0 else torchrun_code


def _worker_codes(folder: Path) -> list[int]:
    codes = []
    for path in folder.glob("worker-*"):
        if path.suffix == ".tmp":
            continue
        try:
            codes.append(int(path.read_text().strip()))
        except (OSError, ValueError):
            continue
    return codes


def run_torchrun(args: Sequence[str]) -> int:
    """Run `torchrun ARGS...` with the exit-code folder, passing SIGTERM/SIGINT on; its relayed code."""
    with tempfile.TemporaryDirectory(prefix="spin-exit-") as folder:
        env = {**os.environ, EXIT_CODE_DIR_ENV: folder}
        proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", *args], env=env)
        previous = {sig: signal.signal(sig, lambda s, _f: proc.send_signal(s)) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            code = proc.wait()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        relayed = relayed_code(code, _worker_codes(Path(folder)))
    if relayed != code and relayed in DETERMINISTIC_EXIT_CODES:
        print(f"spin torchrun: a worker exited with {relayed} (torchrun: {code}); exiting {relayed} so the Job "
              "does not retry what cannot succeed", file=sys.stderr)
    return relayed
