"""The `Launcher` protocol: how the training steps of an iteration are run — the objects to create
(companions such as a headless Service included), how to read a launched object's state, how to
suspend it, and whether the cluster and this deployment allow it — and `TRAINING_STEPS`, the
steps a launcher runs (every other step is one batch Job)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from spin_operator.builders.context import BuildContext
from spin_operator.builders.meta import suspended_by_annotation
from spin_operator.kube.objects import JobState, true_conditions
from spin_operator.settings import DeploymentSettings, launcher_switch_env
from spin_runtime.api.spec import Training
from spin_runtime.api.status import TRAINING_STEPS, Reason, StepName

__all__ = ["TRAINING_STEPS"]  # the steps a launcher runs (status.py declares them; the local driver reads them too)

#: The launcher a spec gets when it names none (the spec's default).
DEFAULT_LAUNCHER: str = Training.model_fields["launcher"].default


@dataclass(frozen=True)
class Unavailable:
    """Why a launcher cannot start training now: a reason and what to do about it."""

    reason: Reason
    message: str


class Launcher(Protocol):
    """One way of running a training step (TRAINING_STEPS) on `training.nodes` pods."""

    #: The `spec.training.launcher` value that selects it.
    name: str
    #: Kind, apiVersion and plural of the object that runs the training.
    kind: str
    api_version: str
    plural: str
    #: True when that object is a custom resource (its CRD may be missing; the operator lists
    #: them at each reconcile), False for a batch/v1 Job (in the operator's watch index).
    custom_resource: bool

    def objects(self, ctx: BuildContext, step: StepName) -> list[dict[str, Any]]:
        """Every object of iteration k's training step `step`, in creation order (companions first)."""
        ...

    def companions(self, ctx: BuildContext, step: StepName) -> list[dict[str, Any]]:
        """Objects that must exist while the training runs (recreated when deleted)."""
        ...

    def read_state(self, obj: Mapping[str, Any]) -> JobState:
        """What the decision reads of a launched object."""
        ...

    def suspend_patch(self, suspend: bool) -> dict[str, Any]:
        """Merge patch suspending (or resuming) a launched object."""
        ...

    def availability(self, settings: DeploymentSettings, served: bool | None) -> Unavailable | None:
        """None when training can start; else the reason. `served`: whether the cluster serves
        the launcher's resource (None: not checked)."""
        ...


def api_group(launcher: Launcher) -> str:
    """The API group of a launcher's resource ('' for the core group)."""
    return launcher.api_version.rpartition("/")[0]


def api_version_only(launcher: Launcher) -> str:
    """The version part of a launcher's apiVersion (`v1` of `kubeflow.org/v1`)."""
    return launcher.api_version.rpartition("/")[2]


def may_list(launcher: Launcher, settings: DeploymentSettings) -> bool:
    """Whether the operator lists the launcher's objects: custom resources the deployment does
    not forbid (forbidden = no RBAC to list them)."""
    return launcher.custom_resource and settings.launcher_enabled(launcher.name) is not False


def custom_resource_availability(
    launcher: Launcher, settings: DeploymentSettings, served: bool | None, *, provider: str
) -> Unavailable | None:
    """The availability rule of a launcher built on another project's CRD: refused when the
    deployment disables it, or when the cluster does not serve the resource. `provider` names
    what the cluster admin installs to serve it."""
    name, env = launcher.name, launcher_switch_env(launcher.name)
    if settings.launcher_enabled(name) is False:
        return Unavailable(
            Reason.LAUNCHER_DISABLED,
            f"training.launcher is {name} but this operator was installed without {launcher.kind} support "
            f"(Helm value {name}.enabled=false, env {env}=false): ask the cluster admin to enable it "
            f"(needs {provider}) or set training.launcher: {DEFAULT_LAUNCHER}",
        )
    if served is False:
        return Unavailable(
            Reason.LAUNCHER_UNAVAILABLE,
            f"training.launcher is {name} but {launcher.api_version} {launcher.kind} is not served by this cluster: "
            f"install {provider} or set training.launcher: {DEFAULT_LAUNCHER}",
        )
    return None


class CustomResourceLauncher:
    """What the launchers on another project's CRD share: one training object and no companions,
    its state read from its conditions and a suspend flag at `suspend_path` under spec, and
    `custom_resource_availability`. Subclasses name the resource and build the object."""

    name: str
    kind: str
    api_version: str
    plural: str
    custom_resource = True
    #: the condition type the resource's controller sets on success
    complete_condition = "Complete"
    #: where the suspend flag is under spec
    suspend_path: tuple[str, ...] = ("suspend",)
    #: what a cluster admin installs to serve the resource
    provider: str = ""

    def build(self, ctx: BuildContext, step: StepName) -> dict[str, Any]:
        raise NotImplementedError

    def objects(self, ctx: BuildContext, step: StepName) -> list[dict[str, Any]]:
        return [self.build(ctx, step)]

    def companions(self, ctx: BuildContext, step: StepName) -> list[dict[str, Any]]:
        return []

    def read_state(self, obj: Mapping[str, Any]) -> JobState:
        true = true_conditions(obj)
        node: Any = obj.get("spec") or {}
        for key in self.suspend_path:
            node = (node or {}).get(key) if isinstance(node, Mapping) else None
        return JobState.from_workload(obj, complete=self.complete_condition in true, failed="Failed" in true, suspended=bool(node))

    def suspend_patch(self, suspend: bool) -> dict[str, Any]:
        spec: Any = suspend
        for key in reversed(self.suspend_path):
            spec = {key: spec}
        return {"metadata": {"annotations": suspended_by_annotation(suspend)}, "spec": spec}

    def availability(self, settings: DeploymentSettings, served: bool | None) -> Unavailable | None:
        return custom_resource_availability(self, settings, served, provider=self.provider)
