"""What every step receives: the run loaded once from the run directory, the step, this process's
rank, the iteration's resolved hyperparameters and start model, and the marker helpers (skip
when done, rerun when forced or stale, mark done last)."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from spin_runtime.api.spec import SpinRun, SpinRunSpec
from spin_runtime.plan import hparams
from spin_runtime.plan.stages import Step
from spin_runtime.store import rundir


def distributed_env(env: dict[str, str] | os._Environ[str] | None = None) -> tuple[int, int]:
    """(global rank, world size) from torchrun's environment; (0, 1) without torchrun."""
    env = os.environ if env is None else env
    return int(env.get("RANK", "0")), int(env.get("WORLD_SIZE", "1"))


@dataclass
class StepContext:
    """One step of one run, as the step's process sees it."""

    run_dir: Path
    run: SpinRun
    step: Step
    rank: int = 0
    world_size: int = 1
    log_prefix: str = field(default="")

    @classmethod
    def open(cls, run_dir: Path, step: Step) -> StepContext:
        """Load the run stored in `run_dir` (once) for `step`."""
        from spin_runtime.steps.step_log import keep_step_log

        run_dir = Path(run_dir)
        rank, world = distributed_env()
        run = rundir.load_run(run_dir)
        keep_step_log(run_dir, step, rank)  # in a cluster: the output on the run volume too
        return cls(run_dir, run, step, rank, world, f"spin {step.name}")

    @property
    def spec(self) -> SpinRunSpec:
        return self.run.spec

    @property
    def iteration(self) -> int:
        return self.step.iteration

    @property
    def is_main(self) -> bool:
        """Global rank 0: the process that writes outputs, metrics and markers."""
        return self.rank == 0

    @cached_property
    def hparams(self) -> hparams.IterationHparams:
        """The iteration's resolved learning rate, β, epochs, loss and data window."""
        return hparams.hparams(self.spec, self.iteration)

    @cached_property
    def start_model(self) -> hparams.ModelRef:
        """The model the iteration starts from (its generator and frozen opponent)."""
        return hparams.start_model(self.spec, self.iteration)

    def path(self, rel: str) -> Path:
        """A path inside the run directory."""
        return self.run_dir / rel

    def log(self, msg: str) -> None:
        print(f"{self.log_prefix}: {msg}", file=sys.stderr, flush=True)

    def should_run(self, force: bool) -> bool:
        """False when the step is done for this run and spec (and not forced). A forced rerun, or
        a marker from another run or another spec (said why), clears the marker first."""
        state = rundir.marker_state(self.run_dir, self.run, self.step)
        if state.done and not force:
            self.log(f"{self.step.key}: already done ({self.step.marker} exists); pass --force to redo it")
            return False
        if state.why_not:
            self.log(f"{self.step.key}: running again: {state.why_not}")
        if (force or state.why_not) and self.is_main:
            rundir.clear_marker(self.run_dir, self.step)
        return True

    def mark_done(self, info: dict[str, Any] | None = None) -> None:
        """Write the step's marker (rank 0 only), after every output."""
        if self.is_main:
            rundir.mark_done(self.run_dir, self.run, self.step, info)

    def update_metrics(self, section: str, values: dict[str, Any]) -> None:
        """Set one section of the iteration's metrics.json (rank 0 only)."""
        if self.is_main:
            rundir.update_metrics(self.run_dir, self.iteration, section, values)
