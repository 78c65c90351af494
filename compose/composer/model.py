"""Loading the base model and its tokenizer once (transformers is the optional ``hf`` extra)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lorahive.compose.composer.linear4 import is_4bit_checkpoint, load_4bit_model
from lorahive.hub.devices import resolve_device, resolve_dtype
from lorahive.hub.errors import InvalidRequestError


@dataclass
class BaseModel:
    model: Any  # a transformers PreTrainedModel in eval mode
    tokenizer: Any
    is_encoder_decoder: bool
    device: torch.device
    dtype: torch.dtype
    path: str


def _transformers():
    try:
        import transformers
    except ImportError:
        raise InvalidRequestError(
            "the composer needs transformers: pip install 'lorahive[hf]'") from None
    return transformers


def load_base(path: str | os.PathLike[str], device: str = "auto",
              dtype: str | torch.dtype | None = "float32") -> BaseModel:
    """A base checkpoint directory with its tokenizer, on ``device`` in ``dtype``.

    A bitsandbytes 4-bit checkpoint stays 4-bit: its Linear layers dequantize per call
    (``compose.composer.linear4``), without bitsandbytes.
    """
    p = Path(path)
    if not (p / "config.json").is_file():
        raise InvalidRequestError(
            f"base {p} is not a model directory (no config.json); give a saved checkpoint")
    tf = _transformers()
    dev = resolve_device(device)
    dt = resolve_dtype(dtype) or torch.float32
    cfg = tf.AutoConfig.from_pretrained(p)
    enc_dec = bool(getattr(cfg, "is_encoder_decoder", False))
    cls = tf.AutoModelForSeq2SeqLM if enc_dec else tf.AutoModelForCausalLM
    if is_4bit_checkpoint(p):
        model = load_4bit_model(p, cls, cfg, dev, dt)
    else:
        model = cls.from_pretrained(p, dtype=dt).to(dev).eval()
    try:
        tok = tf.AutoTokenizer.from_pretrained(p)
    except (OSError, ValueError, TypeError) as e:
        raise InvalidRequestError(
            f"base {p} has no usable tokenizer ({e}); save one beside the weights") from None
    return BaseModel(model, tok, enc_dec, dev, dt, str(p))
