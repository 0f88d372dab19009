"""`BuildContext`: what every builder needs besides the spec (the owning run, the iteration,
the attempt, whether Jobs start suspended, the deployment's settings)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from spin_operator.builders.meta import RunRef, job_name, metadata, workload_annotations
from spin_operator.settings import DeploymentSettings
from spin_runtime.api.spec import SpinRunSpec
from spin_runtime.api.status import StepName


@dataclass(frozen=True)
class BuildContext:
    """The inputs of every builder of one iteration's objects."""

    run: RunRef
    spec: SpinRunSpec
    iteration: int
    attempt: int = 0
    suspend: bool = False
    settings: DeploymentSettings = field(default_factory=DeploymentSettings)

    def workload_metadata(self, step: StepName) -> dict[str, Any]:
        """ObjectMeta of the iteration's workload for `step` (a Job or a launcher's training
        object): its name, labels, Kueue queue, attempt/generation/suspension annotations, owner."""
        return metadata(
            self.run,
            job_name(self.run.name, self.iteration, step),
            iteration=self.iteration,
            step=step,
            queue_name=self.spec.queue_name,
            annotations=workload_annotations(self.attempt, self.run.generation, self.suspend),
        )
