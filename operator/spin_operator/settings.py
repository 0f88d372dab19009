"""Settings of this operator deployment (Helm values → environment variables), read once by
`DeploymentSettings.from_env` and passed down: the images and pull policy used when a spec names
none, which training launchers the deployment allows, whether Kueue's Workloads are the
operator's to (de)activate, and the process's own knobs (namespaces, ports, resync, progress
polling, watch timeout, server-side filter). No other module of the operator reads the
environment."""

from __future__ import annotations

import os
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field

from spin_runtime.api.spec import Training

DEFAULT_GENERATOR_IMAGE = "spinrun/spinrun-generator:0.1.0"
DEFAULT_TRAINER_IMAGE = "spinrun/spinrun-trainer:0.1.0"
#: Seconds between looks at an unfinished run without any event (missed events, slow clocks).
DEFAULT_RESYNC_SECONDS = 20.0
#: Seconds between two polls of one run's pods' progress; also how soon a run with a step
#: reporting progress is looked at again.
DEFAULT_PROGRESS_SECONDS = 15.0
#: Seconds a watch request asks the API server to keep the stream open (whole seconds).
DEFAULT_WATCH_TIMEOUT_SECONDS = 300
#: Seconds between two looks at the SpinRun CRD's identity (a CRD applied again restarts kopf).
DEFAULT_CRD_CHECK_SECONDS = 10.0
#: Seconds between two audits of kopf's indexes against the API (children lost in a watch gap).
DEFAULT_INDEX_AUDIT_SECONDS = 60.0
DEFAULT_METRICS_PORT = 8080
DEFAULT_LIVENESS = "http://0.0.0.0:8081/healthz"
#: Every value of `spec.training.launcher`, as the spec declares them.
LAUNCHER_NAMES: tuple[str, ...] = typing.get_args(Training.model_fields["launcher"].annotation)


def launcher_switch_env(launcher: str) -> str:
    """The environment variable that allows or forbids a launcher, SPIN_<LAUNCHER>_ENABLED
    (Helm `<launcher>.enabled`, which also grants the RBAC to create its objects)."""
    return f"SPIN_{launcher.upper()}_ENABLED"


