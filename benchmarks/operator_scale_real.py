"""The operator scale benchmark on the real control plane (issue #20): one `spin-operator` process,
as the chart's ServiceAccount with the chart's RBAC and environment, against the test cluster of
tests/kube.py (etcd, kube-apiserver, kube-controller-manager, kube-scheduler built from source, the
process kubelet with 2 nodes); every step runs in the instant image (a quick local process per pod).

Measures: time to create the SpinRuns and until all are Complete; Job done → next Job created
(median/p99) from a watch on the runs' Jobs in this process (local monotonic time at which each Job
is first seen and first seen with Complete=True, paired in plan order); the operator's API requests
from the apiserver's audit log, by verb and resource; its peak RSS (VmHWM) and CPU from /proc; the
control plane's CPU over the same window. Writes operator_scale_real.{json,md}.

    sudo .venv/bin/python benchmarks/operator_scale_real.py --runs 50 --iterations 1

With `--unrelated N`: N suspended Jobs (no pods) and N ConfigMaps that are not the operator's in the
runs' namespace before the operator starts, then the runs with the server-side label filter on and
(`--filter both`) off (SPIN_SERVER_SIDE_FILTER=false), each in a fresh namespace of the same cluster
with the unrelated objects made again there. Writes operator_filter_real.{json,md}.

    sudo .venv/bin/python benchmarks/operator_scale_real.py --runs 50 --iterations 1 --unrelated 5000

The emulator's version of this benchmark (benchmarks/operator_scale.py, against kmock with a
harness kubelet and Job controller) is gone with the emulator; its figures stay in
benchmarks/results/ and docs/benchmarks.md, and `git show 4bf3ada:benchmarks/operator_scale.py`
is the script that made them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
for p in (REPO, REPO / "operator", REPO / "cluster"):
    sys.path.insert(0, str(p))

from benchmarks.process_stats import cpu_seconds, idle, pct, peak_rss_mb  # noqa: E402
from spin_cluster.api import Client, path  # noqa: E402
from tests.kube import OPERATOR_USERS, Kube, start, stop, wait  # noqa: E402
from tests.operator.e2e import run_body  # noqa: E402
from tests.reliability.real_cluster import OperatorProcess, iso  # noqa: E402

ORDER = ["gen", "convert", "train", "eval"]
MANAGED = "app.kubernetes.io/managed-by=spinrun"
SPINRUNS = ("spin.dev", "v1alpha1", "spinruns")


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


class JobWatch:
    """When each of the operator's Jobs in `ns` is first seen, and first seen Complete (monotonic)."""

    def __init__(self, api: Client, ns: str) -> None:
        self.api, self.ns = api, ns
        self.created_at: dict[str, float] = {}
        self.done_at: dict[str, float] = {}
        self.stop = threading.Event()
        self.errors: list[str] = []
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> JobWatch:
        listing = self.api.get(path("batch", "v1", "jobs", self.ns), labelSelector=MANAGED)
        self.rv = listing["metadata"]["resourceVersion"]
        now = time.monotonic()
        for job in listing.get("items") or []:
            self._see(job, now)
        self.thread.start()
        return self

    def _see(self, job: dict[str, Any], now: float) -> None:
        name = job["metadata"]["name"]
        self.created_at.setdefault(name, now)
        conds = (job.get("status") or {}).get("conditions") or []
        if any(c.get("type") == "Complete" and c.get("status") == "True" for c in conds):
            self.done_at.setdefault(name, now)

    def _loop(self) -> None:
        while not self.stop.is_set():
            try:
                for event in self.api.watch(path("batch", "v1", "jobs", self.ns), timeout_seconds=30,
                                            labelSelector=MANAGED, resourceVersion=self.rv):
                    now = time.monotonic()
                    obj = event.get("object") or {}
                    if event.get("type") in ("ADDED", "MODIFIED"):
                        self._see(obj, now)
                    if event.get("type") == "ERROR":
                        self.errors.append(json.dumps(obj)[:300])
                        self.rv = self.api.get(path("batch", "v1", "jobs", self.ns), labelSelector=MANAGED,
                                               limit=1)["metadata"]["resourceVersion"]
                        break
                    with contextlib.suppress(KeyError, TypeError):
                        self.rv = obj["metadata"]["resourceVersion"]
                    if self.stop.is_set():
                        return
            except Exception as e:
                self.errors.append(repr(e)[:300])
                time.sleep(0.5)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(40)

    def delays(self, runs: int, iterations: int) -> list[float]:
        out = []
        for i in range(runs):
            seq = [f"r{i:04d}-it{k}-{s}" for k in range(iterations) for s in ORDER]
            for prev, nxt in zip(seq, seq[1:], strict=False):
                if prev in self.done_at and nxt in self.created_at:
                    out.append(self.created_at[nxt] - self.done_at[prev])
        return out


