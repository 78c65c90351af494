"""Per-module statistics stored with each version (``VersionInfo.stats``: norm, singular values,
effective rank) arranged by layer and module kind for the spectra and comparison pages."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

from lorahive.registry.web.plots import Series

_LAYER = re.compile(r"\.(\d+)\.")


def module_parts(name: str) -> tuple[int | None, str]:
    """``(layer index, kind)``: ``model.layers.3.self_attn.q_proj`` -> ``(3, self_attn.q_proj)``."""
    m = _LAYER.search(name)
    if m is None:
        return None, name
    return int(m.group(1)), name[m.end():]


def by_kind(stats: Sequence[dict[str, Any]], key: str, label: str = "") -> list[Series]:
    """One series per module kind: ``key`` against the layer (or the module's position when
    names carry no layer index)."""
    groups: dict[str, list[tuple[float, float]]] = {}
    for i, st in enumerate(stats):
        layer, kind = module_parts(str(st.get("name", "")))
        v = st.get(key)
        if isinstance(v, int | float):
            groups.setdefault(kind, []).append((float(i if layer is None else layer), float(v)))
    return [Series(f"{label}{k}", sorted(p)) for k, p in sorted(groups.items())]


def layer_norms(stats: Sequence[dict[str, Any]]) -> list[tuple[float, float]]:
    """Norm of all of a layer's deltas together (root of the sum of squared module norms)."""
    acc: dict[float, float] = {}
    for i, st in enumerate(stats):
        layer, _ = module_parts(str(st.get("name", "")))
        v = st.get("norm")
        if isinstance(v, int | float):
            x = float(i if layer is None else layer)
            acc[x] = acc.get(x, 0.0) + float(v) ** 2
    return sorted((x, math.sqrt(v)) for x, v in acc.items())


def pick_module(stats: Sequence[dict[str, Any]], wanted: str | None) -> dict[str, Any] | None:
    """The module asked for, else the one with the largest norm."""
    if not stats:
        return None
    for st in stats:
        if st.get("name") == wanted:
            return st
    return max(stats, key=lambda st: float(st.get("norm") or 0.0))
