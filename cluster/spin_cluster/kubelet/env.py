"""A container's environment and command line as the kubelet makes them (pure): the image's
variables, the `kubernetes` Service variables, the container's env and envFrom with their
fieldRef/resourceFieldRef/configMapKeyRef/secretKeyRef sources, and `$(VAR)` expansion."""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Mapping
from typing import Any

#: (kind, namespace, name) → the object's data (a Secret's decoded), or None when it does not exist.
Lookup = Callable[[str, str], Mapping[str, str] | None]

_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


class ConfigError(ValueError):
    """What makes a container's configuration impossible (CreateContainerConfigError)."""


def expand(text: str, env: Mapping[str, str]) -> str:
    """`$(VAR)` → its value when defined (else left as is), `$$` → `$`: the kubelet's expansion."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))

    return _REF.sub(sub, text)


def field_value(pod: Mapping[str, Any], path: str, pod_ip: str, host_ip: str) -> str:
    meta, spec = pod["metadata"], pod["spec"]
    m = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
    if m:
        return str((meta.get(m.group(1)) or {}).get(m.group(2), ""))
    values = {
        "metadata.name": meta.get("name", ""),
        "metadata.namespace": meta.get("namespace", ""),
        "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": spec.get("nodeName", ""),
        "spec.serviceAccountName": spec.get("serviceAccountName", ""),
        "status.podIP": pod_ip,
        "status.podIPs": pod_ip,
        "status.hostIP": host_ip,
        "status.hostIPs": host_ip,
    }
    if path not in values:
        raise ConfigError(f"fieldRef {path!r} is not supported")
    return str(values[path])


def resource_value(container: Mapping[str, Any], ref: Mapping[str, Any], node_allocatable: Mapping[str, str]) -> str:
    resource = ref["resource"]
    kind, _, name = resource.partition(".")
    value = ((container.get("resources") or {}).get(kind) or {}).get(name)
    if value is None:  # an unset limit reads as the node's allocatable
        value = node_allocatable.get(name, "0")
    return _scaled(str(value), str(ref.get("divisor", "1")), name)


_SUFFIX = {"": 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "Ki": 1024, "Mi": 1024**2, "Gi": 1024**3,
           "Ti": 1024**4}


def _quantity(text: str) -> float:
    m = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", text)
    if not m or m.group(2) not in _SUFFIX:
        raise ConfigError(f"cannot read quantity {text!r}")
    return float(m.group(1)) * _SUFFIX[m.group(2)]


def _scaled(value: str, divisor: str, name: str) -> str:
    import math

    return str(max(1, math.ceil(_quantity(value) / _quantity(divisor))) if name == "cpu"
               else math.ceil(_quantity(value) / _quantity(divisor)))


def service_env(host: str, port: int) -> dict[str, str]:
    """The variables every container gets for the `kubernetes` Service."""
    return {
        "KUBERNETES_SERVICE_HOST": host,
        "KUBERNETES_SERVICE_PORT": str(port),
        "KUBERNETES_SERVICE_PORT_HTTPS": str(port),
        "KUBERNETES_PORT": f"tcp://{host}:{port}",
        f"KUBERNETES_PORT_{port}_TCP": f"tcp://{host}:{port}",
        f"KUBERNETES_PORT_{port}_TCP_PROTO": "tcp",
        f"KUBERNETES_PORT_{port}_TCP_PORT": str(port),
        f"KUBERNETES_PORT_{port}_TCP_ADDR": host,
    }


def container_env(pod: Mapping[str, Any], container: Mapping[str, Any], *, image_env: Mapping[str, str],
                  services: Mapping[str, str], lookup: Lookup, pod_ip: str, host_ip: str,
                  node_allocatable: Mapping[str, str]) -> dict[str, str]:
    """The environment of `container`, in the kubelet's order: image, services, envFrom, env (later wins)."""
    ns = pod["metadata"]["namespace"]
    env: dict[str, str] = {**image_env, "HOSTNAME": pod["spec"].get("hostname") or pod["metadata"]["name"], **services}
    for source in container.get("envFrom") or []:
        prefix = source.get("prefix", "")
        for kind, key in (("configmap", "configMapRef"), ("secret", "secretRef")):
            if key in source:
                ref = source[key]
                data = lookup(kind, ref["name"])
                if data is None:
                    if ref.get("optional"):
                        continue
                    raise ConfigError(f'{"configmap" if kind == "configmap" else "secret"} "{ref["name"]}" not found')
                env.update({f"{prefix}{k}": v for k, v in data.items()})
    for var in container.get("env") or []:
        name = var["name"]
        if "value" in var:
            env[name] = expand(str(var["value"]), env)
            continue
        src = var.get("valueFrom") or {}
        if not src:
            env[name] = ""
        elif "fieldRef" in src:
            env[name] = field_value(pod, src["fieldRef"]["fieldPath"], pod_ip, host_ip)
        elif "resourceFieldRef" in src:
            env[name] = resource_value(container, src["resourceFieldRef"], node_allocatable)
        else:
            kind, key = ("configmap", "configMapKeyRef") if "configMapKeyRef" in src else ("secret", "secretKeyRef")
            ref = src[key]
            data = lookup(kind, ref["name"])
            if data is None or ref["key"] not in data:
                if ref.get("optional"):
                    continue
                what = f'{kind} "{ref["name"]}"' if data is None else f'key "{ref["key"]}" in {kind} "{ref["name"]}"'
                raise ConfigError(f"{what} not found (namespace {ns})")
            env[name] = data[ref["key"]]
    return env


def command_line(container: Mapping[str, Any], env: Mapping[str, str]) -> list[str]:
    """command + args with `$(VAR)` expanded. Images here have no entrypoint of their own."""
    command = list(container.get("command") or [])
    if not command:
        raise ConfigError(f"container {container['name']!r} sets no command: the process kubelet runs every image "
                          "on the host and knows no image entrypoint")
    return [expand(str(a), env) for a in command + list(container.get("args") or [])]


def secret_data(obj: Mapping[str, Any]) -> dict[str, str]:
    out = {k: base64.b64decode(v).decode(errors="replace") for k, v in (obj.get("data") or {}).items()}
    out.update(obj.get("stringData") or {})
    return out
