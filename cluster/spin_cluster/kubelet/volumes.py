"""A pod's volumes as host folders (what the kubelet's volume manager does): emptyDir a fresh
folder, configMap/secret/downwardAPI/projected files written from the API (service-account tokens
requested through the TokenRequest API for this pod, and refreshed), a claim the folder of the
PersistentVolume bound to it (with fsGroup ownership, as for a disk), hostPath the host's path."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spin_cluster.api import ApiError, Client, path
from spin_cluster.kubelet.env import ConfigError, field_value, resource_value, secret_data

#: A bound token is refreshed after this share of its lifetime (the kubelet's 80%).
REFRESH_AT = 0.8


class VolumeNotReady(RuntimeError):
    """A volume cannot be set up yet (a claim not bound, an object missing): retried, as FailedMount."""


@dataclass
class _Token:
    file: Path
    source: dict[str, Any]
    issued: float
    lifetime: float


@dataclass
class PodVolumes:
    api: Client
    pod: dict[str, Any]
    root: Path
    pod_ip: str = ""
    host_ip: str = ""
    node_allocatable: Mapping[str, str] = field(default_factory=dict)
    tokens: list[_Token] = field(default_factory=list)

    @property
    def ns(self) -> str:
        return str(self.pod["metadata"]["namespace"])

    @property
    def fs_group(self) -> int | None:
        value = (self.pod["spec"].get("securityContext") or {}).get("fsGroup")
        return int(value) if value is not None else None

    def prepare(self) -> dict[str, Path]:
        """volume name → host path, for every volume of the pod."""
        out: dict[str, Path] = {}
        for vol in self.pod["spec"].get("volumes") or []:
            out[vol["name"]] = self._one(vol)
        return out

    def _one(self, vol: dict[str, Any]) -> Path:
        name = vol["name"]
        here = self.root / name
        if "emptyDir" in vol:
            here.mkdir(parents=True, exist_ok=True)
            here.chmod(0o777)
            return here
        if "hostPath" in vol:
            host = Path(vol["hostPath"]["path"])
            kind = vol["hostPath"].get("type", "")
            if kind == "DirectoryOrCreate":
                host.mkdir(parents=True, exist_ok=True)
            elif kind == "FileOrCreate" and not host.exists():
                host.parent.mkdir(parents=True, exist_ok=True)
                host.touch()
            elif kind in ("Directory", "File") and not host.exists():
                raise VolumeNotReady(f"hostPath {host} does not exist")
            return host
        if "persistentVolumeClaim" in vol:
            return self._claim(vol["persistentVolumeClaim"]["claimName"])
        files: dict[str, tuple[bytes, int]] = {}
        default_mode = 0o644
        if "configMap" in vol:
            default_mode = vol["configMap"].get("defaultMode", 0o644)
            files = self._object_files("configmap", vol["configMap"], default_mode)
        elif "secret" in vol:
            default_mode = vol["secret"].get("defaultMode", 0o644)
            src = dict(vol["secret"], name=vol["secret"]["secretName"])
            files = self._object_files("secret", src, default_mode)
        elif "downwardAPI" in vol:
            default_mode = vol["downwardAPI"].get("defaultMode", 0o644)
            files = self._downward(vol["downwardAPI"].get("items") or [], default_mode)
        elif "projected" in vol:
            default_mode = vol["projected"].get("defaultMode", 0o644)
            for source in vol["projected"].get("sources") or []:
                if "serviceAccountToken" in source:
                    sat = source["serviceAccountToken"]
                    token, lifetime = self._request_token(sat)
                    mode = default_mode
                    files[sat["path"]] = (token.encode(), mode)
                    self.tokens.append(_Token(here / sat["path"], sat, time.time(), lifetime))
                elif "configMap" in source:
                    files.update(self._object_files("configmap", source["configMap"], default_mode))
                elif "secret" in source:
                    files.update(self._object_files("secret", source["secret"], default_mode))
                elif "downwardAPI" in source:
                    files.update(self._downward(source["downwardAPI"].get("items") or [], default_mode))
                else:
                    raise ConfigError(f"projected source {sorted(source)} is not supported by the process kubelet")
        else:
            kinds = sorted(set(vol) - {"name"})
            raise ConfigError(f"volume {name!r} of type {kinds} is not supported by the process kubelet")
        self._write(here, files)
        return here

    def _write(self, folder: Path, files: Mapping[str, tuple[bytes, int]]) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(0o755)
        group = self.fs_group
        for rel, (content, mode) in files.items():
            target = folder / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.tmp")
            tmp.write_bytes(content)
            if group is not None:
                os.chown(tmp, -1, group)
                mode |= 0o040
            tmp.chmod(mode)
            tmp.replace(target)

    def _object_files(self, kind: str, src: Mapping[str, Any], default_mode: int) -> dict[str, tuple[bytes, int]]:
        plural = "configmaps" if kind == "configmap" else "secrets"
        try:
            obj = self.api.get(path("", "v1", plural, self.ns, src["name"]))
        except ApiError as e:
            if e.status == 404:
                if src.get("optional"):
                    return {}
                raise VolumeNotReady(f'{kind} "{src["name"]}" not found') from None
            raise
        data = secret_data(obj) if kind == "secret" else {**(obj.get("data") or {})}
        binary = obj.get("binaryData") or {} if kind == "configmap" else {}
        items = src.get("items")
        out: dict[str, tuple[bytes, int]] = {}
        if items:
            for item in items:
                key = item["key"]
                if key not in data and key not in binary:
                    if src.get("optional"):
                        continue
                    raise VolumeNotReady(f'key "{key}" not found in {kind} "{src["name"]}"')
                out[item["path"]] = (self._bytes(data, binary, key), item.get("mode", default_mode))
        else:
            for key in list(data) + list(binary):
                out[key] = (self._bytes(data, binary, key), default_mode)
        return out

    @staticmethod
    def _bytes(data: Mapping[str, str], binary: Mapping[str, str], key: str) -> bytes:
        import base64

        return base64.b64decode(binary[key]) if key in binary else str(data[key]).encode()

    def _downward(self, items: list[dict[str, Any]], default_mode: int) -> dict[str, tuple[bytes, int]]:
        out: dict[str, tuple[bytes, int]] = {}
        for item in items:
            if "fieldRef" in item:
                value = field_value(self.pod, item["fieldRef"]["fieldPath"], self.pod_ip, self.host_ip)
            else:
                container = next(c for c in self.pod["spec"]["containers"]
                                 if c["name"] == item["resourceFieldRef"].get("containerName"))
                value = resource_value(container, item["resourceFieldRef"], self.node_allocatable)
            out[item["path"]] = (value.encode(), item.get("mode", default_mode))
        return out

    def _request_token(self, sat: Mapping[str, Any]) -> tuple[str, float]:
        meta = self.pod["metadata"]
        account = self.pod["spec"].get("serviceAccountName") or "default"
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {
            "audiences": [sat["audience"]] if sat.get("audience") else [],
            "expirationSeconds": int(sat.get("expirationSeconds", 3600)),
            "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": meta["name"], "uid": meta["uid"]}}}
        resp = self.api.create(path("", "v1", "serviceaccounts", self.ns, account, "token"), body)
        lifetime = float(resp.get("spec", {}).get("expirationSeconds") or body["spec"]["expirationSeconds"])
        return str(resp["status"]["token"]), lifetime

    def refresh_tokens(self) -> None:
        """Rewrite every token past REFRESH_AT of its lifetime."""
        now = time.time()
        for token in self.tokens:
            if now - token.issued >= REFRESH_AT * token.lifetime:
                value, token.lifetime = self._request_token(token.source)
                token.issued = now
                self._write(token.file.parent, {token.file.name: (value.encode(), token.file.stat().st_mode & 0o777)})

    def _claim(self, claim: str) -> Path:
        try:
            pvc = self.api.get(path("", "v1", "persistentvolumeclaims", self.ns, claim))
        except ApiError as e:
            if e.status == 404:
                raise VolumeNotReady(f'persistentvolumeclaim "{claim}" not found') from None
            raise
        volume = (pvc.get("spec") or {}).get("volumeName")
        if not volume or (pvc.get("status") or {}).get("phase") != "Bound":
            raise VolumeNotReady(f'persistentvolumeclaim "{claim}" is not bound')
        pv = self.api.get(path("", "v1", "persistentvolumes", name=volume))
        source = pv["spec"].get("hostPath") or pv["spec"].get("local")
        if not source:
            raise ConfigError(f"persistentvolume {volume} is neither hostPath nor local: the process kubelet cannot mount it")
        folder = Path(source["path"])
        folder.mkdir(parents=True, exist_ok=True)
        if self.fs_group is not None:
            own(folder, self.fs_group)
        return folder

    def teardown(self) -> None:
        """Remove the folders this pod's volumes made (never a claim's or a host path)."""
        shutil.rmtree(self.root, ignore_errors=True)


def own(folder: Path, group: int) -> None:
    """fsGroup ownership with fsGroupChangePolicy OnRootMismatch: when the folder's group differs,
    every file and folder below gets the group, group read/write and (folders) setgid."""
    if folder.stat().st_gid == group:
        return
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in [*dirnames, *filenames]:
            p = os.path.join(dirpath, name)
            if os.path.islink(p):
                continue
            os.chown(p, -1, group)
            mode = os.stat(p).st_mode
            os.chmod(p, (mode | 0o060 | (0o2010 if os.path.isdir(p) else 0)) & 0o7777)
    os.chown(folder, -1, group)
    os.chmod(folder, (folder.stat().st_mode | 0o2070) & 0o7777)
