"""The floor under any exact evaluation: its arithmetic, at this machine's matmul peak.

An evaluation of a new weight vector must run the base model forward over the few-shot tokens
(every layer's input changes once the first adapted layer does). Its FLOPs — the Linear layers
at each real token, attention over each example, and the LM head at the scored positions only —
divided by the best matmul throughput measured on the same machine and threads give the least
time any implementation can take. The benchmark reports that floor beside the reference's time,
so the largest speedup physically possible here is a measured number, not a guess.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch
from torch import nn


def linear_macs_per_token(model: nn.Module) -> int:
    """Multiply-adds of every ``nn.Linear`` in the decoder stack for one token (LM head apart)."""
    body = model.get_decoder() if hasattr(model, "get_decoder") else model
    return sum(m.in_features * m.out_features for m in body.modules() if isinstance(m, nn.Linear))


def forward_flops(model: nn.Module, lengths: Sequence[int], scored: int) -> int:
    """FLOPs of one causal forward over unpadded examples of ``lengths`` tokens, with the LM
    head at ``scored`` positions. Attention counts both products (``QK^T``, ``AV``) over each
    example's full square, as the fused kernel computes them."""
    cfg = model.config
    heads = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    layers = cfg.num_hidden_layers
    head = model.get_output_embeddings()
    tokens = sum(lengths)
    attention = layers * sum(2 * n * n * heads * head_dim for n in lengths)
    macs = linear_macs_per_token(model) * tokens + attention \
        + scored * head.in_features * head.out_features
    return 2 * macs


def matmul_peak(dtype: torch.dtype = torch.float32, sizes: Sequence[int] = (1024, 2048),
                reps: int = 8, device: str = "cpu") -> float:
    """Best FLOP/s of square matmuls in ``dtype`` with the current torch threads: the most
    this machine was seen to do, so a floor computed from it is never too high."""
    best = 0.0
    for size in sizes:
        a = torch.randn(size, size, device=device).to(dtype)
        b = torch.randn(size, size, device=device).to(dtype)
        a @ b
        for _ in range(reps):
            if device != "cpu":
                torch.cuda.synchronize()
            t = time.perf_counter()
            a @ b
            if device != "cpu":
                torch.cuda.synchronize()
            best = max(best, 2 * size ** 3 / (time.perf_counter() - t))
    return best


def update_peaks(peaks: dict[str, float], device: str = "cpu") -> dict[str, float]:
    """Measure again and keep the best figure per dtype (called between timed runs)."""
    sizes = (1024, 2048) if device == "cpu" else (4096, 8192)
    for name in ("float32", "bfloat16"):
        peaks[name] = max(peaks.get(name, 0.0),
                          matmul_peak(getattr(torch, name), sizes, device=device))
    return peaks
