"""The run plan: which steps each iteration has, their `spin <step>` command lines, the
per-iteration hyperparameters, the data window and the run-directory layout. Pure: no I/O.

Both drivers (the local runner and the operator) execute exactly these steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from spin_runtime.spec import ModelSource, SpinRunSpec, SyntheticData, schedule_for

StepName = Literal["generate", "convert", "train", "evaluate"]
STEP_ORDER: tuple[StepName, ...] = ("generate", "convert", "train", "evaluate")

SPEC_FILE = "spec.json"
MODEL_CACHE_DIR = "cache/models"


# --------------------------------------------------------------------------- layout


def iter_dir(k: int) -> str:
    """Folder of iteration k inside the run directory."""
    return f"iter-{k}"


def shard_path(k: int, shard: int, shards: int) -> str:
    """Generated answers of one shard (JSONL, rewritten whole on rerun)."""
    return f"{iter_dir(k)}/generated/shard-{shard}-of-{shards}.jsonl"


def data_path(k: int, split: Literal["train", "test"]) -> str:
    """Converted parquet with columns prompt, real, generated."""
    return f"{iter_dir(k)}/data/{split}.parquet"


def model_dir(k: int) -> str:
    """HF-format checkpoint trained in iteration k."""
    return f"{iter_dir(k)}/model"


def metrics_path(k: int) -> str:
    """Train and eval metrics of iteration k."""
    return f"{iter_dir(k)}/metrics.json"


def logs_dir(k: int) -> str:
    """TensorBoard logs of iteration k's training."""
    return f"{iter_dir(k)}/logs"


def done_path(k: int) -> str:
    """Written last, once every step of iteration k is done."""
    return f"{iter_dir(k)}/DONE"


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


def generated_by_run(spec: SpinRunSpec, k: int) -> bool:
    """True when iteration k's synthetic data is generated here (not given in the spec)."""
    return synthetic_data_for(spec, k) is None


def synthetic_data_for(spec: SpinRunSpec, k: int) -> SyntheticData | None:
    """The pre-generated data given for iteration k, if any."""
    for d in spec.synthetic_data:
        if d.iteration == k:
            return d
    return None


def iterations(spec: SpinRunSpec) -> range:
    """The iterations this run executes."""
    return range(spec.start_iteration, spec.iterations)


def steps_for_iteration(spec: SpinRunSpec, k: int) -> list[Step]:
    """Steps of iteration k in order: generate shards (unless data is given), convert,
    train, evaluate (when enabled)."""
    steps: list[Step] = []
    if generated_by_run(spec, k):
        n = spec.generation.shards
        steps += [Step(k, "generate", i, n) for i in range(n)]
    steps.append(Step(k, "convert"))
    steps.append(Step(k, "train"))
    if spec.evaluation.enabled:
        steps.append(Step(k, "evaluate"))
    return steps


def all_steps(spec: SpinRunSpec) -> list[Step]:
    """Every step of the run in execution order."""
    return [s for k in iterations(spec) for s in steps_for_iteration(spec, k)]


def last_step(spec: SpinRunSpec, k: int) -> Step:
    """The step whose completion completes iteration k (it also writes DONE)."""
    return steps_for_iteration(spec, k)[-1]


def next_steps(spec: SpinRunSpec, done: set[str]) -> list[Step]:
    """The steps to run now given the keys of finished steps: all pending shards of the
    earliest unfinished stage (shards run in parallel), else the next single step."""
    for k in iterations(spec):
        for name in STEP_ORDER:
            stage = [s for s in steps_for_iteration(spec, k) if s.name == name]
            pending = [s for s in stage if s.key not in done]
            if pending:
                return pending
    return []


# --------------------------------------------------------------------------- models & data


@dataclass(frozen=True)
class ModelRef:
    """The model an iteration starts from: a spec source or a checkpoint in the run dir."""

    source: ModelSource | None = None
    run_path: str | None = None

    def describe(self) -> str:
        return self.source.describe() if self.source else f"<run>/{self.run_path}"


def start_model(spec: SpinRunSpec, k: int) -> ModelRef:
    """The model iteration k starts from (= the generator and the frozen opponent):
    the previous iteration's checkpoint, or startCheckpoint/model at startIteration."""
    if k > spec.start_iteration:
        return ModelRef(run_path=model_dir(k - 1))
    return ModelRef(source=spec.start_checkpoint or spec.model)


def data_window(spec: SpinRunSpec, k: int) -> list[int]:
    """Iterations whose synthetic data iteration k trains on: k−w+1..k (the paper: syn(k−1) ∪
    syn(k)), keeping only those this run produces or the spec provides."""
    first = max(0, k - spec.data_window + 1)
    return [
        j
        for j in range(first, k + 1)
        if j >= spec.start_iteration or synthetic_data_for(spec, j) is not None
    ]


@dataclass(frozen=True)
class IterationHparams:
    """Hyperparameters resolved for one iteration."""

    iteration: int
    learning_rate: float
    beta: float
    epochs: float
    loss_type: str
    window: tuple[int, ...]
    start_model: str


def hparams(spec: SpinRunSpec, k: int) -> IterationHparams:
    """The resolved hyperparameters of iteration k (schedule entry, loss, window)."""
    entry = schedule_for(spec, k)
    return IterationHparams(
        iteration=k,
        learning_rate=entry.learning_rate,
        beta=entry.beta,
        epochs=entry.epochs,
        loss_type=spec.training.loss_type,
        window=tuple(data_window(spec, k)),
        start_model=start_model(spec, k).describe(),
    )
