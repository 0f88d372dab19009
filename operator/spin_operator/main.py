"""`spin-operator`: the kopf operator standalone (one replica, no peering) with a liveness
endpoint and Prometheus metrics, or `spin-operator render FILE`. Namespaces come from
--namespace/--all-namespaces or the deployment's WATCH_NAMESPACES (comma-separated; empty = all);
every environment variable is read by `DeploymentSettings.from_env`. kopf is started again in the
same process when a handler asks for it (the SpinRun CRD applied again: kube/crd_identity.py)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import threading

import kopf

from spin_operator.settings import DeploymentSettings


def build_parser(deployment: DeploymentSettings | None = None) -> argparse.ArgumentParser:
    """The operator's flags; their defaults are the deployment's settings (read from the
    environment when not given)."""
    deployment = deployment or DeploymentSettings.from_env()
    p = argparse.ArgumentParser(prog="spin-operator", description="The spinrun operator (SpinRun → Jobs).")
    p.add_argument("-n", "--namespace", action="append", default=[], help="namespace to watch (repeatable; globs allowed)")
    p.add_argument("-A", "--all-namespaces", action="store_true", help="watch every namespace (cluster-wide RBAC)")
    p.add_argument("--metrics-port", type=int, default=deployment.metrics_port,
                   help="Prometheus /metrics port (0 disables; default 8080)")
    p.add_argument("--liveness", default=deployment.liveness,
                   help="kopf liveness endpoint (default http://0.0.0.0:8081/healthz)")
    p.add_argument("--verbose", action="store_true", help="debug logging")
    return p


def namespaces_from(args: argparse.Namespace, deployment: DeploymentSettings) -> tuple[bool, list[str]]:
    """(cluster-wide?, namespaces) from the flags, else the deployment's WATCH_NAMESPACES."""
    if args.all_namespaces:
        return True, []
    if args.namespace:
        return False, list(args.namespace)
    listed = list(deployment.watch_namespaces)
    return (not listed), listed


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `spin-operator` console script: the operator, or `spin-operator render FILE`."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["render"]:
        from spin_operator.render import add_parser

        top = argparse.ArgumentParser(prog="spin-operator")
        add_parser(top.add_subparsers(dest="command", required=True))
        args = top.parse_args(argv)
        return int(args.func(args))
    deployment = DeploymentSettings.from_env()  # a bad value stops the operator here, naming the variable
    args = build_parser(deployment).parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    clusterwide, namespaces = namespaces_from(args, deployment)

    from spin_operator import handlers, metrics  # noqa: F401  (importing handlers registers them)
    from spin_operator.kube import client

    client.api_client()  # fail fast with a clear error if no cluster config is found
    metrics.serve(args.metrics_port)
    while True:
        # an asyncio.Event (bound to kopf's loop when kopf first waits on it), set from a handler in
        # that loop: kopf waits for a threading.Event or a concurrent Future in an executor thread
        # that nothing releases on SIGTERM, and the stopped loop then waits for that thread for ever
        stop, restart = asyncio.Event(), threading.Event()

        def request_restart(stop: asyncio.Event = stop, restart: threading.Event = restart) -> None:
            restart.set()
            stop.set()

        kopf.run(
            standalone=True,
            clusterwide=clusterwide,
            namespaces=namespaces,
            liveness_endpoint=args.liveness or None,
            identity=own_identity(),
            stop_flag=stop,
            memo=kopf.Memo(restart=request_restart),
        )
        if not restart.is_set():  # SIGTERM/SIGINT: the process ends
            return 0
        logging.getLogger("spin_operator").warning("kopf stopped for a restart; starting it again")


def own_identity() -> str:
    """kopf's identity of this operator, `spin-operator@<host>`. Left to kopf it is `<user>@<host>`
    from getpass, which raises for a uid without a passwd entry (a chart's runAsUser, OpenShift's
    arbitrary uids) and the operator would crash at start."""
    import socket

    return f"spin-operator@{socket.gethostname()}"


if __name__ == "__main__":
    sys.exit(main())
