"""The 4-bit format in plain torch against bitsandbytes itself (its CPU backend).

Dequantization must equal ``bitsandbytes.functional.dequantize_4bit`` bit for bit; the state is
parsed from exactly the tensors transformers writes (``QuantState.as_dict(packed=True)``).
"""

from __future__ import annotations

import itertools

import pytest
import torch

from lorahive.hub import quant4
from lorahive.hub.errors import InvalidRequestError

F = pytest.importorskip("bitsandbytes.functional")


@pytest.fixture(autouse=True, scope="module")
def _eager_reference():
    """bitsandbytes wraps its odd-shape fallback in torch.compile (about 20 s a shape on this
    CPU); run the same function eagerly."""
    import torch._dynamo

    old = torch._dynamo.config.disable
    torch._dynamo.config.disable = True
    yield
    torch._dynamo.config.disable = old


def checkpoint_tensors(name: str, packed: torch.Tensor, st) -> dict[str, torch.Tensor]:
    """The tensors transformers saves for one bitsandbytes 4-bit weight."""
    out = {name: packed}
    out.update({f"{name}.{k}": v for k, v in st.as_dict(packed=True).items()})
    return out


def ours(name: str, tensors: dict[str, torch.Tensor]) -> quant4.Quant4State:
    keys = quant4.find_quantized(tensors)[name]
    return quant4.parse_state(keys, tensors)


def test_code_books_are_bitsandbytes():
    assert torch.equal(quant4.NF4_CODE, F.get_4bit_type("nf4", device="cpu"))
    assert torch.equal(quant4.FP4_CODE, F.get_4bit_type("fp4", device="cpu"))


CASES = list(itertools.product(
    ["nf4", "fp4"], [False, True], [32, 64, 256, 4096],
    [torch.float32, torch.bfloat16, torch.float16]))


@pytest.mark.parametrize("qt,nested,blocksize,dtype", CASES,
                         ids=[f"{q}-{'dq' if n else 'plain'}-{b}-{str(d)[6:]}"
                              for q, n, b, d in CASES])
def test_dequantize_equals_bitsandbytes(qt, nested, blocksize, dtype):
    g = torch.Generator().manual_seed(blocksize + nested)
    for shape in [(96, 64), (40, 100), (7, 9)]:  # whole blocks, a short last block, odd shape
        W = (torch.randn(shape, generator=g) * 0.05).to(dtype)
        packed, st = F.quantize_4bit(W, blocksize=blocksize, quant_type=qt,
                                     compress_statistics=nested)
        name = "model.layers.0.mlp.up_proj.weight"
        state = ours(name, checkpoint_tensors(name, packed, st))
        assert (state.quant_type, state.blocksize, state.dtype, state.shape) == \
            (qt, blocksize, dtype, shape)
        assert (state.nested is not None) == nested
        want = F.dequantize_4bit(packed, st)
        got = quant4.dequantize(packed, state)
        assert got.dtype == want.dtype and got.shape == want.shape
        assert torch.equal(got, want), (shape, (got.float() - want.float()).abs().max())
        # float32 is the exact product; other dtypes are one rounding of it
        assert torch.equal(quant4.dequantize(packed, state, torch.float32).to(dtype), want)


@pytest.mark.parametrize("qt", ["nf4", "fp4"])
@pytest.mark.parametrize("blocksize", [32, 64, 256, 4096])
def test_quantize_gives_bitsandbytes_bytes(qt, blocksize):
    g = torch.Generator().manual_seed(7)
    for shape, dtype in [((96, 64), torch.float32), ((40, 100), torch.bfloat16),
                         ((7, 9), torch.float16)]:
        W = (torch.randn(shape, generator=g) * 0.05).to(dtype)
        want, st = F.quantize_4bit(W, blocksize=blocksize, quant_type=qt)
        got, state = quant4.quantize(W, qt, blocksize)
        assert torch.equal(got, want)
        assert torch.equal(state.absmax, st.absmax)
        assert torch.equal(quant4.encode_packed(state),
                           st.as_dict(packed=True)[f"quant_state.bitsandbytes__{qt}"])


