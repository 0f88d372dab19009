"""Carries out a decision's actions through the API (kube/client.py): creating, deleting and
(un)suspending children (a launcher's custom resources by their group, version and plural),
(de)activating a Kueue Workload, and listing a launcher's objects for the observation. The one
module below the driver that knows both the launchers and the actions. Blocking calls (run them
in a thread)."""

from __future__ import annotations

import json
import logging
from typing import Any

from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from spin_operator import launchers
from spin_operator.builders.gang import PODGROUP_GROUP, PODGROUP_KIND, PODGROUP_PLURAL, PODGROUP_VERSION
from spin_operator.builders.meta import LABEL_RUN
from spin_operator.kube import client as kube
from spin_operator.kube.client import KUEUE_GROUP, KUEUE_JOB_UID_LABEL, KUEUE_WORKLOADS, MERGE_PATCH
from spin_operator.launchers.base import Launcher, api_group, api_version_only
from spin_operator.reconcile.actions import Action, Create, Delete, PatchJob, SetWorkloadActive
from spin_operator.reconcile.refusals import in_the_way

#: Plurals of the core and batch kinds the operator creates or deletes.
PLURALS = {"Job": "jobs", "ConfigMap": "configmaps", "Service": "services", "PersistentVolumeClaim": "persistentvolumeclaims",
           PODGROUP_KIND: PODGROUP_PLURAL}

log = logging.getLogger("spin_operator")


def plural_of(kind: str) -> str:
    launcher = launchers.by_kind(kind)
    return launcher.plural if launcher is not None else PLURALS[kind]


def list_launched(namespace: str, run: str, launcher: Launcher) -> tuple[bool, list[dict[str, Any]]]:
    """(resource served?, this run's objects of a custom-resource launcher)."""
    kube.count("list", launcher.plural)
    try:
        out = k8s.CustomObjectsApi(kube.api_client()).list_namespaced_custom_object(
            api_group(launcher), api_version_only(launcher), namespace, launcher.plural, label_selector=f"{LABEL_RUN}={run}"
        )
    except ApiException as e:
        if e.status == 404:
            return False, []
        raise
    return True, list(out.get("items") or [])


def execute(namespace: str, action: Action) -> None:
    """Run one action; 409 on create and 404 on delete/patch of a child count as done (a missing
    Kueue Workload API does not: it is raised, and the run says so). A step's workload whose name
    is taken by another attempt's or run's object raises a 409 that says whose it is and what holds it."""
    try:
        _execute(namespace, action)
    except ApiException as e:
        if isinstance(action, Create) and e.status == 409:
            why = _in_the_way(namespace, action)
            if why is None:
                return
            refused = ApiException(status=409, reason="AlreadyExists")
            refused.body = json.dumps({"kind": "Status", "code": 409, "reason": "AlreadyExists", "message": why})
            log.info(f"{action.kind} {namespace}/{action.name}: {why}")
            raise refused from e
        if isinstance(action, Delete | PatchJob) and e.status == 404:
            return
        raise


def _in_the_way(namespace: str, action: Create) -> str | None:
    """None when the object in the way of a create is this one: for a step's workload, the same
    attempt of the same run; any other kind of child counts as made. Else why it is not (another
    attempt's or run's, and what keeps it)."""
    if action.kind != "Job" and launchers.by_kind(action.kind) is None:
        return None
    try:
        existing = _read(namespace, action)
    except ApiException as e:
        if e.status == 404:  # gone meanwhile: the next pass creates it
            return f"{action.kind} {action.name} was in the way and is gone now; creating it again"
        raise
    return in_the_way(existing, action, namespace)


def _read(namespace: str, action: Create) -> dict[str, Any]:
    """The object of this kind and name (a list by name: the chart grants list, not get); 404 if none."""
    kube.count("list", plural_of(action.kind))
    api = kube.api_client()
    selector = f"metadata.name={action.name}"
    launcher = launchers.by_kind(action.kind)
    if launcher is not None:
        items = k8s.CustomObjectsApi(api).list_namespaced_custom_object(
            api_group(launcher), api_version_only(launcher), namespace, launcher.plural, field_selector=selector).get("items")
    else:
        resp = k8s.BatchV1Api(api).list_namespaced_job(namespace, field_selector=selector, _preload_content=False)
        items = json.loads(resp.data).get("items")
    if not items:
        raise ApiException(status=404, reason=f"{action.kind} {action.name} not found")
    return dict(items[0])


