"""The `spin` command line: thin wrappers over the runtime modules.

`spin run|generate|convert|train|evaluate|report|status|validate|plan|preview|crd|init-run`, plus the
commands other packages register (`spin render`, from the operator). Heavy modules (torch,
transformers) are imported only by the commands that need them, so `spin validate` and
`spin crd` start fast.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

#: Entry-point group through which other packages add `spin` subcommands.
PLUGIN_GROUP = "spin.commands"


def _shard_default() -> int | None:
    value = os.environ.get("JOB_COMPLETION_INDEX")
    return int(value) if value not in (None, "") else None


def _cmd_validate(args: argparse.Namespace) -> int:
    from spin_runtime.api.load import SpecError, load_spinrun

    status = 0
    for f in args.files:
        try:
            load_spinrun(Path(f))
            print(f"{f}: valid")
        except SpecError as e:
            status = 2
            for problem in e.problems:
                print(f"{f}: {problem}", file=sys.stderr)
    return status


def _cmd_crd(args: argparse.Namespace) -> int:
    from spin_runtime.api.crd import crd_yaml

    sys.stdout.write(crd_yaml())
    return 0


def _cmd_plan(args: argparse.Namespace) -> int:
    from spin_runtime.api.load import load_or_report
    from spin_runtime.errors import EXIT_USAGE
    from spin_runtime.plan.table import plan_table

    run = load_or_report(args.file)
    if run is None:
        return EXIT_USAGE
    print(plan_table(run))
    print()
    print(_estimate_text(run, args))
    return 0


def _params_arg(text: str) -> int:
    """`--params`: a count such as 7241732096, 7.2e9, 7B or 135M."""
    t = text.strip().upper().replace("_", "").replace(",", "")
    scale = {"B": 1e9, "M": 1e6, "K": 1e3}.get(t[-1:], 1.0)
    try:
        value = float(t[:-1] if scale != 1.0 else t) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"--params must be a parameter count such as 7.2e9, 7B or 135M (got {text!r})") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"--params must be positive (got {text!r})")
    return int(value)


def _fraction_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"--mfu must be a fraction in (0, 1], e.g. 0.35 (got {text!r})")
    return value


def _estimate_text(run, args: argparse.Namespace) -> str:  # type: ignore[no-untyped-def]
    from spin_runtime import sizing
    from spin_runtime.plan import estimate

    spec = run.spec
    params = sizing.model_params(spec.start_checkpoint or spec.model, args.params)
    assumptions = estimate.Assumptions(
        gpu=args.gpu, params=params, mfu=args.mfu, gen_tokens_per_s=args.gen_tokens_per_s
    )
    measured, note = sizing.measure_run(spec, Path(args.run_dir)) if args.run_dir else ({}, None)
    est = estimate.estimate_run(spec, assumptions, sizing.prompt_counts(spec), measured)
    if note:
        est.notes.append(note)
    return estimate.format_estimate(spec, est)


def _cmd_preview(args: argparse.Namespace) -> int:
    from spin_runtime.api.load import load_or_report
    from spin_runtime.errors import EXIT_USAGE
    from spin_runtime.preview import run_preview

    run = load_or_report(args.file)
    if run is None:
        return EXIT_USAGE
    spec = run.spec
    if args.iteration is not None and not spec.start_iteration <= args.iteration < spec.iterations:
        print(
            f"spin preview: --iteration must be within {spec.start_iteration}..{spec.iterations - 1} "
            f"(startIteration..iterations-1 of {args.file}), got {args.iteration}",
            file=sys.stderr,
        )
        return 2
    run_dir = Path(args.run_dir) if args.run_dir else None
    print(run_preview(spec, rows=args.rows, iteration=args.iteration, run_dir=run_dir, generate=args.generate, tokens=args.tokens))
    return 0


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"--rows must be a whole number of at least 1 (got {text!r})")
    return value


def _cmd_generate(args: argparse.Namespace) -> int:
    from spin_runtime.steps.generate import run_generate

    shard = args.shard if args.shard is not None else _shard_default()
    if shard is None:
        print("spin generate: give --shard or set JOB_COMPLETION_INDEX", file=sys.stderr)
        return 2
    run_generate(Path(args.run_dir), args.iteration, shard, args.shards, force=args.force)
    return 0


def _cmd_convert(args: argparse.Namespace) -> int:
    from spin_runtime.plan.stages import Step
    from spin_runtime.steps import step_progress
    from spin_runtime.steps.convert import run_convert

    progress = step_progress.for_step(Path(args.run_dir), Step(args.iteration, "convert"))
    info = run_convert(Path(args.run_dir), args.iteration, force=args.force)
    progress.finish(_convert_summary(info))
    return 0


def _convert_summary(info: dict) -> str:
    if not info:
        return "already done"
    text = f"{info.get('train_rows', 0)} train + {info.get('test_rows', 0)} held-out pairs"
    if info.get("identical_train_pairs"):
        text += f" ({info['identical_train_pairs']} with generated == real)"
    return text


def _train_summary(metrics: dict | None) -> str:
    if not metrics:
        return "already done"
    summary = metrics.get("summary") or {}
    parts = [f"{summary.get('steps', 0)} steps"]
    for key, name, fmt in (("final_loss", "loss", "{:.3f}"), ("final_margin", "margin", "{:.3f}"),
                           ("tokens_per_second", "tok/s", "{:.0f}")):  # fmt: skip
        if summary.get(key) is not None:
            value = fmt.format(summary[key])
            parts.append(f"{value} {name}" if name == "tok/s" else f"{name} {value}")
    return ", ".join(parts)


def _cmd_train(args: argparse.Namespace) -> int:
    from spin_runtime.plan.stages import Step
    from spin_runtime.steps import step_progress
    from spin_runtime.steps.context import distributed_env
    from spin_runtime.steps.train import run_train

    step = Step(args.iteration, "train")
    progress = step_progress.for_step(Path(args.run_dir), step, unit="steps", rank=distributed_env()[0])
    progress.phase("loading the data and the models")
    callbacks = [step_progress.train_callback(progress)]
    metrics = run_train(Path(args.run_dir), args.iteration, force=args.force, callbacks=callbacks)
    progress.finish(_train_summary(metrics))
    if metrics is not None:  # rank 0, trained now: the report, unless an evaluate step follows to write it
        from spin_runtime.store import rundir

        if not rundir.load_run(Path(args.run_dir)).spec.evaluation.enabled:
            _update_report(Path(args.run_dir))
    return 0


def _cmd_sft(args: argparse.Namespace) -> int:
    from spin_runtime.plan.stages import Step
    from spin_runtime.steps import step_progress
    from spin_runtime.steps.context import distributed_env
    from spin_runtime.steps.sft import run_sft

    prog = step_progress.for_step(Path(args.run_dir), Step(args.iteration, "sft"), unit="steps", rank=distributed_env()[0])
    prog.phase("loading the data and the arm's model")
    metrics = run_sft(Path(args.run_dir), args.iteration, force=args.force, callbacks=[step_progress.train_callback(prog)])
    prog.finish(_train_summary(metrics))
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from spin_runtime.steps.evaluate import run_evaluate

    if run_evaluate(Path(args.run_dir), args.iteration, force=args.force) is not None:
        _update_report(Path(args.run_dir))
    return 0


def _update_report(run_dir: Path) -> None:
    """The run's report (report/ in the run directory) brought up to date after an iteration, in
    both drivers: on a cluster it is then on the volume, after the pods and the SpinRun are gone.
    A report that cannot be drawn is a warning: the step's work is done and marked."""
    from spin_runtime.report import write_report

    try:
        path = write_report(run_dir)
    except Exception as e:  # the step succeeded; only its report failed
        print(f"spin: warning: the report could not be written ({type(e).__name__}: {e}); "
              f"`spin report {run_dir}` retries it", file=sys.stderr, flush=True)
        return
    print(f"spin: report updated: {path}", file=sys.stderr, flush=True)


