"""What iteration k starts from, which data window it trains on and with which learning rate,
β and epochs. Pure: no I/O."""

from __future__ import annotations

from dataclasses import dataclass

from spin_runtime.api.spec import ModelSource, SpinRunSpec, SyntheticData, schedule_for
from spin_runtime.plan.layout import model_dir, sft_model_dir


def generated_by_run(spec: SpinRunSpec, k: int) -> bool:
    """True when iteration k's synthetic data is generated here (not given in the spec)."""
    return synthetic_data_for(spec, k) is None


def synthetic_data_for(spec: SpinRunSpec, k: int) -> SyntheticData | None:
    """The pre-generated data given for iteration k, if any."""
    for d in spec.synthetic_data:
        if d.iteration == k:
            return d
    return None


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


def sft_start_model(spec: SpinRunSpec, k: int) -> ModelRef:
    """The model iteration k's continued-SFT arm starts from: the arm's previous model, or the
    run's start model at startIteration (both arms start from the same model)."""
    if k > spec.start_iteration:
        return ModelRef(run_path=sft_model_dir(k - 1))
    return start_model(spec, k)


def sft_learning_rate(spec: SpinRunSpec, k: int) -> float:
    """The arm's learning rate in iteration k: evaluation.sftBaseline.learningRate, or SPIN's."""
    return spec.evaluation.sft_baseline.learning_rate or schedule_for(spec, k).learning_rate


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
