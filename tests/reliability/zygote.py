"""A pre-forking launcher of the operator: it imports the operator and warms it up once (one
pure reconcile and one render of every object), then forks a fresh `spin-operator` process
per request. A test that kills and restarts the operator twenty times pays Python's import
time once instead of twenty times; each child is still a separate process, SIGKILLed for real.

Protocol (one JSON object per line on stdin, one answer per line on stdout):
  {"op": "start", "argv": [...], "env": {...}, "log": PATH}  -> {"pid": N}
  {"op": "wait", "pid": N, "timeout": S}                   -> {"exit": CODE or null}
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback


def warm() -> None:
    from datetime import datetime, timezone

    import kopf  # noqa: F401
    from kubernetes import client

    # kubernetes.client imports its API and model modules lazily (seconds of CPU): now, once
    _ = (client.BatchV1Api, client.CoreV1Api, client.CustomObjectsApi, client.V1DeleteOptions, client.ApiClient())
    from spin_operator import handlers, main, render  # noqa: F401
    from spin_operator.kube.objects import Observed
    from spin_operator.reconcile.decide import reconcile
    from spin_runtime.api.spec import SpinRun

    body = {
        "apiVersion": "spin.dev/v1alpha1", "kind": "SpinRun",
        "metadata": {"name": "warm", "namespace": "warm", "uid": "u", "generation": 1},
        "spec": {"model": {"builtin": "tiny-random-llama"}, "iterations": 1},
    }
    reconcile(body, Observed(), datetime.now(timezone.utc))
    render.render_objects(SpinRun.model_validate(body))


def _child(cmd: dict) -> None:  # type: ignore[type-arg]
    fd = os.open(cmd["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.environ.update(cmd["env"])
    print(f"zygote: forked pid {os.getpid()} at {time.strftime('%H:%M:%S')}.{int(time.time() * 1000) % 1000:03d}", flush=True)
    import kubernetes.config.kube_config as kc

    kc.KUBE_CONFIG_DEFAULT_LOCATION = os.environ["KUBECONFIG"]  # read at import time otherwise
    from spin_operator.main import main

    rc = 1
    try:
        rc = int(main(cmd["argv"]) or 0)
    except SystemExit as e:
        rc = int(e.code or 0) if not isinstance(e.code, str) else 1
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc)


def serve() -> None:
    warm()
    out = sys.stdout
    out.write(json.dumps({"ready": True}) + "\n")
    out.flush()
    exited: dict[int, int] = {}
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["op"] == "start":
            pid = os.fork()
            if pid == 0:
                _child(cmd)
            answer: dict = {"pid": pid}  # type: ignore[type-arg]
        else:
            pid, deadline, code = cmd["pid"], time.monotonic() + float(cmd.get("timeout", 0)), None
            while True:
                if pid in exited:
                    code = exited[pid]
                    break
                try:
                    got, status = os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    break
                if got:
                    code = os.waitstatus_to_exitcode(status)
                    exited[pid] = code
                    break
                if time.monotonic() >= deadline:
                    break
                time.sleep(0.02)
            answer = {"exit": code}
        out.write(json.dumps(answer) + "\n")
        out.flush()


if __name__ == "__main__":
    serve()
