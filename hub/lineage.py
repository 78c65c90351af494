"""Where an adapter came from, written beside it as ``lorahive.json``.

This module is the one owner of provenance: ``fuse``, ``merge`` and ``compose`` build their
parents (inputs with versions and sha256, weights), parameters and sidecar here, and
publishing reads the file back and stores the lineage and metrics with the version.

A lineage also carries its *recipe*: the sha256 of everything that determines the result (the
method, every input's reference, version, sha256 and weight, and the parameters). Two runs
with the same recipe make the same result, so a re-run that finds its output directory
holding the same recipe can finish (publish) instead of starting over.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from lorahive.hub.atomic import atomic_file
from lorahive.hub.errors import InvalidAdapterError

SIDECAR = "lorahive.json"


class Input(Protocol):
    """What lineage needs of an input adapter (a CLI source, a composer candidate)."""

    ref: str
    version: str | None
    sha256: str | None


@dataclass
class Parent:
    ref: str  # registry reference (ns/name@version) or a local path
    version: str | None = None
    sha256: str | None = None  # of the parent's adapter_model.safetensors
    weight: float | None = None


@dataclass
class Lineage:
    method: str  # e.g. "fuse:ties", "compose:ab", "merge:sum"
    parents: list[Parent] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    recipe: str | None = None  # sha256 of what determines the result (see recipe_digest)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Lineage:
        return cls(
            method=str(d.get("method", "")),
            parents=[Parent(**p) for p in d.get("parents", [])],
            params=dict(d.get("params", {})),
            recipe=d.get("recipe"),
        )

    @classmethod
    def of(cls, method: str, inputs: Sequence[Input], params: dict[str, Any],
           weights: Sequence[float] | None = None) -> Lineage:
        """The lineage of a result computed from ``inputs`` (with ``weights``) and ``params``
        alone, as ``fuse`` and ``merge`` make: its recipe is the lineage itself."""
        return cls(method, parents(inputs, weights), dict(params),
                   recipe_digest(method, inputs, params, weights))


def parents(inputs: Sequence[Input], weights: Sequence[float] | None = None) -> list[Parent]:
    """Parent records in input order, with each input's weight when there are weights."""
    if weights is not None and len(weights) != len(inputs):
        raise ValueError(f"{len(weights)} weights for {len(inputs)} inputs")
    return [Parent(ref=s.ref, version=s.version, sha256=s.sha256,
                   weight=None if weights is None else float(weights[i]))
            for i, s in enumerate(inputs)]


def parent_edges(lineage: dict[str, Any] | None) -> list[tuple[str, str | None, float | None]]:
    """``(ns/name, version or None, weight)`` for each parent a stored lineage names by
    registry reference, first mention of a repository only: the edges the registry indexes
    so that "what was made from this adapter" is a lookup, not a scan of every lineage."""
    from lorahive.hub.errors import InvalidReferenceError
    from lorahive.hub.refs import parse_ref

    out: list[tuple[str, str | None, float | None]] = []
    seen: set[str] = set()
    raw_parents = (lineage or {}).get("parents") if isinstance(lineage, dict) else None
    for raw in raw_parents if isinstance(raw_parents, list) else []:
        text = raw.get("ref") if isinstance(raw, dict) else None
        if not isinstance(text, str) or text == "private":
            continue
        try:
            r = parse_ref(text)
        except InvalidReferenceError:
            continue  # a local directory
        if r.repo in seen:
            continue
        seen.add(r.repo)
        w = raw.get("weight")
        weight = float(w) if isinstance(w, int | float) and not isinstance(w, bool) else None
        out.append((r.repo, r.version, weight))
    return out


def recipe_digest(method: str, inputs: Sequence[Input], params: dict[str, Any],
                  weights: Sequence[float] | None = None) -> str:
    """sha256 of the method, the inputs (reference, version, sha256, weight) and the
    parameters, as canonical JSON: equal digests mean the same computation."""
    body = {"method": method,
            "inputs": [asdict(p) for p in parents(inputs, weights)],
            "params": params}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def sidecar_bytes(lineage: Lineage, metrics: dict[str, Any] | None = None) -> bytes:
    """The ``lorahive.json`` content for a result, ready to be written with it atomically."""
    data: dict[str, Any] = {"lineage": lineage.as_dict()}
    if metrics:
        data["metrics"] = metrics
    return json.dumps(data, indent=2, sort_keys=True, default=str).encode()


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


def recorded_recipe(adapter_dir: str | os.PathLike[str]) -> str | None:
    """The recipe a result directory records (``None``: no sidecar, or none recorded)."""
    try:
        lineage = read_sidecar(adapter_dir).get("lineage")
    except (InvalidAdapterError, OSError):
        return None
    recipe = lineage.get("recipe") if isinstance(lineage, dict) else None
    return recipe if isinstance(recipe, str) else None
