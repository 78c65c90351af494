"""The default fusion method comes from measured standings, and tuned settings from validation.

``compose.fusion.standings`` picks ``lorahive fuse``'s method when none is given;
``benchmarks.fusion_curve`` chooses each method's tuned setting on the validation split and
aggregates scores into the standings it writes.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.fusion_curve import aggregate, measured, paired, select_setting, standings_from
from lorahive.compose.fusion import METHODS, standings
from lorahive.compose.fusion.standings import FALLBACK, Standing, Standings, parse
from lorahive.hub.errors import InvalidRequestError
from lorahive.hub.lineage import read_sidecar
from tests.models import make_peft_adapter

ROOT = Path(__file__).resolve().parents[1]


def table(*rows: Standing) -> Standings:
    return Standings(rows, "test table")


def test_best_default_mean_at_the_nearest_measured_count_wins():
    st = table(
        Standing("ties", 4, 0.80, {"density": 0.5}, ci95=(0.7, 0.9)),
        Standing("tsv", 4, 0.85, ci95=(0.8, 0.9)),
        Standing("iso_c", 4, 0.99, setting="tuned"),  # tuned rows are shown, never chosen
        Standing("iso_c", 8, 0.90), Standing("tsv", 8, 0.70),
        Standing("knots", 20, 0.95),
    )
    c = standings.choose(5, st)
    assert c.method == "tsv" and c.params == {}
    assert "at 4 inputs" in c.reason and "nearest to 5" in c.reason
    assert "next ties 0.80" in c.reason and "intervals overlap" in c.reason
    assert "evidence: test table" in c.reason
    assert standings.choose(7, st).method == "iso_c"  # 8 is nearer than 4
    assert standings.choose(6, st).method == "iso_c"  # a tie goes to the larger count
    far = standings.choose(40, st)
    assert far.method == "knots" and "outside the measured range" in far.reason
    # parameters of the winning row come with it; methods not known are skipped
    assert standings.choose(4, st, known={"ties", "iso_c"}) == standings.Choice(
        "ties", {"density": 0.5}, standings.choose(4, st, known={"ties", "iso_c"}).reason)


def test_the_reason_says_whether_the_lead_holds_on_the_same_tasks(tmp_path):
    """With paired differences in the table, the one-line reason reports the runner-up's
    difference on the same tasks instead of the overlap of two intervals; a difference
    against a method that was not chosen (skipped as unknown) is not reported."""
    st = table(
        Standing("tsv", 8, 0.58, ci95=(0.13, 1.03)),
        Standing("cart", 8, 0.57, ci95=(0.25, 0.89), vs="tsv", diff=-0.01,
                 diff_ci95=(-0.23, 0.21)),
        Standing("tsv", 20, 0.58, ci95=(0.41, 0.75)),
        Standing("task_arithmetic", 20, 0.32, ci95=(0.08, 0.56), vs="tsv", diff=-0.26,
                 diff_ci95=(-0.44, -0.08)),
    )
    close = standings.choose(8, st).reason
    assert "next cart 0.57, 0.01 behind on the same tasks [-0.21, 0.23]: not resolved" in close
    assert "intervals overlap" not in close
    clear = standings.choose(20, st).reason
    assert "0.26 behind on the same tasks [0.08, 0.44]: a real lead" in clear
    assert "behind" not in standings.choose(8, st, known={"cart"}).reason
    standings.write(st, tmp_path / "s.json")
    again = parse(json.loads((tmp_path / "s.json").read_text()))
    assert [(r.vs, r.diff, r.diff_ci95) for r in again.rows] == [
        (r.vs, r.diff, r.diff_ci95) for r in st.rows]


def test_ties_go_to_the_faster_fuse_and_one_input_is_kept_exactly():
    st = table(Standing("tsv", 4, 0.8, fuse_seconds=2.0), Standing("iso_c", 4, 0.8,
                                                                    fuse_seconds=1.0))
    assert standings.choose(4, st).method == "iso_c"
    assert standings.choose(1, st).method == FALLBACK
    assert standings.choose(4, st, known={"cat"}).method == FALLBACK  # nothing applies
    with pytest.raises(InvalidRequestError):
        standings.choose(0, st)
    with pytest.raises(InvalidRequestError, match="empty"):
        standings.choose(3, table())


def test_shipped_table_parses_and_names_known_methods():
    st = standings.load()
    assert st.rows and st.evidence
    assert {r.method for r in st.rows} <= set(METHODS)
    assert standings.choose(4, st).method in METHODS
    with pytest.raises(InvalidRequestError, match="malformed"):
        parse({"rows": [{"method": "tsv"}], "evidence": "x"})


def test_a_tuned_row_is_shown_with_its_setting_after_the_default():
    st = table(Standing("iso_c", 8, 0.64, {"alpha": 2.0}, setting="tuned"),
               Standing("iso_c", 8, 0.43), Standing("iso_c", 4, 0.50),
               Standing("tsv", 4, 0.9, {"weight": 0.3}, setting="tuned"))
    assert [(r.inputs, r.setting_text()) for r in st.of("iso_c")] == [
        (4, "default"), (8, "default"), (8, "tuned (alpha=2.0)")]
    assert st.of("tsv")[0].setting_text() == "tuned (weights 0.3 each)"


def test_tuned_setting_is_chosen_on_validation_only():
    seen = []

    def validate(p):
        seen.append(p)
        return {0.2: 0.5, 0.5: 0.9, 0.8: 0.9}[p["density"]]

    grid = [{"density": d} for d in (0.2, 0.5, 0.8)]
    assert select_setting(grid, validate) == ({"density": 0.5}, 0.9)  # first on a tie
    assert seen == grid
    with pytest.raises(ValueError):
        select_setting([], validate)


def test_aggregate_and_standings_from_curve_rows(tmp_path):
    rows = [{"size": 4, "subset": s, "method": "tsv", "setting": "default", "params": {},
             "normalised": {"a": 0.8 + 0.1 * s, "b": 0.9}, "fuse_seconds": 1.0 + s}
            for s in range(2)]
    rows += [{"size": 4, "subset": 0, "method": "ties", "setting": "default",
              "params": {"density": 0.5}, "normalised": {"a": 0.6, "b": 0.7},
              "fuse_seconds": 0.5}]
    agg = aggregate(rows)
    tsv = next(a for a in agg if a["method"] == "tsv")
    assert tsv["n"] == 4 and tsv["subsets"] == 2
    assert tsv["mean"] == pytest.approx((0.85 + 0.9) / 2)  # the subset means' mean
    assert tsv["ci95"][0] < tsv["mean"] < tsv["ci95"][1]
    assert measured(rows) == "sizes 4 (2 subsets), default settings"
    st = standings_from(agg, "unit rows", paired(rows))
    ties = next(r for r in st.rows if r.method == "ties")
    assert (ties.vs, ties.diff) == ("tsv", pytest.approx(-0.2))  # subset 0, tasks a and b
    assert next(r for r in st.rows if r.method == "tsv").vs is None  # the leader
    standings.write(st, tmp_path / "s.json")
    again = parse(json.loads((tmp_path / "s.json").read_text()))
    assert standings.choose(4, again).method == "tsv"


def test_only_sizes_with_every_method_scored_choose():
    from benchmarks.fusion_curve import complete_sizes

    def agg(size, method, setting="default"):
        return {"inputs": size, "method": method, "setting": setting}

    rows = [agg(4, "tsv"), agg(4, "ties"), agg(8, "ties"), agg(8, "tsv", "tuned"),
            agg(14, "tsv"), agg(14, "ties"), agg(14, "cart")]
    assert complete_sizes(rows, ["tsv", "ties"]) == [4, 14]


def test_only_subsets_every_method_finished_are_compared():
    """A subset some method has not reached yet is left out of every method's mean, per
    (size, setting); a method without a tuning grid does not hold back the tuned rows."""
    from benchmarks.fusion_curve import finished

    def row(subset, method, setting="default"):
        return {"size": 4, "subset": subset, "method": method, "setting": setting}

    rows = [row(0, "tsv"), row(0, "ties"), row(1, "tsv"), row(0, "ties", "tuned")]
    assert finished(rows) == rows[:2] + rows[3:]
    assert finished(rows, ["tsv"]) == rows  # ties' tuned row: no tuned method wanted
    both = [*rows, row(1, "ties")]
    assert finished(both) == both
    # a tuned run of one method at 8 inputs is a column of its own
    wider = [*both, {**row(0, "tsv", "tuned"), "size": 8}]
    assert finished(wider) == wider


def test_paired_differences_from_each_sizes_leader():
    from benchmarks.fusion_curve import paired

    def row(subset, method, scores, size=4):
        return {"size": size, "subset": subset, "method": method, "setting": "default",
                "normalised": scores}

    rows = [row(0, "tsv", {"a": 0.9, "b": 0.7, "c": 0.5}),
            row(0, "ties", {"a": 0.8, "b": 0.58, "c": 0.36}),
            row(0, "ties", {"a": 0.1}, size=8)]
    d = paired(rows)
    assert d[4, "tsv"]["leader"] == "tsv" and d[4, "tsv"]["diff"] == pytest.approx(0.0)
    assert d[4, "ties"]["diff"] == pytest.approx(-0.12)  # (-0.1 - 0.12 - 0.14) / 3
    lo, hi = d[4, "ties"]["ci95"]  # t(2) 4.303 x sd 0.02 / sqrt 3 = 0.0497 each side
    assert (lo, hi) == (pytest.approx(-0.1697, abs=1e-3), pytest.approx(-0.0703, abs=1e-3))
    assert d[8, "ties"]["leader"] == "ties" and d[8, "ties"]["ci95"] is None
    assert paired(rows, keep={"a"})[4, "ties"]["diff"] == pytest.approx(-0.1)


def test_tuned_against_default_on_the_subsets_the_tuning_reached():
    from benchmarks.fusion_curve import tuned_vs_default

    def row(subset, setting, scores, params=None, validation=None):
        return {"size": 8, "subset": subset, "method": "iso_c", "setting": setting,
                "params": params or {}, "normalised": scores, "validation": validation}

    rows = [row(0, "default", {"a": 0.5, "b": 0.6}), row(1, "default", {"a": 0.1}),
            row(0, "tuned", {"a": 0.7, "b": 0.7}, {"alpha": 2.0}, 0.72)]
    (g,) = tuned_vs_default(rows)
    assert g["subsets"] == 1 and g["params"] == {"alpha": 2.0} and g["validation"] == 0.72
    assert g["tuned"] == pytest.approx(0.7) and g["default"] == pytest.approx(0.55)  # subset 0
    assert tuned_vs_default(rows, keep={"b"})[0]["default"] == pytest.approx(0.6)


def test_score_only_leaves_the_other_tasks_unscored(tiny_llama_dir, tmp_path):
    """Tasks outside ``score_only`` are fused with the rest but neither they nor their own
    adapters are scored."""
    from benchmarks.fusion_curve import CurveTask, run_curve

    scored = []

    def scorer(name):
        def score(adapter, examples):
            scored.append(name)
            return 0.5 if adapter is None else 0.6
        return score

    tasks = [CurveTask(f"t{i}", make_peft_adapter(tiny_llama_dir, tmp_path / f"t{i}",
                                                  seed=70 + i), [1], [1, 2], scorer(f"t{i}"))
             for i in range(3)]
    rows = run_curve(tasks, [3], 1, ["task_arithmetic"], tune=False, log=lambda _: None,
                     score_only={"t1"})
    assert set(scored) == {"t1"} and set(rows[0]["normalised"]) == {"t1"}
    assert rows[0]["tasks"] == ["t0", "t1", "t2"]


def lorahive(*args, cwd):
    return subprocess.run([sys.executable, "-m", "lorahive", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def test_fuse_without_method_takes_the_standing_choice_and_says_why(tiny_llama_dir, tmp_path):
    a = make_peft_adapter(tiny_llama_dir, tmp_path / "a", seed=1)
    b = make_peft_adapter(tiny_llama_dir, tmp_path / "b", seed=2)
    want = standings.choose(2, known=set(METHODS))
    r = lorahive("fuse", a, b, "--out", tmp_path / "f", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    line = next(x for x in r.stdout.splitlines() if x.startswith("method: "))
    assert line.startswith(f"method: {want.method}") and "evidence:" in line
    lineage = read_sidecar(tmp_path / "f")["lineage"]
    assert lineage["method"] == f"fuse:{want.method}"
    assert {k: lineage["params"][k] for k in want.params} == want.params  # a fixed setting's
    fixed = next((r for r in standings.load().rows if r.setting == "fixed"
                  and standings.setting_note(r.method, {}, 2)), None)
    assert fixed is not None  # the shipped table has one (Iso-CTS at alpha 3)
    r = lorahive("fuse", a, b, "--method", fixed.method, "--out", tmp_path / "h", cwd=tmp_path)
    assert r.returncode == 0  # naming that method alone is told of the better setting
    assert "measured: " + standings.setting_note(fixed.method, {}, 2) in " ".join(
        r.stderr.split())
    r = lorahive("fuse", a, b, "--density", "0.5", "--out", tmp_path / "g", cwd=tmp_path)
    assert r.returncode == 1 and "--method" in r.stderr and not (tmp_path / "g").exists()
    r = lorahive("methods", "--json", cwd=tmp_path)
    listed = {m["name"]: m["standings"] for m in json.loads(r.stdout)}
    assert listed[want.method] and set(listed) == set(METHODS)
    # each measured count marks one row, the one fuse takes for that many inputs
    chosen = {r["inputs"]: (name, r["params"]) for name, rows in listed.items()
              for r in rows if r["chosen"]}
    counts = standings.load().input_counts
    assert sorted(chosen) == counts
    for n in counts:
        c = standings.choose(n, known=set(METHODS))
        assert chosen[n] == (c.method, c.params)
    r = lorahive("methods", cwd=tmp_path)
    assert r.stdout.count("- fuse's choice") == len(counts)
    assert f"at {counts[0]} inputs: default" in r.stdout


def test_an_interrupted_curve_resumes(tiny_llama_dir, tmp_path):
    """Rows are handed out after each method; a rerun given them runs only what is missing
    and returns the same rows."""
    from benchmarks.fusion_curve import CurveTask, run_curve

    calls = []

    def scorer(adapter, examples):  # a deterministic score of what was fused
        calls.append(len(examples))
        if adapter is None:
            return 0.5
        return 0.5 + 0.1 * float(sum(m.B.abs().sum() for m in adapter.modules.values()) % 1)

    tasks = [CurveTask(f"t{i}", make_peft_adapter(tiny_llama_dir, tmp_path / f"t{i}",
                                                  seed=80 + i), [1, 2], [1, 2, 3], scorer)
             for i in range(3)]
    saved = []
    full = run_curve(tasks, [2], 1, ["task_arithmetic", "ties"], tune=False,
                     log=lambda _: None, on_rows=lambda rs: saved.append(list(rs)))
    assert [r["method"] for r in full] == ["task_arithmetic", "ties"]
    assert len(saved) == 2 and saved[0] == full[:1]
    calls.clear()
    again = run_curve(tasks, [2], 1, ["task_arithmetic", "ties"], tune=False,
                      log=lambda _: None, done=saved[0])
    assert [r["method"] for r in again] == ["task_arithmetic", "ties"]
    assert again[1]["normalised"] == full[1]["normalised"]
    assert calls == [3, 3, 3, 3]  # two own-adapter scores, then the fused one per task


def test_a_default_only_curve_is_extended_by_a_tuned_run(tiny_llama_dir, tmp_path):
    """Rows of a ``tune=False`` run are kept; a tuned rerun adds each method's tuned row
    without fusing or scoring the default setting again."""
    from benchmarks.fusion_curve import GRIDS, CurveTask, run_curve

    fused = []

    def scorer(adapter, examples):
        if adapter is not None:
            fused.append(len(examples))
        return 0.5 if adapter is None else 0.6

    tasks = [CurveTask(f"t{i}", make_peft_adapter(tiny_llama_dir, tmp_path / f"t{i}",
                                                  seed=90 + i), [1, 2], [1, 2, 3], scorer)
             for i in range(2)]
    plain = run_curve(tasks, [2], 1, ["task_arithmetic"], tune=False, log=lambda _: None)
    assert [r["setting"] for r in plain] == ["default"]
    fused.clear()
    both = run_curve(tasks, [2], 1, ["task_arithmetic"], tune=True, log=lambda _: None,
                     done=plain)
    assert [r["setting"] for r in both] == ["default", "tuned"] and both[0] == plain[0]
    grid = len(GRIDS["task_arithmetic"])
    # each task's own adapter on validation (2 examples) and test (3), a validation score
    # per grid point, the tuned setting on test; the default setting would add two 3s
    assert fused.count(2) == 2 + 2 * grid and fused.count(3) == 2 + 2
    again = run_curve(tasks, [2], 1, ["task_arithmetic"], tune=True, log=lambda _: None,
                      done=both)
    assert again == both


def test_a_widened_grid_scores_only_its_new_points(tiny_llama_dir, tmp_path, monkeypatch):
    """A tuned row records its grid; points added to the grid later are scored on validation
    alone, and the row is replaced only when one of them beats the recorded winner, so the
    result is what a run over the whole grid would have chosen."""
    import benchmarks.fusion_curve as fc

    calls = []

    def scorer(adapter, examples):  # the larger the fused delta, the better
        calls.append(len(examples))
        if adapter is None:
            return 0.5
        size = sum(float((m.B @ m.A).abs().sum()) for m in adapter.modules.values())
        return 0.5 + 0.4 * size / (1.0 + size)

    tasks = [fc.CurveTask(f"t{i}", make_peft_adapter(tiny_llama_dir, tmp_path / f"t{i}",
                                                     seed=60 + i), [1, 2], [1, 2, 3], scorer)
             for i in range(2)]

    def run(weights, done=()):
        monkeypatch.setitem(fc.GRIDS, "task_arithmetic", [{fc.WEIGHT: w} for w in weights])
        calls.clear()
        return fc.run_curve(tasks, [2], 1, ["task_arithmetic"], log=lambda _: None, done=done)

    first = run([0.3, 0.5])
    tuned = first[-1]
    assert tuned["params"][fc.WEIGHT] == 0.5 and tuned["grid"] == [{fc.WEIGHT: 0.3},
                                                                  {fc.WEIGHT: 0.5}]
    wider = run([0.3, 0.5, 0.1], done=first)  # the new point loses: the row stays
    # per task: its own adapter and the new point on validation; nothing on test
    assert calls == [2] * 4
    assert {**wider[-1], "grid": None} == {**tuned, "grid": None}
    assert len(wider[-1]["grid"]) == 3
    assert wider[0] == first[0]  # the default row is not run again
    higher = run([0.3, 0.5, 0.1, 1.0], done=wider)  # the new point wins: validated, tested
    assert calls == [2] * 4 + [3] * 4  # then own and fused on test
    assert higher[-1]["params"][fc.WEIGHT] == 1.0 and higher[-1]["validation"] > tuned[
        "validation"]
    assert [r["setting"] for r in higher] == ["default", "tuned"]
    assert run([0.3, 0.5, 0.1, 1.0], done=higher) == higher and calls == []


def test_a_fixed_setting_competes_with_the_defaults_and_a_tuned_one_does_not():
    """A fixed setting, scored on every subset as the defaults are, is chosen when it leads,
    with its parameters, and the runner-up's paired difference is against it."""
    st = table(
        Standing("tsv", 14, 0.50, ci95=(0.42, 0.59), vs="iso_cts (alpha=3.0)", diff=-0.15,
                 diff_ci95=(-0.25, -0.05)),
        Standing("iso_cts", 14, 0.35, ci95=(0.1, 0.6)),
        Standing("iso_cts", 14, 0.65, {"alpha": 3.0}, label="iso_cts (alpha=3.0)",
                 ci95=(0.55, 0.75), setting="fixed"),
        Standing("iso_c", 14, 0.99, {"alpha": 4.0}, setting="tuned"),
    )
    c = standings.choose(14, st)
    assert (c.method, c.params) == ("iso_cts", {"alpha": 3.0})
    assert c.reason.startswith("iso_cts with alpha=3.0, best mean normalised accuracy: 0.65")
    assert "next tsv 0.50, 0.15 behind on the same tasks [0.05, 0.25]: a real lead" in c.reason
    assert [r.setting_text() for r in st.of("iso_cts")] == ["default", "fixed (alpha=3.0)"]
    assert standings.choose(14, st, known={"tsv"}).method == "tsv"


