"""`spin-operator render` (also `spin render`, registered through the `spin.commands` entry
point): every Kubernetes object the operator would create for a SpinRun, owner references
included, as one YAML multi-document stream (all iterations, or one)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

import yaml

from spin_operator import launchers
from spin_operator.builders.context import BuildContext
from spin_operator.builders.meta import PLACEHOLDER_UID, RunRef
from spin_operator.builders.storage import persistent_volume_claim, spec_config_map
from spin_operator.settings import DeploymentSettings
from spin_runtime.api.spec import SpinRun
from spin_runtime.plan import stages


def render_objects(
    run: SpinRun,
    namespace: str = "default",
    iteration: int | None = None,
    settings: DeploymentSettings | None = None,
    uid: str = PLACEHOLDER_UID,
) -> list[dict[str, Any]]:
    """The objects of all iterations (or only `iteration`), in creation order, owned by a run
    with this `uid`. Jobs are shown at attempt 0 and suspended only when spec.suspend is set."""
    spec = run.spec
    ref = RunRef(name=run.metadata.name, namespace=run.metadata.namespace or namespace, uid=uid)
    its = list(stages.iterations(spec))
    if iteration is not None:
        if iteration not in its:
            raise ValueError(f"--iteration {iteration} is not run by this spec: choose one of {its[0]}..{its[-1]}")
        its = [iteration]
    settings = settings or DeploymentSettings.from_env()
    objs: list[dict[str, Any]] = []
    pvc = persistent_volume_claim(ref, spec)
    if pvc is not None and iteration is None:
        objs.append(pvc)
    for k in its:
        objs.append(spec_config_map(ref, spec, k))
        ctx = BuildContext(run=ref, spec=spec, iteration=k, suspend=spec.suspend, settings=settings)
        for stage in stages.stages_for_iteration(spec, k):
            objs.extend(launchers.step_objects(ctx, stage))
    return objs


class _Dumper(yaml.SafeDumper):
    """Safe dumper writing multi-line strings (the spec.json in ConfigMaps) as literal blocks."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def dump_all(objs: list[dict[str, Any]]) -> str:
    """YAML multi-document stream, keys in builder order."""
    return yaml.dump_all(objs, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=120)


def render_yaml(run: SpinRun, namespace: str = "default", iteration: int | None = None, uid: str = PLACEHOLDER_UID) -> str:
    """What `spin render FILE [--namespace NS] [--iteration K] [--uid UID]` prints."""
    head = ""
    if uid == PLACEHOLDER_UID:
        head = (
            f"# ownerReferences carry the placeholder uid {PLACEHOLDER_UID}: the API server gives the SpinRun\n"
            "# its uid on creation (--uid shows a real one). Objects with an ownerReference to the SpinRun\n"
            "# are deleted with it; the others (a new claim without deleteWithRun) outlive it.\n"
        )
    return head + dump_all(render_objects(run, namespace=namespace, iteration=iteration, uid=uid))


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:  # type: ignore[type-arg]
    """Register `render` on a command line's subparsers (`spin` and `spin-operator`)."""
    s = sub.add_parser("render", help="print the Kubernetes objects the operator would create")
    s.add_argument("file")
    s.add_argument("--namespace", default="default")
    s.add_argument("--iteration", type=int, default=None, help="only this iteration's objects")
    s.add_argument("--uid", default=PLACEHOLDER_UID, help="uid of the SpinRun in ownerReferences (default: a placeholder)")
    s.set_defaults(func=_cmd_render)
    return s


def _cmd_render(args: argparse.Namespace) -> int:
    from spin_runtime.api.load import load_or_report
    from spin_runtime.errors import EXIT_USAGE

    run = load_or_report(args.file)
    if run is None:
        return EXIT_USAGE
    sys.stdout.write(render_yaml(run, namespace=args.namespace, iteration=args.iteration, uid=args.uid))
    return 0
