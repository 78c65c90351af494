"""Held-out evaluation: normalisation, label-set detection, rank classification, generation."""

from __future__ import annotations

import pytest
import torch

from lorahive.compose.composer import Example
from lorahive.compose.composer.evaluate import accuracy, label_set, normalise, rank_classify
from lorahive.compose.composer.examples import encode
from lorahive.compose.composer.model import load_base
from lorahive.compose.composer.objective import token_nll
from tests.compose_fixtures import add_tokenizer


@pytest.fixture(scope="module")
def bm(tiny_llama_dir, tmp_path_factory):
    return load_base(add_tokenizer(tiny_llama_dir, tmp_path_factory.mktemp("ev") / "b"), "cpu")


def test_normalise_and_label_set():
    assert normalise("  The Answer.\n") == "the answer"
    ex = [Example("a", "yes"), Example("b", "no"), Example("c", "yes"), Example("d", "no")]
    assert label_set(ex) == ["no", "yes"]
    assert label_set([Example(str(i), str(i)) for i in range(6)]) is None


def test_rank_classification_picks_the_lowest_loss_label(bm):
    ex = [Example("the cat is red ?", "yes"), Example("add one and two", "three")]
    labels = ["yes", "no", "three"]
    preds = rank_classify(bm.model, bm.tokenizer, False, ex, labels, max_rows=4)
    for e, p in zip(ex, preds, strict=True):
        rows = encode(bm.tokenizer, [Example(e.input, lab) for lab in labels], False)
        with torch.no_grad():
            scores = token_nll(bm.model, rows)
        assert p == labels[int(scores.argmin())]
    acc = accuracy(bm.model, bm.tokenizer, False, None, None, ex, labels)
    assert acc.metric == "rank" and acc.accuracy == sum(
        p == e.output for p, e in zip(preds, ex, strict=True)) / 2


def test_exact_match_by_generation(bm):
    ex = [Example("the cat is red ?", "yes"), Example("one two", "three four")]
    acc = accuracy(bm.model, bm.tokenizer, False, None, None, ex, None)
    assert acc.metric == "exact" and len(acc.predictions) == 2
    assert acc.accuracy == sum(normalise(p) == normalise(e.output)
                               for p, e in zip(acc.predictions, ex, strict=True)) / 2


def test_encoder_decoder_composer_search_and_accuracy(tiny_t5_dir, tmp_path):
    from lorahive.compose.composer import Composer, SearchConfig, resolve_candidates
    from tests.compose_fixtures import make_t5_adapter

    base = add_tokenizer(tiny_t5_dir, tmp_path / "t5", eos_after=True)
    cands = [str(make_t5_adapter(base, tmp_path / f"c{i}", seed=70 + i)) for i in range(2)]
    shots = [Example("the cat is red", "yes"), Example("the dog is blue", "no"),
             Example("the sun is big", "yes")]
    bm5 = load_base(base, "cpu")
    with Composer(bm5, resolve_candidates(cands), shots, mode="delta") as comp:
        res = comp.search(SearchConfig(budget=4, workers=2, seed=0))
        assert res.evaluations == 4
        ranked = comp.accuracy(res.weights, shots)
        gen = comp.accuracy(res.weights, shots, labels=None)
    assert ranked.metric == "rank" and set(ranked.predictions) <= {"yes", "no"}
    assert gen.metric == "exact" and len(gen.predictions) == 3


def test_bfloat16_compute_tracks_float32(bm, tiny_llama_dir, tmp_path):
    from lorahive.compose.composer import Composer, resolve_candidates
    from tests.models import make_peft_adapter

    base = add_tokenizer(tiny_llama_dir, tmp_path / "b")
    cands = [str(make_peft_adapter(base, tmp_path / f"c{i}", seed=80 + i)) for i in range(2)]
    shots = [Example("the cat is red ?", "yes"), Example("add one and two", "three")]
    W = torch.tensor([[0.5, -0.7], [1.2, 0.3]]).numpy()
    vals = {}
    for dt in ("float32", "bfloat16"):
        with Composer(load_base(base, "cpu", dt), resolve_candidates(cands), shots) as comp:
            vals[dt] = comp.score(W)
    assert vals["float32"][0] != vals["float32"][1]
    torch.testing.assert_close(torch.tensor(vals["bfloat16"]), torch.tensor(vals["float32"]),
                               rtol=3e-2, atol=3e-2)