def test_naming_a_method_tells_of_its_better_fixed_setting_unless_it_is_set():
    st = table(Standing("iso_cts", 8, 0.44), Standing("iso_cts", 8, 0.69, {"alpha": 3.0},
                                                       setting="fixed"),
               Standing("tsv", 8, 0.53), Standing("tsv", 8, 0.50, {"alpha": 0.5},
                                                  setting="fixed"))
    note = standings.setting_note("iso_cts", {"density": None}, 6, st)
    assert note == ("iso_cts with alpha=3.0 measured 0.69 against 0.44 at its defaults "
                    "(8 inputs); --param alpha=3.0 uses it")
    assert standings.setting_note("iso_cts", {"alpha": "2"}, 6, st) is None  # set by the user
    assert standings.setting_note("tsv", {}, 8, st) is None  # its fixed setting is worse
    assert standings.setting_note("ties", {}, 8, st) is None  # no fixed row
    assert standings.setting_note("iso_cts", {}, 1, st) is None


def test_fixed_settings_are_typed_by_the_method_and_named_by_their_parameters():
    from benchmarks.fusion_curve import entry, parse_fixed

    assert parse_fixed(["iso_cts:alpha=3", "ties:density=0.3"]) == {
        "iso_cts": {"alpha": 3.0}, "ties": {"density": 0.3}}
    with pytest.raises(SystemExit, match="'rank' is not a parameter of iso_cts"):
        parse_fixed(["iso_cts:rank=3"])
    with pytest.raises(SystemExit, match="expects float"):
        parse_fixed(["iso_cts:alpha=high"])
    with pytest.raises(SystemExit, match="unknown fusion method 'nope'"):
        parse_fixed(["nope:alpha=1"])
    with pytest.raises(SystemExit, match="give METHOD:NAME=VALUE"):
        parse_fixed(["iso_cts"])
    with pytest.raises(SystemExit, match="give alpha=VALUE"):
        parse_fixed(["iso_cts:alpha"])
    row = {"method": "iso_cts", "setting": "fixed", "params": {"alpha": 3.0}}
    assert entry(row) == "iso_cts (alpha=3.0)"
    assert entry({**row, "setting": "default"}) == "iso_cts"


