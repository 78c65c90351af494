"""What a fusion method sees for one module (its terms and context) and what it returns.

Every matrix here is in the (out x in) frame, float32 (or the compute dtype) on the chosen
device. Element-wise methods work in the base weight's own layout (``Term.layout_delta``) so
their masks and top-k match PEFT's, which prunes ``get_delta_weight`` as the layer stores it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import torch

from lorahive.hub.adapter import LoraModule
from lorahive.hub.lowrank import factored_svd, truncate


@dataclass
class Term:
    """One adapter's contribution to a module: its factors and the user weight."""

    module: LoraModule
    weight: float
    device: torch.device
    dtype: torch.dtype = torch.float32

    @property
    def rank(self) -> int:
        return self.module.rank

    @property
    def scale(self) -> float:
        return self.module.scale

    @property
    def A(self) -> torch.Tensor:
        return self.module.A.to(self.device, self.dtype)

    @property
    def B(self) -> torch.Tensor:
        return self.module.B.to(self.device, self.dtype)

    def delta(self) -> torch.Tensor:
        """``scale * B @ A`` (out x in), unweighted."""
        return self.module.delta_matrix(self.device, self.dtype)

    def layout_delta(self) -> torch.Tensor:
        """The delta in the base weight's layout, as PEFT's ``get_delta_weight`` returns it."""
        return self.module.to_weight_layout(self.delta())

    def from_layout(self, t: torch.Tensor) -> torch.Tensor:
        """Back from the weight layout to (out x in)."""
        m = self.module
        if m.kind == "conv":
            return t.reshape(m.out_features, -1)
        if m.kind == "embedding" or m.fan_in_fan_out:
            return t.T
        return t


@dataclass
class Context:
    """Per-module settings: target rank (``None``: method default), device, seeded RNG."""

    name: str
    device: torch.device
    dtype: torch.dtype = torch.float32
    rank: int | None = None
    defer_truncation: bool = False  # a rank budget truncates all modules afterwards
    seed: int = 0
    n_adapters: int = 0  # adapters in the whole fusion (PEFT's single-adapter fallback)
    bases: Any = None  # core-space bases prepared for a batch of same-shape modules

    def generator(self) -> torch.Generator:
        """A generator seeded from (seed, module name): reproducible and order-independent."""
        return torch.Generator(device=self.device).manual_seed(module_seed(self.seed, self.name))


def module_seed(seed: int, name: str) -> int:
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


@dataclass
class Factors:
    """A fused module as factors with scale 1: ``delta = B @ A``."""

    B: torch.Tensor
    A: torch.Tensor

    @property
    def rank(self) -> int:
        return int(self.A.shape[0])

    def dense(self) -> torch.Tensor:
        return self.B @ self.A

    def svd(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return factored_svd(self.B, self.A, self.A.dtype)

    def truncated(self, rank: int) -> Factors:
        if rank >= self.rank:
            return self
        return Factors(*truncate(*self.svd(), rank))


@dataclass
class Dense:
    """A fused module as a dense (out x in) matrix (element-wise methods)."""

    delta: torch.Tensor

    def dense(self) -> torch.Tensor:
        return self.delta

    def svd(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return torch.linalg.svd(self.delta, full_matrices=False)

    def truncated(self, rank: int) -> Factors:
        return Factors(*truncate(*self.svd(), rank))


Fused = Factors | Dense


def default_rank(terms: list[Term], ctx: Context) -> int:
    """PEFT's rule for ``*svd``: the requested rank, else the largest input rank."""
    return ctx.rank or max(t.rank for t in terms)


def finish(result: Fused, terms: list[Term], ctx: Context) -> Fused:
    """Truncate to the target rank unless a rank budget will do it for all modules later."""
    if ctx.defer_truncation:
        return result
    return result.truncated(default_rank(terms, ctx))
