"""`BuildContext`: what every builder needs besides the spec (the owning run, the iteration,
the attempt, whether Jobs start suspended, the deployment's settings)."""

from __future__ import annotations

from dataclasses import dataclass, field

from spin_operator.builders.meta import RunRef
from spin_operator.settings import DeploymentSettings
from spin_runtime.api.spec import SpinRunSpec


@dataclass(frozen=True)
class BuildContext:
    """The inputs of every builder of one iteration's objects."""

    run: RunRef
    spec: SpinRunSpec
    iteration: int
    attempt: int = 0
    suspend: bool = False
    settings: DeploymentSettings = field(default_factory=DeploymentSettings)