def make_namespace(kube: Kube, prefix: str) -> str:
    name = f"{prefix}-{int(time.time() * 1000) % 10_000_000}"
    kube.api.create(path("", "v1", "namespaces"), {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    wait(lambda: kube.api.get(path("", "v1", "serviceaccounts", name, "default")), 60, "the default ServiceAccount")
    return name


def unrelated_objects(kube: Kube, ns: str, n: int, threads: int = 8) -> float:
    """n suspended Jobs (they make no pods) and n ConfigMaps of other teams in `ns`; seconds taken."""
    api = kube.state.client(agent="spin-bench-unrelated")

    def one(i: int) -> None:
        labels = {"app.kubernetes.io/managed-by": "someone-else", "team": f"t{i % 50}"}
        job = {"apiVersion": "batch/v1", "kind": "Job",
               "metadata": {"name": f"other-{i:05d}", "namespace": ns, "labels": labels},
               "spec": {"suspend": True, "template": {"metadata": {"labels": labels}, "spec": {
                   "restartPolicy": "Never", "containers": [
                       {"name": "c", "image": "busybox:1.36", "command": ["true"],
                        "env": [{"name": "X", "value": "y" * 200}]}]}}}}
        api.create(path("batch", "v1", "jobs", ns), job)
        cm = {"apiVersion": "v1", "kind": "ConfigMap",
              "metadata": {"name": f"other-{i:05d}", "namespace": ns, "labels": labels},
              "data": {"config.yaml": "key: value\n" * 40}}
        api.create(path("", "v1", "configmaps", ns), cm)

    t0 = time.monotonic()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, range(n)))
    return time.monotonic() - t0


def control_plane_cpu(kube: Kube) -> dict[str, float]:
    out: dict[str, float] = {}
    for p in kube.state.running():
        with contextlib.suppress(OSError):
            out[p.name] = out.get(p.name, 0.0) + cpu_seconds(p.pid)
    return out


def operator_requests(kube: Kube, since: str) -> tuple[Counter[str], Counter[str]]:
    """(the operator's requests by verb and resource, by answer code) from the audit log since `since`."""
    by_kind: Counter[str] = Counter()
    codes: Counter[str] = Counter()
    for e in kube.audit():
        if not e["user"]["username"].startswith(OPERATOR_USERS) or e["stageTimestamp"][:19] < since:
            continue
        ref = e.get("objectRef") or {}
        res = ref.get("resource") or e.get("requestURI", "")
        if ref.get("subresource"):
            res += "/" + ref["subresource"]
        by_kind[f"{e['verb']} {res}"] += 1
        codes[str((e.get("responseStatus") or {}).get("code"))] += 1
    return by_kind, codes


