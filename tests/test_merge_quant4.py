"""Merging into a bitsandbytes 4-bit base (QLoRA) against PEFT and bitsandbytes themselves.

The 4-bit bases are the tiny Llama loaded by transformers with ``BitsAndBytesConfig`` on CPU
and saved; the adapters are made by PEFT on that 4-bit model.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lorahive.compose.checkpoint import open_checkpoint
from lorahive.compose.merge import merge_into_base
from lorahive.hub.errors import InvalidRequestError, ShapeMismatchError
from lorahive.hub.peft_format import load_peft
from tests.models import (
    LLAMA_KW,
    load_4bit,
    make_qlora_adapter,
    save_tiny_llama_4bit,
)

pytest.importorskip("bitsandbytes")
REPO = Path(__file__).resolve().parents[1]
IDS = torch.tensor([[1, 5, 9, 17, 33, 2, 64, 100]])


@pytest.fixture(scope="module")
def q4(tiny_llama_dir, tmp_path_factory):
    """NF4 with double quantization: the QLoRA paper's setting."""
    return save_tiny_llama_4bit(tiny_llama_dir, tmp_path_factory.mktemp("q4") / "nf4-dq")


@pytest.fixture(scope="module")
def q4_plain(tiny_llama_dir, tmp_path_factory):
    return save_tiny_llama_4bit(tiny_llama_dir, tmp_path_factory.mktemp("q4") / "nf4",
                                double_quant=False)


@pytest.fixture(scope="module")
def q4_bf16(tiny_llama_dir, tmp_path_factory):
    """Quantized from bfloat16 weights: dequantization yields bf16, as for most real bases."""
    return save_tiny_llama_4bit(tiny_llama_dir, tmp_path_factory.mktemp("q4") / "nf4-bf16",
                                double_quant=False, dtype=torch.bfloat16)


@pytest.fixture(scope="module")
def fp4(tiny_llama_dir, tmp_path_factory):
    return save_tiny_llama_4bit(tiny_llama_dir, tmp_path_factory.mktemp("q4") / "fp4",
                                quant_type="fp4", double_quant=False)


@pytest.fixture(scope="module")
def qlora(q4, tmp_path_factory):
    return make_qlora_adapter(q4, tmp_path_factory.mktemp("qlora") / "a", seed=3,
                              target_modules=["q_proj", "v_proj", "down_proj"])


def peft_merged(q4_dir: Path, adapter: Path, out: Path) -> Path:
    """PEFT's 4-bit merge path: load with bitsandbytes, PeftModel, merge_and_unload, save.

    transformers 5.24's ``save_pretrained`` raises NotImplementedError for a model loaded
    from a pre-quantized bitsandbytes checkpoint (``Bnb4bitDeserialize`` has no reverse
    conversion); ``save_original_format=False`` skips that step, which has nothing to undo
    for Llama's key names.
    """
    from peft import PeftModel

    model = PeftModel.from_pretrained(load_4bit(q4_dir), str(adapter)).merge_and_unload()
    model.save_pretrained(out, save_original_format=False)
    return out


@pytest.mark.parametrize("base", ["q4", "fp4", "q4_bf16"])
def test_16bit_merge_equals_peft_merge_of_the_dequantized_model(base, request, tmp_path):
    q = request.getfixturevalue(base)
    ad = make_qlora_adapter(q, tmp_path / "ad", seed=5)
    out = tmp_path / "merged"
    report = merge_into_base(q, [load_peft(ad)], out, device="cpu")
    cfg = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in cfg
    # by default, the dtype the weights were quantized from
    assert {t.dtype for t in open_checkpoint(out).tensors.values()} == \
        {"BF16" if base == "q4_bf16" else "F32"}
    assert [r.key for r in report.modules] == sorted(report.merged)
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    # loads without bitsandbytes' quantizer: a plain float checkpoint
    got = AutoModelForCausalLM.from_pretrained(out).eval()
    ref = PeftModel.from_pretrained(load_4bit(q).dequantize(), str(ad)).merge_and_unload()
    want = ref.state_dict()
    assert set(got.state_dict()) == set(want)
    for k, v in got.state_dict().items():
        assert torch.equal(v, want[k].to(v.dtype)), k
    with torch.no_grad():
        assert torch.equal(got(IDS).logits, ref.eval()(IDS).logits)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_16bit_output_dtype(q4, qlora, tmp_path, dtype):
    out = tmp_path / "m"
    merge_into_base(q4, [load_peft(qlora)], out, device="cpu", dtype=dtype)
    assert {t.dtype for t in open_checkpoint(out).tensors.values()} == \
        {"BF16" if dtype == "bfloat16" else "F16"}
    assert json.loads((out / "config.json").read_text())["dtype"] == dtype
    f32 = tmp_path / "m32"
    merge_into_base(q4, [load_peft(qlora)], f32, device="cpu")
    a, b = load_file(out / "model.safetensors"), load_file(f32 / "model.safetensors")
    assert all(torch.equal(a[k], b[k].to(a[k].dtype)) for k in a)  # one rounding of fp32


