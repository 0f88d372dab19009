"""The reader pod of `spin fetch`: mounts a run's claim read-only, with the run's restricted
security context, and writes the chosen files of the run directory to its log as a base64
gzip tar (the pod log is the one read path every cluster gives a namespace's editors: no exec,
no port-forward)."""

from __future__ import annotations

import shlex
from typing import Any

from spin_operator.builders.pod import DATA_MOUNT, container_security_context, pod_security_context
from spin_runtime.api.spec import PodSecurity

#: What `spin fetch` copies by default (shell globs inside the run directory).
FETCHED = ("spec.json", "report", "iter-*/metrics.json", "iter-*/logs", "iter-*/DONE", "iter-*/epochs/*/spin-epoch.json")
#: The label that marks a reader pod, with the run it reads as value. Not the operator's
#: managed-by label: the operator neither watches nor counts reader pods.
LABEL_READER = "spin.dev/reader-of"


def reader_script(run_path: str, paths: tuple[str, ...] = FETCHED) -> str:
    """The shell command of the reader: tar the paths that exist under `run_path`, gzip, base64
    in 76-column lines (log lines of any container runtime stay short)."""
    globs = " ".join(paths)  # expanded by the shell inside the run directory
    return (
        f"cd {shlex.quote(run_path)} || exit 66; "
        f"set -- $(for p in {globs}; do [ -e \"$p\" ] && printf '%s\\n' \"$p\"; done); "
        '[ "$#" -gt 0 ] || { echo "nothing to fetch in $PWD" >&2; exit 66; }; '
        'tar -czf - -- "$@" | base64'
    )


def reader_pod(
    name: str,
    run: str,
    claim: str,
    run_path: str,
    image: str,
    security: PodSecurity | None = None,
    paths: tuple[str, ...] = FETCHED,
) -> dict[str, Any]:
    """A pod that prints `paths` of the run directory at `run_path` (inside the pod) as base64
    tar.gz on its stdout, then ends."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {LABEL_READER: run}},
        "spec": {
            "restartPolicy": "Never",
            "enableServiceLinks": False,
            "automountServiceAccountToken": False,
            "securityContext": pod_security_context(security or PodSecurity()),
            "containers": [
                {
                    "name": "reader",
                    "image": image,
                    "command": ["sh", "-c", reader_script(run_path, paths)],
                    "securityContext": container_security_context(),
                    "volumeMounts": [{"name": "data", "mountPath": DATA_MOUNT, "readOnly": True}],
                    "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}},
                }
            ],
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}],
        },
    }
