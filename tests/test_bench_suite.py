"""The held-out suite's machinery on tiny models: the evaluator agrees with the composer's
scoring, intervals are computed as documented, finished rows are cached and resumed."""

from __future__ import annotations

import pytest
import torch

from benchmarks.suite_eval import Predictor, applied, correct
from lorahive.compose.composer import Example, resolve_candidates
from lorahive.compose.composer.evaluate import generate, rank_classify
from lorahive.compose.composer.examples import encode
from lorahive.compose.composer.model import load_base
from lorahive.compose.composer.objective import token_nll
from tests.compose_fixtures import add_tokenizer
from tests.models import make_peft_adapter

INPUTS = ["the cat is red ?", "add one and two", "the dog is big", "count word sun moon star",
          "is the sun big ?"]
LABELS = ["yes", "no", "three words"]


@pytest.fixture(scope="module")
def tiny(tiny_llama_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("bench-suite")
    base = add_tokenizer(tiny_llama_dir, root / "base")
    adapter = make_peft_adapter(base, root / "a", seed=7, r=4, lora_alpha=8)
    return load_base(base, "cpu"), adapter


def _composer_nll(bm, inputs, labels):
    rows = [Example(x, lab) for x in inputs for lab in labels]
    with torch.inference_mode():
        nll = token_nll(bm.model, encode(bm.tokenizer, rows, False))
    return nll.view(len(inputs), len(labels))


def test_label_scores_equal_the_composers(tiny):
    bm, _ = tiny
    pred = Predictor(bm.model, bm.tokenizer, batch=2)  # several batches, uneven lengths
    ours = pred.label_nll(INPUTS, LABELS)
    torch.testing.assert_close(ours, _composer_nll(bm, INPUTS, LABELS), rtol=1e-4, atol=1e-4)
    ranked = rank_classify(bm.model, bm.tokenizer, False,
                           [Example(x, LABELS[0]) for x in INPUTS], LABELS)
    assert pred.predict(INPUTS, LABELS) == ranked


def test_prefix_cache_equals_the_prompt_written_out(tiny):
    bm, _ = tiny
    pred = Predictor(bm.model, bm.tokenizer, batch=3)
    prefix = "the cat is red ? yes the dog is big no "
    with_prefix = pred.label_nll(INPUTS, LABELS, prefix=prefix)
    written = _composer_nll(bm, [prefix + x for x in INPUTS], LABELS)
    torch.testing.assert_close(with_prefix, written, rtol=1e-4, atol=1e-4)
    gen = pred.generate(INPUTS, 4, prefix=prefix)
    ref = generate(bm.model, bm.tokenizer, False, [Example(prefix + x, "a") for x in INPUTS], 4)
    assert [g.strip() for g in gen] == [r.strip() for r in ref]


def test_applied_adapter_matches_peft_and_restores_weights(tiny):
    from peft import PeftModel

    bm, adapter_dir = tiny
    before = {k: v.clone() for k, v in bm.model.state_dict().items()}
    cand = resolve_candidates([str(adapter_dir)])[0]
    pred = Predictor(bm.model, bm.tokenizer)
    with applied(bm.model, cand.adapter):
        ours = pred.label_nll(INPUTS, LABELS)
    for k, v in bm.model.state_dict().items():
        assert torch.equal(v, before[k]), k  # restored exactly
    from transformers import AutoModelForCausalLM

    peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(bm.path), adapter_dir)
    rows = [Example(x, lab) for x in INPUTS for lab in LABELS]
    with torch.inference_mode():
        ref = token_nll(peft.eval(), encode(bm.tokenizer, rows, False))
    torch.testing.assert_close(ours, ref.view(len(INPUTS), len(LABELS)), rtol=1e-4, atol=1e-4)
    assert not torch.allclose(ours, pred.label_nll(INPUTS, LABELS))


def test_correct_normalises_as_lorahub():
    assert correct([" Yes.", "no", "A  b"], ["yes", " yes", "a b"]) == [1, 0, 1]