def failed_pods(api: Client, ns: str, limit: int = 6) -> list[dict[str, Any]]:
    """What the failed pods of the operator's Jobs said (terminated state, log tail): why runs failed."""
    out = []
    pods = api.get(path("", "v1", "pods", ns), labelSelector=MANAGED).get("items") or []
    for pod in [p for p in pods if (p.get("status") or {}).get("phase") == "Failed"][:limit]:
        name = pod["metadata"]["name"]
        states = [{"container": c["name"], **(c.get("state") or {}).get("terminated", {})}
                  for c in (pod["status"].get("initContainerStatuses") or []) + (pod["status"].get("containerStatuses") or [])]
        log = ""
        with contextlib.suppress(Exception):
            resp = api.pool.request("GET", f"{api.endpoint.server}/api/v1/namespaces/{ns}/pods/{name}/log?tailLines=15",
                                    headers=api.headers, timeout=10)
            log = resp.data.decode(errors="replace")[-1500:]
        out.append({"pod": name, "reason": pod["status"].get("reason"), "message": pod["status"].get("message"),
                    "terminated": states, "log_tail": log})
    return out


def bench_once(kube: Kube, args: argparse.Namespace, tmp: Path, *, unrelated: int = 0,
               filtered: bool = True) -> dict[str, Any]:
    api = kube.state.client(agent="spin-bench")
    ns = make_namespace(kube, "bench" if not unrelated else ("busy-on" if filtered else "busy-off"))
    created_unrelated_s = unrelated_objects(kube, ns, unrelated) if unrelated else 0.0
    env = {"SPIN_SERVER_SIDE_FILTER": "true" if filtered else "false"}
    op = OperatorProcess(kube, ns, tmp / f"operator-{ns}.log", env)
    since = iso()
    cp0 = control_plane_cpu(kube)
    jobs = JobWatch(api, ns).start()
    t_start = time.monotonic()
    op.start(timeout=180)
    assert op.proc is not None
    live_s = time.monotonic() - t_start
    startup_s = live_s + idle(op.proc.pid, min(600.0, args.timeout))
    startup_cpu, startup_rss = cpu_seconds(op.proc.pid), peak_rss_mb(op.proc.pid)
    phases: Counter[str] = Counter()
    try:
        t0 = time.monotonic()
        for i in range(args.runs):
            api.create(path(*SPINRUNS, ns), run_body(f"r{i:04d}", {"iterations": args.iterations, "generation": {"shards": 2}}))
        created_s = time.monotonic() - t0
        while time.monotonic() - t0 < args.timeout:
            items = api.get(path(*SPINRUNS, ns)).get("items") or []
            phases = Counter((o.get("status") or {}).get("phase", "none") for o in items)
            if phases.get("Complete", 0) + phases.get("Failed", 0) == args.runs:
                break
            assert op.proc.poll() is None, f"the operator exited: {op.tail()}"
            time.sleep(0.5)
        total_s = time.monotonic() - t0
        rss, op_cpu = peak_rss_mb(op.proc.pid), cpu_seconds(op.proc.pid)
        harness_cpu = cpu_seconds(os.getpid())
        cp1 = control_plane_cpu(kube)
        failures = failed_pods(api, ns) if phases.get("Complete", 0) < args.runs else []
    finally:
        op.stop()
        jobs.close()
    time.sleep(2)  # the watches' audit events are written when their connections close
    by_kind, codes = operator_requests(kube, since)
    delays = jobs.delays(args.runs, args.iterations)
    its = args.runs * args.iterations
    total_reqs = sum(by_kind.values())
    return {
        "namespace": ns,
        "server_side_filter": filtered,
        "unrelated_jobs_suspended": unrelated,
        "unrelated_configmaps": unrelated,
        "create_unrelated_s": round(created_unrelated_s, 1),
        "runs": args.runs,
        "iterations": args.iterations,
        "jobs_seen": len(jobs.created_at),
        "jobs_complete_seen": len(jobs.done_at),
        "phases": dict(phases),
        "operator_live_s": round(live_s, 1),
        "operator_startup_until_idle_s": round(startup_s, 1),
        "operator_startup_cpu_s": round(startup_cpu, 2),
        "operator_startup_peak_rss_mb": round(startup_rss, 1),
        "create_all_runs_s": round(created_s, 2),
        "time_to_all_complete_s": round(total_s, 2),
        "next_job_delay_s": {"median": round(statistics.median(delays), 4) if delays else None,
                             "p99": round(pct(delays, 0.99), 4) if delays else None, "samples": len(delays)},
        "operator_peak_rss_mb": round(rss, 1),
        "operator_cpu_s": round(op_cpu, 1),
        "operator_cpu_during_runs_s": round(op_cpu - startup_cpu, 1),
        "harness_cpu_s": round(harness_cpu, 1),
        "control_plane_cpu_s": {k: round(cp1.get(k, 0) - v, 1) for k, v in sorted(cp0.items())},
        "operator_requests_total": total_reqs,
        "operator_requests_per_iteration": round(total_reqs / its, 2),
        "operator_requests_by_kind": dict(by_kind.most_common()),
        "operator_response_codes": dict(codes),
        "operator_env": op.env,
        "watch_errors": jobs.errors[:5],
        "failed_pods_sample": failures,
    }


