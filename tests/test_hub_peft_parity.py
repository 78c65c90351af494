"""The adapter object against PEFT: same deltas, same merged weights, exact round trips."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from lorahive.hub import convert_residual, load_peft, save_peft
from tests.models import load_base, make_peft_adapter

PREFIX = "base_model.model."


def peft_model(base_dir, adapter_dir):
    from peft import PeftModel

    return PeftModel.from_pretrained(load_base(base_dir), str(adapter_dir)).eval()


def peft_deltas(model) -> dict[str, torch.Tensor]:
    """PEFT's own ``get_delta_weight`` for every LoRA layer, keyed by base module name."""
    from peft.tuners.lora import LoraLayer

    out = {}
    for name, mod in model.named_modules():
        if isinstance(mod, LoraLayer) and "default" in (mod.lora_A.keys() | mod.lora_embedding_A.keys()):
            out[name.removeprefix(PREFIX)] = mod.get_delta_weight("default").detach()
    return out


def assert_deltas_match(adapter, model, atol=1e-6):
    expected = peft_deltas(model)
    assert expected, "PEFT model has no LoRA layers"
    assert set(expected) == set(adapter.modules)
    for name, d in expected.items():
        ours = adapter.delta(name)
        assert ours.shape == d.shape, name
        torch.testing.assert_close(ours, d.float(), atol=atol, rtol=1e-5)


def logits(model, seed=0):
    torch.manual_seed(seed)
    ids = torch.randint(0, 128, (2, 12))
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize(
    "kw",
    [
        dict(),
        dict(use_rslora=True, lora_alpha=16),
        dict(r=8, lora_alpha=4, rank_pattern={"v_proj": 2}, alpha_pattern={"layers.1.self_attn.q_proj": 32}),
        dict(target_modules=["q_proj", "k_proj", "o_proj", "gate_proj", "down_proj"]),
        dict(target_modules=["embed_tokens", "q_proj"]),
    ],
    ids=["lora", "rslora", "patterns", "many-targets", "embedding"],
)
def test_delta_matches_peft(tiny_llama_dir, tmp_path, kw):
    src = make_peft_adapter(tiny_llama_dir, tmp_path / "a", seed=3, **kw)
    ours = load_peft(src)
    assert_deltas_match(ours, peft_model(tiny_llama_dir, src))


