"""Composer internals: batched mixing equals sequential, delta equals the dense sum, the
composed adapter reproduces the mix in PEFT, candidates are validated, the search runs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lorahive.compose.composer import Composer, Example, SearchConfig, resolve_candidates
from lorahive.compose.composer.candidates import check_candidates
from lorahive.compose.composer.model import load_base
from lorahive.compose.composer.objective import load_objective
from lorahive.hub.errors import BaseModelMismatchError, InvalidRequestError, ShapeMismatchError
from lorahive.hub.peft_format import load_peft, save_peft
from tests.compose_fixtures import add_tokenizer
from tests.models import make_peft_adapter, save_tiny_llama

EXAMPLES = [
    Example("the cat is red ?", "yes"),
    Example("add one and two", "three"),
    Example("the dog is big", "no"),
    Example("count word sun moon star", "three words"),
]


@pytest.fixture(scope="module")
def setup(tiny_llama_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("compose-core")
    base = add_tokenizer(tiny_llama_dir, root / "base")
    same = [str(make_peft_adapter(base, root / f"s{i}", seed=30 + i, r=4, lora_alpha=8))
            for i in range(3)]
    # different ranks and modules: only mode delta can mix these
    mixed = [
        same[0],
        str(make_peft_adapter(base, root / "m1", seed=40, r=2, lora_alpha=6,
                              target_modules=["q_proj", "k_proj"])),
        str(make_peft_adapter(base, root / "m2", seed=41, r=6, lora_alpha=3, use_rslora=True,
                              target_modules=["v_proj", "down_proj"])),
    ]
    return root, base, same, mixed


@pytest.fixture(scope="module")
def base_model(setup):
    return load_base(setup[1], "cpu")


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


IDS = torch.tensor([[3, 5, 9, 11, 14, 20, 7], [4, 8, 15, 16, 23, 42, 5]])


def test_batched_equals_sequential(setup, base_model):
    _, _, same, mixed = setup
    rng = np.random.default_rng(0)
    for mode, cands in (("ab", same), ("delta", mixed)):
        comp = Composer(base_model, resolve_candidates(cands), EXAMPLES, mode=mode, max_rows=16)
        W = rng.uniform(-1.5, 1.5, size=(6, 3))
        batched = comp.score(W)  # 6 vectors x 4 examples, 16 rows a pass -> chunks of 4 and 2
        seq = np.array([comp.score(w[None])[0] for w in W])
        comp.close()
        np.testing.assert_allclose(batched, seq, rtol=1e-5, atol=1e-6)
        assert len(set(np.round(seq, 5))) == len(seq)


def test_delta_mode_equals_dense_sum(setup, base_model):
    _, base, _, mixed = setup
    w = [0.8, -1.1, 1.3]
    cands = resolve_candidates(mixed)
    comp = Composer(base_model, cands, EXAMPLES, mode="delta")
    comp.mixer.set_weights([w])
    got = _logits(base_model.model, IDS)
    comp.close()
    dense = load_base(base, "cpu").model
    with torch.no_grad():
        for c, wi in zip(cands, w, strict=True):
            for name, m in c.adapter.modules.items():
                dense.get_submodule(name).weight += wi * m.scale * (m.B @ m.A)
    want = _logits(dense, IDS)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    # and the mixer's K groups see different mixes in one pass
    comp = Composer(base_model, cands, EXAMPLES, mode="delta")
    comp.mixer.set_weights([[0.0, 0.0, 0.0], w])
    both = _logits(base_model.model, IDS.repeat(2, 1))
    comp.close()
    torch.testing.assert_close(both[2:], want, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(both[:2], _logits(load_base(base, "cpu").model, IDS))


@pytest.mark.parametrize("scales", ["equal", "different"])
def test_ab_adapter_reproduces_the_mix_in_peft(setup, base_model, tmp_path, scales):
    """What the search scored is what is written: the mixer's logits equal PEFT's on the
    written adapter, also when the candidates' scales differ (alpha 8 and 2 at rank 4)."""
    from peft import PeftModel

    _, base, same, _ = setup
    if scales == "different":
        same = [same[0], str(make_peft_adapter(base, tmp_path / "low", seed=33, lora_alpha=2)),
                same[2]]
    w = [0.5, -0.9, 1.4]
    comp = Composer(base_model, resolve_candidates(same), EXAMPLES, mode="ab")
    assert bool(comp.warnings) == (scales == "different")
    comp.mixer.set_weights([w])
    mixed = _logits(base_model.model, IDS)
    adapter, energy = comp.adapter(w)
    comp.close()
    assert energy == {}
    save_peft(adapter, tmp_path / "ab")
    peft = PeftModel.from_pretrained(load_base(base, "cpu").model, tmp_path / "ab").eval()
    torch.testing.assert_close(_logits(peft, IDS), mixed, rtol=1e-4, atol=1e-5)
    # element-wise mixing is not the weighted sum of deltas (cross terms)
    a = load_peft(tmp_path / "ab").modules["model.layers.0.self_attn.q_proj"]
    cands = resolve_candidates(same)
    lin = sum(wi * c.adapter.modules["model.layers.0.self_attn.q_proj"].delta_matrix()
              for c, wi in zip(cands, w, strict=True))
    assert not torch.allclose(a.delta_matrix(), lin, atol=1e-4)