def test_a_fixed_setting_is_scored_on_every_subset_and_enters_the_standings(
        tiny_llama_dir, tmp_path):
    """``fixed`` adds one row per subset beside the default (which is not run again), a
    rerun with the same value does nothing, another value replaces the rows; the standings
    name the row by its parameters and pair the defaults with it."""
    from benchmarks.fusion_curve import CurveTask, finished, run_curve

    fused = []

    def scorer(adapter, examples):  # the larger the fused delta, the better
        if adapter is None:
            return 0.5
        fused.append(len(examples))
        size = sum(float((m.B @ m.A).abs().sum()) for m in adapter.modules.values())
        return 0.5 + 0.4 * size / (1.0 + size)

    tasks = [CurveTask(f"t{i}", make_peft_adapter(tiny_llama_dir, tmp_path / f"t{i}",
                                                  seed=50 + i), [1], [1, 2, 3], scorer)
             for i in range(3)]

    def run(done=(), **kw):
        fused.clear()
        return run_curve(tasks, [2], 2, ["iso_c"], tune=False, log=lambda _: None,
                         done=done, own_test={t.name: 0.9 for t in tasks}, **kw)

    plain = run()
    fx = run(plain, fixed={"iso_c": {"alpha": 3.0}})
    assert [(r["subset"], r["setting"]) for r in fx] == [
        (0, "default"), (1, "default"), (0, "fixed"), (1, "fixed")]
    assert fx[:2] == plain and fx[2]["params"] == {"alpha": 3.0}
    assert fused == [3, 3] * 2  # the fixed setting's test scores only, two tasks a subset
    assert run(fx, fixed={"iso_c": {"alpha": 3.0}}) == fx and fused == []
    other = run(fx, fixed={"iso_c": {"alpha": 0.5}})
    assert [r["params"] for r in other if r["setting"] == "fixed"] == [{"alpha": 0.5}] * 2
    agg = aggregate(finished(fx))
    st = standings_from(agg, "unit rows", paired(fx))
    fixed = next(r for r in st.rows if r.setting == "fixed")
    assert (fixed.name, fixed.params, fixed.vs) == ("iso_c (alpha=3.0)", {"alpha": 3.0}, None)
    default = next(r for r in st.rows if r.setting == "default")
    assert default.vs == "iso_c (alpha=3.0)" and default.diff < 0
    c = standings.choose(2, st)
    assert (c.method, c.params) == ("iso_c", {"alpha": 3.0})
    assert measured(fx) == "sizes 2 (2 subsets), default and fixed settings"


