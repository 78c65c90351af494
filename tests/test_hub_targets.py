"""A written adapter states r, lora_alpha and target_modules; a config whose target_modules
do not select the modules its weights adapt is refused on load (PEFT would silently put LoRA
layers elsewhere and drop those weights)."""

from __future__ import annotations

import json

import pytest
import torch

from lorahive.hub.adapter import Adapter, LoraModule
from lorahive.hub.config import AdapterConfig
from lorahive.hub.errors import InvalidAdapterError
from lorahive.hub.peft_format import load_peft, save_peft

NAMES = [
    "model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.q_proj",
    "model.layers.0.self_attn.o_proj", "model.layers.1.mlp.down_proj", "lm_head",
]
CONFIGS = [
    {"target_modules": ["q_proj", "v_proj"]},
    {"target_modules": ["o_proj"]},
    {"target_modules": r".*\.(q|o)_proj"},
    {"target_modules": "q_proj"},  # a string is a full-name regex: selects nothing here
    {"target_modules": ["model.layers.1.mlp.down_proj", "q_proj"]},
    {"target_modules": ["q_proj", "o_proj"], "layers_to_transform": [1]},
    {"target_modules": ["q_proj", "o_proj"], "layers_to_transform": 0, "layers_pattern": "layers"},
    {"target_modules": ["q_proj", "o_proj"], "exclude_modules": ["o_proj"]},
    {"target_modules": ["q_proj", "down_proj"], "exclude_modules": r".*layers\.1\..*"},
]


@pytest.mark.parametrize("cfg", CONFIGS)
def test_selection_matches_peft(cfg):
    """Our reading of target_modules is PEFT's own check_target_module_exists."""
    from peft import LoraConfig
    from peft.tuners.tuners_utils import check_target_module_exists

    peft_cfg = LoraConfig(**cfg)
    ours = AdapterConfig({"peft_type": "LORA", **cfg})
    for name in NAMES:
        want = check_target_module_exists(peft_cfg, name)
        assert ours.selects(name) is (bool(want) and type(want).__name__ != "_ExcludedModule"), \
            (cfg, name)


def test_selection_unknown_without_target_modules():
    assert AdapterConfig({"peft_type": "LORA"}).selects(NAMES[0]) is None
    assert AdapterConfig({"peft_type": "LORA", "target_modules": "all-linear"}).selects(
        NAMES[0]) is None


def _edit_config(src, dest, **changes):
    import shutil

    shutil.copytree(src, dest)
    cfg = json.loads((dest / "adapter_config.json").read_text())
    cfg.update(changes)
    (dest / "adapter_config.json").write_text(json.dumps(cfg))
    return dest


@pytest.mark.parametrize("changes", [
    {"target_modules": ["q_proj"]},
    {"target_modules": "q_proj"},
    {"layers_to_transform": [0]},
    {"exclude_modules": ["v_proj"]},
])
def test_load_refuses_a_config_that_misses_adapted_modules(lora_dir, tmp_path, changes):
    bad = _edit_config(lora_dir, tmp_path / "bad", **changes)
    with pytest.raises(InvalidAdapterError, match="does not select"):
        load_peft(bad)


def test_load_accepts_configs_that_select_every_module(lora_dir, tmp_path):
    ok = _edit_config(lora_dir, tmp_path / "regex", target_modules=r".*\.(q|v)_proj")
    assert set(load_peft(ok).modules) == set(load_peft(lora_dir).modules)


def test_adapter_from_bare_factors_writes_a_complete_config(tiny_llama_dir, tmp_path):
    """Rank 8 at scale 1 happens to equal the defaults r=8, lora_alpha=8: the config must still
    state them, and select the adapted o_proj (PEFT's Llama default would be q/v)."""
    from peft import PeftModel

    from tests.models import load_base

    torch.manual_seed(0)
    mods = {f"model.layers.{i}.self_attn.o_proj": LoraModule(
        A=torch.randn(8, 64) * 0.1, B=torch.randn(64, 8) * 0.1, scale=1.0) for i in range(2)}
    save_peft(Adapter.from_factors(mods, base_model="lorahive-tests/tiny-llama"),
              tmp_path / "o")
    cfg = json.loads((tmp_path / "o" / "adapter_config.json").read_text())
    assert (cfg["r"], cfg["lora_alpha"], cfg["target_modules"]) == (8, 8, ["o_proj"])
    ids = torch.tensor([[3, 5, 9, 11]])
    with torch.no_grad():
        base = load_base(tiny_llama_dir)(input_ids=ids).logits
        peft = PeftModel.from_pretrained(load_base(tiny_llama_dir), tmp_path / "o").eval()
        assert not torch.allclose(peft(input_ids=ids).logits, base, atol=1e-4)


def test_a_complete_peft_config_is_kept_verbatim(lora_dir, tmp_path):
    before = json.loads((lora_dir / "adapter_config.json").read_text())
    save_peft(load_peft(lora_dir), tmp_path / "again")
    assert json.loads((tmp_path / "again" / "adapter_config.json").read_text()) == before
