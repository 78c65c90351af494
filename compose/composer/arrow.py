"""Arrow routing, training-free: per module, weights for the candidates from the shots' tokens.

Arrow (Ostapenko et al., 2024, "Towards Modular LLMs by Building and Reusing a Library of
LoRAs"; PEFT's ``ArrowConfig``) gives each candidate, in each adapted module, a prototype: the
top right singular vector of its ``B @ A``. A token's hidden state ``x`` entering the module
scores candidate ``e`` by ``|x . p_e|`` (sign-free, as a singular vector's sign is arbitrary);
the ``top_k`` scores go through a softmax at ``temperature`` and the rest get 0. PEFT routes
every token at inference. A composed adapter is one static LoRA, so here each module's
coefficients are averaged over every token of the shots (prompt and answer): the candidates a
task's tokens keep choosing in a module get that module's weight. No objective is evaluated
and no gradient is taken; the shots' answers matter only as tokens to route.

The mix is linear in the deltas (``sum_e w_e s_e B_e A_e``, the composer's mode ``delta``),
as Arrow's per-token output is.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from lorahive.compose.composer.candidates import Candidate
from lorahive.compose.composer.examples import Encoded
from lorahive.hub.adapter import LoraModule
from lorahive.hub.errors import InvalidRequestError
from lorahive.hub.lowrank import factored_svd

TOP_K, TEMPERATURE = 3, 1.0  # PEFT's ArrowConfig defaults


def prototype(module: LoraModule) -> torch.Tensor:
    """The top right singular vector of the module's ``B @ A`` (in_features), exact from the
    factors (PEFT approximates it by 15 power iterations; the two agree up to sign)."""
    return factored_svd(module.B, module.A)[2][0]


def coefficients(x: torch.Tensor, protos: torch.Tensor, top_k: int, temperature: float
                 ) -> torch.Tensor:
    """Each token's weight per candidate (``x``: [t, in], ``protos``: [E, in] -> [t, E]):
    softmax over the ``top_k`` largest ``|x . p|`` at ``temperature``, 0 elsewhere."""
    sim = (x.float() @ protos.float().T).abs()
    k = min(top_k, protos.shape[0])
    top, idx = torch.topk(sim, k, dim=1)
    score = torch.full_like(sim, float("-inf")).scatter_(1, idx, top)
    return torch.softmax(score / temperature, dim=1)


def check_routing(top_k: int, temperature: float) -> None:
    if top_k < 1:
        raise InvalidRequestError("top-k must be at least 1", params="top_k")
    if not temperature > 0:
        raise InvalidRequestError("temperature must be positive", params="temperature")


@torch.inference_mode()
def route_weights(model: nn.Module, names: Sequence[str], candidates: Sequence[Candidate],
                  encoded: Encoded, top_k: int = TOP_K, temperature: float = TEMPERATURE,
                  max_rows: int = 64) -> np.ndarray:
    """``[len(names), len(candidates)]``: each module's mean Arrow coefficients over every
    token of ``encoded``, from the hidden states entering the module when ``model`` runs
    (its adapted layers must add nothing: the base model's states route). A candidate that
    does not adapt a module gets 0 there and is not routed to."""
    check_routing(top_k, temperature)
    if encoded.is_encoder_decoder:
        raise InvalidRequestError("Arrow routing is built for causal (decoder-only) models")
    protos: dict[str, tuple[list[int], torch.Tensor]] = {}
    for nm in names:
        have = [i for i, c in enumerate(candidates) if nm in c.adapter.modules]
        protos[nm] = (have, torch.stack([prototype(candidates[i].adapter.modules[nm])
                                         for i in have]))
    sums = {nm: torch.zeros(len(candidates), dtype=torch.float64) for nm in names}
    count = 0
    mask: torch.Tensor | None = None

    def hook(name: str):
        def fn(_mod, args, _out):
            x = args[0]
            have, P = protos[name]
            c = coefficients(x[mask].reshape(-1, x.shape[-1]), P.to(x.device), top_k,
                             temperature)
            sums[name][have] += c.sum(0).double().cpu()
        return fn

    handles = [model.get_submodule(nm).register_forward_hook(hook(nm)) for nm in names]
    try:
        for s in range(0, len(encoded), max_rows):
            part = encoded.select(slice(s, s + max_rows))
            mask = part.attention_mask.bool()
            model(input_ids=part.input_ids, attention_mask=part.attention_mask)
            count += int(mask.sum())
    finally:
        for h in handles:
            h.remove()
    if count == 0:
        raise InvalidRequestError("the examples have no tokens to route")
    return np.stack([(sums[nm] / count).numpy() for nm in names])
