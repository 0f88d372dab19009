"""`spin render`: every Kubernetes object the operator would create for a SpinRun, as one
YAML multi-document stream (all iterations, or one)."""

from __future__ import annotations

from typing import Any

import yaml

from spin_operator import resources as res
from spin_runtime import plan
from spin_runtime.spec import SpinRun


def render_objects(
    run: SpinRun,
    namespace: str = "default",
    iteration: int | None = None,
    defaults: res.OperatorDefaults | None = None,
) -> list[dict[str, Any]]:
    """The objects of all iterations (or only `iteration`), in creation order. Jobs are shown
    at attempt 0 and suspended only when spec.suspend is set."""
    spec = run.spec
    ref = res.RunRef(name=run.metadata.name, namespace=run.metadata.namespace or namespace)
    its = list(plan.iterations(spec))
    if iteration is not None:
        if iteration not in its:
            raise ValueError(
                f"--iteration {iteration} is not run by this spec: choose one of {its[0]}..{its[-1]}"
            )
        its = [iteration]
    defaults = defaults or res.OperatorDefaults.from_env()
    objs: list[dict[str, Any]] = []
    pvc = res.persistent_volume_claim(ref, spec)
    if pvc is not None and iteration is None:
        objs.append(pvc)
    for k in its:
        objs.append(res.spec_config_map(ref, spec, k))
        ctx = res.BuildContext(run=ref, spec=spec, iteration=k, suspend=spec.suspend, defaults=defaults)
        for step in res.step_names(spec, k):
            objs.extend(res.step_objects(ctx, step))
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


def render_yaml(run: SpinRun, namespace: str = "default", iteration: int | None = None) -> str:
    """What `spin render FILE [--namespace NS] [--iteration K]` prints."""
    return dump_all(render_objects(run, namespace=namespace, iteration=iteration))