def test_curve_rows_are_written_where_no_folder_exists_yet(tmp_path):
    """The first run on a fresh machine saves its rows under a cache folder it creates."""
    from benchmarks.fusion_curve import _write_json

    path = tmp_path / "cache" / "fusion-curve" / "rows.json"
    _write_json(path, [{"size": 4}])
    assert json.loads(path.read_text()) == [{"size": 4}]
    assert [p.name for p in path.parent.iterdir()] == ["rows.json"]


def test_an_adapter_fused_twice_is_scored_once(tiny_llama_dir, tmp_path):
    """A tuned setting that is the default's fuses the same factors again: its test scores
    are reused, not recomputed; other factors are scored."""
    from benchmarks.fusion_curve import CurveTask, Subset, adapter_digest

    fused = []

    def scorer(adapter, examples):
        if adapter is None:
            return 0.5
        fused.append(adapter_digest(adapter))
        return 0.5 + 0.1 * float(sum(m.B.abs().sum() for m in adapter.modules.values()) % 1)

    tasks = [CurveTask(f"t{i}", make_peft_adapter(tiny_llama_dir, tmp_path / f"t{i}",
                                                  seed=70 + i), [1], [1, 2], scorer)
             for i in range(2)]
    sub = Subset(list(tasks), {})
    for t in tasks:  # each task's own adapter, scored once per split
        sub.own_score(t, "test"), sub.own_score(t, "validation")
    fused.clear()
    half = sub.score(sub.fused("ties", {"density": 0.5})[0], "test")
    assert len(fused) == 2
    assert sub.score(sub.fused("ties", {"density": 0.5})[0], "test") == half
    assert len(fused) == 2  # the same factors: not scored again
    assert sub.score(sub.fused("ties", {"density": 0.5})[0], "validation") != {}
    assert sub.score(sub.fused("ties", {"density": 0.8})[0], "test") != half
    assert len(fused) == 6 and len(set(fused)) == 2
    # the digest is of the factors: linear and lorahub compute close deltas from other factors
    lin, hub = (adapter_digest(sub.fused(m, {})[0]) for m in ("linear", "lorahub"))
    assert lin != hub and lin == adapter_digest(sub.fused("linear", {})[0])


