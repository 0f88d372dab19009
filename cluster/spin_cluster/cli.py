"""`spin-cluster`: build, start, inspect and stop the local cluster (`make cluster` runs `up`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from spin_cluster import build, paths
from spin_cluster.cluster import Options, down, running, up
from spin_cluster.components import COMPONENTS
from spin_cluster.controlplane import ClusterError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="spin-cluster", description=__doc__)
    parser.add_argument("--state", type=Path, default=paths.default_state_dir(),
                        help=f"the cluster's state folder (default: ${paths.STATE_ENV} or %(default)s)")
    sub = parser.add_subparsers(dest="command", required=True)
    p_up = sub.add_parser("up", help="start a cluster (building the binaries first if the cache lacks them)")
    p_up.add_argument("--nodes", type=int, default=2, help="process-kubelet nodes (default %(default)s)")
    p_up.add_argument("--gpus-per-node", type=int, default=8, help="allocatable nvidia.com/gpu per node (default %(default)s)")
    p_up.add_argument("--kueue", action="store_true",
                      help="also run Kueue (built from its Go module; cluster/README.md, Kueue)")
    p_up.add_argument("--trainer", action="store_true",
                      help="also run Kubeflow Trainer v2 and JobSet (their controllers, CRDs and webhooks; "
                           "the torch-distributed ClusterTrainingRuntime)")
    sub.add_parser("down", help="stop the cluster and remove its state and claims")
    sub.add_parser("status", help="say whether the cluster runs, and where")
    sub.add_parser("build", help="build (or find in the cache) every binary; print where they are")
    sub.add_parser("env", help="print the KUBECONFIG export of the running cluster")
    args = parser.parse_args(argv)
    state_dir: Path = args.state.expanduser()
    try:
        if args.command == "build":
            for name, binary in build.ensure_all(COMPONENTS).items():
                print(f"{name}\t{binary}")
            return 0
        if args.command == "up":
            state = up(state_dir, Options(nodes=args.nodes, gpus_per_node=args.gpus_per_node))
            if args.kueue:
                from spin_cluster import kueue

                kueue.install(state)
            if args.trainer:
                from spin_cluster import trainer

                try:
                    trainer.start(state)
                except BaseException:
                    down(state_dir, remove=False)
                    raise
            timings = json.loads((state.root / "timings.json").read_text())
            print(f"spin-cluster: Kubernetes {state.version} up in {timings['start_seconds']:.0f} s "
                  f"(nodes {', '.join(state.nodes)}; logs in {state.root / 'logs'})", file=sys.stderr)
            print(f"export KUBECONFIG={state.kubeconfig}")
            return 0
        if args.command == "down":
            stopped = down(state_dir)
            print(f"spin-cluster: stopped {', '.join(stopped) or 'nothing (no cluster was running)'}; "
                  f"removed {state_dir}", file=sys.stderr)
            return 0
        state = running(state_dir)
        if args.command == "env":
            if state is None:
                print(f"spin-cluster: no cluster runs with its state in {state_dir} (`make cluster`)", file=sys.stderr)
                return 1
            print(f"export KUBECONFIG={state.kubeconfig}")
            return 0
        if state is None:
            print(f"no cluster runs with its state in {state_dir}")
            return 1
        live = {p.name for p in state.running()}
        print(f"Kubernetes {state.version} at {state.server} (KUBECONFIG={state.kubeconfig})")
        for proc in state.procs:
            print(f"  {proc.name:<24} pid {proc.pid:<8} {'running' if proc.name in live else 'STOPPED'}")
        return 0
    except ClusterError as e:
        print(f"spin-cluster: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