MACHINE = (f"{os.cpu_count()} cores shared with other sessions' cluster tests; etcd, kube-apiserver, "
           "controller-manager, scheduler, the process kubelet, every pod's process and the operator on the same cores")


def write_scale(args: argparse.Namespace, r: dict[str, Any], doc: dict[str, Any]) -> None:
    (args.out / "operator_scale_real.json").write_text(json.dumps(doc, indent=2) + "\n")
    cp = r["control_plane_cpu_s"]
    md = [
        f"# Operator scale on the real control plane: {args.runs} SpinRuns × {args.iterations} iteration(s) (instant image)",
        "",
        "| metric | value |",
        "|---|---|",
        f"| runs finished | {r['phases']} |",
        f"| Jobs seen / seen Complete | {r['jobs_seen']} / {r['jobs_complete_seen']} |",
        f"| time to create all SpinRuns | {r['create_all_runs_s']:.1f} s |",
        f"| time until all Complete | {r['time_to_all_complete_s']:.1f} s |",
        f"| Job done → next Job created, median | {r['next_job_delay_s']['median']} s |",
        f"| Job done → next Job created, p99 | {r['next_job_delay_s']['p99']} s ({r['next_job_delay_s']['samples']} samples) |",
        f"| operator peak RSS | {r['operator_peak_rss_mb']:.0f} MiB |",
        f"| operator CPU (start-up / during the runs) | {r['operator_cpu_s']} s ({r['operator_startup_cpu_s']} / {r['operator_cpu_during_runs_s']}) |",
        f"| operator API requests per iteration (audit log) | {r['operator_requests_per_iteration']} |",
        "| control plane CPU over the same window | " + ", ".join(f"{k} {v} s" for k, v in cp.items()) + " |",
        f"| load average (1/5/15 min) at start / end | {doc['loadavg_start']} / {doc['loadavg_end']} |",
        "",
        "Requests by kind: " + ", ".join(f"{k} ×{v}" for k, v in r["operator_requests_by_kind"].items()),
        "",
        f"Machine: {doc['machine']}. The delays are local times at which this process's watch on the Jobs "
        "saw a Job Complete and the run's next Job appear; they include the Job controller's and the "
        "watch's latency, and with every run in flight at once, the queue of pending transitions.",
        "",
        f"Command: `{doc['command']}`",
    ]
    (args.out / "operator_scale_real.md").write_text("\n".join(md) + "\n")


