"""Our objective equals LoRAHub's ``get_score`` for the same weights, model and examples.

Seq2seq runs LoRAHub's code unchanged (loader, preprocessing, default loss and L1 term);
causal runs its loader and ``get_score`` with a causal ``get_loss`` of the same form.
"""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.lorahub_ref import reference_causal_get_loss, reference_loader
from lorahive.compose.composer import Composer, Example, resolve_candidates
from lorahive.compose.composer.model import load_base
from tests.compose_fixtures import add_tokenizer, make_t5_adapter
from tests.models import make_peft_adapter

EXAMPLES = [
    Example("the cat is red ?", "yes"),
    Example("add one and two", "three"),
    Example("the dog is big and fast", "no"),
    Example("count word sun moon star", "three words"),
    Example("topic of the news is sport", "sport news"),
]
# uneven lengths: the composer packs these several to a row
UNEVEN = [
    Example("count word sun moon star the cat is red and the dog is big", "five"),
    Example("red ?", "no"),
    Example("the sun", "yes"),
    Example("add one", "two"),
    Example("the dog is big and fast", "yes words"),
]
WEIGHTS = [
    [0.0, 0.0, 0.0],
    [1.0, 0.0, 0.0],
    [0.7, -0.4, 1.2],
    [-1.5, 1.5, 0.3],
]


@pytest.fixture(scope="module")
def t5_setup(tiny_t5_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("parity-t5")
    base = add_tokenizer(tiny_t5_dir, root / "base", eos_after=True)
    cands = [str(make_t5_adapter(base, root / f"c{i}", seed=10 + i)) for i in range(3)]
    return base, cands


@pytest.fixture(scope="module")
def llama_setup(tiny_llama_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("parity-llama")
    base = add_tokenizer(tiny_llama_dir, root / "base")
    cands = [str(make_peft_adapter(base, root / f"c{i}", seed=20 + i, r=4, lora_alpha=8,
                                   target_modules=["q_proj", "v_proj", "down_proj"]))
             for i in range(3)]
    return base, cands


def _ours(base, cands, mode="ab", batch_size=None, examples=EXAMPLES):
    comp = Composer(load_base(base, "cpu"), resolve_candidates(cands), examples, mode=mode,
                    batch_size=batch_size)
    return comp, comp.score(np.array(WEIGHTS))


def test_seq2seq_objective_equals_lorahub_get_score(t5_setup):
    from lorahub.algorithm import (
        default_get_loss,
        default_l1_regularization,
        get_score,
        load_dataset,
    )

    base, cands = t5_setup
    model, tok, cache = reference_loader(cands, str(base), causal=False)
    ds = load_dataset([e.input for e in EXAMPLES], [e.output for e in EXAMPLES], tok)
    ref = [get_score(w, model, cache, ds, None, default_get_loss, default_l1_regularization)
           for w in WEIGHTS]
    _, ours = _ours(base, cands)
    assert ref[0] != ref[2]  # the weights matter
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("batch_size", "examples"),
                         [(None, EXAMPLES), (2, EXAMPLES), (None, UNEVEN), (2, UNEVEN)],
                         ids=["all", "batches-of-2", "packed", "packed-batches-of-2"])
def test_causal_objective_equals_lorahub_get_score(llama_setup, batch_size, examples):
    from lorahub.algorithm import default_l1_regularization, get_score

    base, cands = llama_setup
    model, tok, cache = reference_loader(cands, str(base), causal=True)
    ds = {"input": [e.input for e in examples], "output": [e.output for e in examples]}
    get_loss = reference_causal_get_loss(tok)
    ref = [get_score(w, model, cache, ds, batch_size, get_loss, default_l1_regularization)
           for w in WEIGHTS]
    comp, ours = _ours(base, cands, batch_size=batch_size, examples=examples)
    assert (comp.scorer.packed is not None) == (examples is UNEVEN)
    assert len(set(np.round(ref, 6))) == len(ref)
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6)


def test_search_seeding_asks_lorahub_first_points():
    """LoRAHub seeds numpy's global generator then builds NGOpt; we ask the same points."""
    import nevergrad as ng

    from lorahive.compose.composer.search import SearchConfig, make_optimizer

    state = np.random.get_state()
    try:
        np.random.seed(7)
        param = ng.p.Array(init=[0] * 4, upper=[1.5] * 4, lower=[-1.5] * 4)
        ref = ng.optimizers.NGOpt(parametrization=param, budget=20)
        ref_points = []
        for _ in range(5):
            c = ref.ask()
            ref.tell(c, float(np.sum(np.asarray(c.value) ** 2)))
            ref_points.append(np.asarray(c.value))
    finally:
        np.random.set_state(state)
    ours = make_optimizer(4, SearchConfig(budget=20, seed=7))
    for want in ref_points:
        c = ours.ask()
        ours.tell(c, float(np.sum(np.asarray(c.value) ** 2)))
        np.testing.assert_allclose(np.asarray(c.value), want)
