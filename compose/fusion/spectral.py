"""Spectral and orthogonal merges of task matrices, each in core space or on dense deltas.

Every method here is a function of the task matrices through SVDs and linear maps only (KnOTS
with ``merge=linear`` included), so it gives the same result on the R x R cores as on the dense
out x in deltas (``space=dense``), and core space is far cheaper. Spectra are restricted to the
rank a sum of the inputs can have, ``min(out, in, sum r)``: a LoRA sum has no other directions,
and flattening zero singular values would invent some. Weights multiply each task's matrix.
"""

from __future__ import annotations

from typing import Literal

import torch

from lorahive.compose.fusion import elementwise as ew
from lorahive.compose.fusion.core_space import (
    Basis,
    Space,
    TaskFactors,
    merge_matrices,
    rank_cap,
    task_matrices,
)
from lorahive.compose.fusion.methods import fusion_method
from lorahive.compose.fusion.terms import Context, Fused, Term
from lorahive.hub.lowrank import factored_svd

TSV = "https://arxiv.org/abs/2412.00081"
KNOTS = "https://arxiv.org/abs/2410.19735"
ISO = "https://arxiv.org/abs/2502.04959"
STAR = "https://arxiv.org/abs/2502.10339"
CART = "https://arxiv.org/abs/2412.12153"


