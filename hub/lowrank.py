"""Linear algebra on low-rank products ``B @ A`` that never forms the dense matrix.

For ``B`` (out x R) and ``A`` (R x in): thin QR of ``B`` and of ``A.T`` reduce the problem to an
SVD of a small core ``R_B @ R_A.T`` (at most R x R). The result is exact, and costs
O((out + in) R^2 + R^3) instead of O(out * in * min(out, in)).
"""

from __future__ import annotations

import torch


def factored_svd(
    B: torch.Tensor, A: torch.Tensor, compute_dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Thin SVD of ``B @ A``: returns ``U`` (out x k), ``S`` (k), ``Vh`` (k x in)."""
    B = B.to(compute_dtype)
    A = A.to(compute_dtype)
    qb, rb = torch.linalg.qr(B)
    qa, ra = torch.linalg.qr(A.T)
    uc, s, vch = torch.linalg.svd(rb @ ra.T, full_matrices=False)
    return qb @ uc, s, vch @ qa.T


def singular_values(B: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
    """Singular values of ``B @ A`` from the factors alone."""
    B = B.to(torch.float32)
    A = A.to(torch.float32)
    rb = torch.linalg.qr(B, mode="r")[1]
    ra = torch.linalg.qr(A.T, mode="r")[1]
    return torch.linalg.svdvals(rb @ ra.T)


def energy_rank(s: torch.Tensor, fraction: float) -> int:
    """Smallest k whose top-k singular values hold ``fraction`` of the squared energy."""
    e = s.double() ** 2
    total = float(e.sum())
    if total == 0.0:
        return 0
    cum = torch.cumsum(e, 0) / total
    return int(torch.searchsorted(cum, torch.tensor(fraction - 1e-12, dtype=cum.dtype)).item()) + 1


def energy_kept(s: torch.Tensor, k: int) -> float:
    e = s.double() ** 2
    total = float(e.sum())
    return 1.0 if total == 0.0 else float(e[:k].sum() / total)


def truncate(
    U: torch.Tensor, S: torch.Tensor, Vh: torch.Tensor, rank: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank-``rank`` factors ``(B, A)`` with the singular values folded into ``B`` (as PEFT)."""
    k = min(rank, S.shape[0])
    return U[:, :k] * S[:k], Vh[:k]


def truncated_factors(
    B: torch.Tensor, A: torch.Tensor, rank: int, compute_dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Best rank-``rank`` approximation of ``B @ A`` as factors, plus the energy it keeps."""
    U, S, Vh = factored_svd(B, A, compute_dtype)
    b, a = truncate(U, S, Vh, rank)
    return b, a, energy_kept(S, rank)


def singular_subspaces(
    B: torch.Tensor, A: torch.Tensor, rtol: float = 1e-6
) -> tuple[torch.Tensor, torch.Tensor]:
    """Orthonormal bases of the output (out x k) and input (in x k) spaces ``B @ A`` acts on,
    ``k`` its numerical rank (singular values above ``rtol`` times the largest)."""
    U, S, Vh = factored_svd(B, A)
    k = int((S / S[0] > rtol).sum()) if S.numel() and float(S[0]) > 0 else 0
    return U[:, :k], Vh[:k].T


def subspace_similarity(U1: torch.Tensor, U2: torch.Tensor) -> float:
    """``||U1^T U2||_F^2 / min(k1, k2)`` for orthonormal ``U1`` (d x k1) and ``U2`` (d x k2):
    1 when one subspace contains the other, 0 when they are orthogonal. The normalised
    subspace similarity of Hu et al. (LoRA, 2021, section 7.2), used there to compare adapters."""
    k = min(U1.shape[1], U2.shape[1])
    if k == 0:
        return 0.0
    m = U1.to(torch.float64).T @ U2.to(torch.float64)
    return float((m * m).sum()) / k
