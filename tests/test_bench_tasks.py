"""The library's and the suite's task generators: deterministic, and no held-out text (nor
held-out prompt) in any training set."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from benchmarks import rules
from benchmarks.corpora import side_of
from benchmarks.library import split, unseen_split
from benchmarks.library_tasks import LIBRARY
from benchmarks.suite_tasks import SUITE, draw_shots, splits


@pytest.fixture(scope="module")
def library_sets():
    """Every example any library adapter is trained, validated or documented with."""
    return {name: [e for part in split(spec) for e in part] for name, spec in LIBRARY.items()}


def test_library_covers_formats_and_domains():
    assert len(LIBRARY) >= 40
    formats = Counter(s.format for s in LIBRARY.values())
    assert set(formats) == {"yesno", "multiple-choice", "label", "extraction", "transformation",
                            "arithmetic", "generation"}
    assert {"news", "reviews", "chat", "tweets", "text", "number", "logic"} <= \
        {s.domain for s in LIBRARY.values()}
    for spec in LIBRARY.values():
        assert len(spec.templates) >= 3, spec.name
        assert all(t.startswith(("domain-", "format-", "skill-")) for t in spec.tags)


def test_library_examples_are_deterministic_and_use_every_phrasing(library_sets):
    for name, spec in LIBRARY.items():
        a, b = spec.build(40), spec.build(40)
        assert a == b, name
        assert spec.build(40, seed=1) != a, name
        used = {e.template for e in library_sets[name]}
        assert used == set(range(len(spec.templates))), name


def test_suite_splits_are_deterministic_and_disjoint():
    assert len(SUITE) >= 12
    for name in SUITE:
        pool, ev = splits(name)
        assert len(ev) >= 100, name
        assert not {e.input for e in pool} & {e.input for e in ev}, name
        shots = draw_shots(name, 0)
        assert shots == draw_shots(name, 0) and len(shots) == 5
        assert draw_shots(name, 1) != shots, name
        assert set(shots) <= set(pool), name
        labels = {e.output for e in list(pool) + list(ev)}
        if len(labels) <= 10:  # a label set: the pool keeps every label for the shots
            assert {e.output for e in pool} == labels, name
        if len(labels) <= 5:  # every label shown at least once
            for seed in range(3):
                assert {e.output for e in draw_shots(name, seed)} == labels, (name, seed)


def test_no_held_out_text_in_any_training_set(library_sets):
    train_inputs = {e.input for rows in library_sets.values() for e in rows}
    train_sources = {e.source for rows in library_sets.values() for e in rows if e.source}
    task_names = set(LIBRARY)
    for name, spec in SUITE.items():
        assert name not in task_names
        pool, ev = splits(name)
        for e in (*pool, *ev):
            assert e.input not in train_inputs, (name, e.input)
            if spec.kind == "unseen-pair":  # corpus text: must come from the suite's side
                assert e.source not in train_sources, (name, e.source[:80])
                assert side_of(e.source) == "suite" or name in ("chat_domain", "text_kind")
    # the corpus split is by content: the same text in other spacing or case lands alike
    text = "The Quick  brown fox\njumps"
    assert side_of(text) == side_of("the quick brown FOX jumps")


def test_rule_answers_are_right():
    rng = random.Random(3)
    for _ in range(200):
        e, v = rules.bool_expr(rng, ("xor", "and", "or"))
        py = e.replace("not True", "(not True)").replace("not False", "(not False)")
        assert eval(py.replace("xor", "^")) == v  # our own generated text
        ins, back = rules.navigation(rng, turns=rng.random() < 0.5)
        assert back == (rules.walk(ins) == (0, 0))
        s = rules.brackets(rng, rng.randint(1, 5))
        assert rules.is_balanced(s) and not rules.is_balanced(rules.unbalance(s, rng))
        prefix, rest = rules.dyck_prefix(rng, 3)
        assert rules.is_balanced(prefix + " " + rest)
    assert rules.depth("( [ ] ) { < > }") == 2
    assert rules.walk(["Turn right.", "Take 2 steps.", "Turn around.", "Take 2 steps."]) == (0, 0)


def test_fusion_curve_test_split_is_unseen(library_sets):
    """The curve's test examples share no input with the adapter's training or validation."""
    for name in ("news_topic", "add_numbers", "uppercase", "chat_topic"):
        test = unseen_split(LIBRARY[name])
        assert len(test) >= 50, name
        assert not {e.input for e in test} & {e.input for e in library_sets[name]}, name