def _cmd_report(args: argparse.Namespace) -> int:
    from spin_runtime.report import write_report

    path = write_report(Path(args.run_dir))
    print(f"report: {path}")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from spin_runtime.local import status_text

    print(status_text(Path(args.run_dir)))
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from spin_runtime.api.load import load_or_report
    from spin_runtime.errors import EXIT_USAGE
    from spin_runtime.local import run_local

    run = load_or_report(args.file)
    if run is None:
        return EXIT_USAGE
    run_dir = Path(args.run_dir) if args.run_dir else Path("runs") / run.metadata.name
    return run_local(run, run_dir, rerun_changed=args.rerun_changed, verbose=args.verbose)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `spin`: one group of subcommands per concern, in the order `spin --help`
    lists them; a new subcommand is one `add_parser` call in its group."""
    p = argparse.ArgumentParser(prog="spin", description="Self-Play Fine-Tuning runs, locally or on Kubernetes.")
    sub = p.add_subparsers(dest="command", required=True)
    _add_run_commands(sub)
    _add_step_commands(sub)
    _add_inspection_commands(sub)
    _add_cluster_commands(sub)
    _add_plugin_commands(sub)
    return p


def _add_run_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Commands that drive a whole run: `spin run`."""
    s = sub.add_parser("run", help="run a SpinRun file on this machine (resumes from markers)")
    s.add_argument("file")
    s.add_argument("--run-dir", help="run directory (default: runs/<name>)")
    s.add_argument(
        "--rerun-changed",
        action="store_true",
        help="when the spec changed since steps ran here, run the affected steps (and those after them) again",
    )
    s.add_argument(
        "--verbose", "-v", action="store_true",
        help="show every step's full output (it always goes to iter-<k>/logs/<step>.log)",
    )  # fmt: skip
    s.set_defaults(func=_cmd_run)


