"""Candidate adapters: where they come from, and whether they can be mixed at all.

``ab`` mixes the factors element-wise (LoRAHub), so every candidate must adapt the same modules
at the same rank; ``delta`` sums the low-rank deltas, which is exact for any ranks and for
candidates that adapt different modules, as long as each module's shape agrees.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lorahive.hub.adapter import Adapter
from lorahive.hub.errors import (
    BaseModelMismatchError,
    InvalidRequestError,
    ShapeMismatchError,
    UnsupportedAdapterError,
)
from lorahive.hub.manifest import weights_sha256
from lorahive.hub.peft_format import load_peft

MODES = ("ab", "delta")


@dataclass
class Candidate:
    ref: str  # what the user gave: a directory today, a registry reference later
    adapter: Adapter
    sha256: str | None = None
    version: str | None = None

    @property
    def name(self) -> str:
        return Path(self.ref).name or self.ref


def load_candidates(entries: Sequence[tuple[str, Path, str | None, str | None]]) -> list[Candidate]:
    """Candidates from ``(ref, directory, sha256, version)``: local directories, or registry
    references already pulled by the caller (``compose`` stays free of the registry)."""
    if not entries:
        raise InvalidRequestError("give at least one candidate adapter")
    out = [Candidate(ref, load_peft(path), sha, version) for ref, path, sha, version in entries]
    names = [c.ref for c in out]
    if len(set(names)) != len(names):
        raise InvalidRequestError("a candidate is listed twice")
    return out


def resolve_candidates(refs: Sequence[str]) -> list[Candidate]:
    """Load candidates from adapter directories.

    Registry references (``ns/name[@version]``) and filters need the registry; the CLI
    resolves them to directories and calls :func:`load_candidates`.
    """
    if not refs:
        raise InvalidRequestError("give at least one candidate adapter directory")
    for ref in refs:
        if not Path(ref).is_dir():
            raise InvalidRequestError(
                f"candidate {ref!r} is not a directory; registry references need the registry "
                "(resolve them to local adapter directories first)"
            )
    return load_candidates([(str(r), Path(r), weights_sha256(Path(r)), None)
                            for r in refs])


def check_candidates(cands: Sequence[Candidate], mode: str) -> list[str]:
    """Validate the candidates for ``mode``; return the adapted module names, sorted."""
    if mode not in MODES:
        raise InvalidRequestError(f"unknown mode {mode!r}; use one of {', '.join(MODES)}")
    if not cands:
        raise InvalidRequestError("no candidates to compose")
    for c in cands:
        c.adapter.require_lora("composition")
        for name, m in c.adapter.modules.items():
            if m.magnitude is not None:
                raise UnsupportedAdapterError(
                    f"{c.ref}: {name} is a DoRA module; the composer mixes plain LoRA factors "
                    "(convert it to a plain delta first)")
            if m.kind != "linear" or m.fan_in_fan_out:
                raise UnsupportedAdapterError(
                    f"{c.ref}: {name} adapts a {m.kind} layer; the composer wraps Linear layers")
    bases = {c.adapter.base_model for c in cands if c.adapter.base_model}
    if len(bases) > 1:
        raise BaseModelMismatchError(
            "candidates target different base models: "
            + ", ".join(f"{c.ref} -> {c.adapter.base_model}" for c in cands)
        )
    first = cands[0]
    shapes: dict[str, tuple[int, int]] = {}
    for c in cands:
        for name, m in c.adapter.modules.items():
            shape = (m.out_features, m.in_features)
            if shapes.setdefault(name, shape) != shape:
                raise ShapeMismatchError(
                    f"{c.ref}: module {name} is {shape[0]}x{shape[1]} but another candidate's is "
                    f"{shapes[name][0]}x{shapes[name][1]}; candidates must share a base model")
    if mode == "ab":
        want = set(first.adapter.modules)
        for c in cands[1:]:
            have = set(c.adapter.modules)
            if have != want:
                diff = sorted(want ^ have)
                raise ShapeMismatchError(
                    f"mode ab mixes factors element-wise, so candidates must adapt the same "
                    f"modules; {c.ref} differs from {first.ref} at {diff[0]}"
                    f"{f' (+{len(diff) - 1} more)' if len(diff) > 1 else ''}; use mode delta",
                    params="mode")
            for name in sorted(want):
                r0, r1 = first.adapter.modules[name].rank, c.adapter.modules[name].rank
                if r0 != r1:
                    raise ShapeMismatchError(
                        f"mode ab needs equal ranks: {name} has rank {r1} in {c.ref} but {r0} "
                        f"in {first.ref}; use mode delta (exact for any ranks)", params="mode")
    return sorted(shapes)


def ab_scales_differ(cands: Sequence[Candidate]) -> list[str]:
    """Modules whose scale differs between candidates (``ab`` uses the first's, as LoRAHub)."""
    first = cands[0].adapter.modules
    return sorted(n for n, m in first.items() for c in cands[1:]
                  if not math.isclose(c.adapter.modules[n].scale, m.scale, rel_tol=1e-6))
