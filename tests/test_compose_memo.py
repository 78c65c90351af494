"""Remembered searches: a rerun that only adds --write-anyway, --fine-tune, --eval or another
--out reuses the search it already paid for; anything the search depends on searches again."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import lorahive.compose.composer.session as session
from lorahive.compose.composer import Composer, SearchConfig, resolve_candidates
from lorahive.compose.composer.memo import RememberedSearch, SearchMemo
from lorahive.compose.composer.model import load_base
from tests.compose_fixtures import yes_no_task
from tests.registry_helpers import run_cli_inprocess
from tests.test_compose_cli import EVAL, SHOTS


@pytest.fixture(scope="module")
def task(tiny_llama_dir, tmp_path_factory):
    return yes_no_task(tiny_llama_dir, tmp_path_factory.mktemp("compose-memo"), range(90, 93))


@pytest.fixture()
def searches(monkeypatch):
    """Counts the searches that really run (the check's folds search through ``folds``)."""
    calls = {"n": 0}
    real = session.search

    def counted(*a, **k):
        calls["n"] += 1
        return real(*a, **k)

    monkeypatch.setattr(session, "search", counted)
    return calls


def _compose(task, home, out, *extra):
    base, cands, shots, _ev = task
    return run_cli_inprocess(home, "compose", "--base", base, "--examples", shots, "--out", out,
                             "--budget", "4", "--json", "-c", cands[0], "-c", cands[1],
                             *extra, check=False)


def test_a_rerun_reuses_the_search_and_what_it_depends_on_searches_again(task, tmp_path,
                                                                         searches):
    home = tmp_path / "home"
    first = _compose(task, home, tmp_path / "a", "--lorahub")
    assert first.exit_code == 0, first.stderr
    assert searches["n"] == 1
    a = json.loads(first.stdout)
    assert "search_reused" not in a
    [entry] = (home / "cache" / "searches").glob("*.json")

    # --eval, --fine-tune and another --out change nothing the search depends on
    again = _compose(task, home, tmp_path / "b", "--lorahub", "--eval", task[3],
                     "--fine-tune", "2")
    assert again.exit_code == 0, again.stderr
    assert searches["n"] == 1 and "reusing an earlier run's" in again.stderr
    b = json.loads(again.stdout)
    assert b["search_reused"] is True and b["trace"] == a["trace"]
    assert b["evaluations"] == a["evaluations"] and b["eval_n"] == len(EVAL)
    assert b["objective"] == a["objective"] and b["fine_tune_steps"] == 2
    side = json.loads((tmp_path / "b" / "lorahive.json").read_text())
    assert side["lineage"]["params"]["objective_trace"] == a["trace"]

    # what the search depends on: another seed, another budget, another candidate set
    for i, extra in enumerate((["--seed", "7"], ["--budget", "5"], ["-c", task[1][2]])):
        r = _compose(task, home, tmp_path / f"o{i}", "--lorahub", *extra)
        assert r.exit_code == 0, r.stderr
        assert searches["n"] == 2 + i and "search_reused" not in json.loads(r.stdout)
    # a base model replaced in place (same path, other files) is another search
    cfg = task[0] / "config.json"
    st = cfg.stat()
    os.utime(cfg, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    try:
        r = _compose(task, home, tmp_path / "m", "--lorahub")
        assert r.exit_code == 0 and searches["n"] == 5, r.stderr
    finally:
        os.utime(cfg, ns=(st.st_atime_ns, st.st_mtime_ns))

    # --fresh searches again and replaces the entry; a damaged entry is searched over
    r = _compose(task, home, tmp_path / "f", "--lorahub", "--fresh")
    assert r.exit_code == 0 and searches["n"] == 6
    assert json.loads(r.stdout)["trace"] == a["trace"]  # the same search, run again
    entry.write_text("{not json")
    r = _compose(task, home, tmp_path / "g", "--lorahub")
    assert r.exit_code == 0 and searches["n"] == 7
    assert json.loads(entry.read_text())["format"] == 1  # rewritten whole
    r = _compose(task, home, tmp_path / "h", "--lorahub")
    assert r.exit_code == 0 and searches["n"] == 7


def test_write_anyway_after_the_check_reuses_the_check(task, tmp_path, searches):
    """Following the refusal's advice (--write-anyway) costs no second search, and the card
    reports the same out-of-fold figures."""
    home = tmp_path / "home"
    opts = ("--lorahub", "--folds", "2", "--lower", "0.2", "--upper", "1.0", "--init", "0.5")
    first = _compose(task, home, tmp_path / "a", *opts)
    assert first.exit_code in (0, 3), first.stderr
    n = searches["n"]
    assert n == 1  # the final search (each fold's search goes through folds.search)
    a = json.loads(first.stdout)
    r = _compose(task, home, tmp_path / "b", *opts, "--write-anyway")
    assert r.exit_code == 0, r.stderr
    assert searches["n"] == n
    b = json.loads(r.stdout)
    assert b["search_reused"] is True and b["weights"] == a["weights"]
    assert b["objective_out_of_fold"] == a["objective_out_of_fold"]
    assert b["zero_shot_out_of_fold"] == a["zero_shot_out_of_fold"]
    card = (tmp_path / "b" / "README.md").read_text()
    assert f"| loss out of fold | {a['objective_out_of_fold']:.4g} |" in card


def test_a_remembered_prescreen_installs_the_candidates_it_kept(task, tmp_path):
    base, cands, _shots, _ev = task
    bm = load_base(base, "cpu")
    memo = SearchMemo(tmp_path / "searches")
    cfg = SearchConfig(budget=3)
    with Composer(bm, resolve_candidates([str(c) for c in cands]), SHOTS) as comp:
        first = comp.run(cfg, prescreen=2, memo=memo)
    assert len(first.candidates) == 2 and "search_reused" not in first.metrics
    [path] = memo.root.glob("*.json")
    found = memo.load(path.stem)
    assert isinstance(found, RememberedSearch) and found.kept == [c.ref for c in
                                                                  first.candidates]
    with Composer(bm, resolve_candidates([str(c) for c in cands]), SHOTS) as comp:
        again = comp.run(cfg, prescreen=2, memo=memo)
        assert [c.ref for c in comp.candidates] == found.kept  # installed as the search left
    assert again.metrics["search_reused"] is True
    assert [c.ref for c in again.candidates] == [c.ref for c in first.candidates]
    assert np.array_equal(again.search.weights, first.search.weights)
    assert again.prescreen == first.prescreen and again.lineage.recipe == first.lineage.recipe
    assert again.lineage.params == first.lineage.params
    assert [p.weight for p in again.lineage.parents] == [p.weight for p in first.lineage.parents]
    # an entry that does not fit these candidates (one renamed) is not used
    d = json.loads(path.read_text())
    d["kept"][0] = "elsewhere"
    path.write_text(json.dumps(d))
    with Composer(bm, resolve_candidates([str(c) for c in cands]), SHOTS) as comp:
        third = comp.run(cfg, prescreen=2, memo=memo)
    assert "search_reused" not in third.metrics
    assert np.array_equal(third.search.weights, first.search.weights)
    assert memo.load(path.stem).kept == found.kept  # replaced by the new search