def test_delta_adapter_truncation_reports_energy(setup, base_model, tmp_path):
    _, _, _, mixed = setup
    w = [0.8, -1.1, 1.3]
    comp = Composer(base_model, resolve_candidates(mixed), EXAMPLES, mode="delta")
    full, e_full = comp.adapter(w, rank=64)
    low, e_low = comp.adapter(w, rank=2)
    comp.close()
    assert all(v == pytest.approx(1.0) for v in e_full.values())
    assert min(e_low.values()) < 0.999 and low.max_rank == 2
    name = "model.layers.0.self_attn.q_proj"
    dense = sum(wi * c.adapter.modules[name].delta_matrix()
                for c, wi in zip(resolve_candidates(mixed), w, strict=True)
                if name in c.adapter.modules)
    torch.testing.assert_close(full.modules[name].delta_matrix(), dense, rtol=1e-4, atol=1e-5)
    save_peft(low, tmp_path / "low")
    assert load_peft(tmp_path / "low").max_rank == 2


def test_mismatched_candidates_are_refused(setup, tmp_path):
    _root, base, same, mixed = setup
    two = make_peft_adapter(base, tmp_path / "r2", seed=3, r=2, lora_alpha=4)
    with pytest.raises(ShapeMismatchError, match="rank 2"):
        check_candidates(resolve_candidates([same[0], str(two)]), "ab")
    with pytest.raises(ShapeMismatchError, match="same modules"):
        check_candidates(resolve_candidates([same[0], mixed[1]]), "ab")
    assert "model.layers.0.mlp.down_proj" in check_candidates(resolve_candidates(mixed), "delta")
    other = make_peft_adapter(base, tmp_path / "other", seed=5, base_id="someone/else")
    with pytest.raises(BaseModelMismatchError, match="different base models"):
        check_candidates(resolve_candidates([same[0], str(other)]), "delta")
    with pytest.raises(InvalidRequestError, match="registry"):
        resolve_candidates(["team/adapter@1"])
    with pytest.raises(InvalidRequestError, match="unknown mode"):
        check_candidates(resolve_candidates(same), "ties")


def test_candidates_for_another_base_shape_are_refused(setup, tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.models import LLAMA_KW

    _, _base, same, _ = setup
    wide_dir = tmp_path / "wide"
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(**{**LLAMA_KW, "hidden_size": 96})).save_pretrained(wide_dir)
    wide = make_peft_adapter(wide_dir, tmp_path / "wide-lora", seed=2)
    with pytest.raises(ShapeMismatchError, match="96"):
        check_candidates(resolve_candidates([same[0], str(wide)]), "delta")
    other_base = add_tokenizer(save_tiny_llama(tmp_path / "b"), tmp_path / "bt")
    bm = load_base(other_base, "cpu")
    narrow_only = make_peft_adapter(wide_dir, tmp_path / "wide-lora2", seed=3)
    with pytest.raises(ShapeMismatchError, match="wrong base model"):
        Composer(bm, resolve_candidates([str(narrow_only)]), EXAMPLES)


