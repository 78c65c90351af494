"""The composed adapter as factors: what the search found, written as a normal PEFT adapter."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lorahive.compose.composer.candidates import Candidate
from lorahive.hub.adapter import Adapter, LoraModule
from lorahive.hub.lowrank import truncated_factors


def compose_ab(cands: Sequence[Candidate], weights: Sequence[float],
               names: Sequence[str]) -> Adapter:
    """LoRAHub's result: ``A = sum w_i A_i``, ``B = sum w_i B_i``, the first candidate's scale."""
    first = cands[0].adapter
    mods: dict[str, LoraModule] = {}
    for name in names:
        A = sum(float(w) * c.adapter.modules[name].A.float() for c, w in zip(cands, weights, strict=True))
        B = sum(float(w) * c.adapter.modules[name].B.float() for c, w in zip(cands, weights, strict=True))
        mods[name] = LoraModule(A=A.contiguous(), B=B.contiguous(),
                                scale=first.modules[name].scale)
    return Adapter.from_factors(mods, base_model=first.base_model, base_config=first.config)


def compose_delta(cands: Sequence[Candidate], weights: Sequence[float], names: Sequence[str],
                  rank: int | None) -> tuple[Adapter, dict[str, float]]:
    """``sum_i w_i s_i B_i A_i`` kept factored, truncated to ``rank`` by a factored SVD.

    Returns the adapter (scale 1 per module) and the energy kept per module.
    """
    first = cands[0].adapter
    mods: dict[str, LoraModule] = {}
    energy: dict[str, float] = {}
    for name in names:
        parts = [(c.adapter.modules[name], float(w)) for c, w in zip(cands, weights, strict=True)
                 if name in c.adapter.modules]
        B = torch.cat([m.B.float() * (w * m.scale) for m, w in parts], dim=1)
        A = torch.cat([m.A.float() for m, _ in parts])
        k = min(rank or B.shape[1], B.shape[1])
        Bk, Ak, kept = truncated_factors(B, A, k)
        mods[name] = LoraModule(A=Ak.contiguous(), B=Bk.contiguous(), scale=1.0)
        energy[name] = kept
    return Adapter.from_factors(mods, base_model=first.base_model,
                                task_type=first.config.task_type), energy
