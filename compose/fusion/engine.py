"""Fuse N adapters into one: per module, gather the adapters that adapt it, run the method.

Modules may differ between adapters (a module is fused from the adapters that have it) and so
may ranks. Math runs in float32 (or ``compute_dtype``) on the chosen device; the output
adapter's factors are stored in the inputs' dtype on CPU, with scale 1 per module.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from lorahive.compose.fusion.budget import allocate_ranks
from lorahive.compose.fusion.methods import Method, get_method
from lorahive.compose.fusion.terms import Context, Dense, Factors, Fused, Term
from lorahive.hub.adapter import Adapter, LoraModule
from lorahive.hub.devices import resolve_device
from lorahive.hub.errors import (
    BaseModelMismatchError,
    InvalidRequestError,
    ShapeMismatchError,
    UnsupportedAdapterError,
)


@dataclass
class FusionResult:
    adapter: Adapter
    method: str
    params: dict[str, Any]
    weights: list[float]
    ranks: dict[str, int]
    energy: dict[str, float] = field(default_factory=dict)  # rank budget: energy kept


def check_compatible(adapters: Sequence[Adapter]) -> None:
    """Same base model, LoRA-family, no DoRA, same shapes per shared module."""
    if not adapters:
        raise InvalidRequestError("give at least one adapter to fuse")
    for ad in adapters:
        ad.require_lora("fusion")
        if any(m.magnitude is not None for m in ad.modules.values()):
            raise UnsupportedAdapterError(
                "DoRA adapters cannot be fused into one LoRA adapter (their delta depends on "
                "the base weight); merge them into the base with `lorahive merge` instead"
            )
        if ad.config.residual_init:
            warnings.warn(
                f"an input was trained on a residual base ({ad.config.residual_init}); convert "
                "it with `lorahive convert --initial` first or the fused delta is wrong",
                stacklevel=2,
            )
    bases = {ad.base_model for ad in adapters if ad.base_model}
    if len(bases) > 1:
        raise BaseModelMismatchError(
            f"adapters were trained on different base models: {', '.join(sorted(bases))}"
        )
    shapes: dict[str, tuple] = {}
    for ad in adapters:
        for name, m in ad.modules.items():
            key = (m.out_features, m.in_features, m.kind, m.fan_in_fan_out, m.a_shape)
            if shapes.setdefault(name, key) != key:
                raise ShapeMismatchError(
                    f"module {name} has different shapes or layouts across adapters "
                    f"({shapes[name][:2]} vs {key[:2]}); are they for the same base model?"
                )


def fuse(
    adapters: Sequence[Adapter],
    method: str | Method = "task_arithmetic",
    weights: Sequence[float] | None = None,
    params: dict[str, Any] | None = None,
    rank: int | None = None,
    rank_budget: int | None = None,
    seed: int = 0,
    device: str | torch.device = "auto",
    compute_dtype: torch.dtype = torch.float32,
    progress: Callable[[str], None] | None = None,
) -> FusionResult:
    """Fuse ``adapters`` with a registered method into one plain-LoRA adapter (scale 1)."""
    m = method if isinstance(method, Method) else get_method(method)
    check_compatible(adapters)
    w = [1.0] * len(adapters) if weights is None else [float(x) for x in weights]
    if len(w) != len(adapters):
        raise InvalidRequestError(f"{len(w)} weights for {len(adapters)} adapters")
    if rank is not None and rank_budget is not None:
        raise InvalidRequestError("give rank or rank_budget, not both",
                                  params=("rank", "rank_budget"))
    if (rank is not None and rank < 1) or (rank_budget is not None and rank_budget < 1):
        raise InvalidRequestError("ranks must be at least 1")
    bound = m.bind(params or {})
    dev = resolve_device(device)
    names = list(dict.fromkeys(n for ad in adapters for n in ad.modules))
    fused: dict[str, Fused] = {}
    first: dict[str, LoraModule] = {}
    for name in names:
        terms = [Term(ad.modules[name], wi, dev, compute_dtype)
                 for ad, wi in zip(adapters, w, strict=True) if name in ad.modules]
        first[name] = terms[0].module
        ctx = Context(name, dev, compute_dtype, rank=rank, seed=seed,
                      defer_truncation=rank_budget is not None, n_adapters=len(adapters))
        f = m.fn(terms, ctx, **bound)
        if rank is not None and rank_budget is None and (
                isinstance(f, Dense) or f.rank > rank):
            f = f.truncated(rank)  # --rank applies to every method, not only *svd ones
        fused[name] = f
        if progress:
            progress(name)
    energy: dict[str, float] = {}
    if rank_budget is not None:
        fused, energy = allocate_ranks(fused, rank_budget)
    out_dtype = next(iter(first.values())).A.dtype if first else torch.float32
    modules = {}
    for name, f in fused.items():
        fac = f if isinstance(f, Factors) else f.truncated(max(1, min(f.delta.shape)))
        src = first[name]
        modules[name] = LoraModule(
            A=fac.A.to("cpu", out_dtype).contiguous(), B=fac.B.to("cpu", out_dtype).contiguous(),
            scale=1.0, kind=src.kind, fan_in_fan_out=src.fan_in_fan_out,
            a_shape=((fac.rank, *src.a_shape[1:]) if src.a_shape is not None else None),
            b_shape=((src.b_shape[0], fac.rank, *src.b_shape[2:])
                     if src.b_shape is not None else None),
        )
    base = adapters[0]
    cfg = base.config.copy()
    for key in ("rank_pattern", "alpha_pattern", "modules_to_save", "layers_to_transform"):
        cfg.data.pop(key, None)
    cfg.data["target_modules"] = sorted({n.rsplit(".", 1)[-1] for n in modules})
    cfg.data["init_lora_weights"] = True
    out = Adapter.from_factors(modules, base_model=base.base_model,
                               task_type=base.config.task_type, base_config=cfg)
    return FusionResult(out, m.name, bound, w, {n: mo.rank for n, mo in modules.items()}, energy)