def _add_step(sub: argparse._SubParsersAction, name: str, helptext: str, func) -> argparse.ArgumentParser:  # type: ignore[no-untyped-def,type-arg]
    """One step command with the options every step takes: --run-dir, --iteration and --force."""
    sp = sub.add_parser(name, help=helptext)
    sp.add_argument("--run-dir", required=True, help="run directory holding spec.json")
    sp.add_argument("--iteration", type=int, required=True)
    sp.add_argument("--force", action="store_true", help="rerun even when the step's marker exists")
    sp.set_defaults(func=func)
    return sp


def _add_step_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """The steps of an iteration, each run by a driver (`spin run` or the operator's Jobs)."""
    g = _add_step(sub, "generate", "answer shard i of n of the prompts with the iteration's start model", _cmd_generate)
    g.add_argument("--shard", type=int, default=None, help="shard index (default: $JOB_COMPLETION_INDEX)")
    g.add_argument("--shards", type=int, required=True)
    _add_step(sub, "convert", "gather the shards into train/test parquet", _cmd_convert)
    _add_step(sub, "train", "train the iteration's model with the SPIN loss", _cmd_train)
    _add_step(sub, "sft", "train the continued-SFT arm at equal compute (evaluation.sftBaseline)", _cmd_sft)
    _add_step(sub, "evaluate", "held-out metrics of the iteration's model", _cmd_evaluate)


