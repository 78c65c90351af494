"""Exact linear fusion kept factored, and LoRAHub's element-wise mix of A's and B's."""

from __future__ import annotations

import torch

from lorahive.compose.fusion.methods import fusion_method
from lorahive.compose.fusion.terms import Context, Factors, Fused, Term
from lorahive.hub.errors import ShapeMismatchError

TASK_ARITHMETIC = "https://arxiv.org/abs/2212.04089"
LORAHUB = "https://arxiv.org/abs/2307.13269"


@fusion_method("task_arithmetic", paper=TASK_ARITHMETIC)
def task_arithmetic(terms: list[Term], ctx: Context) -> Fused:
    """Exact sum_i w_i s_i B_i A_i, kept factored; truncated by SVD only when --rank is given."""
    f = Factors(torch.cat([t.B * (t.weight * t.scale) for t in terms], 1),
                torch.cat([t.A for t in terms], 0))
    if ctx.rank is not None and not ctx.defer_truncation:
        return f.truncated(ctx.rank)
    return f


@fusion_method("lorahub", paper=LORAHUB)
def lorahub(terms: list[Term], ctx: Context) -> Fused:
    """LoRAHub's mix: A = sum w_i A_i, B = sum w_i B_i (scales folded into B; equal ranks)."""
    if len({t.rank for t in terms}) > 1:
        raise ShapeMismatchError(
            f"lorahub mixes A and B element-wise and needs equal ranks; module {ctx.name} has "
            f"{sorted({t.rank for t in terms})}"
        )
    A = sum(t.A * t.weight for t in terms)
    B = sum(t.B * (t.weight * t.scale) for t in terms)
    return Factors(B, A)
