"""The benchmark's floor arithmetic equals the FLOPs torch counts for a real forward."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.roofline import forward_flops, linear_macs_per_token, matmul_peak
from lorahive.compose.composer.examples import Encoded
from lorahive.compose.composer.objective import token_nll
from tests.models import LLAMA_KW, tiny_llama


def test_linear_macs_match_the_config():
    h, i, heads, kv = (LLAMA_KW[k] for k in ("hidden_size", "intermediate_size",
                                              "num_attention_heads", "num_key_value_heads"))
    kv_dim = kv * h // heads
    per_layer = h * h * 2 + h * kv_dim * 2 + 3 * h * i
    assert linear_macs_per_token(tiny_llama()) == per_layer * LLAMA_KW["num_hidden_layers"]


def test_forward_flops_equal_torch_count():
    model = tiny_llama()
    model.set_attn_implementation("eager")  # attention as matmuls, which the counter sees
    n, scored = 11, 3
    ids = torch.randint(0, LLAMA_KW["vocab_size"], (1, n))
    labels = torch.full_like(ids, -100)
    labels[0, -scored:] = ids[0, -scored:]
    batch = Encoded(ids, torch.ones_like(ids), labels, is_encoder_decoder=False)
    with torch.inference_mode(), FlopCounterMode(display=False) as fc:
        token_nll(model, batch)
    assert fc.get_total_flops() == forward_flops(model, [n], scored)


def test_matmul_peak_is_positive():
    assert matmul_peak(sizes=(64, 128), reps=2) > 0