def test_search_prescreen_and_custom_objective(setup, base_model):
    _, _, same, _ = setup
    comp = Composer(base_model, resolve_candidates(same), EXAMPLES, mode="ab")
    cfg = SearchConfig(budget=10, workers=4, seed=1)
    seen = []
    res = comp.search(cfg, lambda done, v, best: seen.append((done, v, best)))
    assert res.evaluations == 10 and len(res.trace) == 10 and [s[0] for s in seen] == list(range(1, 11))
    assert res.best_trace[-1] == min(res.trace)
    assert np.all(np.abs(res.weights) <= 1.5)
    assert res.objective == pytest.approx(comp.score(res.weights[None])[0], rel=1e-6)
    # same seed, same trace
    np.testing.assert_allclose(comp.search(cfg).trace, res.trace, rtol=1e-6)
    ranked = comp.prescreen(2)
    assert len(ranked) == 3 and ranked[0][1] <= ranked[1][1] <= ranked[2][1]
    assert [c.ref for c in comp.candidates] == sorted(
        [r for r, _ in ranked[:2]], key=same.index)
    comp.close()
    with Composer(base_model, resolve_candidates(same), EXAMPLES) as comp, \
            pytest.raises(InvalidRequestError, match="unknown optimizer"):
        comp.search(SearchConfig(optimizer="NoSuchOpt"))
    assert not any(type(m).__name__ == "MixedLinear" for m in base_model.model.modules())


def l1_only(x):
    """A custom objective for the test below: only the weights' L1 norm."""
    return x.weights.abs().sum(1)


def test_custom_objective_by_name(setup, base_model):
    _, _, same, _ = setup
    obj = load_objective("tests.test_compose_core:l1_only")
    comp = Composer(base_model, resolve_candidates(same), EXAMPLES, objective=obj)
    np.testing.assert_allclose(comp.score(np.array([[1.0, -0.5, 0.0]])), [1.5])
    comp.close()
    with pytest.raises(InvalidRequestError, match="module:function"):
        load_objective("nocolon")
    with pytest.raises(InvalidRequestError, match="cannot load"):
        load_objective("tests.test_compose_core:missing")


def test_examples_file_errors(tmp_path):
    from lorahive.compose.composer import load_examples

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"input": "x"}) + "\n")
    with pytest.raises(InvalidRequestError, match="input"):
        load_examples(bad)
    with pytest.raises(InvalidRequestError, match="does not exist"):
        load_examples(tmp_path / "none.jsonl")


