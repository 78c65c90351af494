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


def _greedy(model, tokenizer, prompt: str, steps: int) -> list[int]:
    """Token-by-token greedy decoding with full forward passes: the reference generation."""
    ids = tokenizer(prompt)["input_ids"]
    out: list[int] = []
    with torch.no_grad():
        for _ in range(steps):
            nxt = int(model(input_ids=torch.tensor([ids + out])).logits[0, -1].argmax())
            out.append(nxt)
    return out


def _word_base(tiny_llama_dir, root):
    """The tiny Llama with a word tokenizer that also knows a newline token, and logits only
    over ids the tokenizer has (so every greedy token decodes to a word)."""
    from tokenizers import AddedToken

    base = load_base(add_tokenizer(tiny_llama_dir, root / "b"), "cpu")
    tok = base.tokenizer
    tok.add_tokens([AddedToken("\n", normalized=False, special=False)])
    with torch.no_grad():
        base.model.lm_head.weight[len(tok):] = 0
        base.model.lm_head.weight[len(tok):, 0] = -1e4  # never the argmax
    return base


def test_exact_match_by_generation(tiny_llama_dir, tmp_path):
    """Predictions are the model's greedy continuation, scored against outputs that match
    for one example and not for the other."""
    base = _word_base(tiny_llama_dir, tmp_path)
    model, tok = base.model, base.tokenizer
    prompts = ["the cat is red ?", "one two"]
    first = [tok.decode([_greedy(model, tok, p, 1)[0]]) for p in prompts]
    wrong = next(w for w in ("yes", "no", "three") if w != first[1])
    ex = [Example(prompts[0], first[0]), Example(prompts[1], wrong)]
    acc = accuracy(model, tok, False, None, None, ex, None, max_new_tokens=1)
    assert acc.metric == "exact" and acc.predictions == [first[0], first[1]]
    assert acc.accuracy == 0.5


@pytest.mark.parametrize("stop", ["newline", "eos"])
def test_generation_stops_where_the_outputs_end(tiny_llama_dir, tmp_path, stop):
    """The answer is the first generated word, then the model writes a newline (or EOS) and
    goes on: exact match must compare the answer alone, as the one-line outputs are."""
    from lorahive.compose.composer import Composer, resolve_candidates
    from tests.models import make_peft_adapter

    base = _word_base(tiny_llama_dir, tmp_path)
    model, tok = base.model, base.tokenizer
    prompt = "the cat is red ?"
    t1, t2 = _greedy(model, tok, prompt, 2)
    end = tok.convert_tokens_to_ids("\n") if stop == "newline" else tok.eos_token_id
    assert t1 not in (t2, end), "pick another prompt: the rig needs two distinct tokens"
    with torch.no_grad():  # wherever the model would write t2 it now writes the end token
        w = model.lm_head.weight
        w[[t2, end]] = w[[end, t2]]
    got = _greedy(model, tok, prompt, 6)
    assert got[:2] == [t1, end]
    assert tok.decode(got[2:], skip_special_tokens=True).strip()  # it goes on with words
    answer = tok.decode([t1])
    # a three-word output elsewhere lets generation run 5 tokens, past the end token
    ex = [Example(prompt, answer), Example("the dog is blue ?", "big small fast")]
    cands = [str(make_peft_adapter(add_tokenizer(tiny_llama_dir, tmp_path / "a"),
                                   tmp_path / "c0", seed=90))]
    with Composer(base, resolve_candidates(cands), ex) as comp:
        acc = comp.accuracy([0.0], ex, labels=None)  # weight 0: the base model itself
    assert acc.metric == "exact" and normalise(acc.predictions[0]) == answer


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
