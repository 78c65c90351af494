"""Element-wise task-vector merges with PEFT's exact semantics (``peft.utils.merge_utils``).

TIES (Yadav et al., NeurIPS 2023, https://arxiv.org/abs/2306.01708): keep each task's top
``density`` share by magnitude, elect a sign per entry on the *unweighted* pruned tensors,
then average the weighted entries that agree with it, dividing by the *count* of agreeing tasks.
DARE (Yu et al., ICML 2024, https://arxiv.org/abs/2311.03099): drop entries at random with
probability ``1 - density`` and rescale the survivors by ``1 / density``.
Random masks come from the caller's generator, so a seed reproduces them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

from lorahive.hub.errors import InvalidRequestError

SignMethod = Literal["total", "frequency"]


def check_density(density: float) -> None:
    if not 0.0 <= density <= 1.0:
        raise InvalidRequestError(f"density must be in [0, 1]; got {density}", params="density")


def magnitude_prune_one(t: torch.Tensor, density: float) -> torch.Tensor:
    """Keep the ``int(density * numel)`` entries of largest magnitude."""
    if density >= 1:
        return t
    k = int(density * t.numel())
    mask = torch.zeros(t.numel(), device=t.device, dtype=t.dtype)
    mask[torch.topk(t.abs().reshape(-1), k=k, largest=True).indices] = 1
    return t * mask.reshape(t.shape)


def random_prune_one(
    t: torch.Tensor, density: float, generator: torch.Generator, rescale: bool = True
) -> torch.Tensor:
    """Bernoulli(density) mask, survivors divided by ``density`` (DARE)."""
    if density >= 1:
        return t
    mask = torch.bernoulli(torch.full_like(t, density), generator=generator)
    out = t * mask
    return out / density if rescale else out


def _weighted(stack: torch.Tensor, weights: Sequence[float]) -> torch.Tensor:
    w = torch.tensor(list(weights), device=stack.device, dtype=stack.dtype)
    return stack * w.view(-1, *([1] * (stack.dim() - 1)))


def majority_sign_mask(stack: torch.Tensor, method: SignMethod = "total") -> torch.Tensor:
    sign = stack.sign()
    mag = stack.sum(0) if method == "total" else sign.sum(0)
    return sign == torch.where(mag >= 0, 1, -1).to(sign.dtype)


def disjoint_merge(weighted: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    kept = mask.to(weighted.dtype)
    return (weighted * kept).sum(0) / torch.clamp(kept.sum(0), min=1.0)


def task_arithmetic(ts: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    return _weighted(torch.stack(list(ts)), weights).sum(0)


def magnitude_prune(
    ts: Sequence[torch.Tensor], weights: Sequence[float], density: float
) -> torch.Tensor:
    return task_arithmetic([magnitude_prune_one(t, density) for t in ts], weights)


def ties(
    ts: Sequence[torch.Tensor], weights: Sequence[float], density: float,
    majority_sign_method: SignMethod = "total",
) -> torch.Tensor:
    stack = torch.stack([magnitude_prune_one(t, density) for t in ts])
    mask = majority_sign_mask(stack, majority_sign_method)
    return disjoint_merge(_weighted(stack, weights), mask)


def dare_linear(
    ts: Sequence[torch.Tensor], weights: Sequence[float], density: float,
    generator: torch.Generator,
) -> torch.Tensor:
    return task_arithmetic([random_prune_one(t, density, generator) for t in ts], weights)


def dare_ties(
    ts: Sequence[torch.Tensor], weights: Sequence[float], density: float,
    generator: torch.Generator, majority_sign_method: SignMethod = "total",
) -> torch.Tensor:
    stack = torch.stack([random_prune_one(t, density, generator) for t in ts])
    mask = majority_sign_mask(stack, majority_sign_method)
    return disjoint_merge(_weighted(stack, weights), mask)
