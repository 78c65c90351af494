"""Every PEFT combination type against PEFT's own ``add_weighted_adapter`` on the same adapters.

DARE: PEFT draws its masks from torch's global RNG; the test reseeds that RNG before PEFT fuses
each module with the same per-module seed our generator uses, so both draw identical masks and
the comparison is exact, not statistical.
"""

from __future__ import annotations

import math

import pytest
import torch

from lorahive.compose.fusion import fuse
from lorahive.compose.fusion.terms import module_seed
from lorahive.hub.peft_format import load_peft
from tests.models import load_base, make_peft_adapter

PREFIX = "base_model.model."
WEIGHTS = [0.7, -0.4, 1.3]
SEED = 11


@pytest.fixture(scope="module")
def trio(tiny_llama_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("fuse-peft")
    return [make_peft_adapter(tiny_llama_dir, root / f"a{i}", seed=10 + i, r=4, lora_alpha=8,
                              target_modules=["q_proj", "v_proj", "down_proj"])
            for i in range(3)]


def peft_fused(base_dir, dirs, combination_type, weights, monkeypatch=None, **kw):
    """Fuse with PEFT; returns {module: fused delta (B @ A * PEFT's scaling)} and the scaling."""
    from peft import PeftModel
    from peft.tuners.lora import model as lora_model

    model = PeftModel.from_pretrained(load_base(base_dir), str(dirs[0]), adapter_name="a0")
    for i, d in enumerate(dirs[1:], 1):
        model.load_adapter(str(d), adapter_name=f"a{i}")
    names = {id(mod): n[len(PREFIX):] for n, mod in model.named_modules()}
    if monkeypatch is not None:  # reseed the global RNG per module, as our generator is seeded
        cls = lora_model.LoraModel
        for attr in ("_generalized_task_arithmetic_weighted_adapter",
                     "_svd_generalized_task_arithmetic_weighted_adapter"):
            orig = getattr(cls, attr)

            def wrapped(self, *a, _o=orig, **k):
                target = next(x for x in a if id(x) in names)
                torch.manual_seed(module_seed(SEED, names[id(target)]))
                return _o(self, *a, **k)

            monkeypatch.setattr(cls, attr, wrapped)
    model.add_weighted_adapter([f"a{i}" for i in range(len(dirs))], weights, "fused",
                               combination_type=combination_type, **kw)
    out, scaling = {}, None
    for n, mod in model.named_modules():
        if hasattr(mod, "lora_A") and "fused" in mod.lora_A:
            A = mod.lora_A["fused"].weight.detach()
            B = mod.lora_B["fused"].weight.detach()
        elif hasattr(mod, "lora_embedding_A") and "fused" in mod.lora_embedding_A:
            A = mod.lora_embedding_A["fused"].detach()  # r x vocab: our (out x in) frame
            B = mod.lora_embedding_B["fused"].detach()
        else:
            continue
        scaling = mod.scaling["fused"]
        out[n[len(PREFIX):]] = (B @ A) * scaling
    return out, scaling


def ours(dirs, method, weights, **kw):
    res = fuse([load_peft(d) for d in dirs], method, weights, seed=SEED, device="cpu", **kw)
    return res.adapter, {n: m.delta_matrix() for n, m in res.adapter.modules.items()}


def assert_close(a: dict, b: dict, rtol=1e-5):
    assert set(a) == set(b)
    for n in a:
        scale = b[n].abs().max().item()
        assert scale > 0
        err = (a[n] - b[n]).abs().max().item() / scale
        assert err < rtol, f"{n}: relative error {err:.2e}"


EXACT = ["linear", "cat", "svd", "magnitude_prune", "magnitude_prune_svd", "ties", "ties_svd"]


@pytest.mark.parametrize("ctype", EXACT)
def test_matches_peft(trio, tiny_llama_dir, ctype):
    kw = {"density": 0.4} if "prune" in ctype or "ties" in ctype else {}
    ref, scaling = peft_fused(tiny_llama_dir, trio, ctype, WEIGHTS, **kw)
    assert scaling == 1.0
    params = {"density": kw["density"]} if kw else None
    _, got = ours(trio, ctype, WEIGHTS, params=params)
    assert_close(got, ref)


@pytest.mark.parametrize("ctype", ["dare_linear", "dare_ties", "dare_linear_svd", "dare_ties_svd"])
def test_dare_matches_peft_with_same_seed(trio, tiny_llama_dir, ctype, monkeypatch):
    ref, _ = peft_fused(tiny_llama_dir, trio, ctype, WEIGHTS, monkeypatch=monkeypatch,
                        density=0.5)
    _, got = ours(trio, ctype, WEIGHTS, params={"density": 0.5})
    assert_close(got, ref)
    _, again = ours(trio, ctype, WEIGHTS, params={"density": 0.5})
    assert all(torch.equal(got[n], again[n]) for n in got)  # reproducible
    other = fuse([load_peft(d) for d in trio], ctype, WEIGHTS, params={"density": 0.5},
                 seed=SEED + 1, device="cpu").adapter
    assert any(not torch.allclose(other.modules[n].delta_matrix(), got[n]) for n in got)


def test_majority_sign_frequency(trio, tiny_llama_dir):
    ref, _ = peft_fused(tiny_llama_dir, trio, "ties_svd", WEIGHTS, density=0.6,
                        majority_sign_method="frequency")
    _, got = ours(trio, "ties_svd", WEIGHTS, params={"density": 0.6,
                                                     "majority_sign_method": "frequency"})
    assert_close(got, ref)


def test_linear_has_cross_terms_task_arithmetic_is_exact(trio):
    ads = [load_peft(d) for d in trio]
    exact = {n: sum(w * a.modules[n].delta_matrix() for a, w in zip(ads, WEIGHTS, strict=True))
             for n in ads[0].modules}
    _, lin = ours(trio, "linear", WEIGHTS)
    ta, got = ours(trio, "task_arithmetic", WEIGHTS)
    assert_close(got, exact)
    assert ta.max_rank == 12
    n = next(iter(exact))
    assert (lin[n] - exact[n]).abs().max() > 1e-3 * exact[n].abs().max()


def test_svd_rank_and_mixed_ranks(tiny_llama_dir, tmp_path):
    dirs = [make_peft_adapter(tiny_llama_dir, tmp_path / "r4", seed=3, r=4),
            make_peft_adapter(tiny_llama_dir, tmp_path / "r8", seed=4, r=8, lora_alpha=4)]
    ref, _ = peft_fused(tiny_llama_dir, dirs, "svd", [1.0, 0.5], svd_rank=6)
    ad, got = ours(dirs, "svd", [1.0, 0.5], rank=6)
    assert_close(got, ref)
    assert ad.max_rank == 6
    ref, _ = peft_fused(tiny_llama_dir, dirs, "cat", [1.0, 0.5])
    ad, got = ours(dirs, "cat", [1.0, 0.5])
    assert_close(got, ref)
    assert set(ad.ranks.values()) == {12}
    with pytest.raises(Exception, match="same rank"):
        ours(dirs, "linear", [1.0, 0.5])


def test_rslora_fused_scale_is_one_unlike_peft(tiny_llama_dir, tmp_path):
    dirs = [make_peft_adapter(tiny_llama_dir, tmp_path / f"rs{i}", seed=20 + i, r=4,
                              lora_alpha=8, use_rslora=True) for i in range(2)]
    ref, scaling = peft_fused(tiny_llama_dir, dirs, "svd", [1.0, 1.0])
    assert scaling == pytest.approx(math.sqrt(4))  # PEFT inherits use_rslora: scale sqrt(r)
    ad, got = ours(dirs, "svd", [1.0, 1.0])
    assert not ad.config.use_rslora
    assert all(m.scale == 1.0 for m in ad.modules.values())
    assert_close(got, {n: d / scaling for n, d in ref.items()})


def test_modules_present_in_some_adapters(tiny_llama_dir, tmp_path):
    dirs = [make_peft_adapter(tiny_llama_dir, tmp_path / "qv", seed=5, target_modules=["q_proj"]),
            make_peft_adapter(tiny_llama_dir, tmp_path / "qk", seed=6,
                              target_modules=["q_proj", "k_proj"])]
    ref, _ = peft_fused(tiny_llama_dir, dirs, "cat", [0.5, 2.0])
    ad, got = ours(dirs, "cat", [0.5, 2.0])
    assert {n.rsplit(".", 1)[1] for n in ad.modules} == {"q_proj", "k_proj"}
    for n in got:
        assert torch.allclose(got[n], ref[n], atol=1e-6)


@pytest.mark.parametrize("ctype", ["ties_svd", "dare_linear_svd", "dare_ties", "cat"])
def test_embedding_layout_matches_peft(tiny_llama_dir, tmp_path, ctype, monkeypatch):
    """Element-wise methods prune embeddings in the weight's (vocab x dim) layout, as PEFT."""
    dirs = [make_peft_adapter(tiny_llama_dir, tmp_path / f"e{i}", seed=40 + i,
                              target_modules=["embed_tokens", "q_proj"]) for i in range(2)]
    kw = {} if ctype == "cat" else {"density": 0.5}
    ref, _ = peft_fused(tiny_llama_dir, dirs, ctype, [1.0, 0.6], monkeypatch=monkeypatch, **kw)
    ad, got = ours(dirs, ctype, [1.0, 0.6], params=kw or None)
    assert ad.modules["model.embed_tokens"].kind == "embedding"
    assert_close(got, ref)
