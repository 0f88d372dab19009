"""The operator's imports point down its layers (as kopf's: lower layers never import higher ones):
every module of operator/spin_operator belongs to one layer of LAYERS and imports only from its
own layer or lower ones. Read from the source with ast, no import is executed. The same order is
checked by the workspace's check_layers.py; this copy lets CI catch an upward import."""

from __future__ import annotations

import ast
from pathlib import Path

import spin_operator

#: The operator's layers, lowest first, by the first name under spin_operator (a package or a module).
LAYERS: tuple[tuple[str, ...], ...] = (
    ("settings",),  # what the deployment decides (Helm values → environment)
    ("builders",),  # pure builders of child objects: names, labels, pods, Jobs, claims
    ("kube", "metrics"),  # the API client, observed state, expectations, progress polling; metrics
    ("launchers",),  # the training launchers: protocol, registry, their objects
    ("reconcile",),  # the pure decision, its actions and conditions
    ("executor",),  # carries out the decision's actions through the API
    ("driver",),  # read → decide → act → status, per run
    ("handlers",),  # the kopf registrations
    ("main", "render", "fetch"),  # entry points
)
ROOT = Path(spin_operator.__file__).parent


def layer_of(module: str) -> int | None:
    """The layer index of `spin_operator.<name>...` (None for the package itself or another
    package, -1 for an operator module no layer names)."""
    parts = module.split(".")
    if parts[0] != "spin_operator" or len(parts) < 2:
        return None
    return next((i for i, names in enumerate(LAYERS) if parts[1] in names), -1)


def module_name(path: Path) -> str:
    parts = ["spin_operator", *path.relative_to(ROOT).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, module) of every absolute import, `from a import b` counted as a and a.b (b may be
    a module); imports inside functions included."""
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out += [(node.lineno, node.module)] + [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
    return out


def operator_sources() -> dict[str, str]:
    """module name → source of every module of operator/spin_operator."""
    return {module_name(path): path.read_text() for path in sorted(ROOT.rglob("*.py"))}


def upward_imports(sources: dict[str, str]) -> list[str]:
    """`module:line imports name, from layer x up to y` for each import statement that reaches a
    higher layer (the first such name of the statement)."""
    found = []
    for module, source in sources.items():
        low = layer_of(module)
        if low is None or low < 0:
            continue
        seen = set()
        for line, name in imported(ast.parse(source, module)):
            high = layer_of(name)
            if high is not None and high > low and line not in seen:
                seen.add(line)
                found.append(f"{module}:{line} imports {name}, from layer {'/'.join(LAYERS[low])} "
                             f"up to {'/'.join(LAYERS[high])}")
    return found


def test_every_operator_module_has_a_layer() -> None:
    unplaced = [module for module in operator_sources() if layer_of(module) == -1]
    assert not unplaced, f"add these modules to LAYERS (and check_layers.py): {unplaced}"


def test_operator_imports_point_down_the_layers() -> None:
    assert upward_imports(operator_sources()) == []


def test_an_upward_import_is_caught() -> None:
    """The check itself, on the two kinds of upward import this order was made against: a builder
    importing the launchers (which import the builders), the API client importing the decision's
    actions. Same-layer and downward imports pass."""
    found = upward_imports({
        "spin_operator.builders.steps": "from spin_operator import launchers\nfrom spin_operator.builders.job import job\n",
        "spin_operator.kube.client": "def f():\n    from spin_operator.reconcile.actions import Create\n",
        "spin_operator.driver": "from spin_operator import executor, launchers\nfrom spin_operator.kube import client\n",
    })
    assert found == [
        "spin_operator.builders.steps:1 imports spin_operator.launchers, from layer builders up to launchers",
        "spin_operator.kube.client:2 imports spin_operator.reconcile.actions, from layer kube/metrics up to reconcile",
    ]