@dataclass(frozen=True)
class DeploymentSettings:
    """What the operator deployment decides when the spec is silent."""

    generator_image: str = DEFAULT_GENERATOR_IMAGE
    trainer_image: str = DEFAULT_TRAINER_IMAGE
    pull_policy: str = "IfNotPresent"
    #: launcher name → whether this deployment may create its objects. A launcher not listed
    #: (env unset, e.g. the operator run locally) is decided by whether its CRD is served.
    launchers_enabled: Mapping[str, bool] = field(default_factory=dict)
    #: Kueue is installed and the operator may read and patch its Workloads (Helm `kueue.enabled`):
    #: a queued run is then suspended and resumed through Workload.spec.active, by Kueue's rules.
    kueue: bool = False
    #: The scheduler-plugins Coscheduling plugin is installed and the operator may create PodGroups
    #: (Helm `gangScheduling.enabled`).
    gang_scheduling: bool = False
    #: Namespaces to watch when no flag names them (WATCH_NAMESPACES, comma-separated; empty = all).
    watch_namespaces: tuple[str, ...] = ()
    #: Default of --metrics-port (SPIN_METRICS_PORT; 0 disables the Prometheus endpoint).
    metrics_port: int = DEFAULT_METRICS_PORT
    #: Default of --liveness (SPIN_LIVENESS; empty disables kopf's liveness endpoint).
    liveness: str = DEFAULT_LIVENESS
    #: Seconds between looks at an unfinished run without an event (SPIN_RESYNC_SECONDS).
    resync_seconds: float = DEFAULT_RESYNC_SECONDS
    #: Seconds between progress polls of a run's pods (SPIN_PROGRESS_SECONDS; 0 or less: no polling).
    progress_seconds: float = DEFAULT_PROGRESS_SECONDS
    #: timeoutSeconds of the operator's watch requests (SPIN_WATCH_TIMEOUT).
    watch_timeout_seconds: int = DEFAULT_WATCH_TIMEOUT_SECONDS
    #: Whether list/watch of children carry the managed-by label selector (SPIN_SERVER_SIDE_FILTER=false
    #: turns it off, for the benchmark that measures what it saves).
    server_side_filter: bool = True
    #: Seconds between looks at the SpinRun CRD's uid (SPIN_CRD_CHECK_SECONDS; 0 or less: never):
    #: a CRD deleted and applied again restarts kopf, which may otherwise stop watching SpinRuns.
    crd_check_seconds: float = DEFAULT_CRD_CHECK_SECONDS
    #: Seconds between audits of kopf's indexes against the API (SPIN_INDEX_AUDIT_SECONDS; 0 or
    #: less: never): a child deleted during a watch gap stays indexed; found twice, kopf restarts.
    index_audit_seconds: float = DEFAULT_INDEX_AUDIT_SECONDS

    def launcher_enabled(self, launcher: str) -> bool | None:
        """True/False as configured; None when the deployment does not say."""
        return self.launchers_enabled.get(launcher)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> DeploymentSettings:
        """Read SPIN_GENERATOR_IMAGE, SPIN_TRAINER_IMAGE, SPIN_IMAGE_PULL_POLICY,
        SPIN_<LAUNCHER>_ENABLED, SPIN_KUEUE_ENABLED and SPIN_GANG_SCHEDULING_ENABLED (true/false;
        unset or empty = not configured), WATCH_NAMESPACES, SPIN_METRICS_PORT, SPIN_LIVENESS,
        SPIN_RESYNC_SECONDS, SPIN_PROGRESS_SECONDS, SPIN_CRD_CHECK_SECONDS and
        SPIN_INDEX_AUDIT_SECONDS (unreadable = the default), SPIN_WATCH_TIMEOUT and SPIN_SERVER_SIDE_FILTER (anything but false = on)."""
        env = os.environ if env is None else env
        switches = {}
        for name in LAUNCHER_NAMES:
            flag = _env_flag(launcher_switch_env(name), env.get(launcher_switch_env(name)))
            if flag is not None:
                switches[name] = flag
        return cls(
            generator_image=env.get("SPIN_GENERATOR_IMAGE") or DEFAULT_GENERATOR_IMAGE,
            trainer_image=env.get("SPIN_TRAINER_IMAGE") or DEFAULT_TRAINER_IMAGE,
            pull_policy=env.get("SPIN_IMAGE_PULL_POLICY") or "IfNotPresent",
            launchers_enabled=switches,
            kueue=bool(_env_flag("SPIN_KUEUE_ENABLED", env.get("SPIN_KUEUE_ENABLED"))),
            gang_scheduling=bool(_env_flag("SPIN_GANG_SCHEDULING_ENABLED", env.get("SPIN_GANG_SCHEDULING_ENABLED"))),
            watch_namespaces=tuple(n.strip() for n in env.get("WATCH_NAMESPACES", "").split(",") if n.strip()),
            metrics_port=int(env.get("SPIN_METRICS_PORT", str(DEFAULT_METRICS_PORT))),
            liveness=env.get("SPIN_LIVENESS", DEFAULT_LIVENESS),
            resync_seconds=float(env.get("SPIN_RESYNC_SECONDS", str(DEFAULT_RESYNC_SECONDS))),
            progress_seconds=_lenient_seconds(env.get("SPIN_PROGRESS_SECONDS", ""), DEFAULT_PROGRESS_SECONDS),
            # whole seconds: the apiserver parses timeoutSeconds as an integer (300.0 is a 400 Bad Request)
            watch_timeout_seconds=int(env.get("SPIN_WATCH_TIMEOUT", str(DEFAULT_WATCH_TIMEOUT_SECONDS))),
            server_side_filter=env.get("SPIN_SERVER_SIDE_FILTER", "true").strip().lower() != "false",
            crd_check_seconds=_lenient_seconds(env.get("SPIN_CRD_CHECK_SECONDS", ""), DEFAULT_CRD_CHECK_SECONDS),
            index_audit_seconds=_lenient_seconds(env.get("SPIN_INDEX_AUDIT_SECONDS", ""), DEFAULT_INDEX_AUDIT_SECONDS),
        )


def _env_flag(variable: str, value: str | None) -> bool | None:
    """"true"/"1"/"yes"/"on" → True, "false"/"0"/"no"/"off" → False, unset/empty → None."""
    v = (value or "").strip().lower()
    if not v:
        return None
    if v in ("true", "1", "yes", "on"):
        return True
    if v in ("false", "0", "no", "off"):
        return False
    raise ValueError(f"{variable} must be true or false, not {value!r}")


def _lenient_seconds(raw: str, default: float) -> float:
    """A number of seconds, the default when unset or unreadable (progress is a courtesy: a typo
    must not stop the operator)."""
    try:
        return float(raw) if raw.strip() else default
    except ValueError:
        return default