def set_workload_active(namespace: str, action: SetWorkloadActive) -> None:
    """Patch `spec.active` of the Kueue Workload(s) of a job, then annotate the job; a Workload Kueue
    has not created yet is left for the next reconcile (the annotation tells it what was done)."""
    custom = k8s.CustomObjectsApi(kube.api_client())
    version = kube.workload_version()
    kube.count("list", KUEUE_WORKLOADS)
    try:
        found = custom.list_namespaced_custom_object(
            KUEUE_GROUP, version, namespace, KUEUE_WORKLOADS, label_selector=f"{KUEUE_JOB_UID_LABEL}={action.job_uid}"
        )
    except ApiException as e:
        if e.status == 404:
            kube.forget_workload_version()  # Kueue upgraded or removed: discover again next time
        raise
    workloads = [w["metadata"]["name"] for w in found.get("items") or []]
    if not workloads:
        log.info(f"no Kueue Workload for {action.kind} {namespace}/{action.name} yet; the next reconcile tries again")
        return
    for name in workloads:
        kube.count("patch", KUEUE_WORKLOADS)
        custom.patch_namespaced_custom_object(
            KUEUE_GROUP, version, namespace, KUEUE_WORKLOADS, name, {"spec": {"active": action.active}},
            _content_type=MERGE_PATCH,
        )
    launcher = launchers.by_kind(action.kind)
    kube.count("patch", plural_of(action.kind))
    if launcher is not None:
        custom.patch_namespaced_custom_object(
            api_group(launcher), api_version_only(launcher), namespace, launcher.plural, action.name, action.annotation_patch(),
            _content_type=MERGE_PATCH,
        )
    else:
        k8s.BatchV1Api(kube.api_client()).patch_namespaced_job(
            action.name, namespace, action.annotation_patch(), _content_type=MERGE_PATCH, _preload_content=False
        )


def _execute(namespace: str, action: Action) -> None:
    if isinstance(action, SetWorkloadActive):
        set_workload_active(namespace, action)
        return
    api = kube.api_client()
    batch, core, custom = k8s.BatchV1Api(api), k8s.CoreV1Api(api), k8s.CustomObjectsApi(api)
    kind = action.kind
    launcher = launchers.by_kind(kind)
    kube.count({Create: "create", Delete: "delete"}.get(type(action), "patch"), plural_of(kind))
    if launcher is not None:
        group, version, plural = api_group(launcher), api_version_only(launcher), launcher.plural
        if isinstance(action, Create):
            custom.create_namespaced_custom_object(group, version, namespace, plural, action.obj)
        elif isinstance(action, Delete):
            opts = k8s.V1DeleteOptions(propagation_policy="Background")
            custom.delete_namespaced_custom_object(group, version, namespace, plural, action.name, body=opts)
        else:
            custom.patch_namespaced_custom_object(
                group, version, namespace, plural, action.name, action.patch(), _content_type=MERGE_PATCH
            )
        return
    if kind == PODGROUP_KIND and isinstance(action, Create):
        custom.create_namespaced_custom_object(PODGROUP_GROUP, PODGROUP_VERSION, namespace, PODGROUP_PLURAL, action.obj)
        return
    if isinstance(action, Create):
        create = {
            "Job": batch.create_namespaced_job,
            "ConfigMap": core.create_namespaced_config_map,
            "Service": core.create_namespaced_service,
            "PersistentVolumeClaim": core.create_namespaced_persistent_volume_claim,
        }.get(kind)
        if create is None:
            raise ValueError(f"no create for kind {kind}")
        create(namespace, action.obj, _preload_content=False)
    elif isinstance(action, Delete):
        delete = {"Job": batch.delete_namespaced_job, "Service": core.delete_namespaced_service}.get(kind)
        if delete is None:
            raise ValueError(f"no delete for kind {kind}")
        opts = k8s.V1DeleteOptions(propagation_policy="Background")
        delete(action.name, namespace, body=opts, _preload_content=False)
    else:
        batch.patch_namespaced_job(action.name, namespace, action.patch(), _content_type=MERGE_PATCH, _preload_content=False)
