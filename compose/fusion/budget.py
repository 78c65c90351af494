"""Spectral rank budget: share a total rank across modules by singular-value energy.

AdaLoRA (Zhang et al., ICLR 2023, https://arxiv.org/abs/2303.10512) reallocates rank during
training by importance; applied post hoc, the best allocation of a total budget of rank-1
components (minimum total squared Frobenius error) keeps the globally largest singular values
across all modules. Every module keeps at least rank 1 so the adapter keeps its structure.
"""

from __future__ import annotations

from lorahive.compose.fusion.terms import Factors, Fused
from lorahive.hub.errors import InvalidRequestError
from lorahive.hub.lowrank import energy_kept, truncate


def allocate_ranks(
    fused: dict[str, Fused], budget: int
) -> tuple[dict[str, Factors], dict[str, float]]:
    """Truncate every module to its share of ``budget``; returns factors and energy kept."""
    if budget < len(fused):
        raise InvalidRequestError(
            f"rank_budget {budget} is below the number of modules ({len(fused)}); each "
            "module keeps at least rank 1", params="rank_budget"
        )
    svds = {n: f.svd() for n, f in fused.items()}
    ranks = {n: 1 for n in fused}
    pool: list[tuple[float, str]] = []
    for n, (_, s, _) in svds.items():
        pool.extend((float(x) ** 2, n) for x in s[1:].tolist())
    pool.sort(key=lambda p: -p[0])
    for _, n in pool[: budget - len(fused)]:
        ranks[n] += 1
    out: dict[str, Factors] = {}
    energy: dict[str, float] = {}
    for n, (u, s, vh) in svds.items():
        out[n] = Factors(*truncate(u, s, vh, ranks[n]))
        energy[n] = energy_kept(s, ranks[n])
    return out, energy
