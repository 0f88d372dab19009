"""What the real kube-apiserver says of a SpinRun: a server-side dry-run create (or update) with
strict field validation, as `kubectl apply` sends it. Replaces our stand-in for CRD admission
(schema, defaults, CEL rules, unknown fields, metadata names): the answer is the apiserver's own."""

from __future__ import annotations

import copy
import math
from typing import Any

from spin_cluster.api import ApiError, path
from spin_runtime.api.spec import GROUP, PLURAL, VERSION
from tests.kube import Kube

#: The namespace dry runs are sent to (made once per session).
NAMESPACE = "admission"


class Admission:
    """Asks the session's apiserver whether it would store SpinRuns."""

    def __init__(self, kube: Kube) -> None:
        self.kube = kube
        kube.ensure_crd()
        try:
            kube.api.create(path("", "v1", "namespaces"), {"apiVersion": "v1", "kind": "Namespace",
                                                             "metadata": {"name": NAMESPACE}})
        except ApiError as e:
            if e.status != 409:
                raise
        self._n = 0

    def problems(self, obj: Any, old: Any = None) -> list[str]:
        """Why the apiserver refuses to store `obj` (as an update of `old` if given); [] when it
        accepts it. Values JSON cannot carry (NaN, infinity) are refused before sending, as a
        client must."""
        if _has_nan(obj):
            return ["NaN and infinity cannot be written in JSON"]
        if not isinstance(obj, dict):
            return ["the object must be a JSON object"]
        url = path(GROUP, VERSION, PLURAL, NAMESPACE)
        params = {"dryRun": "All", "fieldValidation": "Strict"}
        body = copy.deepcopy(obj)
        meta = body.setdefault("metadata", {}) if isinstance(body.get("metadata", {}), dict) else body["metadata"]
        if isinstance(meta, dict):
            meta.pop("namespace", None)
        try:
            if old is None:
                self.kube.api.request("POST", url, body, params=params)
                return []
            return self._update(body, copy.deepcopy(old), params)
        except ApiError as e:
            return [e.message]

    def _update(self, new: dict[str, Any], old: dict[str, Any], params: dict[str, str]) -> list[str]:
        """Store `old` for real under a fresh name, dry-run the update to `new`, delete `old`."""
        self._n += 1
        name = f"update-{self._n}"
        old.setdefault("metadata", {})["name"] = name
        old["metadata"].pop("namespace", None)
        url = path(GROUP, VERSION, PLURAL, NAMESPACE)
        stored = self.kube.api.create(url, old)
        try:
            new.setdefault("metadata", {})["name"] = name
            new["metadata"]["resourceVersion"] = stored["metadata"]["resourceVersion"]
            self.kube.api.request("PUT", f"{url}/{name}", new, params=params)
            return []
        except ApiError as e:
            return [e.message]
        finally:
            self.kube.api.delete(f"{url}/{name}")


def _has_nan(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(_has_nan(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_nan(v) for v in value)
    return False
