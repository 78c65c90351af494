"""A 4-bit base kept 4-bit while composing: Linear layers dequantized per call (QLoRA's way).

A bitsandbytes 4-bit checkpoint is loaded without bitsandbytes: the model is built with its
parameters on the meta device (nothing allocated), its float tensors (embeddings, norms, the LM
head) are loaded in the compute dtype, and every 4-bit weight becomes a ``Dequant4Linear`` that
holds the packed codes and scales and dequantizes in its forward pass, one layer at a time. The
resident base is then about a quarter of the float model's Linear bytes, and the peak adds one
dequantized weight at a time (``benchmarks/qlora.py`` measures both against the float base).

The forward is bitsandbytes' own for these checkpoints: dequantize to the recorded dtype, cast
to the input's dtype, ``F.linear``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lorahive.compose.checkpoint import Reader, open_checkpoint
from lorahive.hub import quant4
from lorahive.hub.errors import InvalidRequestError


class Dequant4Linear(nn.Linear):
    """A Linear layer whose weight is stored 4-bit and dequantized on every call.

    It is an ``nn.Linear`` (as bitsandbytes' ``Linear4bit`` is) so code that wraps Linear
    layers wraps it too; ``weight`` is computed, never stored.
    """

    def __init__(self, packed: torch.Tensor, state: quant4.Quant4State,
                 bias: torch.Tensor | None = None):
        nn.Module.__init__(self)
        if len(state.shape) != 2:
            raise InvalidRequestError(f"a 4-bit Linear weight is 2-D, not {list(state.shape)}")
        self.out_features, self.in_features = state.shape
        self.register_buffer("packed", packed)
        self.register_buffer("absmax", state.absmax)
        self.register_buffer("code", state.code)
        nq = state.nested
        self.register_buffer("nested_absmax", None if nq is None else nq.absmax)
        self.register_buffer("nested_code", None if nq is None else nq.code)
        self._meta = (state.quant_type, state.blocksize, state.dtype, state.shape,
                      None if nq is None else (nq.blocksize, nq.offset, nq.dtype))
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)

    def state(self) -> quant4.Quant4State:
        qt, bs, dtype, shape, nested = self._meta
        nq = None
        if nested is not None:
            nq = quant4.Nested(self.nested_absmax, self.nested_code, *nested)
        return quant4.Quant4State(qt, bs, dtype, shape, self.absmax, self.code, nq)

    @property  # type: ignore[override]
    def weight(self) -> torch.Tensor:
        return quant4.dequantize(self.packed, self.state())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return nn.functional.linear(x, self.weight.to(x.dtype), bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, quant_type={self._meta[0]}")


def is_4bit_checkpoint(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` holds a bitsandbytes 4-bit checkpoint (from its config.json)."""
    import json

    cfg = Path(path) / "config.json"
    if not cfg.is_file():
        return False
    try:
        data = json.loads(cfg.read_text())
    except json.JSONDecodeError:
        raise InvalidRequestError(f"{cfg} is not valid JSON") from None
    return isinstance(data, dict) and quant4.is_4bit_config(data)


@contextlib.contextmanager
def _parameters_on_meta() -> Iterator[None]:
    """Build modules without allocating their parameters (buffers such as rotary frequencies
    are still computed for real)."""
    register = nn.Module.register_parameter

    def on_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        register(module, name, param)
        if param is not None:
            p = module._parameters[name]
            module._parameters[name] = nn.Parameter(p.to("meta"), requires_grad=p.requires_grad)

    nn.Module.register_parameter = on_meta  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Module.register_parameter = register  # type: ignore[method-assign]


def load_4bit_model(path: str | os.PathLike[str], cls: Any, config: Any,
                    device: torch.device, dtype: torch.dtype) -> nn.Module:
    """A transformers model from a 4-bit checkpoint, its 4-bit Linear layers left 4-bit."""
    ckpt = open_checkpoint(path)
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the layers below replace bitsandbytes'
    with _parameters_on_meta():
        model = cls.from_config(config, dtype=dtype)
    biases = {f"{k.removesuffix('.weight')}.bias" for k in ckpt.quantized}
    skip = ckpt.state_keys() | set(ckpt.quantized)
    floats: dict[str, torch.Tensor] = {}
    with Reader(ckpt) as r:
        for key in ckpt.quantized:
            name = key.removesuffix(".weight")
            try:
                old = model.get_submodule(name)
            except AttributeError:
                raise InvalidRequestError(f"{path}: the model has no layer {name} for the "
                                          f"4-bit weight {key}") from None
            if not isinstance(old, nn.Linear):
                raise InvalidRequestError(f"{name} is a {type(old).__name__}; only Linear "
                                          "layers are read 4-bit")
            bias = r.tensor(f"{name}.bias").to(dtype) if f"{name}.bias" in ckpt.tensors \
                else None
            model.set_submodule(name, Dequant4Linear(r.tensor(key), r.state(key), bias))
        for key in ckpt.tensors:
            if key in skip or key in biases:
                continue
            t = r.tensor(key)
            floats[key] = t.to(dtype) if t.is_floating_point() else t
    model.load_state_dict(floats, strict=False, assign=True)
    model.tie_weights()
    missing = [n for n, p in model.named_parameters() if p.is_meta]
    if missing:
        raise InvalidRequestError(f"{path} has no weight for {missing[0]}; the checkpoint is "
                                  "incomplete")
    return model.to(device).eval()


def resident_bytes(model: nn.Module) -> int:
    """Bytes of every parameter and buffer the model holds (shared tensors once)."""
    seen: dict[int, int] = {}
    for t in list(model.parameters()) + list(model.buffers()):
        seen[t.data_ptr()] = t.numel() * t.element_size()
    return sum(seen.values())