def test_import_does_not_need_transformers():
    import subprocess
    import sys

    code = ("import sys, compose, compose.composer, compose.composer.mixing, "
            "compose.composer.objective, compose.composer.evaluate; "
            "assert 'transformers' not in sys.modules, 'transformers imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


UNEVEN = [
    Example("count word sun moon star the cat is red and the dog is big", "five"),
    Example("red ?", "no"),
    Example("the sun", "yes"),
    Example("add one", "two"),
    Example("the dog is big and fast", "yes"),
    Example("moon", "no"),
]


def test_uneven_examples_are_packed_with_the_same_losses(setup, base_model):
    """Short examples share rows (positions restart per example); every per-example loss
    equals the padded batch's, for K vectors per pass and split into chunks."""
    _, _, same, mixed = setup
    rng = np.random.default_rng(3)
    W = rng.uniform(-1.5, 1.5, size=(5, 3))
    for mode, cands in (("ab", same), ("delta", mixed)):
        got = {}
        for packed in (True, False):
            comp = Composer(base_model, resolve_candidates(cands), UNEVEN, mode=mode,
                            max_rows=8, pack_examples=packed)
            scorer = comp.scorer
            assert (scorer.packed is not None) == packed
            got[packed] = (scorer.nll(torch.as_tensor(W, dtype=torch.float32)).numpy(),
                           comp.score(W))
            comp.close()
        assert scorer.rows == len(UNEVEN)
        np.testing.assert_allclose(got[True][0], got[False][0], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(got[True][1], got[False][1], rtol=1e-6, atol=1e-6)
    # the long example fills a row; the five short ones share two rows
    comp = Composer(base_model, resolve_candidates(same), UNEVEN, mode="ab")
    assert comp.scorer.rows == 3
    assert int((comp.scorer.packed.example >= 0).sum()) == int(comp.encoded.attention_mask.sum())
    comp.close()


def test_even_examples_are_not_packed(setup, base_model):
    comp = Composer(base_model, resolve_candidates(setup[2]), EXAMPLES, mode="ab")
    assert comp.scorer.packed is None and comp.scorer.rows == len(EXAMPLES)
    comp.close()


def test_packing_check_catches_examples_that_see_each_other(setup, base_model):
    """Were positions not restarted, packed examples would attend to their row neighbours;
    the one-time check must see the losses change and keep the padded batch."""
    from lorahive.compose.composer.examples import Packed, encode, pack
    from lorahive.compose.composer.objective import packing_agrees

    enc = encode(base_model.tokenizer, UNEVEN, False)
    good = pack(enc)
    assert packing_agrees(base_model.model, enc, good)
    running = torch.arange(good.input_ids.shape[1]).expand_as(good.position_ids)
    leaky = Packed(good.input_ids, running.contiguous(), good.labels, good.example, good.n)
    assert not packing_agrees(base_model.model, enc, leaky)


def test_label_rows_share_each_prompt_as_a_tree(setup, base_model):
    """The label objective's rows (each example with every label) computed as trees, each
    prompt once: every row's loss equals the padded batch's, for K vectors per pass, with
    labels of one to several tokens; the trees hold far fewer tokens than the rows."""
    from lorahive.compose.composer.examples import Tree

    _, _, same, mixed = setup
    long = "the cat is red and the dog is big and the sun is hot and the moon is cold "
    shots = [Example(long + "?", "yes"), Example(long + "moon", "no"),
             Example("add one and two please", "three words")]
    labels = ["yes", "no", "three words", "maybe not at all"]
    W = torch.as_tensor(np.random.default_rng(5).uniform(-1.5, 1.5, size=(3, 3)),
                        dtype=torch.float32)
    for mode, cands in (("ab", same), ("delta", mixed)):
        got = {}
        for tree in (True, False):
            comp = Composer(base_model, resolve_candidates(cands), shots, mode=mode,
                            labels=labels, max_rows=8, pack_examples=tree)
            assert isinstance(comp.scorer.packed, Tree) == tree
            got[tree] = (comp.scorer.nll(W).numpy(), comp.score(W))
            if tree:
                cells = int(comp.scorer.packed.input_ids.numel())
                assert cells < 0.6 * int(comp.encoded.attention_mask.sum())
            comp.close()
        np.testing.assert_allclose(got[True][0], got[False][0], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(got[True][1], got[False][1], rtol=1e-6, atol=1e-6)


def test_tree_check_catches_branches_that_see_each_other(setup, base_model):
    """Were a branch to attend to the branch before it, its loss would change; the one-time
    check must see it and keep the padded rows."""
    from lorahive.compose.composer.examples import Tree, encode, tree_pack
    from lorahive.compose.composer.objective import packing_agrees
    from lorahive.compose.composer.session import label_rows

    rows, _ = label_rows([Example("the cat is red ?", "yes"), Example("moon", "no")],
                         ["yes", "no", "three words"])
    enc = encode(base_model.tokenizer, rows, False)
    good = tree_pack(enc, 3)
    assert packing_agrees(base_model.model, enc, good)
    leaky = good.allowed.clone()
    leaky.copy_(leaky | torch.ones_like(leaky).tril())  # plain causal: branches see branches
    bad = Tree(good.input_ids, good.position_ids, leaky, good.src, good.target, good.owner,
               good.n)
    assert not packing_agrees(base_model.model, enc, bad)
    assert tree_pack(enc, 4) is None  # groups must divide the rows
    other = encode(base_model.tokenizer, [Example("a b", "yes"), Example("c d", "no")], False)
    assert tree_pack(other, 2) is None  # different prompts share nothing