def _add_inspection_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Commands that read a run directory or a SpinRun file and show what it holds or would do."""
    s = sub.add_parser("report", help="plots and a summary table of a run directory")
    s.add_argument("run_dir")
    s.set_defaults(func=_cmd_report)

    s = sub.add_parser("status", help="where a run directory stands")
    s.add_argument("run_dir")
    s.set_defaults(func=_cmd_status)

    s = sub.add_parser("validate", help="check SpinRun files; exit 2 with one line per problem")
    s.add_argument("files", nargs="+")
    s.set_defaults(func=_cmd_validate)

    s = sub.add_parser(
        "plan", help="table of iterations × steps with their hyperparameters, and an estimate of tokens and GPU-hours"
    )
    s.add_argument("file")
    from spin_runtime.plan.estimate import DEFAULT_MFU, PEAK_BF16_FLOPS

    s.add_argument("--gpu", default="H100", type=str.upper, choices=sorted(PEAK_BF16_FLOPS), help="GPU type of the estimate")
    s.add_argument("--params", type=_params_arg, help="parameter count N of the model (e.g. 7.2e9, 7B); default: its config or a table")
    s.add_argument("--mfu", type=_fraction_arg, default=DEFAULT_MFU, help=f"training model-FLOPs utilisation (default {DEFAULT_MFU})")
    s.add_argument("--gen-tokens-per-s", type=float, help="output tokens/s of one generation engine (default: a table)")
    s.add_argument("--run-dir", help="a run directory whose data is measured (tokens generated, training tokens)")
    s.set_defaults(func=_cmd_plan)

    s = sub.add_parser(
        "preview",
        help="the first rows as the model sees them: generation prompt (text, tokens) and the chosen/rejected "
        "training sequences with the prompt/answer boundary and masked positions marked",
    )
    s.add_argument("file")
    s.add_argument("--rows", type=_positive_int, default=3, help="rows to show (default 3)")
    s.add_argument("--iteration", type=int, help="iteration whose rows are shown (default: startIteration)")
    s.add_argument("--run-dir", help="a run directory whose converted pairs (real generated answers) are shown")
    s.add_argument("--generate", action="store_true", help="without run data, decode the rows' answers with the start model")
    s.add_argument("--tokens", action="store_true", help="also one line per token: id, token, attention and loss mask")
    s.set_defaults(func=_cmd_preview)


def _add_cluster_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Commands the operator and its pods use: the init step, the torchrun relay and the CRD."""
    from spin_runtime.steps.init_run import add_parser as add_init_run

    add_init_run(sub)

    s = sub.add_parser(
        "torchrun",
        help="torchrun ARGS..., exiting with a worker's deterministic exit code (2, 65, 66, 78) instead of 1",
        add_help=False,
    )
    s.add_argument("args", nargs=argparse.REMAINDER, help="torchrun's options and `-m spin_runtime.cli <step> ...`")

    s = sub.add_parser("crd", help="print the SpinRun CustomResourceDefinition")
    s.set_defaults(func=_cmd_crd)


def _add_plugin_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Commands other installed packages register under the `spin.commands` entry-point group
    (the operator registers `spin render`), so the runtime never imports them itself."""
    from importlib.metadata import entry_points

    for ep in entry_points(group=PLUGIN_GROUP):
        try:
            add = ep.load()
        except ImportError:  # the package's extra (e.g. the operator's) is not installed
            continue
        add(sub)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `spin` console script."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["torchrun"]:  # torchrun's own options pass through untouched (argparse would take them)
        from spin_runtime.exit_relay import run_torchrun

        return run_torchrun(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted: finished steps keep their markers; rerun to resume", file=sys.stderr)
        return 130
    except Exception as e:  # one readable line for users; SPIN_DEBUG=1 for the traceback
        from spin_runtime.errors import SpinError

        if isinstance(e, SpinError) and not os.environ.get("SPIN_DEBUG"):
            print(f"spin {args.command}: error: {e}", file=sys.stderr)
            return e.exit_code
        raise


if __name__ == "__main__":  # how launchers start each worker: its exit code is recorded for `spin torchrun`
    from spin_runtime.exit_relay import record_exit

    code = main()
    record_exit(code)
    sys.exit(code)
