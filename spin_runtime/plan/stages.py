"""The steps of a run in order (iteration, step, shard) and their `spin <step>` command lines.
Pure: no I/O. Both drivers (the local runner and the operator) execute exactly these steps."""

from __future__ import annotations

from dataclasses import dataclass

from spin_runtime.api.spec import SpinRunSpec
from spin_runtime.api.status import STEP_ORDER, StepName
from spin_runtime.plan.hparams import generated_by_run
from spin_runtime.plan.layout import iter_dir

# --------------------------------------------------------------------------- steps


@dataclass(frozen=True)
class Step:
    """One unit of work: a `spin <name>` invocation for one iteration (and shard)."""

    iteration: int
    name: StepName
    shard: int | None = None
    shards: int | None = None

    @property
    def key(self) -> str:
        """Stable identifier, e.g. `it0/generate-1-of-4` or `it2/train`."""
        if self.name == "generate":
            return f"it{self.iteration}/generate-{self.shard}-of-{self.shards}"
        return f"it{self.iteration}/{self.name}"

    @property
    def marker(self) -> str:
        """Completion marker (relative to the run directory), written after the outputs."""
        if self.name == "generate":
            return f"{iter_dir(self.iteration)}/markers/generate-{self.shard}-of-{self.shards}.done"
        return f"{iter_dir(self.iteration)}/markers/{self.name}.done"

    def argv(self, run_dir: str, *, shard_from_env: bool = False) -> list[str]:
        """The command line of this step. With `shard_from_env` the shard index is left out
        and read from JOB_COMPLETION_INDEX (a Kubernetes Indexed Job)."""
        args = ["spin", self.name, "--run-dir", run_dir, "--iteration", str(self.iteration)]
        if self.name == "generate":
            args += ["--shards", str(self.shards)]
            if not shard_from_env:
                args += ["--shard", str(self.shard)]
        return args



def iterations(spec: SpinRunSpec) -> range:
    """The iterations this run executes."""
    return range(spec.start_iteration, spec.iterations)


@dataclass(frozen=True)
class Stage:
    """One stage of an iteration: a step and its shards (several only for generate). The local
    driver runs its steps as processes; the operator runs the whole stage as one Job."""

    iteration: int
    name: StepName
    shards: int = 1

    @property
    def key(self) -> str:
        """Stable identifier, e.g. `it0/generate` or `it2/train`."""
        return f"it{self.iteration}/{self.name}"

    @property
    def steps(self) -> tuple[Step, ...]:
        """The stage's steps: one per shard for generate, else the single step."""
        if self.name == "generate":
            return tuple(Step(self.iteration, "generate", i, self.shards) for i in range(self.shards))
        return (Step(self.iteration, self.name),)


def _runs(spec: SpinRunSpec, k: int, name: StepName) -> bool:
    if name == "generate":
        return generated_by_run(spec, k)
    if name == "sft":
        return spec.evaluation.sft_baseline.enabled
    if name == "evaluate":
        return spec.evaluation.enabled
    return True


def stages_for_iteration(spec: SpinRunSpec, k: int) -> list[Stage]:
    """Stages of iteration k in order: generate (unless the spec gives the data), convert,
    train, sft (the continued-SFT arm, when evaluation.sftBaseline asks), evaluate (when enabled)."""
    return [
        Stage(k, name, spec.generation.shards if name == "generate" else 1)
        for name in STEP_ORDER
        if _runs(spec, k, name)
    ]


def run_stages(spec: SpinRunSpec) -> list[Stage]:
    """Every stage of the run in execution order: the one walk both drivers follow."""
    return [st for k in iterations(spec) for st in stages_for_iteration(spec, k)]


def steps_for_iteration(spec: SpinRunSpec, k: int) -> list[Step]:
    """Steps of iteration k in order (the stages' steps, shards expanded)."""
    return [s for st in stages_for_iteration(spec, k) for s in st.steps]


def all_steps(spec: SpinRunSpec) -> list[Step]:
    """Every step of the run in execution order."""
    return [s for st in run_stages(spec) for s in st.steps]


def last_step(spec: SpinRunSpec, k: int) -> Step:
    """The step whose completion completes iteration k (it also writes DONE)."""
    return stages_for_iteration(spec, k)[-1].steps[-1]
