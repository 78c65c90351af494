"""PEFT's ``add_weighted_adapter`` combination types, with PEFT's semantics.

Two families, as in PEFT:

* ``linear``, ``ties``, ``dare_linear``, ``dare_ties``, ``magnitude_prune`` combine the A's
  and the B's *separately* (A weighted by ``sign(w s) sqrt|w s|``, B by ``sqrt|w s|``), so the
  product ``B A`` has cross terms ``B_i A_j`` and is not ``sum w_i s_i B_i A_i``. Kept under
  these names for compatibility; ``task_arithmetic`` is the exact sum.
* ``svd``, ``ties_svd``, ``dare_*_svd``, ``magnitude_prune_svd`` combine the dense deltas and
  truncate to ``rank`` (default: the largest input rank). ``svd`` is a sum of low-rank terms,
  so its SVD is computed from the factors; the others are element-wise, so they are dense.

Differences from PEFT (on purpose): the fused adapter's scale is 1 even for rsLoRA inputs (PEFT
inherits ``use_rslora`` with ``lora_alpha = r`` and so scales by sqrt(r)); ranks may differ per
module; ``cat`` has exactly the sum of the ranks present in each module (PEFT zero-pads to the
largest sum); DARE masks come from a per-module generator seeded by ``--seed``.
"""

from __future__ import annotations

import math

import torch

from lorahive.compose.fusion import elementwise as ew
from lorahive.compose.fusion.methods import fusion_method
from lorahive.compose.fusion.terms import Context, Dense, Factors, Fused, Term, finish
from lorahive.hub.errors import ShapeMismatchError

PEFT = "https://huggingface.co/docs/peft/developer_guides/model_merging"
TIES = "https://arxiv.org/abs/2306.01708"
DARE = "https://arxiv.org/abs/2311.03099"
CROSS = ("PEFT semantics: A's and B's are combined separately with sqrt weights, so B@A has "
         "cross terms B_i A_j; not the exact weighted sum (use task_arithmetic for that)")


def _factor_weights(terms: list[Term]) -> tuple[list[float], list[float]]:
    wa, wb = [], []
    for t in terms:
        ws = t.weight * t.scale
        wa.append(math.sqrt(abs(ws)) * (1 if ws >= 0 else -1))
        wb.append(math.sqrt(abs(ws)))
    return wa, wb


def _same_rank(terms: list[Term], ctx: Context, method: str) -> None:
    if len({t.rank for t in terms}) > 1:
        raise ShapeMismatchError(
            f"{method} combines A and B element-wise, so every adapter needs the same rank; "
            f"module {ctx.name} has ranks {sorted({t.rank for t in terms})}. "
            "Use task_arithmetic, cat or svd for mixed ranks"
        )


def _separately(terms: list[Term], ctx: Context, method: str, combine) -> Fused:
    """Apply ``combine(tensors, weights)`` to the A's, then to the B's (PEFT's order)."""
    if ctx.n_adapters == 1:  # PEFT falls back to linear for a single adapter
        combine = ew.task_arithmetic
    _same_rank(terms, ctx, method)
    wa, wb = _factor_weights(terms)
    A = combine([t.A for t in terms], wa)
    B = combine([t.B for t in terms], wb)
    return Factors(B, A)


def _dense(terms: list[Term], ctx: Context, combine) -> Dense:
    """Combine dense deltas in the weight's layout (where PEFT prunes), back to out x in."""
    if ctx.n_adapters == 1:
        combine = ew.task_arithmetic
    out = combine([t.layout_delta() for t in terms], [t.weight for t in terms])
    return Dense(terms[0].from_layout(out))


# exact -------------------------------------------------------------------------------------
@fusion_method("cat", paper=PEFT, family="peft")
def cat(terms: list[Term], ctx: Context) -> Fused:
    """Concatenate factors: exact weighted sum, rank = sum of input ranks (PEFT's cat)."""
    A = torch.cat([t.A * (t.weight * t.scale) for t in terms], 0)
    B = torch.cat([t.B for t in terms], 1)
    return Factors(B, A)


@fusion_method("svd", paper=PEFT, family="peft")
def svd(terms: list[Term], ctx: Context) -> Fused:
    """Weighted sum of deltas truncated to --rank by SVD (from the factors, never dense)."""
    return finish(cat(terms, ctx), terms, ctx)


