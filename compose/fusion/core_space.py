"""Core Space merging: fuse LoRA adapters in a small shared basis, never forming out x in.

Panariello, Marczak et al., "Accurate and Efficient Low-Rank Model Merging in Core Space",
NeurIPS 2025, https://arxiv.org/abs/2509.17786. Reference bases come from the SVD of the stacked
B's (``U_B``, out x R) and of the stacked A's (``V_A``, R x in), R = sum of ranks. Each task
becomes a core ``M_t = s_t U_B^T B_t A_t V_A^T`` (R x R); a merge runs on the cores and the result
maps back as ``U_B M V_A`` — already factored, rank <= R. Lossless for linear merges (the bases
span every task's column and row space), and fine with heterogeneous ranks.

The bases come from one thin Householder QR per side, ``[B_1 ... B_n] = Q_B R_B`` and
``[A_1; ...; A_n]^T = Q_A R_A`` (batched over same-shape modules when the engine prepares
them), so each core is a product of small blocks of the R factors and is kept as those
factors too. Element-wise merges of the cores depend on the basis, so they use the paper's
singular-vector bases, ``U_B = Q_B U_r`` from the SVD of the small ``R_B`` (the same vectors as
an SVD of the tall stack, up to signs, which element-wise merges follow); methods built from
SVDs and linear maps of the cores give the same delta in any orthonormal basis and skip that
step (``basis="qr"``). The map back multiplies the tall basis once, on its narrower side.
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


Basis = Literal["svd", "qr"]


@dataclass
class Bases:
    """``[B_1 ... B_n] = Qb Rb`` and ``[A_1; ...; A_n]^T = Qa Ra`` (thin QR, R = sum of ranks)."""

    Qb: torch.Tensor  # out x k1, orthonormal columns; k1 = min(out, R)
    Rb: torch.Tensor  # k1 x R
    Qa: torch.Tensor  # in x k2, orthonormal columns; k2 = min(in, R)
    Ra: torch.Tensor  # k2 x R

    @classmethod
    def of(cls, terms: list[Term]) -> Bases:
        return prepare_bases([terms])[0]


def prepare_bases(groups: list[list[Term]]) -> list[Bases]:
    """Bases of modules with the same shapes and ranks: one batched QR per side."""
    def stack(ts: list[torch.Tensor]) -> torch.Tensor:
        return ts[0].unsqueeze(0) if len(ts) == 1 else torch.stack(ts)

    # both stacks are built column-major (as LAPACK takes them), so the QR's own copy of its
    # input is a straight one rather than a transposition
    Qb, Rb = torch.linalg.qr(stack([torch.cat([t.B.mT for t in ts], 0).mT for ts in groups]))
    Qa, Ra = torch.linalg.qr(stack([torch.cat([t.A for t in ts], 0).mT for ts in groups]))
    return [Bases(Qb[i], Rb[i], Qa[i], Ra[i]) for i in range(len(groups))]


def uses_core_space(family: str, params: dict) -> bool:
    """Whether a method with these parameters works on core matrices (and needs bases)."""
    return family == "core space" or params.get("space") == "core"


@dataclass
class CoreSpace:
    """Each task's core matrix (scale folded in, user weight not), its factors
    ``core_t = L_t @ P_t^T`` (rank r_t), and the map back to the weight's frame."""

    bases: Bases
    cores: list[torch.Tensor]
    factors: list[tuple[torch.Tensor, torch.Tensor]]
    rot_b: torch.Tensor | None = None  # "svd" basis: U_B = Qb @ rot_b, V_A^T = Qa @ rot_a
    rot_a: torch.Tensor | None = None

    @classmethod
    def from_terms(cls, terms: list[Term], basis: Basis = "svd",
                   bases: Bases | None = None) -> CoreSpace:
        b = bases if bases is not None else Bases.of(terms)
        Ls, Ps, i = [], [], 0
        for t in terms:
            Ls.append(b.Rb[:, i:i + t.rank] * t.scale)
            Ps.append(b.Ra[:, i:i + t.rank])
            i += t.rank
        rot_b = rot_a = None
        if basis == "svd":
            rot_b = torch.linalg.svd(b.Rb, full_matrices=False)[0]
            rot_a = torch.linalg.svd(b.Ra, full_matrices=False)[0]
            Ls = [rot_b.T @ x for x in Ls]
            Ps = [rot_a.T @ x for x in Ps]
        return cls(b, [x @ y.T for x, y in zip(Ls, Ps, strict=True)],
                   list(zip(Ls, Ps, strict=True)), rot_b, rot_a)

    def lift(self, M: torch.Tensor) -> Factors:
        """Back to the weight's frame, factored: ``(Qb M') Qa^T``, M' = M in the QR basis."""
        if self.rot_b is not None and self.rot_a is not None:
            M = self.rot_b @ M @ self.rot_a.T
        Qb, Qa = self.bases.Qb, self.bases.Qa
        if M.shape[0] == M.shape[1] and Qa.shape[0] < Qb.shape[0]:
            return Factors(Qb, M @ Qa.T)  # the tall product on the narrower side
        return Factors(Qb @ M, Qa.T)


def rank_cap(terms: list[Term]) -> int:
    """The rank a combination of these terms can have: min(out, in, sum of ranks)."""
    m = terms[0].module
    return min(m.out_features, m.in_features, sum(t.rank for t in terms))


TaskFactors = list[tuple[torch.Tensor, torch.Tensor]] | None


def task_matrices(
    terms: list[Term], space: Space, basis: Basis = "qr", bases: Bases | None = None,
) -> tuple[list[torch.Tensor], Callable[[torch.Tensor], Fused], TaskFactors]:
    """Each task's (unweighted) update in the chosen space, the map back to factors, and, in
    core space, each update's factors (``None`` on dense deltas, the reference path)."""
    if space == "core":
        cs = CoreSpace.from_terms(terms, basis, bases)
        return cs.cores, cs.lift, cs.factors
    cap = rank_cap(terms)
    return [t.delta() for t in terms], lambda M: Dense(M).truncated(cap), None


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
    cs = CoreSpace.from_terms(terms, "svd", ctx.bases)
    M = merge_matrices(cs.cores, [t.weight for t in terms], merge, density,
                       majority_sign_method, ctx.generator())
    return cs.lift(M)
