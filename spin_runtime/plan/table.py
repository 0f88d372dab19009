"""The plan as a table for `spin plan`: per iteration the start model, data window, lr, β,
epochs, loss and steps."""

from __future__ import annotations

from spin_runtime.api.spec import SpinRun, SpinRunSpec
from spin_runtime.plan import hparams, stages


def _window(ks: tuple[int, ...]) -> str:
    return "+".join(f"syn({k})" for k in ks) or "-"


def _steps(run: SpinRun, k: int) -> str:
    steps = stages.steps_for_iteration(run.spec, k)
    shards = [s for s in steps if s.name == "generate"]
    names = [s.name for s in steps if s.name != "generate"]
    head = [f"generate x{len(shards)}" if len(shards) > 1 else "generate"] if shards else ["(data given)"]
    return " > ".join(head + names)


def _epochs(spec: SpinRunSpec, epochs: float) -> str:
    """The epochs column: the schedule's, or "N of M" when training stops after epoch N."""
    stop = spec.training.stop_epoch
    return f"{epochs:g}" if stop is None else f"{stop} of {epochs:g}"


def plan_table(run: SpinRun) -> str:
    """A readable table of the run's iterations: start model, data window, lr, β, epochs,
    loss and steps."""
    spec = run.spec
    header = ["iter", "start model", "data window", "lr", "β", "epochs", "loss", "steps"]
    rows = [header]
    for k in stages.iterations(spec):
        iter_hparams = hparams.hparams(spec, k)
        rows.append(
            [
                str(k),
                iter_hparams.start_model,
                _window(iter_hparams.window),
                f"{iter_hparams.learning_rate:g}",
                f"{iter_hparams.beta:g}",
                _epochs(spec, iter_hparams.epochs),
                iter_hparams.loss_type,
                _steps(run, k),
            ]
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    total = len(stages.all_steps(spec))
    training = spec.training
    where = "CPU" if training.gpus_per_node == 0 else f"{training.nodes} node(s) x {training.gpus_per_node} GPU(s)"
    title = (
        f"SpinRun {run.metadata.name}: iterations {spec.start_iteration}..{spec.iterations - 1}, "
        f"{total} steps, training on {where}"
    )
    return "\n".join([title, "", *lines])