# A and B combined separately (PEFT's cross-term semantics) ---------------------------------
@fusion_method("linear", paper=PEFT, family="peft", note=CROSS)
def linear(terms: list[Term], ctx: Context) -> Fused:
    """Weighted sum of the A's and of the B's (sqrt weights; equal ranks)."""
    return _separately(terms, ctx, "linear", ew.task_arithmetic)


@fusion_method("ties", paper=TIES, family="peft", note=CROSS)
def ties(
    terms: list[Term], ctx: Context, *, density: float,
    majority_sign_method: ew.SignMethod = "total",
) -> Fused:
    """TIES (trim, elect sign, disjoint mean) on the A's and on the B's separately."""
    ew.check_density(density)
    return _separately(terms, ctx, "ties",
                       lambda ts, w: ew.ties(ts, w, density, majority_sign_method))


@fusion_method("dare_linear", paper=DARE, family="peft", note=CROSS)
def dare_linear(terms: list[Term], ctx: Context, *, density: float) -> Fused:
    """DARE random drop and rescale, then weighted sum, on the A's and B's separately."""
    ew.check_density(density)
    g = ctx.generator()
    return _separately(terms, ctx, "dare_linear",
                       lambda ts, w: ew.dare_linear(ts, w, density, g))


@fusion_method("dare_ties", paper=DARE, family="peft", note=CROSS)
def dare_ties(
    terms: list[Term], ctx: Context, *, density: float,
    majority_sign_method: ew.SignMethod = "total",
) -> Fused:
    """DARE random drop, then TIES sign election, on the A's and B's separately."""
    ew.check_density(density)
    g = ctx.generator()
    return _separately(terms, ctx, "dare_ties",
                       lambda ts, w: ew.dare_ties(ts, w, density, g, majority_sign_method))


@fusion_method("magnitude_prune", paper=PEFT, family="peft", note=CROSS)
def magnitude_prune(terms: list[Term], ctx: Context, *, density: float) -> Fused:
    """Keep each tensor's top-density entries, weighted sum, on the A's and B's separately."""
    ew.check_density(density)
    return _separately(terms, ctx, "magnitude_prune",
                       lambda ts, w: ew.magnitude_prune(ts, w, density))


# dense element-wise, truncated by SVD --------------------------------------------------------
@fusion_method("ties_svd", paper=TIES, family="peft", dense=True)
def ties_svd(
    terms: list[Term], ctx: Context, *, density: float,
    majority_sign_method: ew.SignMethod = "total",
) -> Fused:
    """TIES on the dense deltas, truncated to --rank by SVD."""
    ew.check_density(density)
    d = _dense(terms, ctx, lambda ts, w: ew.ties(ts, w, density, majority_sign_method))
    return finish(d, terms, ctx)


@fusion_method("dare_linear_svd", paper=DARE, family="peft", dense=True)
def dare_linear_svd(terms: list[Term], ctx: Context, *, density: float) -> Fused:
    """DARE (random drop, rescale, sum) on the dense deltas, truncated to --rank by SVD."""
    ew.check_density(density)
    g = ctx.generator()
    return finish(_dense(terms, ctx, lambda ts, w: ew.dare_linear(ts, w, density, g)), terms, ctx)


@fusion_method("dare_ties_svd", paper=DARE, family="peft", dense=True)
def dare_ties_svd(
    terms: list[Term], ctx: Context, *, density: float,
    majority_sign_method: ew.SignMethod = "total",
) -> Fused:
    """DARE then TIES sign election on the dense deltas, truncated to --rank by SVD."""
    ew.check_density(density)
    g = ctx.generator()
    d = _dense(terms, ctx, lambda ts, w: ew.dare_ties(ts, w, density, g, majority_sign_method))
    return finish(d, terms, ctx)


@fusion_method("magnitude_prune_svd", paper=PEFT, family="peft", dense=True)
def magnitude_prune_svd(terms: list[Term], ctx: Context, *, density: float) -> Fused:
    """Magnitude pruning of the dense deltas, weighted sum, truncated to --rank by SVD."""
    ew.check_density(density)
    return finish(_dense(terms, ctx, lambda ts, w: ew.magnitude_prune(ts, w, density)), terms, ctx)
