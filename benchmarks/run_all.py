"""`make bench`: every benchmark in one go, results in benchmarks/results/.

--quick (the default of `make bench`) keeps the whole set under ~20 minutes on 2 CPU cores:
generation on 64 prompts, 3 training steps per configuration, 50 SpinRuns × 1 iteration on the
real control plane of tests/kube.py (generation and operator tables under results/quick/; the
training table is the same size either way). Without --quick the full sizes run (200 SpinRuns ×
3 iterations, the replication).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="the sizes that fit ~15 minutes on 2 cores")
    ap.add_argument("--only", default="", help="comma-separated subset: generate,train,operator,replicate")
    args = ap.parse_args()
    py = sys.executable
    # The quick sizes write under results/quick/, so they never overwrite the full-size tables.
    out = ["--out", str(HERE / "results" / "quick")] if args.quick else []
    jobs = {
        "generate": [py, str(HERE / "bench_generate.py"), "--sets", "addition" if args.quick else "mixed,addition", *out],
        "train": [py, str(HERE / "bench_train.py"), "--steps", "3"],
        "operator": [py, str(HERE / "operator_scale_real.py"), "--runs", "50" if args.quick else "200",
                     "--iterations", "1" if args.quick else "3", *out],
        "replicate": [py, str(HERE / "replicate.py")],
    }
    if args.quick:
        jobs.pop("replicate")
    chosen = [j for j in args.only.split(",") if j] or list(jobs)
    failed = []
    for name in chosen:
        t0 = time.time()
        print(f"== {name}: {' '.join(jobs[name][1:])}", flush=True)
        if subprocess.run(jobs[name]).returncode != 0:
            failed.append(name)
        print(f"== {name}: {time.time() - t0:.0f}s", flush=True)
    print("results in", HERE / "results")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