def test_double_quantization_is_nearest_and_matches_bitsandbytes_but_near_ties():
    """bitsandbytes' CPU kernel for the 8-bit scales is not exactly round-to-nearest: it picks
    the other neighbour for a few values within a hair of a midpoint. Ours is the nearest;
    every difference must be such a near tie, and the 4-bit codes are identical."""
    g = torch.Generator().manual_seed(3)
    W = torch.randn(512, 640, generator=g) * 0.05
    want, st = F.quantize_4bit(W, blocksize=64, quant_type="nf4", compress_statistics=True)
    name = "w"
    like = ours(name, checkpoint_tensors(name, want, st))
    got, state = quant4.quantize(W, "nf4", 64, like=like)
    assert torch.equal(got, want)
    assert torch.equal(state.nested.absmax, st.state2.absmax)
    assert state.nested.offset == float(st.offset)
    code = st.state2.code.clone()
    code[0] = -1.0
    plain = quant4.quantize(W, "nf4", 64)[1].absmax
    normed = ((plain - st.offset).view(-1, 256) / st.state2.absmax.view(-1, 1)).reshape(-1)
    mine, theirs = state.absmax.long(), st.absmax.long()
    dist = (normed.unsqueeze(1) - code.unsqueeze(0)).abs()
    assert torch.equal(dist.argmin(dim=1), mine)  # ours is the nearest code
    diff = (mine != theirs).nonzero().flatten()
    assert len(diff) <= 0.01 * len(mine)
    for i in diff.tolist():
        a, b = sorted((mine[i].item(), theirs[i].item()))
        assert b == a + 1
        mid = (code[a] + code[b]) / 2
        assert abs(normed[i] - mid) < 2e-5  # a hair off the midpoint, in units of [-1, 1]
    # and the dequantized weight differs from bitsandbytes' only in those blocks' scales
    deq_ours = quant4.dequantize(got, state)
    deq_ref = F.dequantize_4bit(want, st)
    bad_blocks = {i for i in diff.tolist()}
    rows = (deq_ours != deq_ref).reshape(-1, 64).any(dim=1).nonzero().flatten().tolist()
    assert set(rows) <= bad_blocks


def test_quant_storage_other_than_uint8():
    W = torch.randn(64, 64) * 0.05
    want, st = F.quantize_4bit(W, blocksize=64, quant_type="nf4",
                               quant_storage=torch.bfloat16)
    assert want.dtype == torch.bfloat16
    state = ours("w", checkpoint_tensors("w", want, st))
    assert torch.equal(quant4.dequantize(want, state), F.dequantize_4bit(want, st))
    got, _ = quant4.quantize(W, "nf4", 64, storage=torch.bfloat16)
    assert torch.equal(got.view(torch.uint8), want.view(torch.uint8))


def _tensors(nested=False):
    W = torch.randn(32, 64) * 0.05
    packed, st = F.quantize_4bit(W, blocksize=64, quant_type="nf4", compress_statistics=nested)
    return checkpoint_tensors("m.weight", packed, st)


def test_unknown_quant_type_is_one_clear_error():
    t = _tensors()
    t["m.weight.quant_state.bitsandbytes__int4"] = t.pop("m.weight.quant_state.bitsandbytes__nf4")
    with pytest.raises(InvalidRequestError, match=r"unknown 4-bit quant type 'int4'"):
        quant4.find_quantized(t)
    t = _tensors()
    key = "m.weight.quant_state.bitsandbytes__nf4"
    t[key] = torch.tensor(list(bytes(t[key].tolist()).replace(b'"nf4"', b'"af4"')),
                          dtype=torch.uint8)
    with pytest.raises(InvalidRequestError, match="unknown 4-bit quant type 'af4'"):
        ours("m.weight", t)


def test_missing_quant_state_is_one_clear_error():
    t = _tensors()
    del t["m.weight.quant_state.bitsandbytes__nf4"]
    with pytest.raises(InvalidRequestError, match=r"m\.weight has no quant state"):
        quant4.find_quantized(t)
    t = _tensors(nested=True)
    del t["m.weight.nested_absmax"]
    with pytest.raises(InvalidRequestError, match=r"lacks m\.weight\.nested_absmax"):
        quant4.find_quantized(t)
    t = _tensors()
    del t["m.weight.quant_map"]
    with pytest.raises(InvalidRequestError, match=r"lacks m\.weight\.quant_map"):
        quant4.find_quantized(t)


def test_corrupt_state_is_one_clear_error():
    t = _tensors()
    t["m.weight.quant_state.bitsandbytes__nf4"] = torch.tensor(list(b"{not json"),
                                                               dtype=torch.uint8)
    with pytest.raises(InvalidRequestError, match="not a JSON quant state"):
        ours("m.weight", t)
    t = _tensors()
    t["m.weight.absmax"] = t["m.weight.absmax"][:-1]
    with pytest.raises(InvalidRequestError, match="need 32"):
        ours("m.weight", t)


def test_packed_state_bound_covers_any_offset():
    W = torch.randn(32, 64) * 0.05
    packed, st = F.quantize_4bit(W, blocksize=64, quant_type="nf4", compress_statistics=True)
    like = ours("w", checkpoint_tensors("w", packed, st))
    bound = quant4.packed_state_bound(like)
    from dataclasses import replace

    for off in (0.0, -1.2345678901234567e-05, 1e-300, 0.1 + 0.2, -123456.789):
        s = replace(like, nested=replace(like.nested, offset=off))
        assert quant4.encode_packed(s).numel() <= bound


def test_codes_changed_counts_nibbles():
    W = torch.randn(7, 9) * 0.05  # 63 codes: the last byte's low nibble is padding
    packed, _ = quant4.quantize(W, "nf4", 64)
    assert quant4.codes_changed(packed, packed, 63) == 0.0
    other = packed.clone()
    other.view(-1)[0] ^= 0x10  # first code
    other.view(-1)[-1] ^= 0x10  # last real code (high nibble of the last byte)
    assert quant4.codes_changed(packed, other, 63) == pytest.approx(2 / 63)
