"""The held-out suite's machinery on tiny models: the evaluator agrees with the composer's
scoring, intervals are computed as documented, finished rows are cached and resumed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
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


def test_generation_answers_with_its_first_line():
    from benchmarks.suite_eval import first_line

    assert first_line("\n\n APPLE\n\nLast word: x") == "APPLE"
    assert first_line(" 42") == "42" and first_line("") == ""


def test_correct_normalises_as_lorahub():
    assert correct([" Yes.", "no", "A  b"], ["yes", " yes", "a b"]) == [1, 0, 1]


# --- intervals ----------------------------------------------------------------------------------
def test_interval_over_examples_only():
    """One seed, 50 of 100 right: the t-interval over examples (df 99)."""
    from benchmarks.suite_stats import interval

    iv = interval([1] * 50 + [0] * 50)
    assert iv.mean == 0.5 and iv.seeds == 1 and iv.n == 100
    # SE = sqrt(0.2525 / 100) = 0.050252, t(0.975, 99) = 1.98422
    assert iv.low == pytest.approx(0.5 - 0.099711, abs=1e-5)
    assert iv.high == pytest.approx(0.5 + 0.099711, abs=1e-5)
    # identical seeds add nothing: the same interval as one seed
    again = interval([[1] * 50 + [0] * 50] * 3)
    assert (again.low, again.high) == pytest.approx((iv.low, iv.high))


def test_interval_counts_the_spread_between_seeds():
    """Seeds right on the first 60, 50 and 70 examples (worked by hand): var(a_s) = 0.01,
    var(e_i) = 0.197531, SE^2 = 0.01/3 + 0.197531/100 = 0.0053086, Welch-Satterthwaite
    df = 5.037, t = 2.568: mean 0.6 +- 0.1871."""
    from benchmarks.suite_stats import interval

    c = np.zeros((3, 100))
    for s, k in enumerate((60, 50, 70)):
        c[s, :k] = 1
    iv = interval(c)
    assert iv.mean == pytest.approx(0.6)
    assert iv.half_width == pytest.approx(0.1871, abs=5e-4)
    narrower = interval(c.mean(0, keepdims=True).round())  # no seed spread: narrower
    assert narrower.half_width < iv.half_width


def test_interval_when_every_answer_agrees():
    """0 of 100 is not 0 +- 0: the Wilson score interval, 0 to 3.70%."""
    from benchmarks.suite_stats import interval

    iv = interval(np.zeros((3, 100)))
    assert (iv.mean, iv.low) == (0.0, 0.0) and iv.high == pytest.approx(0.0370, abs=1e-4)
    top = interval(np.ones((1, 100)))
    assert top.high == 1.0 and top.low == pytest.approx(0.9630, abs=1e-4)
    assert iv.format() == "0.0 [0.0, 3.7]"


# --- caching and resume -------------------------------------------------------------------------
def test_a_short_evaluation_takes_the_labels_in_turn():
    from benchmarks.corpora import Item
    from benchmarks.suite import head

    items = [Item(f"x{i}", " no" if i < 6 or i == 9 else " yes") for i in range(10)]
    got = head(items, 4, [" no", " yes"])
    assert [e.input for e in got] == ["x0", "x1", "x6", "x7"]  # in the set's order
    assert head(items, 10, [" no", " yes"]) == items  # the whole set as it is
    assert head(items, 3, None) == items[:3]  # no label set: the first n


def test_rows_are_cached_per_task_and_seed_and_resume(tmp_path, monkeypatch):
    import argparse

    import benchmarks.suite as suite

    monkeypatch.setattr(suite, "RESULTS", tmp_path / "results")
    calls: list[tuple[str, int]] = []

    def fake(task, shots, seed, ctx):  # right on every other example, then wrong on seed 2
        calls.append((task.name, seed))
        refs = task.references
        return [r if (i % 2 == 0 and seed != 2) else "<wrong>" for i, r in enumerate(refs)]

    flaky = {"n": 0}

    def crashes_once(task, shots, seed, ctx):
        flaky["n"] += 1
        if flaky["n"] == 2:
            raise KeyboardInterrupt  # an interrupted run
        return suite.RowOutput(["x"] * len(task.eval), {"evaluations": 3})

    rows = [suite.Row("fake", "fake", fake), suite.Row("fixed", "fixed", crashes_once,
                                                       seeded=False)]
    ctx = suite.Context(argparse.Namespace())
    tasks = ["word_count_parity", "boolean_xor"]
    with pytest.raises(KeyboardInterrupt):
        suite.run(rows, tasks, [0, 1, 2], 20, ctx, log=lambda *_: None)
    assert len(calls) == 6  # both tasks of the first row; the second cell of 'fixed' crashed
    res = suite.run(rows, tasks, [0, 1, 2], 20, ctx, log=lambda *_: None)
    assert len(calls) == 6 and flaky["n"] == 3  # resumed: only the crashed cell ran again
    cells = res[("fake", "boolean_xor")]
    assert [c["seed"] for c in cells] == [0, 1, 2]
    assert [c["accuracy"] for c in cells] == [0.5, 0.5, 0.0]
    saved = json.loads(suite.result_path(rows[0], "boolean_xor", 1, 20).read_text())
    assert saved["correct"] == cells[1]["correct"] and saved["key"]["shots"]
    # a new version of a row, another evaluation size, a corrupt file: computed again
    rows[0] = suite.Row("fake", "fake", fake, version=2)
    suite.result_path(rows[1], "boolean_xor", None, 20).write_text("{not json")
    suite.run(rows, ["boolean_xor"], [0], 20, ctx, log=lambda *_: None)
    suite.run(rows, ["boolean_xor"], [0], 30, ctx, log=lambda *_: None)
    assert calls[6:] == [("boolean_xor", 0), ("boolean_xor", 0)] and flaky["n"] == 5
    text = suite.table(res, rows, tasks)
    assert "| boolean_xor | 33.3 [" in text and "mean over tasks" in text
    assert "| fixed | 2 |" in suite.costs(res, rows)
    # --cached: the finished cells only, nothing run; means over the tasks every row has
    n = len(calls), flaky["n"]
    rows.append(suite.Row("new", "new", fake))
    part = suite.run(rows, tasks, [0], 20, ctx, log=lambda *_: None, cached_only=True)
    assert (len(calls), flaky["n"]) == n and ("new", "boolean_xor") not in part
    assert ("fake", "word_count_parity") not in part  # version 2 ran on boolean_xor only
    assert [c["accuracy"] for c in part[("fake", "boolean_xor")]] == [0.5]
    part[("new", "boolean_xor")] = res[("fake", "boolean_xor")]
    assert "| mean over the 1 tasks every row has | 50.0 | 0.0 | 33.3 |" in \
        suite.table(part, rows, tasks)


def test_targets_count_each_row_against_the_references():
    """Worked by hand on two tasks of 100 examples, one seed each: zero-shot 50% and 20%,
    LoRAHub 40% and 20%, the LoRA fine-tune 60% and 40%; the row 70% (70 [60.9, 79.1]: apart
    from 50 [40.0, 60.0]) and 5% (5 [0.7, 9.3]: wholly below 20 [12.0, 28.0])."""
    import benchmarks.suite as suite

    def cell(k: int) -> list[dict]:
        return [{"correct": [1] * k + [0] * (100 - k)}]

    rows = [suite.Row(n, n, lambda *_: []) for n in ("zero_shot", "lorahub", "lora_ft", "mine")]
    acc = {"zero_shot": (50, 20), "lorahub": (40, 20), "lora_ft": (60, 40), "mine": (70, 5)}
    res = {(n, t): cell(a[i]) for n, a in acc.items() for i, t in enumerate(("t1", "t2"))}
    line = next(x for x in suite.targets(res, rows, ["t1", "t2"]).splitlines()
                if x.startswith("| mine"))
    # beats 1 of 2 (10 of 12 needed: no), apart on 1 (half: yes), worse on t2 (no), mean
    # 37.5 = +7.5 over LoRAHub's 30 (yes), 37.5 / 50 = 75% of the fine-tune (no)
    assert line == "| mine | 2 | 1 | 1 | 1 (t2) | 37.5 | +7.5 | 75% | 2 of 5 |"
    assert suite.targets(res, rows[1:], ["t1", "t2"]) == ""  # no zero-shot: no targets
    del res[("lora_ft", "t2")]  # the rows are compared on the tasks the references have
    assert "| mine | 1 | 1 | 1 | 0 | 70.0 | +30.0 | 117% | 5 of 5 |" in \
        suite.targets(res, rows, ["t1", "t2"])


# --- every row, end to end, on a tiny model -----------------------------------------------------
@pytest.mark.slow
def test_every_row_runs_on_a_tiny_library(tiny_llama_dir, tmp_path, monkeypatch):
    """Each registered row answers every evaluation example through the real pieces: the
    composer's scores, LoRAHub's own loop, PEFT training, and ``lorahive compose`` over a
    registry of published adapters."""
    import argparse

    import benchmarks.library as library
    import benchmarks.suite_rows as rows_mod
    from benchmarks.corpora import Item
    from benchmarks.suite import ROWS, Context, RowOutput, TaskData
    from benchmarks.suite_tasks import SuiteTask
    from lorahive.hub.manifest import EXAMPLES_NAME
    from lorahive.registry.local import LocalRegistry
    from lorahive.registry.settings import Settings

    base = add_tokenizer(tiny_llama_dir, tmp_path / "base")
    dirs = [str(make_peft_adapter(base, tmp_path / "lib" / f"skill{i}", seed=50 + i, r=4,
                                  lora_alpha=8)) for i in range(3)]
    for i, d in enumerate(dirs):  # example prompts, as the library stores them (retrieval)
        (Path(d) / EXAMPLES_NAME).write_text("".join(
            json.dumps({"input": f"is the {w} number {i} ?", "output": " yes"}) + "\n"
            for w in ("cat", "sun")))
    home = tmp_path / "registry"
    reg = LocalRegistry(Settings(home=home))
    reg.create_namespace("library")
    for d in dirs:
        reg.publish(d, f"library/{Path(d).name}")
    reg.close()
    monkeypatch.setattr(library, "HOME", home)
    monkeypatch.setattr(rows_mod, "LORAHUB_MODULES", 2)
    monkeypatch.setattr(rows_mod, "FT_STEPS", 3)
    monkeypatch.setattr(rows_mod, "UPPER_STEPS", 3)
    monkeypatch.setattr(rows_mod, "BLOCKS", 2)  # the tiny model has 2 layers

    words = ["cat", "dog", "bird", "sun", "moon", "star"]
    items = [Item(f"the {a} is {b} ?", " yes" if i % 2 else " no")
             for i, (a, b) in enumerate((a, b) for a in words for b in ("big", "small"))]
    task = TaskData(SuiteTask("tiny", "unseen-rule", "", "{x}", lambda n, r: []),
                    pool=items[:7], eval=items[7:], labels=[" no", " yes"], max_new_tokens=3)
    ctx = Context(argparse.Namespace(budget=3, device="cpu", threads=1, eval_batch=4))
    ctx.work = tmp_path / "work"
    ctx.base_dir = Path(base)
    ctx.library_dirs = dirs
    for name, r in ROWS.items():
        out = r.fn(task, items[:5], 1, ctx)
        preds = out.predictions if isinstance(out, RowOutput) else out
        assert len(preds) == len(task.eval) and set(preds) <= {" no", " yes"}, name
        if name in ("lorahub", "default", "default_ft", "lorahub_ours", "best_single", "retrieve", "folds",
                    "label", "retrieve_label", "blocks"):
            assert out.info["evaluations"] >= 3, name
        if name == "default_ft":  # written either way: fine-tuned from the mix or the base
            assert out.info["written"] and out.info["fine_tune_start"] in ("mix", "base")
            assert out.info["search_reused"]  # the default row's search, not a second one
        if name == "arrow":  # routed, not searched
            assert out.info["evaluations"] == 0 and out.info["written"], name
    assert (tmp_path / "work" / "lora_ft" / "tiny-seed1" / "adapter_model.safetensors").exists()
    assert (tmp_path / "work" / "upper" / "tiny" / "train.json").exists()
