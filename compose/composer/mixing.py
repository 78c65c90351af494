"""Batched mixing layers: the base Linear runs once, the low-rank path runs per candidate.

The targeted ``nn.Linear`` layers are wrapped in place. Factors of every candidate are stacked
once on the device, grouped by shape across layers, so a new set of K weight vectors costs
one small einsum per shape group (no state-dict reload, no loop over keys). A batch is laid
out group after group: rows ``[k * b, (k + 1) * b)`` use weight vector ``k``.

Mode ``ab`` (LoRAHub): ``A_k = sum_i w_ki A_i``, ``B_k = sum_i w_ki s_i B_i``, ``y += (x A_k^T) B_k^T``:
each candidate's scale is folded into its ``B``, the rule of ``compose.fusion``'s ``lorahub``
method that writes the result (with equal scales, as LoRAHub's candidates have, it is LoRAHub's
``s (sum w_i B_i)(sum w_i A_i)``). Mode ``delta``: ``y += sum_i w_ki s_i (x A_i^T) B_i^T``,
computed as one shared ``x @ [A_1; ...; A_n]^T``, a per-group column scaling and one shared
``@ [B_1 ... B_n]^T`` — exact for any ranks.

Layer blocks (``blocks`` > 1; per-layer mixing in the spirit of LoRA Soups' CAT, searched
gradient-free): the layers are split into ``blocks`` contiguous blocks and each block mixes
with its own weight vector, so a point of the search has ``blocks * n`` weights, block-major.
One block is LoRAHub's one weight per candidate. ``per_module`` makes every module a block of
its own (the weights Arrow routing sets, ``compose.composer.arrow``).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from lorahive.compose.composer.candidates import Candidate
from lorahive.hub.errors import InvalidRequestError, ShapeMismatchError


@dataclass
class FactorGroup:
    """Stacked factors of all same-shaped modules (one entry per layer)."""

    mode: str
    A: torch.Tensor  # ab: [M, n, r, in]; delta: [M, R, in]
    B: torch.Tensor  # ab: [M, n, out, r] with each s_i folded in; delta: [M, out, R]
    scale: torch.Tensor | None = None  # delta: [M, R] (s_i per column, 0 where absent)
    owner: torch.Tensor | None = None  # delta: [R] candidate index of each column
    mixed_A: torch.Tensor | None = None  # ab: [M, K, r, in]
    mixed_B: torch.Tensor | None = None  # ab: [M, K, out, r]
    coef: torch.Tensor | None = None  # delta: [M, K, R]
    block: torch.Tensor | None = None  # [M] layer block of each member (None: all block 0)
    k: int = 1

    def set_weights(self, W: torch.Tensor) -> None:
        """``W``: ``[K, blocks, n]``, one weight vector per layer block."""
        self.k = int(W.shape[0])
        W = W.to(self.A)
        Wm = (W[:, self.block] if self.block is not None  # [K, M, n]
              else W[:, :1].expand(-1, self.A.shape[0], -1))  # one block: a view, no copy
        if self.mode == "ab":
            self.mixed_A = torch.einsum("kmn,mnri->mkri", Wm, self.A)
            self.mixed_B = torch.einsum("kmn,mnor->mkor", Wm, self.B)
        else:
            self.coef = Wm[:, :, self.owner].transpose(0, 1) * self.scale.unsqueeze(1)

    def lowrank(self, index: int, x: torch.Tensor) -> torch.Tensor:
        rows = x.shape[0]
        if rows % self.k:
            raise InvalidRequestError(
                f"a batch of {rows} rows cannot be split into {self.k} candidate groups")
        lead = x.shape[:-1]
        xk = x.reshape(self.k, -1, x.shape[-1])
        if self.mode == "ab":
            A, B = self.mixed_A[index], self.mixed_B[index]
            y = torch.bmm(torch.bmm(xk, A.transpose(1, 2)), B.transpose(1, 2))
        else:
            t = xk @ self.A[index].T  # shared by every group
            y = (t * self.coef[index].unsqueeze(1)) @ self.B[index].T
        return y.reshape(*lead, y.shape[-1])


class MixedLinear(nn.Module):
    """A base ``nn.Linear`` plus the current mixed low-rank path of its group."""

    def __init__(self, base: nn.Linear, group: FactorGroup, index: int):
        super().__init__()
        self.base = base
        self.group = group
        self.index = index

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.group.lowrank(self.index, x).to(x.dtype)


@dataclass
class Mixer:
    """Wrapped layers of one model; ``set_weights`` switches every layer to new mixes."""

    model: nn.Module
    names: list[str]
    n: int
    groups: list[FactorGroup] = field(default_factory=list)
    originals: dict[str, nn.Linear] = field(default_factory=dict)
    blocks: int = 1
    block_of: dict[str, int] = field(default_factory=dict)  # layer block of each module

    @property
    def dim(self) -> int:
        """Weights in one point of the search: one per candidate and layer block."""
        return self.n * self.blocks

    def set_weights(self, W: torch.Tensor | Sequence[Sequence[float]]) -> None:
        """``W``: ``[K, n]`` (the same weights in every block) or ``[K, blocks * n]``
        (block-major)."""
        W = torch.as_tensor(W, dtype=torch.float32)
        if W.ndim == 1:
            W = W.unsqueeze(0)
        if W.shape[1] == self.n:
            W = W.unsqueeze(1).expand(-1, self.blocks, -1)
        elif W.shape[1] == self.dim:
            W = W.reshape(W.shape[0], self.blocks, self.n)
        else:
            raise InvalidRequestError(
                f"got {W.shape[1]} weights for {self.n} candidates"
                + (f" in {self.blocks} layer blocks" if self.blocks > 1 else ""))
        for g in self.groups:
            g.set_weights(W)

    def remove(self) -> None:
        """Put the original Linear layers back."""
        for name, lin in self.originals.items():
            self.model.set_submodule(name, lin)
        self.originals.clear()


def _linear(model: nn.Module, name: str) -> nn.Linear:
    try:
        mod = model.get_submodule(name)
    except AttributeError:
        raise ShapeMismatchError(
            f"the base model has no module {name}; the candidates were made for another "
            "architecture") from None
    if isinstance(mod, MixedLinear):
        raise InvalidRequestError(f"{name} is already wrapped; remove the previous mixer first")
    if not isinstance(mod, nn.Linear):
        raise ShapeMismatchError(f"{name} is a {type(mod).__name__}, not a Linear layer")
    return mod


_LAYER = re.compile(r"\.(\d+)(?:\.|$)")


def layer_blocks(names: Sequence[str], blocks: int) -> dict[str, int]:
    """The layer block of each module: its layer is the first number in its name
    (``model.layers.12.self_attn.q_proj``: 12), and layers ``0..L-1`` are split into
    ``blocks`` contiguous blocks of (nearly) equal size. A module without a number is in
    block 0."""
    layers = {nm: int(m.group(1)) if (m := _LAYER.search(nm)) else 0 for nm in names}
    count = max(layers.values(), default=0) + 1
    if not 1 <= blocks <= count:
        raise InvalidRequestError(
            f"blocks must be between 1 and the number of layers the candidates adapt "
            f"({count})", params="blocks")
    return {nm: layer * blocks // count for nm, layer in layers.items()}


def install(model: nn.Module, cands: Sequence[Candidate], names: Sequence[str], mode: str,
            device: torch.device, dtype: torch.dtype, blocks: int = 1,
            per_module: bool = False) -> Mixer:
    """Wrap ``names`` in ``model`` with the candidates' stacked factors (weights start at 0);
    ``blocks`` layer blocks mix with weights of their own, or with ``per_module`` every module
    does (block ``i`` is ``names[i]``)."""
    n = len(cands)
    if per_module:
        blocks = len(names)
        block_of = {nm: i for i, nm in enumerate(names)}
    else:
        block_of = layer_blocks(names, blocks)
    per_key: dict[tuple, list[str]] = defaultdict(list)
    for name in names:
        lin = _linear(model, name)
        shape = (lin.out_features, lin.in_features)
        for c in cands:
            m = c.adapter.modules.get(name)
            if m is not None and (m.out_features, m.in_features) != shape:
                raise ShapeMismatchError(
                    f"{c.ref}: {name} is {m.out_features}x{m.in_features} but the base "
                    f"model's layer is {shape[0]}x{shape[1]}; wrong base model?")
        ranks = tuple(c.adapter.modules[name].rank if name in c.adapter.modules else 0
                      for c in cands)
        key = (*shape, ranks) if mode == "delta" else (*shape, ranks[0])
        per_key[key].append(name)

    mixer = Mixer(model, list(names), n, blocks=blocks, block_of=block_of)
    for key, members in per_key.items():
        group = _build_group(cands, members, mode, key, device, dtype)
        if blocks > 1:
            group.block = torch.tensor([block_of[nm] for nm in members], dtype=torch.long,
                                       device=device)
        mixer.groups.append(group)
        for index, name in enumerate(members):
            lin = _linear(model, name)
            mixer.originals[name] = lin
            model.set_submodule(name, MixedLinear(lin, group, index))
    mixer.set_weights(torch.zeros(1, n))
    return mixer


def _build_group(cands: Sequence[Candidate], members: list[str], mode: str, key: tuple,
                 device: torch.device, dtype: torch.dtype) -> FactorGroup:
    def put(t: torch.Tensor) -> torch.Tensor:
        return t.to(device=device, dtype=dtype).contiguous()

    if mode == "ab":
        A = torch.stack([torch.stack([c.adapter.modules[nm].A.float() for c in cands])
                         for nm in members])
        B = torch.stack([torch.stack([c.adapter.modules[nm].B.float() * c.adapter.modules[nm].scale
                                      for c in cands]) for nm in members])
        return FactorGroup("ab", put(A), put(B))
    ranks = key[2]
    owner = torch.tensor([i for i, r in enumerate(ranks) for _ in range(r)], dtype=torch.long)
    As, Bs, scales = [], [], []
    for nm in members:
        mods = [(c.adapter.modules[nm], i) for i, c in enumerate(cands)
                if nm in c.adapter.modules]
        As.append(torch.cat([m.A.float() for m, _ in mods]))
        Bs.append(torch.cat([m.B.float() for m, _ in mods], dim=1))
        scales.append(torch.cat([torch.full((m.rank,), float(m.scale)) for m, _ in mods]))
    return FactorGroup("delta", put(torch.stack(As)), put(torch.stack(Bs)),
                       put(torch.stack(scales)), owner=owner.to(device))
