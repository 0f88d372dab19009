"""Scale benchmark of the operator: one `spin-operator` process against kmock's emulator
with N SpinRuns × K iterations whose Jobs complete instantly (the e2e harness's kubelet).

Measures: time until every run is Complete, the delay from a Job's completion to the
creation of the run's next Job (median/p99), the operator's peak RSS, and the API requests
the operator makes per iteration. Writes JSON + markdown to benchmarks/results/.

    .venv/bin/python benchmarks/operator_scale.py --runs 500 --iterations 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kubernetes import client  # noqa: E402

from spin_runtime.api.spec import GROUP, PLURAL, VERSION  # noqa: E402
from tests.operator.fixtures import make_body  # noqa: E402
from tests.operator.harness import Emulator, Kubelet, harness_client  # noqa: E402


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=500)
    ap.add_argument("--iterations", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="spin-scale-"))
    emu = Emulator().start()
    kubeconfig = emu.kubeconfig(tmp / "kubeconfig.yaml")
    kubelet = Kubelet(emu.url, tmp / "data", mode="instant", markers=False).start(watch=True)
    env = dict(os.environ, KUBECONFIG=str(kubeconfig), SPIN_RESYNC_SECONDS="60")
    log = open(tmp / "operator.log", "wb")  # noqa: SIM115 - lives as long as the operator process
    op = subprocess.Popen(
        [str(Path(sys.executable).parent / "spin-operator"), "--all-namespaces", "--metrics-port", "0", "--liveness", ""],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    custom = client.CustomObjectsApi(harness_client(emu.url))
    ns = "bench"
    try:
        time.sleep(3)  # operator start-up (not part of the measurement)
        t0 = time.monotonic()
        for i in range(args.runs):
            body = make_body(f"r{i:04d}", {"iterations": args.iterations, "generation": {"shards": 2}})
            body["metadata"]["namespace"] = ns
            body["metadata"]["uid"] = f"uid-{i}"
            custom.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, body)
        created_s = time.monotonic() - t0
        phases: Counter[str] = Counter()
        while time.monotonic() - t0 < args.timeout:
            out = custom.list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, _preload_content=False)
            items = json.loads(out.data)["items"]
            phases = Counter((o.get("status") or {}).get("phase", "none") for o in items)
            if phases.get("Complete", 0) + phases.get("Failed", 0) == args.runs:
                break
            time.sleep(0.5)
        total_s = time.monotonic() - t0
        rss = peak_rss_mb(op.pid)
        op_cpu = cpu_seconds(op.pid)
        harness_cpu = cpu_seconds(os.getpid())
    finally:  # never leave the operator running (it would retry against a dead emulator forever)
        op.terminate()
        try:
            op.wait(30)
        except subprocess.TimeoutExpired:
            op.kill()
            op.wait(10)
        kubelet.stop()

    # Job-done → next-Job-created delays, per run in plan order.
    order = ["gen", "convert", "train", "eval"]
    delays = []
    for i in range(args.runs):
        seq = [f"r{i:04d}-it{k}-{s}" for k in range(args.iterations) for s in order]
        for prev, nxt in zip(seq, seq[1:], strict=False):
            if prev in kubelet.done_at and nxt in kubelet.created_at:
                delays.append(kubelet.created_at[nxt] - kubelet.done_at[prev])
    reqs = emu.requests()
    op_reqs = [r for r in reqs if r["agent"] in ("kopf", "spin-operator")]
    by_kind = Counter(f"{r['verb']} {r['resource'] or r['path']}{'/' + r['subresource'] if r['subresource'] else ''}" for r in op_reqs)
    emu.stop()
    its = args.runs * args.iterations
    result = {
        "runs": args.runs,
        "iterations": args.iterations,
        "jobs": len(kubelet.done_at),
        "phases": dict(phases),
        "create_all_runs_s": round(created_s, 2),
        "time_to_all_complete_s": round(total_s, 2),
        "next_job_delay_s": {"median": round(statistics.median(delays), 4) if delays else None,
                             "p99": round(pct(delays, 0.99), 4) if delays else None, "samples": len(delays)},
        "operator_peak_rss_mb": round(rss, 1),
        "operator_cpu_s": round(op_cpu, 1),
        "harness_cpu_s": round(harness_cpu, 1),
        "operator_requests_total": len(op_reqs),
        "operator_requests_per_iteration": round(len(op_reqs) / its, 2),
        "operator_requests_by_kind": dict(by_kind.most_common()),
        "kubelet_errors": kubelet.errors[:5],
        "machine": f"{os.cpu_count()} cores (shared); emulator, kubelet and operator on the same cores",
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "operator_scale.json").write_text(json.dumps(result, indent=2) + "\n")
    md = [
        f"# Operator scale: {args.runs} SpinRuns × {args.iterations} iterations (instant Jobs, kmock emulator)",
        "",
        "| metric | value |",
        "|---|---|",
        f"| runs finished | {dict(phases)} |",
        f"| Jobs run | {len(kubelet.done_at)} |",
        f"| time to create all SpinRuns | {created_s:.1f} s |",
        f"| time until all Complete | {total_s:.1f} s |",
        f"| Job done → next Job created, median | {result['next_job_delay_s']['median']} s |",
        f"| Job done → next Job created, p99 | {result['next_job_delay_s']['p99']} s |",
        f"| operator peak RSS | {rss:.0f} MiB |",
        f"| operator CPU / harness (emulator + kubelet) CPU | {op_cpu:.1f} s / {harness_cpu:.1f} s |",
        f"| operator API requests per iteration | {result['operator_requests_per_iteration']} |",
        "",
        "Requests by kind: " + ", ".join(f"{k} ×{v}" for k, v in by_kind.most_common()),
        "",
        f"Machine: {result['machine']}. The emulator (single Python event loop) and the harness share the CPU",
        "with the operator, so the latency numbers are an upper bound for the operator itself. Every run",
        "is in flight at once and its Jobs finish instantly, so with many runs the delay measures the queue",
        "of pending transitions (runs × CPU per transition / cores), not the operator's reaction time.",
        "",
        f"Command: `.venv/bin/python benchmarks/operator_scale.py --runs {args.runs} --iterations {args.iterations}`",
    ]
    (args.out / "operator_scale.md").write_text("\n".join(md) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "operator_requests_by_kind"}, indent=2))
    return 0 if phases.get("Complete", 0) == args.runs else 1


if __name__ == "__main__":
    sys.exit(main())
