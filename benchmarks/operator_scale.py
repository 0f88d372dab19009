"""Scale benchmark of the operator: one `spin-operator` process against kmock's emulator
with N SpinRuns × K iterations whose Jobs complete instantly (the e2e harness's kubelet).

Measures: time until every run is Complete, the delay from a Job's completion to the
creation of the run's next Job (median/p99), the operator's peak RSS, and the API requests
the operator makes per iteration. Writes JSON + markdown to benchmarks/results/.

    .venv/bin/python benchmarks/operator_scale.py --runs 500 --iterations 3

With `--unrelated N` it instead measures what the server-side label filter saves in a busy
cluster: N finished Jobs and N ConfigMaps that are not the operator's (plus churn on them while
the runs go), the same runs twice, once with the filter and once without
(SPIN_SERVER_SIDE_FILTER=false); operator RSS and CPU of each go to operator_filter.{json,md}.

    .venv/bin/python benchmarks/operator_scale.py --runs 50 --iterations 1 --unrelated 10000
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


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after 30 s."""
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def idle(pid: int, limit: float = 600) -> float:
    """Seconds until the process's CPU stops rising (under 0.05 s per second, for 2 s)."""
    t0 = time.monotonic()
    last, idle_since = -1.0, None
    while time.monotonic() - t0 < limit:
        time.sleep(1.0)
        now_cpu = cpu_seconds(pid)
        if now_cpu - last < 0.05:
            idle_since = idle_since or time.monotonic()
            if time.monotonic() - idle_since >= 2:
                break
        else:
            idle_since = None
        last = now_cpu
    return time.monotonic() - t0


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
    ap.add_argument("--unrelated", type=int, default=0, help="unrelated Jobs and ConfigMaps (each): filter benchmark")
    ap.add_argument("--churn", type=float, default=20.0, help="updates per second of unrelated ConfigMaps (filter benchmark)")
    ap.add_argument("--churn-seconds", type=float, default=30.0, help="idle window with churn only, after the runs (filter benchmark)")
    args = ap.parse_args()
    if args.unrelated:
        return filter_benchmark(args)

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
        stop_process(op)
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


# --------------------------------------------------------------------------- server-side filter


def _unrelated_objects(url: str, ns: str, n: int) -> float:
    """Create n finished Jobs and n ConfigMaps that no SpinRun owns (other teams' work); seconds taken."""
    api = harness_client(url)
    batch, core = client.BatchV1Api(api), client.CoreV1Api(api)
    t0 = time.monotonic()
    for i in range(n):
        labels = {"app.kubernetes.io/managed-by": "someone-else", "team": f"t{i % 50}"}
        job = {"apiVersion": "batch/v1", "kind": "Job",
               "metadata": {"name": f"other-{i:05d}", "namespace": ns, "labels": labels, "uid": f"other-job-{i}"},
               "spec": {"template": {"metadata": {"labels": labels}, "spec": {"restartPolicy": "Never", "containers": [
                   {"name": "c", "image": "busybox:1.36", "command": ["true"], "env": [{"name": "X", "value": "y" * 200}]}]}}},
               "status": {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}}
        batch.create_namespaced_job(ns, job, _preload_content=False)
        cm = {"apiVersion": "v1", "kind": "ConfigMap",
              "metadata": {"name": f"other-{i:05d}", "namespace": ns, "labels": labels, "uid": f"other-cm-{i}"},
              "data": {"config.yaml": "key: value\n" * 40}}
        core.create_namespaced_config_map(ns, cm, _preload_content=False)
    return time.monotonic() - t0


class _Churn:
    """Updates unrelated ConfigMaps at a steady rate (what a busy namespace does)."""

    def __init__(self, url: str, ns: str, n: int, rate: float) -> None:
        import threading

        self.core = client.CoreV1Api(harness_client(url))
        self.ns, self.n, self.rate, self.updates = ns, n, rate, 0
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        i = 0
        while self.rate > 0 and not self._stop.wait(1.0 / self.rate):
            name = f"other-{i % self.n:05d}"
            self.core.patch_namespaced_config_map(name, self.ns, {"data": {"tick": str(i)}}, _preload_content=False)
            self.updates += 1
            i += 1

    def start(self) -> _Churn:
        self.thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(10)