def test_round_trip_is_exact_both_ways(tiny_llama_dir, lora_dir, tmp_path):
    ours = load_peft(lora_dir)
    save_peft(ours, tmp_path / "out")
    # same tensors under the same keys, same config
    a, b = load_file(lora_dir / "adapter_model.safetensors"), load_file(tmp_path / "out" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert json.loads((lora_dir / "adapter_config.json").read_text()) == json.loads(
        (tmp_path / "out" / "adapter_config.json").read_text()
    )
    # PEFT loads what we saved and gives identical outputs
    torch.testing.assert_close(
        logits(peft_model(tiny_llama_dir, tmp_path / "out")), logits(peft_model(tiny_llama_dir, lora_dir)), atol=0, rtol=0
    )


def test_in_memory_adapter_loads_in_peft(tiny_llama_dir, lora_dir, tmp_path):
    """An adapter built here from factors (heterogeneous ranks and scales) loads in PEFT exactly."""
    from lorahive.hub import Adapter, LoraModule

    src = load_peft(lora_dir)
    torch.manual_seed(0)
    modules = {}
    for i, (name, m) in enumerate(src.modules.items()):
        r = 2 + i
        modules[name] = LoraModule(A=torch.randn(r, m.in_features), B=torch.randn(m.out_features, r), scale=0.5 + i)
    built = Adapter.from_factors(modules, base_model="lorahive-tests/tiny-llama")
    save_peft(built, tmp_path / "built")
    assert_deltas_match(built, peft_model(tiny_llama_dir, tmp_path / "built"), atol=1e-5)
    assert_deltas_match(load_peft(tmp_path / "built"), peft_model(tiny_llama_dir, tmp_path / "built"), atol=1e-5)


def test_dora_merge_matches_peft_merge_and_unload(tiny_llama_dir, tmp_path):
    src = make_peft_adapter(tiny_llama_dir, tmp_path / "dora", seed=5, use_dora=True)
    ours = load_peft(src)
    assert all(m.magnitude is not None for m in ours.modules.values())
    base = load_base(tiny_llama_dir).state_dict()
    merged = peft_model(tiny_llama_dir, src).merge_and_unload().state_dict()
    for name in ours.modules:
        w = base[f"{name}.weight"]
        torch.testing.assert_close(w + ours.delta(name, base_weight=w), merged[f"{name}.weight"], atol=1e-5, rtol=1e-5)
    with pytest.raises(Exception, match="base weight"):
        ours.delta(next(iter(ours.modules)))


def test_adalora_converts_to_the_same_delta(tiny_llama_dir, tmp_path):
    src = make_peft_adapter(tiny_llama_dir, tmp_path / "ada", seed=6, peft_type="ADALORA", init_r=6, target_r=3)
    ours = load_peft(src)
    assert ours.peft_type == "ADALORA"
    model = peft_model(tiny_llama_dir, src)
    from peft.tuners.adalora import AdaLoraLayer

    for name, mod in model.named_modules():
        if isinstance(mod, AdaLoraLayer) and "default" in mod.lora_A:
            torch.testing.assert_close(ours.delta(name.removeprefix(PREFIX)), mod.get_delta_weight("default"), atol=1e-6, rtol=1e-5)
    # written back as plain LoRA with the same delta, loadable by PEFT
    save_peft(ours, tmp_path / "as-lora")
    plain = load_peft(tmp_path / "as-lora")
    assert plain.peft_type == "LORA"
    assert_deltas_match(plain, peft_model(tiny_llama_dir, tmp_path / "as-lora"), atol=1e-5)
    for name in ours.modules:
        torch.testing.assert_close(plain.delta(name), ours.delta(name), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("init", ["pissa", "olora"])
def test_residual_init_converts_like_peft(tiny_llama_dir, tmp_path, init):
    """PiSSA/OLoRA adapters train on W_res; the conversion gives the delta against the original W."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(7)
    model = get_peft_model(load_base(tiny_llama_dir), LoraConfig(r=4, lora_alpha=4, target_modules=["q_proj", "v_proj"], init_lora_weights=init))
    model.save_pretrained(tmp_path / "init")  # the initial adapter, as PEFT's docs advise
    with torch.no_grad():  # "training"
        for n, p in model.named_parameters():
            if "lora_" in n:
                p.add_(torch.randn_like(p) * 0.05)
    model.save_pretrained(tmp_path / "trained")
    model.save_pretrained(tmp_path / "peft-converted", path_initial_model_for_weight_conversion=str(tmp_path / "init"))
    trained = load_peft(tmp_path / "trained")
    assert trained.config.residual_init is not None
    ours = convert_residual(trained, load_peft(tmp_path / "init"))
    theirs = load_peft(tmp_path / "peft-converted")
    original = load_base(tiny_llama_dir).state_dict()
    effective = {n.removeprefix(PREFIX): m for n, m in model.named_modules()}
    for name in ours.modules:
        torch.testing.assert_close(ours.delta(name), theirs.delta(name), atol=1e-5, rtol=1e-5)
        # W + delta equals what the trained PiSSA model computes: W_res + s B A
        layer = effective[name]
        w_eff = layer.base_layer.weight + layer.get_delta_weight("default")
        torch.testing.assert_close(original[f"{name}.weight"] + ours.delta(name), w_eff.detach(), atol=1e-5, rtol=1e-5)
    save_peft(ours, tmp_path / "ours-converted")
    assert load_peft(tmp_path / "ours-converted").config.residual_init is None


def test_t5_encoder_decoder_parity(tiny_t5_dir, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import T5ForConditionalGeneration

    torch.manual_seed(8)
    model = get_peft_model(T5ForConditionalGeneration.from_pretrained(tiny_t5_dir), LoraConfig(r=4, target_modules=["q", "v"], init_lora_weights=False, task_type="SEQ_2_SEQ_LM"))
    model.save_pretrained(tmp_path / "t5")
    ours = load_peft(tmp_path / "t5")
    assert any(n.startswith("encoder.") for n in ours.modules) and any(n.startswith("decoder.") for n in ours.modules)
    base_sd = T5ForConditionalGeneration.from_pretrained(tiny_t5_dir).state_dict()
    for name in ours.modules:
        assert f"{name}.weight" in base_sd
    assert_deltas_match(ours, model)


def test_fan_in_fan_out_gpt2(tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(9)
    base = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=32, n_layer=1, n_head=2, n_positions=32))
    shapes = {k: v.shape for k, v in base.state_dict().items()}
    model = get_peft_model(base, LoraConfig(r=4, target_modules=["c_attn"], fan_in_fan_out=True, init_lora_weights=False))
    model.save_pretrained(tmp_path / "g")
    ours = load_peft(tmp_path / "g")
    name = next(iter(ours.modules))
    assert ours.modules[name].fan_in_fan_out
    assert ours.delta(name).shape == shapes[f"{name}.weight"]
    assert_deltas_match(ours, model)


def test_adapter_name_in_keys_is_tolerated(lora_dir, tmp_path):
    sd = load_file(lora_dir / "adapter_model.safetensors")
    renamed = {k.replace(".lora_A.weight", ".lora_A.default.weight").replace(".lora_B.weight", ".lora_B.default.weight"): v for k, v in sd.items()}
    (tmp_path / "d").mkdir()
    save_file(renamed, tmp_path / "d" / "adapter_model.safetensors")
    (tmp_path / "d" / "adapter_config.json").write_text((lora_dir / "adapter_config.json").read_text())
    a, b = load_peft(tmp_path / "d"), load_peft(lora_dir)
    assert a.modules.keys() == b.modules.keys()
    for n in a.modules:
        assert torch.equal(a.delta(n), b.delta(n))


def test_to_device_dtype_and_counts(lora_dir):
    a = load_peft(lora_dir)
    h = a.to("cpu", torch.bfloat16)
    assert all(m.A.dtype == torch.bfloat16 for m in h.modules.values())
    assert all(m.A.dtype == torch.float32 for m in a.modules.values())  # original untouched
    n = sum(t.numel() for t in load_file(lora_dir / "adapter_model.safetensors").values())
    assert a.num_parameters() == n
    assert a.delta(next(iter(a.modules)), dtype=torch.float64).dtype == torch.float64
