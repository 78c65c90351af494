"""Where an adapter came from, written beside it as ``lorahive.json``.

Fusion and composition record their inputs here (parents with versions and sha256, weights,
method and parameters, the examples' hash); publishing reads the file and stores the lineage
and metrics with the version in the registry.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lorahive.hub.atomic import atomic_file
from lorahive.hub.errors import InvalidAdapterError

SIDECAR = "lorahive.json"


@dataclass
class Parent:
    ref: str  # registry reference (ns/name@version) or a local path
    version: str | None = None
    sha256: str | None = None  # of the parent's adapter_model.safetensors
    weight: float | None = None


@dataclass
class Lineage:
    method: str  # e.g. "fuse:ties", "compose:ab"
    parents: list[Parent] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Lineage:
        return cls(
            method=str(d.get("method", "")),
            parents=[Parent(**p) for p in d.get("parents", [])],
            params=dict(d.get("params", {})),
        )


def write_sidecar(
    adapter_dir: str | os.PathLike[str],
    lineage: Lineage | None = None,
    metrics: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    path = Path(adapter_dir) / SIDECAR
    data: dict[str, Any] = dict(extra or {})
    if lineage is not None:
        data["lineage"] = lineage.as_dict()
    if metrics:
        data["metrics"] = metrics
    with atomic_file(path, "w") as fh:
        json.dump(data, fh, indent=2, sort_keys=True, default=str)
    return path


def read_sidecar(adapter_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The sidecar's content (``{}`` when absent)."""
    path = Path(adapter_dir) / SIDECAR
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise InvalidAdapterError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise InvalidAdapterError(f"{path}: must be a JSON object")
    return data