def test_16bit_cast_of_a_small_delta_is_reported(q4, tmp_path):
    """A delta well under 1% of its weight partly rounds away in bf16 too; float32 keeps it."""
    ad = load_peft(make_qlora_adapter(q4, tmp_path / "ad", seed=6, scale=1e-3))
    f32 = merge_into_base(q4, [ad], tmp_path / "f32", device="cpu")
    assert max(r.rel_error for r in f32.modules) < 1e-5 and f32.warnings == []
    bf16 = merge_into_base(q4, [ad], tmp_path / "bf16", device="cpu", dtype="bfloat16")
    assert min(r.rel_error for r in bf16.modules) > 0.01
    got = load_file(tmp_path / "bf16/model.safetensors")
    base = load_file(tmp_path / "f32/model.safetensors")
    row = bf16.modules[0]
    from lorahive.compose.checkpoint import Reader

    with Reader(open_checkpoint(q4)) as r:
        W = r.weight(row.key, torch.device("cpu"))
    want = base[row.key] - W  # the exact delta, as float32 keeps it
    written = got[row.key].float() - W.to(torch.bfloat16).float()
    assert row.rel_error == pytest.approx(float((written - want).norm() / want.norm()), rel=1e-4)


@pytest.mark.parametrize("base", ["q4_plain", "q4_bf16"])
def test_requantized_equals_peft_merge_and_unload_byte_for_byte(base, request, tmp_path):
    """Without double quantization every tensor equals PEFT's (same dequantization, same
    float32 sum, same 4-bit rounding), so the logits are identical."""
    q = request.getfixturevalue(base)
    ad = make_qlora_adapter(q, tmp_path / "ad", seed=4)
    out = tmp_path / "ours"
    merge_into_base(q, [load_peft(ad)], out, device="cpu", requantize="nf4")
    ref = peft_merged(q, ad, tmp_path / "peft")
    a, b = load_file(out / "model.safetensors"), load_file(ref / "model.safetensors")
    assert set(a) == set(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    with torch.no_grad():
        assert torch.equal(load_4bit(out)(IDS).logits, load_4bit(ref)(IDS).logits)


def test_requantized_double_quant_matches_peft_as_closely_as_rounding_allows(q4, qlora,
                                                                            tmp_path):
    """With double quantization the 4-bit codes are identical; the 8-bit codes of the block
    scales may differ where bitsandbytes' CPU kernel rounds a near-tie the other way (see
    hub.quant4), moving one block's scale by one 8-bit step (under 1% of it). The logits
    then agree to 1e-3 of their range; on these inputs they are equal."""
    out = tmp_path / "ours"
    report = merge_into_base(q4, [load_peft(qlora)], out, device="cpu", requantize="nf4")
    ref = peft_merged(q4, qlora, tmp_path / "peft")
    a, b = load_file(out / "model.safetensors"), load_file(ref / "model.safetensors")
    assert set(a) == set(b)
    moved = 0
    for k in a:
        if k.endswith(".absmax") and a[k].dtype == torch.uint8:
            moved += int((a[k] != b[k]).sum())
            assert int((a[k] != b[k]).sum()) <= max(1, a[k].numel() // 100), k
            assert int((a[k].int() - b[k].int()).abs().max()) <= 1, k
        else:
            assert torch.equal(a[k], b[k]), k
    with torch.no_grad():
        la, lb = load_4bit(out)(IDS).logits, load_4bit(ref)(IDS).logits
    assert (la - lb).abs().max() <= 1e-3 * (lb.max() - lb.min())
    if moved == 0:
        assert torch.equal(la, lb)
    # the report's survival figure is what bitsandbytes itself dequantizes
    import bitsandbytes.functional as F

    base_model, merged_model = load_4bit(q4), load_4bit(out)
    adapter = load_peft(qlora)
    for row in report.modules:
        name = row.key.removesuffix(".weight")
        w0 = base_model.get_submodule(name).weight
        w1 = merged_model.get_submodule(name).weight
        got = F.dequantize_4bit(w1.data, w1.quant_state).float() - \
            F.dequantize_4bit(w0.data, w0.quant_state).float()
        want = adapter.delta(name)
        assert row.rel_error == pytest.approx(
            float((got - want).norm() / want.norm()), rel=1e-5)
        assert 0 < row.codes_changed <= 1


def test_small_delta_mostly_rounds_away_and_is_said(q4, tmp_path):
    ad = make_qlora_adapter(q4, tmp_path / "ad", seed=6, scale=1e-3)
    report = merge_into_base(q4, [load_peft(ad)], tmp_path / "o", device="cpu",
                             requantize="nf4")
    assert all(r.rel_error > 0.5 for r in report.modules)
    assert len(report.warnings) == 1 and "rounds away" in report.warnings[0]
    big = merge_into_base(q4, [load_peft(ad)], tmp_path / "big", device="cpu",
                          requantize="nf4", weights=[1000.0])
    assert big.warnings == []
    assert max(r.rel_error for r in big.modules) < 0.5


def test_untouched_weights_are_copied_and_type_change_requantizes_all(q4, qlora, tmp_path):
    out = tmp_path / "nf4"
    merge_into_base(q4, [load_peft(qlora)], out, device="cpu", requantize="nf4")
    a, b = load_file(q4 / "model.safetensors"), load_file(out / "model.safetensors")
    k = "model.layers.0.self_attn.k_proj.weight"  # not adapted
    for suffix in ("", ".absmax", ".nested_absmax", ".quant_state.bitsandbytes__nf4"):
        assert torch.equal(a[k + suffix], b[k + suffix])
    fp = tmp_path / "fp4"
    merge_into_base(q4, [load_peft(qlora)], fp, device="cpu", requantize="fp4")
    c = load_file(fp / "model.safetensors")
    assert not [x for x in c if x.endswith("bitsandbytes__nf4")]
    assert json.loads((fp / "config.json").read_text())["quantization_config"][
        "bnb_4bit_quant_type"] == "fp4"
    model = load_4bit(fp)
    assert model.get_submodule("model.layers.0.self_attn.k_proj").weight.quant_type == "fp4"


def test_against_original_and_the_quantization_gap(tiny_llama_dir, q4, qlora, tmp_path):
    ad = load_peft(qlora)
    deq = merge_into_base(q4, [ad], tmp_path / "deq", device="cpu", original=tiny_llama_dir)
    merge_into_base(q4, [ad], tmp_path / "plain", device="cpu")
    a, b = load_file(tmp_path / "deq/model.safetensors"), \
        load_file(tmp_path / "plain/model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)  # default: onto the dequantized weights
    orig = merge_into_base(q4, [ad], tmp_path / "orig", device="cpu",
                           original=tiny_llama_dir, against="original")
    float_merge = merge_into_base(tiny_llama_dir, [ad], tmp_path / "float", device="cpu")
    assert float_merge.quant is None
    c, d = load_file(tmp_path / "orig/model.safetensors"), \
        load_file(tmp_path / "float/model.safetensors")
    assert set(c) == set(d) and all(torch.equal(c[k], d[k]) for k in c)
    # the gap is ||original - dequantized||, reported beside the delta
    from lorahive.compose.checkpoint import Reader

    base = load_file(tiny_llama_dir / "model.safetensors")
    q = open_checkpoint(q4)
    with Reader(q) as r:
        for row_deq, row_orig in zip(deq.modules, orig.modules, strict=True):
            gap = float((base[row_deq.key] - r.weight(row_deq.key, torch.device("cpu"))).norm())
            assert row_deq.gap_norm == pytest.approx(gap, rel=1e-6)
            assert row_orig.gap_norm == pytest.approx(gap, rel=1e-6)
            assert row_deq.gap_to_delta == pytest.approx(gap / row_deq.delta_norm)
    assert deq.warnings == [] and orig.warnings == []
    # requantized against the original: 4-bit layout of the base, adapted weights from W + d
    rq = merge_into_base(q4, [ad], tmp_path / "rq", device="cpu", original=tiny_llama_dir,
                         against="original", requantize="nf4")
    assert all(r.gap_norm is not None and r.rel_error is not None for r in rq.modules)
    load_4bit(tmp_path / "rq")


def test_foreign_original_is_flagged(tiny_llama_dir, q4, qlora, tmp_path):
    from tests.models import save_tiny_llama

    other = save_tiny_llama(tmp_path / "other", seed=9)
    rep = merge_into_base(q4, [load_peft(qlora)], tmp_path / "o", device="cpu", original=other)
    assert any("quantized from" in w for w in rep.warnings)


def test_sharded_4bit_base_keeps_a_consistent_index(tiny_llama_dir, tmp_path):
    q = save_tiny_llama_4bit(tiny_llama_dir, tmp_path / "q4s", max_shard_size="20KB")
    ckpt = open_checkpoint(q)
    assert len(ckpt.shards) > 2
    ad = make_qlora_adapter(q, tmp_path / "ad", seed=2,
                            target_modules=["q_proj", "v_proj", "up_proj", "down_proj"])
    for kw in ({}, {"requantize": "nf4"}):
        out = tmp_path / f"out{len(kw)}"
        merge_into_base(q, [load_peft(ad)], out, device="cpu", **kw)
        index = json.loads((out / "model.safetensors.index.json").read_text())
        got = open_checkpoint(out)
        assert index["weight_map"] == {k: t.shard for k, t in got.tensors.items()}
        assert index["metadata"]["total_size"] == got.total_bytes
        if kw:
            load_4bit(out)
        else:
            from transformers import AutoModelForCausalLM

            AutoModelForCausalLM.from_pretrained(out)


def test_bad_requests_fail_before_writing(tiny_llama_dir, q4, qlora, tmp_path):
    ad = load_peft(qlora)
    out = tmp_path / "o"
    cases = [
        (dict(base=tiny_llama_dir, requantize="nf4"), InvalidRequestError, "needs a bitsandbytes"),
        (dict(base=tiny_llama_dir, original=tiny_llama_dir), InvalidRequestError, "float"),
        (dict(base=q4, requantize="int4"), InvalidRequestError, "not 'int4'"),
        (dict(base=q4, against="original"), InvalidRequestError, "needs original"),
        (dict(base=q4, against="sideways"), InvalidRequestError, "not 'sideways'"),
        (dict(base=q4, original=q4), InvalidRequestError, "4-bit too"),
        (dict(base=q4, requantize="nf4", dtype="bfloat16"), InvalidRequestError, "16-bit"),
    ]
    for kw, exc, msg in cases:
        base = kw.pop("base")
        with pytest.raises(exc, match=msg):
            merge_into_base(base, [ad], out, device="cpu", **kw)
    from transformers import LlamaConfig, LlamaForCausalLM

    other = tmp_path / "narrow"
    LlamaForCausalLM(LlamaConfig(**{**LLAMA_KW, "intermediate_size": 48})).save_pretrained(other)
    with pytest.raises(ShapeMismatchError, match="quantized from"):
        merge_into_base(q4, [ad], out, device="cpu", original=other)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".lorahive-tmp")]


def test_corrupt_4bit_base_is_one_line_error(q4, qlora, tmp_path):
    import shutil

    from safetensors.torch import save_file

    bad = tmp_path / "bad"
    shutil.copytree(q4, bad)
    t = load_file(bad / "model.safetensors")
    del t["model.layers.0.self_attn.q_proj.weight.quant_state.bitsandbytes__nf4"]
    save_file(t, bad / "model.safetensors", metadata={"format": "pt"})
    r = subprocess.run([sys.executable, "-m", "lorahive", "merge", "--base", str(bad),
                        "-a", str(qlora), "--out", str(tmp_path / "o")],
                       cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "no quant state" in lines[0]


def lorahive(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lorahive", *args], cwd=REPO,
                          capture_output=True, text=True)


def test_cli_merges_a_qlora_adapter_to_16bit_and_to_4bit(tiny_llama_dir, q4, qlora, tmp_path):
    from transformers import AutoModelForCausalLM

    out16 = tmp_path / "m16"
    r = lorahive("merge", "--base", str(q4), "-a", str(qlora), "--out", str(out16),
                 "--dtype", "bfloat16", "--original", str(tiny_llama_dir))
    assert r.returncode == 0, r.stderr
    assert "gap/delta" in r.stdout and "layers.0.self_attn.q_proj" in r.stdout
    m16 = AutoModelForCausalLM.from_pretrained(out16).eval()
    assert next(m16.parameters()).dtype == torch.bfloat16
    out4 = tmp_path / "m4"
    r = lorahive("merge", "--base", str(q4), "-a", str(qlora), "--out", str(out4),
                 "--requantize", "nf4", "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["quant"]["output"] == "4-bit nf4" and data["quant"]["against"] == "dequantized"
    assert len(data["modules"]) == 6 and all(0 <= m["rel_error"] < 1 for m in data["modules"])
    lineage = json.loads((out4 / "lorahive.json").read_text())["lineage"]
    assert lineage["params"]["requantize"] == "nf4"
    with torch.no_grad():
        a, b = m16(IDS).logits.float(), load_4bit(out4)(IDS).logits
        base = load_4bit(q4)(IDS).logits
    # the same merge in bf16 and re-quantized: the 4-bit model moved most of the way
    assert (b - a).norm() < 0.5 * (base - a).norm()


@pytest.mark.parametrize("args,msg", [
    (["--against", "original"], "needs --original"),
    (["--requantize", "int8"], "--requantize takes nf4 or fp4, not 'int8'"),
    (["--requantize", "nf4", "--dtype", "bf16"], "--dtype applies to 16-bit output"),
])
def test_cli_bad_4bit_options_are_one_line_errors(q4, qlora, tmp_path, args, msg):
    r = lorahive("merge", "--base", str(q4), "-a", str(qlora), "--out", str(tmp_path / "o"),
                 *args)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and msg in lines[0], r.stderr
    assert not (tmp_path / "o").exists()