def test_curve_table_has_a_column_per_size_sorted_by_the_largest(capsys):
    from benchmarks.fusion_curve import aggregate, print_curve

    def row(size, method, scores, setting="default"):
        return {"size": size, "subset": 0, "method": method, "setting": setting, "params": {},
                "normalised": dict(enumerate(scores)), "fuse_seconds": 0.25}

    print_curve(aggregate([row(4, "tsv", [0.9, 0.8]), row(8, "tsv", [0.5, 0.6]),
                           row(4, "ties", [0.7, 0.7]), row(8, "ties", [0.6, 0.7]),
                           row(4, "cart", [1.0, 1.0]), row(8, "cart", [0.1, 0.2], "tuned")]))
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == ("| method | 8 inputs (1 subset) | 4 inputs (1 subset) "
                        "| fuse at 8 (s) |")
    assert [x.split(" | ")[0] for x in lines[2:]] == ["| ties", "| tsv", "| cart"]
    assert lines[2] == "| ties | 0.65 [0.01, 1.29] | 0.70 [0.70, 0.70] | 0.25 |"
    assert lines[4] == "| cart | - | 1.00 [1.00, 1.00] | - |"  # its 8-input row is tuned


def test_means_count_only_tasks_whose_own_adapter_learned_them(tiny_llama_dir, tmp_path):
    """Own-adapter and base-model test accuracies are scored once and cached; a task whose
    adapter is not ``min_gain`` above the base model is left out of the means."""
    from benchmarks.fusion_curve import CurveTask, aggregate, expert_scores, experts

    calls = []
    acc = {"good": (0.9, 0.3), "weak": (0.05, 0.0), "flat": (0.55, 0.5)}  # (own, base)

    def scorer_of(name):
        def scorer(adapter, examples):
            calls.append(name)
            return acc[name][adapter is None]
        return scorer

    tasks = [CurveTask(n, make_peft_adapter(tiny_llama_dir, tmp_path / n, seed=60 + i),
                       [1], [1, 2], scorer_of(n)) for i, n in enumerate(acc)]
    path = tmp_path / "cache" / "experts.json"
    got = expert_scores(tasks, path, log=lambda _: None)
    assert got["good"] == {"own": 0.9, "base": 0.3, "examples": 2} and len(calls) == 6
    assert expert_scores(tasks, path, log=lambda _: None) == got and len(calls) == 6
    assert experts(got) == {"good"} and experts(got, 0.05) == {"good", "flat", "weak"}
    rows = [{"size": 3, "subset": 0, "method": "tsv", "setting": "default", "params": {},
             "normalised": {"good": 0.8, "weak": 6.0, "flat": 0.9}, "fuse_seconds": 0.1},
            {"size": 3, "subset": 1, "method": "tsv", "setting": "default", "params": {},
             "normalised": {"weak": 2.0}, "fuse_seconds": 0.1}]
    everything, = aggregate(rows)
    only, = aggregate(rows, experts(got))
    assert everything["n"] == 4 and only["n"] == 1 and only["subsets"] == 1
    assert only["mean"] == pytest.approx(0.8)