def _svd(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return torch.linalg.svd(x, full_matrices=False)


def orthogonalize(X: torch.Tensor) -> torch.Tensor:
    """Nearest matrix with orthonormal columns (polar factor / Procrustes): ``P Q^T``."""
    P, _, Qh = _svd(X)
    return P @ Qh


def task_svd(X: torch.Tensor, w: float, f: tuple[torch.Tensor, torch.Tensor] | None,
             project: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
    """SVD of ``w X`` (less its component in ``project``'s span, when given). With ``X``'s
    factors ``X = L P^T`` (core space) it is an r x r SVD: exact, the same triplets."""
    if f is None:
        Xw = X * w
        return _svd(Xw if project is None else Xw - project @ (project.T @ Xw))
    L = f[0] * w
    if project is not None:
        L = L - project @ (project.T @ L)
    return factored_svd(L, f[1].T, L.dtype)


def lowrank(x: torch.Tensor, k: int) -> torch.Tensor:
    U, S, Vh = _svd(x)
    return (U[:, :k] * S[:k]) @ Vh[:k]


# the math on matrices ---------------------------------------------------------------------
def tsv_merge(mats: list[torch.Tensor], weights: list[float], ranks: list[int], cap: int,
              share: float, alpha: float, factors: TaskFactors = None) -> torch.Tensor:
    """TSV-M: each task's top ``share * cap`` singular triplets, U and V orthogonalised.

    A task never contributes more triplets than its rank: null directions are arbitrary and
    would tilt the orthogonalisation.
    """
    us, ss, vs = [], [], []
    for i, (X, w, r) in enumerate(zip(mats, weights, ranks, strict=True)):
        k = min(r, max(1, int(cap * share)))
        U, S, Vh = task_svd(X, w, factors[i] if factors else None)
        us.append(U[:, :k])
        ss.append(S[:k])
        vs.append(Vh[:k].T)
    U, S, V = torch.cat(us, 1), torch.cat(ss), torch.cat(vs, 1)
    return alpha * (orthogonalize(U) * S) @ orthogonalize(V).T


def iso_c(mats: list[torch.Tensor], weights: list[float], cap: int,
          alpha: float) -> torch.Tensor:
    """Iso-C: the task-arithmetic sum with its spectrum flattened to the mean singular value."""
    U, S, Vh = _svd(ew.task_arithmetic(mats, weights))
    U, S, Vh = U[:, :cap], S[:cap], Vh[:cap]
    return alpha * S.mean() * (U @ Vh)


def cts_split(cap: int, tasks: int, common_fraction: float) -> tuple[int, int]:
    """Iso-CTS's split of ``cap`` directions: ``(common, per task)``, as the authors' code
    makes it (danielm1405/iso-merging, ``src/utils/iso.py``): the common share is
    ``int(cap * common_fraction)``, and the rest is *rounded* to a multiple of the number of
    tasks, the common space taking what is left. (The task shares are capped so the common
    space is never negative, which the authors' code does not guard.)"""
    common = int(cap * common_fraction)
    per_task = min(round((cap - common) / tasks), cap // tasks)
    return cap - per_task * tasks, per_task


def iso_cts(mats: list[torch.Tensor], weights: list[float], ranks: list[int], cap: int,
            common_fraction: float, alpha: float, factors: TaskFactors = None) -> torch.Tensor:
    """Iso-CTS: common subspace of the sum plus each task's own directions, isotropised."""
    k, per_task = cts_split(cap, len(mats), common_fraction)
    U, S, Vh = _svd(ew.task_arithmetic(mats, weights))
    Uk, Sk, Vk = U[:, :k], S[:k], Vh[:k]
    us, ss, vs = [Uk], [Sk], [Vk.T]
    for i, (X, w, r) in enumerate(zip(mats, weights, ranks, strict=True)):
        n = min(per_task, r)
        if n > 0:
            Ut, St, Vth = task_svd(X, w, factors[i] if factors else None, project=Uk)
            us.append(Ut[:, :n])
            ss.append(St[:n])
            vs.append(Vth[:n].T)
    Uc, Sc, Vc = torch.cat(us, 1), torch.cat(ss), torch.cat(vs, 1)
    return alpha * Sc.mean() * (orthogonalize(Uc) @ orthogonalize(Vc).T)


def star(mats: list[torch.Tensor], weights: list[float], eta: float,
         factors: TaskFactors = None) -> torch.Tensor:
    """STAR: per task keep the top singular values holding ``eta`` of the nuclear norm,
    rescale them to the full nuclear norm, then average."""
    out = torch.zeros_like(mats[0])
    for i, (X, w) in enumerate(zip(mats, weights, strict=True)):
        U, S, Vh = task_svd(X, w, factors[i] if factors else None)
        total = S.sum()
        if total <= 0:
            continue
        k = int(torch.searchsorted(torch.cumsum(S, 0) / total,
                                   torch.tensor(eta, dtype=S.dtype, device=S.device))) + 1
        k = min(k, S.shape[0])
        Sk = S[:k] * (total / S[:k].sum())
        out += (U[:, :k] * Sk) @ Vh[:k]
    return out / len(mats)


def cart(mats: list[torch.Tensor], weights: list[float], cap: int, rank_fraction: float,
         lam: float) -> torch.Tensor:
    """CART: the average plus ``lam`` times the low-rank parts of each centred task."""
    ws = [X * w for X, w in zip(mats, weights, strict=True)]
    mean = torch.stack(ws).mean(0)
    k = max(1, round(cap * rank_fraction))
    return mean + lam * sum(lowrank(X - mean, k) for X in ws)


def knots(mats: list[torch.Tensor], weights: list[float], cap: int, merge: str,
          density: float, majority_sign_method: ew.SignMethod,
          generator: torch.Generator) -> torch.Tensor:
    """KnOTS: SVD of the tasks side by side gives a shared basis U; merge the per-task
    coefficient blocks ``S V_t^T`` element-wise; recombine as ``U @ merged``."""
    q = mats[0].shape[1]
    U, S, Vh = _svd(torch.cat(mats, 1))
    U, S, Vh = U[:, :cap], S[:cap], Vh[:cap]
    blocks = [S[:, None] * Vh[:, i * q:(i + 1) * q] for i in range(len(mats))]
    return U @ merge_matrices(blocks, weights, merge, density, majority_sign_method, generator)


# registered methods -----------------------------------------------------------------------
def _run(terms: list[Term], ctx: Context, space: Space, fn, basis: Basis = "qr") -> Fused:
    mats, lift, factors = task_matrices(terms, space, basis, ctx.bases)
    return lift(fn(mats, [t.weight for t in terms], factors))


@fusion_method("tsv", paper=TSV, family="spectral")
def tsv(terms: list[Term], ctx: Context, *, share: float = 0.0, alpha: float = 1.0,
        space: Space = "core") -> Fused:
    """Task Singular Vectors merge (TSV-M; Gargiulo et al., CVPR 2025); share 0 = 1/T."""
    cap = rank_cap(terms)
    s = share or 1.0 / len(terms)
    return _run(terms, ctx, space,
                lambda m, w, f: tsv_merge(m, w, [t.rank for t in terms], cap, s, alpha, f))


@fusion_method("iso_c", paper=ISO, family="spectral")
def iso_c_method(terms: list[Term], ctx: Context, *, alpha: float = 1.0,
                 space: Space = "core") -> Fused:
    """Isotropic merge Iso-C (Marczak et al., ICML 2025): sum with a flat spectrum."""
    cap = rank_cap(terms)
    return _run(terms, ctx, space, lambda m, w, f: iso_c(m, w, cap, alpha))


@fusion_method("iso_cts", paper=ISO, family="spectral")
def iso_cts_method(terms: list[Term], ctx: Context, *, common_fraction: float = 0.8,
                   alpha: float = 1.0, space: Space = "core") -> Fused:
    """Iso-CTS (Marczak et al., ICML 2025): common + task-specific subspaces, isotropised."""
    cap = rank_cap(terms)
    return _run(terms, ctx, space, lambda m, w, f: iso_cts(m, w, [t.rank for t in terms], cap,
                                                          common_fraction, alpha, f))


@fusion_method("star", paper=STAR, family="spectral")
def star_method(terms: list[Term], ctx: Context, *, eta: float = 0.4,
                space: Space = "core") -> Fused:
    """STAR (Lee et al., NAACL 2025): spectral truncate and rescale each task, then average."""
    return _run(terms, ctx, space, lambda m, w, f: star(m, w, eta, f))


@fusion_method("cart", paper=CART, family="spectral")
def cart_method(terms: list[Term], ctx: Context, *, rank_fraction: float = 0.08,
                lam: float = 1.0, space: Space = "core") -> Fused:
    """CART (Choi et al., 2024): average plus low-rank centred task vectors."""
    cap = rank_cap(terms)
    return _run(terms, ctx, space, lambda m, w, f: cart(m, w, cap, rank_fraction, lam))


@fusion_method("knots", paper=KNOTS, family="spectral")
def knots_method(
    terms: list[Term], ctx: Context, *,
    merge: Literal["ties", "dare_ties", "dare_linear", "task_arithmetic"] = "ties",
    density: float = 0.5, majority_sign_method: ew.SignMethod = "total",
    space: Space = "core",
) -> Fused:
    """KnOTS (Stoica et al., ICLR 2025): merge per-task coefficients in a joint SVD basis."""
    cap = rank_cap(terms)
    g = ctx.generator()
    # element-wise merges of the coefficient blocks depend on the input-side basis
    basis: Basis = "qr" if merge == "task_arithmetic" else "svd"
    return _run(terms, ctx, space, lambda m, w, f: knots(m, w, cap, merge, density,
                                                       majority_sign_method, g), basis)
