"""Core Space merging: fuse LoRA adapters in a small shared basis, never forming out x in.

Panariello, Marczak et al., "Accurate and Efficient Low-Rank Model Merging in Core Space",
NeurIPS 2025, https://arxiv.org/abs/2509.17786. Reference bases come from the SVD of the stacked
B's (``U_B``, out x R) and of the stacked A's (``V_A``, R x in), R = sum of ranks. Each task
becomes a core ``M_t = s_t U_B^T B_t A_t V_A^T`` (R x R); a merge runs on the cores and the result
maps back as ``U_B M V_A`` — already factored, rank <= R. Lossless for linear merges (the bases
span every task's column and row space), and fine with heterogeneous ranks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

from lorahive.compose.fusion import elementwise as ew
from lorahive.compose.fusion.methods import fusion_method
from lorahive.compose.fusion.terms import Context, Dense, Factors, Fused, Term

PAPER = "https://arxiv.org/abs/2509.17786"
Space = Literal["core", "dense"]


@dataclass
class CoreSpace:
    """Orthonormal bases of the stacked factors and each task's core matrix (unweighted)."""

    U: torch.Tensor  # out x R'
    V: torch.Tensor  # R'' x in (orthonormal rows)
    cores: list[torch.Tensor]

    @classmethod
    def from_terms(cls, terms: list[Term]) -> CoreSpace:
        U = torch.linalg.svd(torch.cat([t.B for t in terms], 1), full_matrices=False)[0]
        V = torch.linalg.svd(torch.cat([t.A for t in terms], 0), full_matrices=False)[2]
        cores = [(U.T @ t.B) @ (t.A @ V.T) * t.scale for t in terms]
        return cls(U, V, cores)

    def lift(self, M: torch.Tensor) -> Factors:
        """Back to the weight's frame, factored: ``(U_B M) @ V_A``."""
        return Factors(self.U @ M, self.V)


def rank_cap(terms: list[Term]) -> int:
    """The rank a combination of these terms can have: min(out, in, sum of ranks)."""
    m = terms[0].module
    return min(m.out_features, m.in_features, sum(t.rank for t in terms))


def task_matrices(
    terms: list[Term], space: Space
) -> tuple[list[torch.Tensor], Callable[[torch.Tensor], Fused]]:
    """Each task's (unweighted) update in the chosen space, and the map back to factors."""
    if space == "core":
        cs = CoreSpace.from_terms(terms)
        return cs.cores, cs.lift
    cap = rank_cap(terms)
    return [t.delta() for t in terms], lambda M: Dense(M).truncated(cap)


Merge = Literal["task_arithmetic", "ties", "dare_linear", "dare_ties", "magnitude_prune"]


def merge_matrices(
    mats: list[torch.Tensor], weights: list[float], merge: str, density: float,
    majority_sign_method: ew.SignMethod, generator: torch.Generator,
) -> torch.Tensor:
    """Element-wise merge of same-shape matrices (PEFT's semantics, see ``elementwise``)."""
    if merge == "task_arithmetic":
        return ew.task_arithmetic(mats, weights)
    ew.check_density(density)
    if merge == "ties":
        return ew.ties(mats, weights, density, majority_sign_method)
    if merge == "dare_linear":
        return ew.dare_linear(mats, weights, density, generator)
    if merge == "dare_ties":
        return ew.dare_ties(mats, weights, density, generator, majority_sign_method)
    return ew.magnitude_prune(mats, weights, density)


@fusion_method("core_space", paper=PAPER, family="core space")
def core_space(
    terms: list[Term], ctx: Context, *, merge: Merge = "ties", density: float = 0.5,
    majority_sign_method: ew.SignMethod = "total",
) -> Fused:
    """Merge the R x R core matrices (task arithmetic, TIES, DARE, pruning); rank <= sum r."""
    cs = CoreSpace.from_terms(terms)
    M = merge_matrices(cs.cores, [t.weight for t in terms], merge, density,
                       majority_sign_method, ctx.generator())
    return cs.lift(M)
