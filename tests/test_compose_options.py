"""Composer options that aim at generalising from few shots: the out-of-fold check, the label
objective (rank classification's cross-entropy), candidate retrieval, and what the composed
adapter's model card records."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lorahive.compose.composer import Composer, Example, SearchConfig, resolve_candidates
from lorahive.compose.composer.folds import split_folds
from lorahive.compose.composer.model import load_base
from lorahive.compose.composer.objective import LossInputs, label_loss
from lorahive.hub.errors import InvalidRequestError
from tests.compose_fixtures import (
    add_tokenizer,
    animal_task,
    answer_format_base,
    train_task_adapter,
)
from tests.models import make_peft_adapter, save_tiny_llama


@pytest.fixture(scope="module")
def animals(tmp_path_factory):
    """A base that answers yes/no but does not know the animal rule, an adapter trained on
    the rule, and three random adapters."""
    root = tmp_path_factory.mktemp("compose-options")
    raw = add_tokenizer(save_tiny_llama(root / "raw-model"), root / "raw")
    base = answer_format_base(raw, root / "base", root / "format")
    good = train_task_adapter(base, root / "good", animal_task(40, 1), steps=40)
    noise = [make_peft_adapter(base, root / f"noise{i}", seed=70 + i) for i in range(3)]
    return root, base, good, noise


@pytest.fixture(scope="module")
def animal_base(animals):
    return load_base(animals[1], "cpu")


def test_split_folds_cover_the_shots_once():
    folds = split_folds(7, 3, seed=1)
    assert sorted(i for f in folds for i in f) == list(range(7))
    assert sorted(map(len, folds)) == [2, 2, 3]
    loo = split_folds(5, 9, seed=0)  # more folds than shots: leave-one-out
    assert sorted(loo) == [[i] for i in range(5)]
    with pytest.raises(InvalidRequestError):
        split_folds(5, 1, seed=0)
    with pytest.raises(InvalidRequestError):
        split_folds(1, 2, seed=0)


def test_label_folds_never_hold_out_a_labels_only_shot():
    labels = ["article", "question", "article", "article", "article"]
    loo = split_folds(5, 5, seed=0, labels=labels)
    assert sorted(loo) == [[0], [2], [3], [4]]  # the only question is searched in every fold
    # without labels nothing changes: the same folds as before, in the same order
    assert split_folds(5, 5, seed=0) == [[i] for i in np.random.RandomState(0).permutation(5)]
    assert [f for f in split_folds(5, 5, seed=0) if f != [1]] == loo
    labels = ["a"] * 4 + ["b"] * 3 + ["c"] * 2 + ["d"]
    folds = split_folds(10, 3, seed=4, labels=labels)
    assert sorted(i for f in folds for i in f) == list(range(9))  # all but d's one shot
    for held in folds:  # each fold leaves every label in the search
        kept = [labels[i] for i in range(10) if i not in held]
        assert set(kept) == set(labels)
        counts = [sum(labels[i] == lab for i in held) for lab in "abc"]
        assert max(counts) <= 2 and sum(counts) == len(held)  # spread, not grouped
    with pytest.raises(InvalidRequestError, match="a label with at least 2 examples"):
        split_folds(3, 3, seed=0, labels=["x", "y", "z"])


@pytest.mark.parametrize("seed", [99, 7])
def test_guard_refuses_noise_and_accepts_the_tasks_adapter(animals, animal_base, seed):
    _root, _base, good, noise = animals
    shots = animal_task(5, seed)
    cfg = SearchConfig(budget=12)
    with Composer(animal_base, resolve_candidates([str(c) for c in noise]), shots) as comp:
        refused = comp.run(cfg, folds=5)
    cv = refused.cross_validation
    assert refused.helps is False and len(cv.folds) == 5 and cv.evaluations == 5 * 12
    assert cv.objective_out_of_fold >= cv.base_objective_out_of_fold
    assert refused.metrics["beats_base_out_of_fold"] is False
    with Composer(animal_base, resolve_candidates([str(c) for c in [*noise[:2], good]]),
                  shots) as comp:
        accepted = comp.run(cfg, folds=5)
    cv = accepted.cross_validation
    assert accepted.helps is True
    assert cv.objective_out_of_fold < cv.base_objective_out_of_fold - 0.05
    assert max(accepted.weights, key=lambda r: abs(accepted.weights[r])) == str(good)
    params = accepted.lineage.params
    assert params["folds"] == 5
    assert params["cross_validation"]["out_of_fold"] == cv.out_of_fold
    assert accepted.metrics["objective_in_fold"] == cv.objective_in_fold


def test_out_of_fold_scores_each_fold_with_weights_searched_without_it(animals, animal_base):
    """The held-out loss of each fold equals the objective (no penalty) of that fold's
    weights on its own shots, scored afresh."""
    _root, _base, good, noise = animals
    shots = animal_task(4, 11)
    with Composer(animal_base, resolve_candidates([str(noise[0]), str(good)]), shots) as comp:
        cv = comp.cross_validate(SearchConfig(budget=6), folds=2)
        for held, w, got, base in zip(cv.folds, cv.weights, cv.out_of_fold,
                                      cv.base_out_of_fold, strict=True):
            x = comp.scorer.inputs(torch.tensor([w, [0.0, 0.0]]))
            x.l1 = 0.0
            want = comp.scorer.value(x.select(held))
            assert got == pytest.approx(float(want[0]), rel=1e-6)
            assert base == pytest.approx(float(want[1]), rel=1e-6)


def test_label_check_searches_a_labels_only_shot_in_every_fold(animals, animal_base):
    _root, _base, good, noise = animals
    shots = [Example(f"the {w} is big ?", "yes") for w in ("cat", "dog", "cow", "owl")]
    shots.insert(2, Example("the sun is big ?", "no"))
    with Composer(animal_base, resolve_candidates([str(noise[0]), str(good)]), shots,
                  labels=["yes", "no"]) as comp:
        result = comp.run(SearchConfig(budget=4), folds=5)
    cv = result.cross_validation
    assert sorted(cv.folds) == [[0], [1], [3], [4]] and cv.evaluations == 4 * 4
    assert (cv.always_searched, cv.lone_labels) == ([2], ["no"])
    assert result.lineage.params["cross_validation"]["lone_labels"] == ["no"]
    card = result.card("x")
    assert "never held out, as its label's only example: 'no'" in card
    # every held-out shot says "yes": whatever the losses, the check passes no mix
    assert cv.blind_to == "yes" and result.helps is False and not cv.passes
    assert result.metrics["check_blind_to"] == "yes"
    assert "| check passes the mix | no: every example it can hold out is 'yes'" in card


def test_cli_refuses_before_searching_where_the_check_could_pass_no_mix(animals, tmp_path):
    """Four "yes" and one "no" with ``--folds 5``: the check could hold out only "yes", so
    nothing is searched or written (exit 3, before the model loads); --write-anyway
    searches without a check and the card says why there was none. Under the defaults
    (no check) the mix is written, and the card says it was not checked."""
    import json

    from lorahive.compose.composer.examples import write_examples

    _root, base, good, noise = animals
    shots = [Example(f"the {w} is big ?", "yes") for w in ("cat", "dog", "cow", "owl")]
    shots.insert(2, Example("the sun is big ?", "no"))
    ex = write_examples(tmp_path / "lopsided.jsonl", shots)
    plain = ["compose", "--base", base, "--examples", ex, "--budget", "4", "-c", noise[0],
             "-c", good]
    args = [*plain, "--folds", "5"]
    r = _cli(tmp_path / "home", *args, "--out", tmp_path / "no")
    assert r.exit_code == 3, r.stderr
    said = r.stdout.strip().splitlines()
    assert len(said) == 1 and said[0].startswith("nothing searched or written: no mix could "
                                                 "pass the out-of-fold check")
    assert "every example it can hold out is 'yes'" in said[0]
    assert not (tmp_path / "no").exists()
    r = _cli(tmp_path / "home", *args, "--out", tmp_path / "no", "--json")
    assert r.exit_code == 3 and not (tmp_path / "no").exists()
    res = json.loads(r.stdout)
    assert (res["written"], res["evaluations"], res["check_blind_to"]) == (False, 0, "yes")
    out = tmp_path / "anyway"
    r = _cli(tmp_path / "home", *args, "--out", out, "--write-anyway", "--json")
    assert r.exit_code == 0, r.stderr
    assert "warning: out-of-fold check not run: every example it can hold out is 'yes'" in \
        " ".join(r.stderr.split())
    res = json.loads(r.stdout)
    assert res["written"] is True and res["check_blind_to"] == "yes"
    assert "folds" not in res and res["evaluations"] == 4  # one search, no check
    card = (out / "README.md").read_text()
    assert "| out-of-fold check | not run: every example it can hold out is 'yes'" in card
    # --fine-tune: from the base model, as for a mix the check refused
    r = _cli(tmp_path / "home", *args, "--out", tmp_path / "ft", "--fine-tune", "2")
    assert r.exit_code == 0, r.stderr
    assert "fine-tuned from the base model, as no mix could pass the out-of-fold check" in \
        " ".join(r.stdout.split())
    side = json.loads((tmp_path / "ft" / "lorahive.json").read_text())
    assert side["metrics"]["fine_tune_start"] == "base"
    assert {p["weight"] for p in side["lineage"]["parents"]} == {0.0}
    # the defaults: no check, the mix is written and said to be unchecked
    r = _cli(tmp_path / "home", *plain, "--out", tmp_path / "plain", "--json")
    assert r.exit_code == 0, r.stderr
    assert "default: written without an out-of-fold check (--folds 5: check first" in \
        " ".join(r.stderr.split())
    res = json.loads(r.stdout)
    assert res["written"] is True and "check_blind_to" not in res and "folds" not in res
    card = (tmp_path / "plain" / "README.md").read_text()
    assert "| out-of-fold check | not run: the weights are fitted to every example above" \
        in card


def _loglik(model, tok, prompt: str, answer: str) -> float:
    """Sum of log p(answer tokens and EOS | prompt), by hand."""
    p = tok(prompt)["input_ids"]
    a = tok(answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([p + a])).logits[0].double(), -1)
    return float(sum(logp[len(p) - 1 + j, t] for j, t in enumerate(a)))


def test_label_objective_is_cross_entropy_over_label_logliks(animals, animal_base):
    from peft import PeftModel

    from tests.models import load_base as hf_base

    _root, base, good, noise = animals
    shots = [Example("the cat is red ?", "yes"), Example("the sun is big ?", "no"),
             Example("the dog is slow ?", "yes")]
    labels = ["no", "yes", "bad"]
    tok = animal_base.tokenizer
    cands = resolve_candidates([str(noise[0]), str(good)])
    with Composer(animal_base, cands, shots, labels=labels, l1=0.05) as comp:
        got = comp.score(torch.tensor([[0.0, 0.0], [0.0, 1.0]]))
    for row, model in enumerate([hf_base(base), PeftModel.from_pretrained(hf_base(base), good)]):
        ce = []
        for e in shots:
            ll = torch.tensor([_loglik(model, tok, e.input, lab) for lab in labels])
            ce.append(float(torch.logsumexp(ll, 0) - ll[labels.index(e.output)]))
        want = sum(ce) / len(ce) + 0.05 * (0.0 if row == 0 else 0.5)
        assert got[row] == pytest.approx(want, rel=1e-4, abs=1e-5)


def test_label_loss_select_keeps_each_examples_labels():
    nll = torch.tensor([[1.0, 2.0, 3.0, 0.5, 0.1, 4.0]])  # 2 examples x 3 labels
    x = LossInputs(nll, torch.ones(6, dtype=torch.long), torch.zeros(1, 2), 0.0, None,
                   torch.tensor([0, 2]))
    want0 = float(torch.logsumexp(-nll[0, :3].double(), 0) + 1.0)
    want1 = float(torch.logsumexp(-nll[0, 3:].double(), 0) + 4.0)
    assert float(label_loss(x)[0]) == pytest.approx((want0 + want1) / 2)
    assert float(label_loss(x.select([1]))[0]) == pytest.approx(want1)


def test_label_set_must_hold_every_output(animals, animal_base):
    _root, _base, good, _noise = animals
    with pytest.raises(InvalidRequestError, match="not among the labels"):
        Composer(animal_base, resolve_candidates([str(good)]),
                 [Example("the cat is red ?", "maybe")], labels=["yes", "no"])


# -- retrieval ----------------------------------------------------------------------------

ARITHMETIC = ["add one and two", "add three and four", "sum of two and five", "add five and one"]
NEWS = ["the sport news is good", "tech news is great", "the food news is bad",
        "news of the big sport"]
ANIMAL_PROMPTS = ["the dog is green ?", "the bird is small ?", "the moon is fast ?",
                  "the star is red ?"]


def _store_prompts(adapter_dir, prompts, in_card: bool = False) -> None:
    """Example prompts as a library adapter stores them: the JSONL file, or only the card."""
    import json

    from lorahive.hub.manifest import CARD_NAME, EXAMPLES_NAME
    from lorahive.hub.modelcard import render_card

    if in_card:
        (adapter_dir / CARD_NAME).write_text(render_card(
            adapter_dir.name, "lorahive-tests/tiny-llama", examples=[p + " three" for p in prompts]))
    else:
        (adapter_dir / EXAMPLES_NAME).write_text("".join(
            json.dumps({"input": p, "output": "x"}) + "\n" for p in prompts))


@pytest.fixture(scope="module")
def library(animals):
    """The animals adapters with stored example prompts: the task's adapter (JSONL), two
    others (one in its card only), one with none."""
    _root, _base, good, noise = animals
    _store_prompts(good, ANIMAL_PROMPTS)
    _store_prompts(noise[0], ARITHMETIC, in_card=True)
    _store_prompts(noise[1], NEWS)
    return good, noise


@pytest.fixture(scope="module")
def minilm():
    from lorahive.compose.composer.retrieval import MiniLM

    return MiniLM()


def test_card_examples_round_trip(library):
    from lorahive.hub.modelcard import card_examples, example_prompts

    good, noise = library
    assert example_prompts(good) == ANIMAL_PROMPTS
    assert example_prompts(noise[0]) == [p + " three" for p in ARITHMETIC]  # from the card
    assert example_prompts(noise[2]) == []
    assert card_examples("# x\n\n## Example prompts\n\n```text\na\nb\n```\n\n## Usage\n"
                         "```text\nnot this\n```\n") == ["a\nb"]


def test_minilm_embeds_unit_rows_that_know_topics(minilm):
    e = minilm(["the cat sat on the mat", "a dog lay on the rug", "stock markets fell today"])
    assert e.shape == (3, 384)
    torch.testing.assert_close(e.norm(dim=1), torch.ones(3))
    sim = e @ e.T
    assert sim[0, 1] > sim[0, 2] + 0.1


def test_retrieval_ranks_the_tasks_adapter_first(library, minilm):
    from lorahive.compose.composer.retrieval import rank_candidates, retrieve
    from lorahive.hub.modelcard import example_prompts

    good, noise = library
    pool = {str(p): example_prompts(p) for p in [noise[0], noise[2], noise[1], good]}
    shots = [e.input for e in animal_task(5, 99)]
    keep, ranking = retrieve(shots, pool, 2, minilm)
    assert keep[0] == str(good) and len(keep) == 2
    assert ranking[-1].ref == str(noise[2]) and ranking[-1].score is None
    # the score is the mean cosine similarity over all (shot, prompt) pairs
    q, p = minilm(shots), minilm(ANIMAL_PROMPTS)
    assert ranking[0].score == pytest.approx(float((q @ p.T).mean()), abs=1e-5)
    # arithmetic shots find the arithmetic adapter
    assert rank_candidates(["add two and three"], pool, minilm)[0].ref == str(noise[0])
    with pytest.raises(InvalidRequestError, match="no candidate stores example prompts"):
        retrieve(shots, {str(noise[2]): []}, 1, minilm)


# -- the CLI on real files (the console entry point, in this process) --------------------

def _cli(home, *args):
    from tests.registry_helpers import run_cli_inprocess

    return run_cli_inprocess(home, *args, check=False)


@pytest.fixture(scope="module")
def shot_files(animals):
    from lorahive.compose.composer.examples import write_examples

    root = animals[0]
    return (write_examples(root / "shots.jsonl", animal_task(5, 99)),
            write_examples(root / "eval.jsonl", animal_task(12, 123)))


def test_cli_folds_refuses_noise_and_writes_only_when_asked(animals, shot_files, tmp_path):
    import json

    _root, base, _good, noise = animals
    shots, _ = shot_files
    args = ["compose", "--base", base, "--examples", shots, "--budget", "8", "--folds", "5"]
    for c in noise:
        args += ["-c", c]
    r = _cli(tmp_path / "home", *args, "--out", tmp_path / "no")
    assert r.exit_code == 3, r.stderr
    said = r.stdout.strip().splitlines()
    assert len(said) == 1 and said[0].startswith("no mix beats the base model out of fold")
    assert "nothing written" in said[0] and not (tmp_path / "no").exists()
    r = _cli(tmp_path / "home", *args, "--out", tmp_path / "no", "--json")
    assert r.exit_code == 3 and not (tmp_path / "no").exists()
    res = json.loads(r.stdout)
    assert res["written"] is False and res["retrieval"] is None and res["folds"] == 5
    out = tmp_path / "anyway"
    r = _cli(tmp_path / "home", *args, "--out", out, "--write-anyway", "--json")
    assert r.exit_code == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["written"] is True and res["beats_base_out_of_fold"] is False
    side = json.loads((out / "lorahive.json").read_text())
    cv = side["lineage"]["params"]["cross_validation"]
    assert len(cv["folds"]) == 5 and side["lineage"]["params"]["folds"] == 5
    assert cv["objective_out_of_fold"] == res["objective_out_of_fold"]
    card = (out / "README.md").read_text()
    assert "| beats the base model out of fold | no |" in card
    assert "| folds | 5 |" in card and "compose:ab" in card


def test_cli_label_objective_with_folds_writes_the_tasks_mix(animals, shot_files, tmp_path):
    import json

    from lorahive.hub.modelcard import parse_card

    _root, base, good, noise = animals
    shots, ev = shot_files
    out = tmp_path / "label"
    r = _cli(tmp_path / "home", "compose", "--base", base, "--examples", shots, "--eval", ev,
             "-c", noise[0], "-c", good, "--budget", "8", "--folds", "5", "--objective",
             "label", "--out", out)
    assert r.exit_code == 0, r.stderr
    text = " ".join(r.stdout.split())
    assert "out of fold (5 folds, 40 evaluations): composed" in text and "held-out accuracy (rank)" in text
    side = json.loads((out / "lorahive.json").read_text())
    params, metrics = side["lineage"]["params"], side["metrics"]
    assert params["labels"] == ["no", "yes"] and params["objective_fn"] == "label"
    assert metrics["beats_base_out_of_fold"] is True and metrics["evaluations_out_of_fold"] == 40
    assert metrics["objective_out_of_fold"] < metrics["zero_shot_out_of_fold"]
    card = (out / "README.md").read_text()
    assert "label (cross-entropy over the labels 'no', 'yes')" in card
    assert "held-out accuracy (rank)" in card
    weights = {p["ref"]: p["weight"] for p in parse_card(card)["lorahive_lineage"]["parents"]}
    assert weights == {p["ref"]: p["weight"] for p in side["lineage"]["parents"]}
    r = _cli(tmp_path / "home", "compose", "--base", base, "--examples", shots, "-c", good,
             "--objective", "label", "--labels", "yes", "--labels", "maybe", "--out",
             tmp_path / "bad")
    assert r.exit_code == 1 and r.stderr.count("\n") == 1
    assert r.stderr.startswith("error: example output 'no' is not among the --labels (yes, maybe)")
    r = _cli(tmp_path / "home", "compose", "--base", base, "--examples", shots, "-c", good,
             "--labels", "yes", "--objective", "answer", "--out", tmp_path / "bad")
    assert r.exit_code == 1 and "--labels go with --objective label" in r.stderr


def test_cli_retrieve_from_the_whole_registry(animals, library, shot_files, tmp_path):
    import json

    _root, base, good, noise = animals
    shots, _ = shot_files
    home = tmp_path / "home"
    assert _cli(home, "namespace", "create", "lib").exit_code == 0
    for name, path in [("animals", good), ("arith", noise[0]), ("news", noise[1]),
                       ("bare", noise[2])]:
        assert _cli(home, "publish", str(path), "--name", f"lib/{name}").exit_code == 0
    r = _cli(home, "compose", "--lorahub", "--base", base, "--examples", shots, "--retrieve",
             "2", "--budget", "4", "--publish", "lib/composed", "--json")
    assert r.exit_code == 0, r.stderr
    res = json.loads(r.stdout)
    assert [ref for ref, _ in res["retrieval"]][:1] == ["lib/animals@1"]
    assert res["retrieval"][-1] == ["lib/bare@1", None]
    assert "1 candidate(s) store no example prompts" in r.stderr
    assert set(res["weights"]) == {"lib/animals@1", res["retrieval"][1][0]}
    r = _cli(home, "show", "lib/composed", "--json")
    params = json.loads(r.stdout)["version"]["lineage"]["params"]
    assert params["retrieve"] == 2 and params["retrieval_pool"] == 4
    assert params["retrieval_scores"] == [score for _, score in res["retrieval"][:2]]
    for ref, _ in res["retrieval"][2:]:  # the pool beyond the kept is never named
        assert ref not in json.dumps(params)
    r = _cli(home, "compose", "--base", base, "--examples", shots, "--retrieve", "-1",
             "--out", tmp_path / "x")
    assert r.exit_code == 1 and r.stderr.startswith("error: --retrieve must be at least 1")
    r = _cli(home, "compose", "--base", base, "--examples", shots, "--retrieve", "0",
             "--out", tmp_path / "x")  # no retrieval, and so no pool of its own
    assert r.exit_code == 1 and "give candidates with --candidates" in r.stderr


# -- what compose does with nothing set (compose/composer/policy.py) ---------------------

def test_defaults_follow_the_shots_and_lorahub_turns_them_off():
    from lorahive.compose.composer.policy import RETRIEVE, resolve, shot_labels

    labelled = animal_task(5, 99)  # yes/no, each seen at least twice
    free = [Example(f"word {i}", f"WORD{i}") for i in range(5)]
    p = resolve(labelled, lorahub=False, mode=None, objective=None, labels=[], folds=None,
                retrieve=None)
    assert (p.mode, p.objective, p.labels, p.folds) == ("ab", "label", ["no", "yes"], None)
    assert p.retrieve == RETRIEVE and p.auto_retrieve and p.blind_to is None
    assert any("label set 'no', 'yes'" in n for n in p.notes)
    assert any(n.startswith("written without an out-of-fold check (--folds 5") for n in p.notes)
    p = resolve(free, lorahub=False, mode=None, objective=None, labels=[], folds=None,
                retrieve=None)
    assert p.objective is None and p.labels is None and p.folds is None
    p = resolve(labelled, lorahub=True, mode=None, objective=None, labels=[], folds=None,
                retrieve=None)
    assert (p.objective, p.labels, p.folds, p.retrieve, p.notes) == (None, None, None, None, [])
    # options given beside --lorahub, or instead of a default, are what they say
    p = resolve(labelled, lorahub=True, mode="delta", objective=None, labels=[], folds=3,
                retrieve=4)
    assert (p.mode, p.folds, p.retrieve, p.auto_retrieve) == ("delta", 3, 4, False)
    p = resolve(labelled, lorahub=False, mode=None, objective="answer", labels=[], folds=0,
                retrieve=0)
    assert (p.objective, p.labels, p.folds, p.retrieve, p.notes) == ("answer", None, None,
                                                                     None, [])
    p = resolve(labelled, lorahub=True, mode=None, objective=None, labels=["yes", "no"],
                folds=None, retrieve=None)
    assert p.objective == "label" and p.labels == ["yes", "no"]
    same = [Example(f"the {w} is big ?", "yes") for w in ("cat", "dog", "cow")]
    p = resolve(same, lorahub=False, mode=None, objective=None, labels=[], folds=None,
                retrieve=None)
    assert p.objective is None and p.labels is None  # one answer repeated: nothing to rank
    topics = [Example(f"q{i}", t) for i, t in enumerate(("film", "book", "film", "cash", "joy"))]
    p = resolve(topics, lorahub=False, mode=None, objective=None, labels=[], folds=None,
                retrieve=None)  # four topics among five shots: a repeated output, so labels
    assert p.objective == "label" and p.labels == ["book", "cash", "film", "joy"]
    assert p.notes[0] == ("objective label: the examples' outputs repeat, so they are taken "
                          "for the label set 'book', 'cash', 'film', 'joy' (--labels: the "
                          "whole set, where the examples miss a label; --objective answer: "
                          "LoRAHub's answer-token loss)")
    assert shot_labels(free) is None and shot_labels(same) is None
    assert shot_labels([Example(str(i), str(i % 11)) for i in range(22)]) is None  # 11 > 10
    lone = [Example(f"the {w} is big ?", "yes") for w in ("cat", "dog", "cow", "owl")]
    # four "yes" and one "no" with --folds: the check could hold out only "yes", so it could
    # pass no mix; none is run, and nothing will be written unless asked
    p = resolve([*lone, Example("the sun is big ?", "no")], lorahub=False, mode=None,
                objective=None, labels=[], folds=5, retrieve=None)
    assert p.objective == "label" and p.folds is None and p.blind_to == "yes"
    p = resolve([*lone, Example("the sun is big ?", "no")], lorahub=False, mode=None,
                objective="answer", labels=[], folds=5, retrieve=None)
    assert p.folds == 5 and p.blind_to is None  # no labels: every shot can be held out
    two = [*lone[:2], Example("the sun is big ?", "no"), Example("the sea is big ?", "no"),
           Example("the cat is odd ?", "maybe")]  # yes, no held out; "maybe" never
    p = resolve(two, lorahub=False, mode=None, objective=None, labels=["yes", "no", "maybe"],
                folds=5, retrieve=None)
    assert p.folds == 5 and p.blind_to is None
    for kw, msg in (({"folds": -1}, "folds must be"), ({"retrieve": -2}, "retrieve must be"),
                    ({"labels": ["yes"], "objective": "answer"}, "labels go with"),
                    ({"folds": 1}, "folds must be at least 2")):
        args = {"lorahub": False, "mode": None, "objective": None, "labels": [],
                "folds": None, "retrieve": None, **kw}
        with pytest.raises(InvalidRequestError, match=msg):
            resolve(labelled, **args)
    with pytest.raises(InvalidRequestError, match="needs a label with at least 2 examples"):
        resolve([lone[0], Example("the sun is big ?", "no")], lorahub=False, mode=None,
                objective=None, labels=["yes", "no"], folds=5, retrieve=None)


def test_cli_defaults_label_objective_and_retrieval(animals, library, shot_files,
                                                                tmp_path, monkeypatch):
    """``compose`` with no settings: yes/no shots get the label objective, the mix is written
    unchecked, and a pool larger than the retrieval size is narrowed by example prompts; each
    choice is said in one line. A candidate without prompts turns retrieval off."""
    import json

    from lorahive.compose.composer import policy

    _root, base, good, noise = animals
    shots, _ = shot_files
    monkeypatch.setattr(policy, "RETRIEVE", 2)
    out = tmp_path / "default"
    r = _cli(tmp_path / "home", "compose", "--base", base, "--examples", shots, "--budget", "8",
             "-c", noise[0], "-c", noise[1], "-c", good, "--out", out)
    assert r.exit_code == 0, r.stderr
    said = " ".join(r.stderr.split())
    assert ("default: objective label: the examples' outputs repeat, so they are taken for "
            "the label set 'no', 'yes'") in said
    assert "default: written without an out-of-fold check" in said
    assert "default: kept the 2 of 3 candidates whose example prompts read most like" in said
    text = " ".join(r.stdout.split())
    assert "retrieved 2 of 3 candidates" in text and "out of fold" not in text
    params = json.loads((out / "lorahive.json").read_text())["lineage"]["params"]
    assert params["objective_fn"] == "label" and "folds" not in params
    assert params["retrieve"] == 2 and params["retrieval_pool"] == 3
    assert str(good) in {p["ref"] for p in
                         json.loads((out / "lorahive.json").read_text())["lineage"]["parents"]}
    # a candidate without example prompts: all are searched, and the note says why
    r = _cli(tmp_path / "home", "compose", "--base", base, "--examples", shots, "--budget", "4",
             "--folds", "0", "-c", noise[0], "-c", noise[1], "-c", noise[2], "-c", good,
             "--out", tmp_path / "all", "--json")
    assert r.exit_code == 0, r.stderr
    assert "all 4 candidates searched, not retrieved: 1 store no example prompts" in \
        " ".join(r.stderr.split())
    res = json.loads(r.stdout)
    assert res["retrieval"] is None and len(res["weights"]) == 4
    # --lorahub: none of it
    r = _cli(tmp_path / "home", "compose", "--lorahub", "--base", base, "--examples", shots,
             "--budget", "4", "-c", noise[0], "-c", noise[1], "-c", good, "--out",
             tmp_path / "lh", "--json")
    assert r.exit_code == 0, r.stderr
    assert "default:" not in r.stderr
    params = json.loads((tmp_path / "lh" / "lorahive.json").read_text())["lineage"]["params"]
    assert params["objective_fn"] is None and "folds" not in params
    assert "retrieve" not in params and "labels" not in params
