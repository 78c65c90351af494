"""Streaming merge into a base checkpoint against PEFT's ``merge_and_unload`` and transformers."""

from __future__ import annotations

import json

import pytest
import torch

from lorahive.compose.merge import merge_into_base, open_checkpoint
from lorahive.hub.errors import ShapeMismatchError, UnsupportedAdapterError
from lorahive.hub.peft_format import load_peft
from tests.models import load_base, make_peft_adapter, save_tiny_llama

IDS = torch.tensor([[1, 5, 9, 17, 33, 2, 64, 100]])


def peft_model(base_dir, adapter_dir):
    from peft import PeftModel

    return PeftModel.from_pretrained(load_base(base_dir), str(adapter_dir)).eval()


@pytest.mark.parametrize("kw", [
    {},
    {"use_rslora": True, "r": 8, "lora_alpha": 16},
    {"use_dora": True, "target_modules": ["q_proj", "v_proj", "gate_proj"]},
], ids=["lora", "rslora", "dora"])
def test_merge_matches_peft_merge_and_unload(tiny_llama_dir, tmp_path, kw):
    ad_dir = make_peft_adapter(tiny_llama_dir, tmp_path / "ad", seed=7, **kw)
    out = tmp_path / "merged"
    seen = []
    report = merge_into_base(tiny_llama_dir, [load_peft(ad_dir)], out, device="cpu",
                             progress=lambda done, total: seen.append((done, total)))
    assert seen[-1][0] == seen[-1][1] == report.bytes_read
    assert "config.json" in report.copied and "generation_config.json" in report.copied
    model = peft_model(tiny_llama_dir, ad_dir)
    with torch.no_grad():
        want_logits = model(IDS).logits
    ref = model.merge_and_unload().state_dict()
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    got = merged.state_dict()
    assert set(got) == set(ref)
    changed = 0
    for k, v in ref.items():
        assert torch.allclose(got[k], v, atol=1e-6, rtol=1e-5), k
        changed += int(not torch.equal(v, load_base(tiny_llama_dir).state_dict()[k])) \
            if k.endswith("proj.weight") and "layers.0" in k else 0
    assert changed >= 2
    with torch.no_grad():
        logits = merged(IDS).logits
    assert torch.allclose(logits, want_logits, atol=1e-5, rtol=1e-4)


def test_sharded_base_keeps_layout_and_dtype(tmp_path):
    base = tmp_path / "sharded"
    from tests.models import tiny_llama

    m = tiny_llama(0).to(torch.bfloat16)
    m.save_pretrained(base, max_shard_size="60KB")
    ckpt = open_checkpoint(base)
    assert len(ckpt.shards) > 1
    ad_dir = make_peft_adapter(base, tmp_path / "ad", seed=2)
    out = tmp_path / "out"
    merge_into_base(base, [load_peft(ad_dir)], out, device="cpu")
    got = open_checkpoint(out)
    assert got.shards == ckpt.shards
    assert {k: (t.shard, t.dtype, t.shape) for k, t in got.tensors.items()} == \
        {k: (t.shard, t.dtype, t.shape) for k, t in ckpt.tensors.items()}
    idx = json.loads((out / "model.safetensors.index.json").read_text())
    assert idx["weight_map"] == ckpt.index["weight_map"]
    # --dtype float32 rewrites every float tensor, and the config's dtype
    out32 = tmp_path / "out32"
    merge_into_base(base, [load_peft(ad_dir)], out32, device="cpu", dtype="float32")
    assert {t.dtype for t in open_checkpoint(out32).tensors.values()} == {"F32"}
    from transformers import AutoModelForCausalLM

    ref = peft_model(base, ad_dir).merge_and_unload().state_dict()
    merged = AutoModelForCausalLM.from_pretrained(out32, dtype=torch.float32).state_dict()
    k = "model.layers.1.self_attn.q_proj.weight"
    # bf16 PEFT merge rounds once; ours adds in float32 and keeps float32
    assert torch.allclose(merged[k], ref[k].float(), atol=1e-2)
    assert not torch.equal(merged[k], m.state_dict()[k].float())


def test_two_adapters_weighted_sum_and_fused_method(tiny_llama_dir, tmp_path):
    a = load_peft(make_peft_adapter(tiny_llama_dir, tmp_path / "a", seed=3))
    b = load_peft(make_peft_adapter(tiny_llama_dir, tmp_path / "b", seed=4))
    merge_into_base(tiny_llama_dir, [a, b], tmp_path / "sum", weights=[0.5, 2.0], device="cpu")
    base = load_base(tiny_llama_dir).state_dict()
    from safetensors.torch import load_file

    got = load_file(tmp_path / "sum" / "model.safetensors")
    n = "model.layers.0.self_attn.q_proj"
    want = base[f"{n}.weight"] + 0.5 * a.delta(n) + 2.0 * b.delta(n)
    assert torch.allclose(got[f"{n}.weight"], want, atol=1e-6)
    merge_into_base(tiny_llama_dir, [a, b], tmp_path / "svd", weights=[0.5, 2.0],
                    method="svd", rank=2, device="cpu")
    got2 = load_file(tmp_path / "svd" / "model.safetensors")[f"{n}.weight"] - base[f"{n}.weight"]
    assert torch.linalg.matrix_rank(got2, atol=1e-5) == 2


def test_wrong_base_fails_before_writing(tiny_llama_dir, tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.models import LLAMA_KW

    other = tmp_path / "other"
    LlamaForCausalLM(LlamaConfig(**{**LLAMA_KW, "hidden_size": 32})).save_pretrained(other)
    ad = load_peft(make_peft_adapter(tiny_llama_dir, tmp_path / "ad", seed=1))
    out = tmp_path / "out"
    with pytest.raises(ShapeMismatchError, match="another base model"):
        merge_into_base(other, [ad], out, device="cpu")
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".lorahive-tmp")]


def test_interrupted_merge_leaves_nothing(tiny_llama_dir, tmp_path):
    ad = load_peft(make_peft_adapter(tiny_llama_dir, tmp_path / "ad", seed=1))
    out = tmp_path / "out"

    def boom(done, total):
        if done > total // 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        merge_into_base(tiny_llama_dir, [ad], out, device="cpu", progress=boom)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".lorahive-tmp")]


def test_residual_init_adapter_refused(tiny_llama_dir, tmp_path):
    ad = load_peft(make_peft_adapter(tiny_llama_dir, tmp_path / "ad", seed=1))
    ad.config.data["init_lora_weights"] = "pissa"
    with pytest.raises(UnsupportedAdapterError, match="convert"):
        merge_into_base(tiny_llama_dir, [ad], tmp_path / "o", device="cpu")


def test_save_tiny_llama_roundtrip_is_byte_identical_without_adapter_terms(tmp_path):
    """A merge with a zero-weight adapter rewrites the checkpoint with identical tensors."""
    base = save_tiny_llama(tmp_path / "b", seed=4)
    ad = load_peft(make_peft_adapter(base, tmp_path / "ad", seed=1))
    merge_into_base(base, [ad], tmp_path / "o", weights=[0.0], device="cpu")
    from safetensors.torch import load_file

    a = load_file(base / "model.safetensors")
    b = load_file(tmp_path / "o" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
