"""The `spin` of the e2e tests' `instant` image: `spin init-run` is the real one; every step
(`spin generate|convert|train|evaluate`, or `spin torchrun -m spin_runtime.cli train ...`) writes its
completion marker at once instead of doing the work, unless the test's control file says
otherwise. The pods themselves are real: scheduled, run by the process kubelet, counted by the
real Job controller.

The control folder (mounted at /spin-instant by the kubelet's image configuration) holds
`control.json`: {"hold": ["it0-train", "it0-gen/1", ...]: run until removed from the list (a step, or
one index of it),
"fail": {"it0-gen/1": n}: fail the first n runs of that index (exit 1),
"exit": {"it0-train/0": 78}: exit with that code every time,
"real": ["it0-train"]: run that step for real, through the same command line (`spin torchrun` included)},
and gets `starts.jsonl`, one line per step start: {"job": "<run>-it0-gen", "index": 1}."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import sys
import time
from pathlib import Path

CONTROL = Path(os.environ.get("SPIN_INSTANT_CONTROL", "/spin-instant"))
SHORT = {"generate": "gen", "convert": "convert", "train": "train", "evaluate": "eval"}


def _control() -> dict:  # type: ignore[type-arg]
    try:
        return json.loads((CONTROL / "control.json").read_text() or "{}")
    except (OSError, ValueError):
        return {}


def _take_failure(key: str) -> bool:
    """Whether this run of `key` fails (counted across pods, under a lock)."""
    with open(CONTROL / "counts.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        counts_file = CONTROL / "counts.json"
        counts = json.loads(counts_file.read_text()) if counts_file.exists() else {}
        allowed = int(_control().get("fail", {}).get(key, 0))
        used = int(counts.get(key, 0))
        if used >= allowed:
            return False
        counts[key] = used + 1
        counts_file.write_text(json.dumps(counts))
        return True


def step(argv: list[str]) -> int:
    name = argv[0]
    args = dict(zip(argv[1::2], argv[2::2], strict=False))
    run_dir = Path(args["--run-dir"])
    k = int(args["--iteration"])
    index = int(os.environ.get("JOB_COMPLETION_INDEX", os.environ.get("PET_NODE_RANK", "0")) or 0)
    suffix = f"it{k}-{SHORT[name]}"
    key = f"{suffix}/{index}"
    with open(CONTROL / "starts.jsonl", "a") as starts:
        starts.write(json.dumps({"job": f"{run_dir.name}-{suffix}", "index": index, "pid": os.getpid()}) + "\n")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    while {suffix, key} & set(_control().get("hold", [])):
        time.sleep(0.1)
    code = _control().get("exit", {}).get(key)
    if code is not None:
        print(f"instant: {key} exits {code} (control)", flush=True)
        return int(code)
    if _take_failure(key):
        print(f"instant: {key} fails (control)", flush=True)
        return 1
    from spin_runtime.plan import stages
    from spin_runtime.store import rundir

    run = rundir.load_run(run_dir)
    if name == "train" and index != 0:
        return 0
    shards = run.spec.generation.shards
    s = stages.Step(k, "generate", index, shards) if name == "generate" else stages.Step(k, name)  # type: ignore[arg-type]
    rundir.mark_done(run_dir, run, s, {"by": "instant"})
    print(f"instant: {s.key} done", flush=True)
    return 0


def main(argv: list[str]) -> int:
    # `[spin] torchrun [options] -m spin_runtime.cli train ...` or `spin <command> ...`
    original = argv
    launched = argv[:1] == ["torchrun"] or argv[:2] == ["spin", "torchrun"]
    argv = argv[argv.index("-m") + 2:] if launched else argv[1:]
    if argv[:1] and argv[0] in SHORT and "--iteration" in argv:
        suffix = f"it{argv[argv.index('--iteration') + 1]}-{SHORT[argv[0]]}"
        if suffix in _control().get("real", []):
            real = original[1:] if original[0] == "spin" else ["torchrun", *original[1:]]
            os.execv(sys.executable, [sys.executable, "-m", "spin_runtime.cli", *real])
    if argv[:1] == ["init-run"]:
        from spin_runtime.cli import main as spin

        return int(spin(argv) or 0)
    return step(argv)


if __name__ == "__main__":
    sys.exit(main([Path(sys.argv[1]).name, *sys.argv[2:]]))
