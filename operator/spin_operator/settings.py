"""Settings of this operator deployment (Helm values → environment variables): the images and
pull policy used when a spec names none, which training launchers the deployment allows, and
whether Kueue's Workloads are the operator's to (de)activate."""

from __future__ import annotations

import os
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field

from spin_runtime.api.spec import Training

DEFAULT_GENERATOR_IMAGE = "spinrun/spinrun-generator:0.1.0"
DEFAULT_TRAINER_IMAGE = "spinrun/spinrun-trainer:0.1.0"
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

    def launcher_enabled(self, launcher: str) -> bool | None:
        """True/False as configured; None when the deployment does not say."""
        return self.launchers_enabled.get(launcher)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> DeploymentSettings:
        """Read SPIN_GENERATOR_IMAGE, SPIN_TRAINER_IMAGE, SPIN_IMAGE_PULL_POLICY and
        SPIN_<LAUNCHER>_ENABLED, SPIN_KUEUE_ENABLED and SPIN_GANG_SCHEDULING_ENABLED (true/false;
        unset or empty = not configured)."""
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