def write_filter(args: argparse.Namespace, results: list[dict[str, Any]], doc: dict[str, Any]) -> None:
    (args.out / "operator_filter_real.json").write_text(json.dumps(doc, indent=2) + "\n")
    cols = [("filter on (default)" if r["server_side_filter"] else "filter off") for r in results]

    def row(name: str, f: Any) -> str:
        return f"| {name} | " + " | ".join(str(f(r)) for r in results) + " |"

    def lw(r: dict[str, Any]) -> str:
        return ", ".join(f"{k} ×{v}" for k, v in sorted(r["operator_requests_by_kind"].items())
                         if k.split()[0] in ("list", "watch"))

    md = [
        f"# Operator on the real control plane with {args.unrelated} unrelated suspended Jobs and "
        f"{args.unrelated} ConfigMaps: server-side label filter",
        "",
        "| metric | " + " | ".join(cols) + " |",
        "|---|" + "---|" * len(results),
        row("create the unrelated objects", lambda r: f"{r['create_unrelated_s']} s"),
        row("runs finished", lambda r: r["phases"]),
        row("operator live / idle after start-up", lambda r: f"{r['operator_live_s']} s / {r['operator_startup_until_idle_s']} s"),
        row("operator start-up CPU", lambda r: f"{r['operator_startup_cpu_s']} s"),
        row("peak RSS after start-up", lambda r: f"{r['operator_startup_peak_rss_mb']:.0f} MiB"),
        row(f"{args.runs} runs × {args.iterations}: until all Complete", lambda r: f"{r['time_to_all_complete_s']} s"),
        row("Job done → next Job created, median / p99",
            lambda r: f"{r['next_job_delay_s']['median']} s / {r['next_job_delay_s']['p99']} s"),
        row("operator CPU during the runs", lambda r: f"{r['operator_cpu_during_runs_s']} s"),
        row("operator peak RSS overall", lambda r: f"{r['operator_peak_rss_mb']:.0f} MiB"),
        row("operator requests per iteration", lambda r: r["operator_requests_per_iteration"]),
        row("kube-apiserver / etcd CPU over the window",
            lambda r: f"{r['control_plane_cpu_s'].get('kube-apiserver', '?')} s / {r['control_plane_cpu_s'].get('etcd', '?')} s"),
        row("list/watch requests", lw),
        "",
        f"Load average (1/5/15 min) at start / end: {doc['loadavg_start']} / {doc['loadavg_end']}. "
        f"Each column in a fresh namespace of the same cluster, its unrelated objects made there before its "
        "operator started (the operator is namespaced: `-n <ns>`, the chart's Role there); no churn on them.",
        "",
        f"Machine: {doc['machine']}.",
        "",
        f"Command: `{doc['command']}`",
    ]
    (args.out / "operator_filter_real.md").write_text("\n".join(md) + "\n")


def write(args: argparse.Namespace, results: list[dict[str, Any]], load_start: list[float], cluster_s: float) -> None:
    doc = {"machine": MACHINE, "cluster_start_s": round(cluster_s, 1), "loadavg_start": load_start,
           "loadavg_end": load(), "command": "sudo .venv/bin/python " + " ".join(["benchmarks/operator_scale_real.py", *sys.argv[1:]]),
           "results": results}
    args.out.mkdir(parents=True, exist_ok=True)
    if args.unrelated:
        write_filter(args, results, doc)
    elif results:
        write_scale(args, results[0], doc)


def _terminate(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)  # SIGTERM (`timeout`) unwinds: the cluster is stopped


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--iterations", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    ap.add_argument("--unrelated", type=int, default=0, help="unrelated suspended Jobs and ConfigMaps (each)")
    ap.add_argument("--filter", choices=["on", "off", "both"], default="both", help="with --unrelated")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, _terminate)
    load_start = load()
    tmp = Path(tempfile.mkdtemp(prefix="spin-scale-real-"))
    t0 = time.monotonic()
    state = start(tmp / "cluster", tmp / "instant")
    kube = Kube(state, tmp / "instant")
    cluster_s = time.monotonic() - t0
    results: list[dict[str, Any]] = []
    try:
        kube.ensure_crd()
        kube.control()
        if args.unrelated:
            modes = {"on": [True], "off": [False], "both": [True, False]}[args.filter]
            for filtered in modes:
                results.append(bench_once(kube, args, tmp, unrelated=args.unrelated, filtered=filtered))
                print(json.dumps({k: v for k, v in results[-1].items() if k != "operator_requests_by_kind"}, indent=2),
                      flush=True)
                write(args, results, load_start, cluster_s)  # what is measured so far, should a later column not end
        else:
            results.append(bench_once(kube, args, tmp))
    finally:
        stop(tmp / "cluster")
    write(args, results, load_start, cluster_s)
    print(json.dumps({k: v for k, v in results[-1].items() if k != "operator_requests_by_kind"}, indent=2))
    return 0 if all(r["phases"].get("Complete", 0) == args.runs for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
