"""Upstream manifests on the cluster: where each kind of object lives in the API, server-side
apply and removal of documents, and whether a CRD is Established or gone. Shared by the
controllers of other projects that tests run for real (spin_cluster.kueue, spin_cluster.trainer)."""

from __future__ import annotations

import contextlib
from typing import Any

from spin_cluster.api import ApiError, Client, path

APPLY = "application/apply-patch+yaml"
#: kind → (group, version, plural, namespaced) of what is applied here.
RESOURCES = {
    "CustomResourceDefinition": ("apiextensions.k8s.io", "v1", "customresourcedefinitions", False),
    "MutatingWebhookConfiguration": ("admissionregistration.k8s.io", "v1", "mutatingwebhookconfigurations", False),
    "ValidatingWebhookConfiguration": ("admissionregistration.k8s.io", "v1", "validatingwebhookconfigurations", False),
    "ClusterRole": ("rbac.authorization.k8s.io", "v1", "clusterroles", False),
    "ClusterRoleBinding": ("rbac.authorization.k8s.io", "v1", "clusterrolebindings", False),
    "Namespace": ("", "v1", "namespaces", False),
    "ServiceAccount": ("", "v1", "serviceaccounts", True),
    "ClusterTrainingRuntime": ("trainer.kubeflow.org", "v1alpha1", "clustertrainingruntimes", False),
    "JobSet": ("jobset.x-k8s.io", "v1alpha2", "jobsets", True),
}


def url_of(doc: dict[str, Any], name: bool = True) -> str:
    """The API path of `doc` (of its collection with `name=False`)."""
    group, version, plural, namespaced = RESOURCES[doc["kind"]]
    meta = doc["metadata"]
    return path(group, version, plural, meta.get("namespace") if namespaced else None, meta["name"] if name else None)


def apply(api: Client, docs: list[dict[str, Any]], field_manager: str) -> None:
    """Server-side apply, as `kubectl apply --server-side --force-conflicts` does."""
    for doc in docs:
        api.request("PATCH", url_of(doc), doc, params={"fieldManager": field_manager, "force": "true"},
                    content_type=APPLY)


def remove(api: Client, docs: list[dict[str, Any]]) -> None:
    """Delete each document's object (one already gone is fine)."""
    for doc in docs:
        with contextlib.suppress(ApiError):
            api.delete(url_of(doc))


def _crd(name: str) -> str:
    return path("apiextensions.k8s.io", "v1", "customresourcedefinitions", name=name)


def established(api: Client, name: str) -> bool:
    crd = api.get(_crd(name))
    return any(c["type"] == "Established" and c["status"] == "True" for c in (crd.get("status") or {}).get("conditions") or [])


def crd_exists(api: Client, name: str) -> bool:
    try:
        api.get(_crd(name))
    except ApiError as e:
        if e.status == 404:
            return False
        raise
    return True