def _filter_once(args: argparse.Namespace, filtered: bool) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="spin-filter-"))
    emu = Emulator().start()
    ns = "busy"
    kubeconfig = emu.kubeconfig(tmp / "kubeconfig.yaml")
    created_s = _unrelated_objects(emu.url, ns, args.unrelated)
    kubelet = Kubelet(emu.url, tmp / "data", mode="instant", markers=False).start(watch=True)
    # kmock ignores a watch's timeoutSeconds and replays every object whenever a watch reconnects
    # (an API server resumes from the resourceVersion): watches are kept open for the whole
    # benchmark so that such replays do not inflate the figures.
    env = dict(os.environ, KUBECONFIG=str(kubeconfig), SPIN_RESYNC_SECONDS="60", SPIN_WATCH_TIMEOUT="3600",
               SPIN_SERVER_SIDE_FILTER="true" if filtered else "false")
    log = open(tmp / "operator.log", "wb")  # noqa: SIM115 - lives as long as the operator process
    op = subprocess.Popen(
        [str(Path(sys.executable).parent / "spin-operator"), "--all-namespaces", "--metrics-port", "0", "--liveness", ""],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    custom = client.CustomObjectsApi(harness_client(emu.url))
    churn = _Churn(emu.url, ns, args.unrelated, args.churn)
    try:
        # start-up: until the operator has listed everything and sits idle (CPU stops rising)
        startup_s = idle(op.pid)
        startup_cpu, startup_rss = cpu_seconds(op.pid), peak_rss_mb(op.pid)
        churn.start()
        t1 = time.monotonic()
        for i in range(args.runs):
            body = make_body(f"r{i:04d}", {"iterations": args.iterations, "generation": {"shards": 2}})
            body["metadata"]["namespace"] = ns
            body["metadata"]["uid"] = f"uid-{i}"
            custom.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, body)
        phases: Counter[str] = Counter()
        while time.monotonic() - t1 < args.timeout:
            out = custom.list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, _preload_content=False)
            phases = Counter((o.get("status") or {}).get("phase", "none") for o in json.loads(out.data)["items"])
            if phases.get("Complete", 0) + phases.get("Failed", 0) == args.runs:
                break
            time.sleep(0.5)
        run_s = time.monotonic() - t1
        run_cpu = cpu_seconds(op.pid)
        before_updates = churn.updates
        time.sleep(args.churn_seconds)  # nothing of ours happens: what do the others' updates cost?
        idle_cpu = cpu_seconds(op.pid) - run_cpu
        idle_updates = churn.updates - before_updates
        churn.stop()
        total_cpu, rss = cpu_seconds(op.pid), peak_rss_mb(op.pid)
    finally:
        churn.stop()
        stop_process(op)
        kubelet.stop()
    reqs = [r for r in emu.requests() if r["agent"] in ("kopf", "spin-operator")]
    watch_lists = Counter(f"{r['verb']} {r['resource']}" for r in reqs if r["verb"] in ("list", "watch"))
    emu.stop()
    return {
        "server_side_filter": filtered,
        "unrelated_jobs": args.unrelated,
        "unrelated_configmaps": args.unrelated,
        "create_unrelated_s": round(created_s, 1),
        "churn_updates": churn.updates,
        "runs": args.runs,
        "iterations": args.iterations,
        "phases": dict(phases),
        "startup_s": round(startup_s, 1),
        "startup_cpu_s": round(startup_cpu, 1),
        "startup_peak_rss_mb": round(startup_rss, 1),
        "run_s": round(run_s, 1),
        "run_cpu_s": round(run_cpu - startup_cpu, 1),
        "idle_churn_s": args.churn_seconds,
        "idle_churn_updates": idle_updates,
        "idle_churn_cpu_s": round(idle_cpu, 2),
        "operator_peak_rss_mb": round(rss, 1),
        "operator_cpu_s": round(total_cpu, 1),
        "list_watch_requests": dict(sorted(watch_lists.items())),
    }


def filter_benchmark(args: argparse.Namespace) -> int:
    results = [_filter_once(args, filtered=True), _filter_once(args, filtered=False)]
    args.out.mkdir(parents=True, exist_ok=True)
    doc = {"machine": f"{os.cpu_count()} cores (shared); emulator, kubelet and operator on the same cores", "results": results}
    (args.out / "operator_filter.json").write_text(json.dumps(doc, indent=2) + "\n")
    on, off = results
    rows = [
        ("runs finished", on["phases"], off["phases"]),
        ("operator start-up: list/watch until idle", f"{on['startup_s']} s, {on['startup_cpu_s']} s CPU",
         f"{off['startup_s']} s, {off['startup_cpu_s']} s CPU"),
        ("peak RSS after start-up", f"{on['startup_peak_rss_mb']:.0f} MiB", f"{off['startup_peak_rss_mb']:.0f} MiB"),
        (f"{args.runs} runs × {args.iterations} iteration(s): wall time", f"{on['run_s']} s", f"{off['run_s']} s"),
        ("operator CPU during the runs (with churn)", f"{on['run_cpu_s']} s", f"{off['run_cpu_s']} s"),
        (f"operator CPU over {args.churn_seconds:g} s of others' churn only", f"{on['idle_churn_cpu_s']} s ({on['idle_churn_updates']} updates)",
         f"{off['idle_churn_cpu_s']} s ({off['idle_churn_updates']} updates)"),
        ("operator peak RSS overall", f"{on['operator_peak_rss_mb']:.0f} MiB", f"{off['operator_peak_rss_mb']:.0f} MiB"),
        ("operator CPU overall", f"{on['operator_cpu_s']} s", f"{off['operator_cpu_s']} s"),
    ]
    md = [
        f"# Operator with {args.unrelated} unrelated Jobs and {args.unrelated} ConfigMaps: server-side label filter on/off",
        "",
        "| metric | filter on (default) | filter off |",
        "|---|---|---|",
        *[f"| {name} | {a} | {b} |" for name, a, b in rows],
        "",
        f"Unrelated objects: finished Jobs and ConfigMaps of other teams in the runs' namespace, created before the "
        f"operator starts ({on['create_unrelated_s']} s); while the runs go, {args.churn:g} ConfigMap updates per second "
        f"({on['churn_updates']} and {off['churn_updates']}). With the filter, kopf sends "
        "`labelSelector=app.kubernetes.io/managed-by=spinrun` on every list and watch of Jobs, ConfigMaps, Services, "
        "PVCs and pods, and the emulator (like an API server) sends only matching objects. Watches stay open for the "
        "whole benchmark (SPIN_WATCH_TIMEOUT=3600): kmock would replay every object on each reconnect, an API server "
        "does not.",
        "",
        f"Machine: {doc['machine']}.",
        "",
        f"Command: `.venv/bin/python benchmarks/operator_scale.py --runs {args.runs} --iterations {args.iterations} "
        f"--unrelated {args.unrelated} --churn {args.churn:g} --churn-seconds {args.churn_seconds:g}`",
    ]
    (args.out / "operator_filter.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0 if on["phases"].get("Complete", 0) == args.runs == off["phases"].get("Complete", 0) else 1


if __name__ == "__main__":
    sys.exit(main())
