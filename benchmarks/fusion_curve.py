"""How each fusion method holds up as more tasks are fused: the merging papers' curve, on our adapters.

For every size (4, 8, 14, 20 by default) several random subsets of the task library are fused
with every method in ``lorahive methods``, once with default parameters and once with one
setting tuned on the validation split (never the test split); every task of the subset is then
scored on its test examples with the fused adapter, and the accuracy is divided by that task's
own adapter's test accuracy. Per size and method: the mean normalised accuracy with a 95%
interval, the number of scores and the fuse time. The mean is over the tasks whose own adapter
is an expert (``MIN_GAIN`` above the base model on the test split): the papers normalise by
fine-tuned models that learned their task, and a ratio to an adapter near zero (a library
adapter that did not learn its format) is noise that can swamp the mean. Every adapter of a
subset is fused whatever its standing, but only the experts are scored (``--all-tasks``
scores and averages every task). Only subsets every method finished are compared. The
default-parameter standings are written as ``compose/fusion/standings.json`` (what
``lorahive fuse`` picks its default method from).

A tuned setting is chosen per subset, so it is evidence about tuning, not a setting a user can
take as it is. ``--fixed METHOD:NAME=VALUE`` scores one setting (say the one the tuning chose
most often) on every subset, as a default is scored: such a row is named with its parameters
("iso_cts (alpha=3.0)"), is compared with the defaults on the same tasks, and competes with
them for ``fuse``'s choice.

The library is given as a list of ``CurveTask``: a name, the task's own adapter directory, its
validation and test examples and a scorer, ``scorer(adapter or None, examples) -> accuracy``
(the base model with that adapter's delta applied; ``None``: the base model alone). A provider
function ``module:function`` returns that list:

    python -m benchmarks.fusion_curve run --tasks benchmarks.library:curve_tasks \\
        [--sizes 4,8,14,20] [--subsets 3] [--methods ...] [--fixed iso_cts:alpha=3]
        [--write-standings]
    python -m benchmarks.fusion_curve table [--setting fixed|tuned]   # method x size table
    python -m benchmarks.fusion_curve standings   # fuse's standings from the saved rows
    python -m benchmarks.fusion_curve seed     # the seed standings from the 4-adapter table

Statistics: the interval is a Student-t interval over the subset means (the subset, fused into
one adapter, is the unit that repeats), or over the task scores when a size has one subset.
``table`` also prints each method's paired difference from the leader of its size (same
subsets and tasks), which the standings carry for ``fuse``'s reason line.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import itertools
import json
import math
import random
import statistics
import time
from collections.abc import Callable, Collection, Container, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.smollm2 import CACHE
from lorahive.compose.fusion.standings import (
    COMPETING,
    FIXED,
    SETTINGS,
    Standing,
    Standings,
    params_text,
)

SIZES = (4, 8, 14, 20)
# every scored row, kept beside the library it scores so a rerun resumes from any directory
ROWS = CACHE / "fusion-curve" / "rows.json"
# each task's test accuracy with its own adapter and with the base model alone
EXPERTS = CACHE / "fusion-curve" / "experts.json"
# how far a task's own adapter must be above the base model to normalise by it
MIN_GAIN = 0.10
WEIGHT = "weight"  # pseudo-parameter: the uniform weight given to every adapter

# Default settings: the method's own defaults; a required density is set to 0.5, the value
# PEFT's merging guide uses.
REQUIRED = {"density": 0.5}
# Candidates for the one tuned setting per method (chosen on validation only). A tuned row
# records the points it was chosen from; points added here later are scored on a rerun and
# the row is kept or replaced by the best of all of them (``Subset.run``'s ``prior``). The
# Iso grids reach 6: at 4 and 8 inputs both chose 2.0, the top of the first grid, and
# Iso-CTS then chose 4.0 at 4 inputs. TSV-M's reaches down to 0.25 and CART's to 0.02: they
# chose the bottom of their first grids (alpha 0.5 at every size, rank_fraction 0.04).
GRIDS: dict[str, list[dict[str, Any]]] = {
    "task_arithmetic": [{WEIGHT: x} for x in (0.3, 0.5, 0.7, 1.0)],
    "cat": [{WEIGHT: x} for x in (0.3, 0.5, 0.7, 1.0)],
    "svd": [{WEIGHT: x} for x in (0.3, 0.5, 0.7, 1.0)],
    "linear": [{WEIGHT: x} for x in (0.3, 0.5, 1.0)],
    "lorahub": [{WEIGHT: x} for x in (0.3, 0.5, 1.0)],
    **{m: [{"density": d} for d in (0.2, 0.5, 0.8)]
       for m in ("ties", "ties_svd", "dare_linear", "dare_linear_svd", "dare_ties",
                 "dare_ties_svd", "magnitude_prune", "magnitude_prune_svd", "core_space",
                 "knots")},
    "tsv": [{"alpha": a} for a in (0.25, 0.5, 1.0, 1.5, 2.0)],
    "iso_c": [{"alpha": a} for a in (0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)],
    "iso_cts": [{"alpha": a} for a in (0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)],
    "star": [{"eta": e} for e in (0.2, 0.4, 0.6, 0.8)],
    "cart": [{"rank_fraction": f} for f in (0.02, 0.04, 0.08, 0.16, 0.32)],
}


@dataclass(frozen=True)
class CurveTask:
    """One task of the library, as the curve needs it."""

    name: str
    adapter_dir: Path
    validation: Sequence[Any]
    test: Sequence[Any]
    scorer: Callable[[Any, Sequence[Any]], float]  # (Adapter | None, examples) -> accuracy


# statistics -------------------------------------------------------------------------------
_T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
         2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
         2.060, 2.056, 2.052, 2.048, 2.045, 2.042]


def t975(df: int) -> float:
    """The 97.5% quantile of Student's t with ``df`` degrees of freedom."""
    if df < 1:
        raise ValueError("a t interval needs at least two values")
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959964  # Cornish-Fisher expansion beyond the table (error < 1e-3 at df = 31)
    return z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)


def mean_ci95(values: Sequence[float]) -> tuple[float, tuple[float, float] | None]:
    """Mean and a 95% Student-t interval (``None`` for a single value)."""
    if not values:
        raise ValueError("no values")
    m = statistics.fmean(values)
    if len(values) < 2:
        return m, None
    half = t975(len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return m, (m - half, m + half)


def normalise(accuracy: float, own: float) -> float | None:
    """Accuracy relative to the task's own adapter; ``None`` when the own adapter scores 0."""
    return accuracy / own if own > 0 else None


def expert_scores(tasks: Sequence[CurveTask], path: Path,
                  log: Callable[[str], None] = print) -> dict[str, dict[str, float]]:
    """Per task, test accuracy with its own adapter and with the base model alone; cached in
    ``path`` (a task is scored again when its test split changed size)."""
    from lorahive.hub.peft_format import load_peft

    have = json.loads(path.read_text()) if path.exists() else {}
    for t in tasks:
        if have.get(t.name, {}).get("examples") == len(t.test):
            continue
        own = t.scorer(load_peft(t.adapter_dir), t.test)
        have[t.name] = {"own": own, "base": t.scorer(None, t.test), "examples": len(t.test)}
        _write_json(path, have)
        log(f"{t.name}: own adapter {own:.2f}, base model {have[t.name]['base']:.2f}")
    return {t.name: have[t.name] for t in tasks}


def experts(scores: dict[str, dict[str, float]], min_gain: float = MIN_GAIN) -> set[str]:
    """The tasks whose own adapter is at least ``min_gain`` above the base model."""
    return {n for n, s in scores.items() if s["own"] - s["base"] >= min_gain - 1e-9}


def sample_subsets(names: Sequence[str], size: int, count: int, seed: int
                   ) -> list[tuple[str, ...]]:
    """``count`` distinct task subsets of ``size`` (every one when there are fewer), seeded."""
    names = sorted(names)
    if size > len(names):
        raise ValueError(f"cannot pick {size} tasks from {len(names)}")
    total = math.comb(len(names), size)
    if total <= count:
        return list(itertools.combinations(names, size))
    rng = random.Random(f"{seed}:{size}")
    seen: dict[tuple[str, ...], None] = {}
    while len(seen) < count:
        seen.setdefault(tuple(sorted(rng.sample(names, size))), None)
    return list(seen)


def interval(per_subset: Sequence[Sequence[float]]) -> tuple[float, tuple[float, float] | None]:
    """Mean of every score, with the t interval over subset means (over the scores of the
    one subset when there is one)."""
    flat = [x for s in per_subset for x in s]
    if not flat:
        return float("nan"), None
    mean = statistics.fmean(flat)
    units = [statistics.fmean(s) for s in per_subset if s] if len(per_subset) > 1 else flat
    if len(units) < 2:
        return mean, None
    half = t975(len(units) - 1) * statistics.stdev(units) / math.sqrt(len(units))
    return mean, (mean - half, mean + half)


# one subset --------------------------------------------------------------------------------
@dataclass
class Scored:
    method: str
    setting: str  # "default", "fixed" or "tuned"
    params: dict[str, Any]
    normalised: dict[str, float]  # per task of the subset (tasks whose own adapter scores 0 left out)
    fuse_seconds: float
    validation: float | None = None  # tuned: the mean normalised validation score it won with
    grid: list[dict[str, Any]] | None = None  # tuned: the grid points it was chosen from


def split_params(params: dict[str, Any]) -> tuple[list[float] | None, dict[str, Any]]:
    return params.get(WEIGHT), {k: v for k, v in params.items() if k != WEIGHT}


def default_params(method: Any) -> dict[str, Any]:
    return {p.name: REQUIRED[p.name] for p in method.params if p.required and p.name in REQUIRED}


def parse_fixed(specs: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``--fixed`` values, ``METHOD:NAME=VALUE[,NAME=VALUE]`` each: per method, its fixed
    parameters, typed as the method declares them (one fixed setting per method)."""
    from lorahive.compose.fusion import get_method
    from lorahive.hub.errors import InvalidRequestError

    out: dict[str, dict[str, Any]] = {}
    for spec in specs:
        name, _, rest = spec.partition(":")
        try:
            method = get_method(name.strip())
            params = {}
            for item in filter(None, (x.strip() for x in rest.split(","))):
                key, eq, value = item.partition("=")
                param = method.param(key.strip())
                if param is None:
                    raise InvalidRequestError(
                        f"{key.strip()!r} is not a parameter of {method.name} (it takes "
                        f"{', '.join(p.name for p in method.params) or 'none'})")
                if not eq:
                    raise InvalidRequestError(f"give {param.name}=VALUE")
                params[param.name] = param.coerce(value.strip())
        except InvalidRequestError as e:
            raise SystemExit(f"--fixed {spec}: {e}") from None
        if not params:
            raise SystemExit(f"--fixed {spec}: give METHOD:NAME=VALUE")
        out[method.name] = params
    return out


def entry(r: dict[str, Any]) -> str:
    """A row's name in the tables and standings: its method, with the parameters when the
    setting is a fixed one (it stands beside the method's default row)."""
    return f"{r['method']} ({params_text(r['params'])})" if r["setting"] == FIXED else r["method"]


def select_setting(grid: Sequence[dict[str, Any]],
                   validate: Callable[[dict[str, Any]], float],
                   prior: tuple[dict[str, Any], float] | None = None
                   ) -> tuple[dict[str, Any], float]:
    """The grid point with the best validation score (the first one on a tie). ``prior``:
    the best of points scored earlier, which come first: a grid extended by new points picks
    what a run over all of them would have picked, scoring only the new ones."""
    best: tuple[dict[str, Any], float] | None = prior
    for params in grid:
        score = validate(params)
        if best is None or score > best[1]:
            best = (params, score)
    if best is None:
        raise ValueError("empty grid")
    return best


def adapter_digest(adapter: Any) -> str:
    """A fused adapter's identity: a hash of its modules' factors and scales. A tuned setting
    that is the default's (the grids hold the defaults) fuses the same factors again, and
    its test scores are the default row's."""
    import torch

    h = hashlib.sha256()
    for name in sorted(adapter.modules):
        m = adapter.modules[name]
        h.update(f"{name}|{m.scale!r}|{m.kind}|{m.fan_in_fan_out}|".encode())
        for t in (m.A, m.B, m.magnitude):
            if t is not None:
                t = t.detach().cpu().contiguous()
                h.update(f"{t.dtype}{tuple(t.shape)}".encode())
                h.update(t.view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@dataclass
class Subset:
    """Fuses and scores one task subset; own-adapter scores are shared across subsets."""

    tasks: list[CurveTask]
    own: dict[tuple[str, str], float]  # (task, split) -> own adapter accuracy
    adapters: dict[str, Any] = field(default_factory=dict)
    scored: dict[tuple[str, str], dict[str, float]] = field(default_factory=dict)
    score_only: Container[str] | None = None  # tasks outside it are fused but not scored

    def load(self) -> list[Any]:
        from lorahive.hub.peft_format import load_peft

        for t in self.tasks:
            if t.name not in self.adapters:
                self.adapters[t.name] = load_peft(t.adapter_dir)
        return [self.adapters[t.name] for t in self.tasks]

    def own_score(self, task: CurveTask, split: str) -> float:
        key = (task.name, split)
        if key not in self.own:
            examples = task.validation if split == "validation" else task.test
            self.own[key] = task.scorer(self.load()[self.tasks.index(task)], examples)
        return self.own[key]

    def fused(self, method: str, params: dict[str, Any]) -> tuple[Any, float]:
        from lorahive.compose.fusion import fuse

        weight, mparams = split_params(params)
        ads = self.load()
        w = None if weight is None else [float(weight)] * len(ads)
        t = time.perf_counter()
        res = fuse(ads, method, w, mparams, seed=0, device="cpu")
        return res.adapter, time.perf_counter() - t

    def score(self, adapter: Any, split: str) -> dict[str, float]:
        """Each task's normalised accuracy; an adapter already scored on ``split`` (the same
        factors from another method or setting) is not scored again."""
        key = (adapter_digest(adapter), split)
        if key not in self.scored:
            self.scored[key] = self._score(adapter, split)
        return dict(self.scored[key])

    def _score(self, adapter: Any, split: str) -> dict[str, float]:
        out = {}
        for task in self.tasks:
            if self.score_only is not None and task.name not in self.score_only:
                continue
            own = self.own_score(task, split)
            examples = task.validation if split == "validation" else task.test
            x = normalise(task.scorer(adapter, examples), own)
            if x is not None:
                out[task.name] = x
        return out

    def run(self, method: Any, grid: Sequence[dict[str, Any]] | None,
            default: bool = True, prior: Scored | None = None,
            fixed: dict[str, Any] | None = None) -> list[Scored]:
        """The default setting (unless ``default`` is false: an earlier run scored it), the
        ``fixed`` one when given and, with a grid, the one tuned on validation, all on test.
        ``prior``: a tuned row chosen from part of ``grid``; only the other points are scored
        on validation, and the row is kept (with the whole grid recorded) unless one of them
        beats it."""
        params = default_params(method)
        rows = []
        if default:
            ad, secs = self.fused(method.name, params)
            rows.append(Scored(method.name, "default", params, self.score(ad, "test"), secs))
        if fixed is not None:
            ad, secs = self.fused(method.name, {**params, **fixed})
            rows.append(Scored(method.name, FIXED, {**params, **fixed}, self.score(ad, "test"),
                               secs))
        if grid:
            def validate(p: dict[str, Any]) -> float:
                scores = self.score(self.fused(method.name, {**params, **p})[0], "validation")
                return statistics.fmean(scores.values()) if scores else float("-inf")

            seen: list[dict[str, Any]] = []
            start = None
            if prior is not None and prior.validation is not None:
                seen = prior.grid or []
                start = ({k: prior.params[k] for k in grid[0]}, prior.validation)
            best, val = select_setting([p for p in grid if p not in seen], validate, start)
            tuned = {**params, **best}
            if start is not None and best is start[0]:  # no new point beat it: test as before
                rows.append(Scored(**{**prior.__dict__, "grid": list(grid)}))
            else:
                ad, secs = self.fused(method.name, tuned)
                rows.append(Scored(method.name, "tuned", tuned, self.score(ad, "test"), secs,
                                   val, list(grid)))
        return rows


# the curve ---------------------------------------------------------------------------------
def run_curve(tasks: Sequence[CurveTask], sizes: Sequence[int], subsets: int,
              methods: Sequence[str] | None = None, seed: int = 0, tune: bool = True,
              log: Callable[[str], None] = print, done: Sequence[dict[str, Any]] = (),
              on_rows: Callable[[list[dict[str, Any]]], None] | None = None,
              own_test: dict[str, float] | None = None,
              score_only: Container[str] | None = None,
              fixed: dict[str, dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Every (size, subset, method, setting) with its per-task normalised test scores.

    ``done``: rows of an earlier run; a (size, subset, method, setting) they hold for the
    same tasks is not run again, so a run with ``tune=False`` can be extended by one that
    tunes. ``on_rows`` gets every row so far after each method (to save them), so an
    interrupted run resumes. ``own_test``: each task's own-adapter test accuracy, when known
    (``expert_scores``), so it is not scored again. ``score_only``: the tasks that are scored
    (the experts: the others are fused with the rest but left out of the means anyway).
    ``fixed``: per method, a setting scored on every subset (``parse_fixed``); a fixed row
    with other parameters is replaced."""
    from lorahive.compose.fusion import all_methods, get_method

    ms = [get_method(m) for m in methods] if methods else all_methods()
    by_name = {t.name: t for t in tasks}
    own = {(n, "test"): acc for n, acc in (own_test or {}).items()}
    adapters: dict[str, Any] = {}
    rows: list[dict[str, Any]] = list(done)
    have = {(r["size"], r["subset"], tuple(r["tasks"]), r["method"], r["setting"])
            for r in done}
    # the tuned and fixed rows of the earlier run, by (size, subset, tasks, method, setting)
    earlier = {(r["size"], r["subset"], tuple(r["tasks"]), r["method"], r["setting"]): r
               for r in rows if r["setting"] in ("tuned", FIXED)}
    for size in sizes:
        for i, names in enumerate(sample_subsets(list(by_name), size, subsets, seed)):
            sub = Subset([by_name[n] for n in names], own, adapters, score_only=score_only)
            for m in ms:
                key = (size, i, tuple(names), m.name)
                grid = GRIDS.get(m.name) if tune else None
                want_default = (*key, "default") not in have
                prior = earlier.get((*key, "tuned"))
                want_tuned = bool(grid) and (prior is None or any(
                    p not in (prior.get("grid") or []) for p in grid))
                fx = (fixed or {}).get(m.name)
                had = earlier.get((*key, FIXED))
                want_fixed = fx is not None and (
                    had is None or had["params"] != {**default_params(m), **fx})
                if not (want_default or want_tuned or want_fixed):
                    continue
                if want_tuned and prior is not None:
                    rows.remove(prior)
                if want_fixed and had is not None:
                    rows.remove(had)
                old = None if prior is None or not want_tuned else Scored(
                    **{k: prior.get(k) for k in Scored.__dataclass_fields__})
                for r in sub.run(m, grid if want_tuned else None, want_default, old,
                                 fx if want_fixed else None):
                    rows.append({"size": size, "subset": i, "tasks": list(names), **r.__dict__})
                    mean = statistics.fmean(r.normalised.values()) if r.normalised else math.nan
                    log(f"size {size} subset {i} {m.name} {r.setting} {r.params}: "
                        f"{mean:.3f} ({r.fuse_seconds:.2f} s)")
                if on_rows is not None:
                    on_rows(rows)
    return rows


def finished(rows: Sequence[dict[str, Any]], methods: Collection[str] | None = None
             ) -> list[dict[str, Any]]:
    """The rows of the subsets that every method of their column has scored: a column is a
    (size, setting), and its methods are those of ``methods`` that have a row in it (all
    that have one, without ``methods``). A subset half run would compare methods on
    different tasks within a column; a method never run in a column (no tuning grid, or a
    tuned run limited to a few methods) holds nothing back."""
    want: dict[tuple[int, str], set[str]] = {}
    have: dict[tuple[int, int, str], set[str]] = {}
    for r in rows:
        want.setdefault((r["size"], r["setting"]), set()).add(r["method"])
        have.setdefault((r["size"], r["subset"], r["setting"]), set()).add(r["method"])
    if methods is not None:
        want = {k: v & set(methods) for k, v in want.items()}
    return [r for r in rows
            if have[(r["size"], r["subset"], r["setting"])] >= want[(r["size"], r["setting"])]]


def aggregate(rows: Sequence[dict[str, Any]], keep: Container[str] | None = None
              ) -> list[dict[str, Any]]:
    """Per (size, method, setting): mean normalised score, 95% interval, n, fuse time; with
    ``keep``, only those tasks' scores count (a row with none of them is left out)."""
    groups: dict[tuple[int, str, str], dict[int, list[float]]] = {}
    times: dict[tuple[int, str, str], list[float]] = {}
    params: dict[tuple[int, str, str], list[str]] = {}
    for r in rows:
        key = (r["size"], r["method"], r["setting"])
        vals = [v for k, v in r["normalised"].items() if keep is None or k in keep]
        if not vals:
            continue
        groups.setdefault(key, {}).setdefault(r["subset"], []).extend(vals)
        times.setdefault(key, []).append(r["fuse_seconds"])
        params.setdefault(key, []).append(json.dumps(r["params"], sort_keys=True))
    out = []
    for key, per in sorted(groups.items()):
        mean, ci = interval(list(per.values()))
        common = max(set(params[key]), key=params[key].count)  # the most chosen setting
        out.append({"inputs": key[0], "method": key[1], "setting": key[2], "mean": mean,
                    "ci95": ci, "n": sum(len(v) for v in per.values()), "subsets": len(per),
                    "params": json.loads(common), "fuse_seconds": statistics.median(times[key])})
    return out


def complete_sizes(aggregates: Sequence[dict[str, Any]], methods: Sequence[str]) -> list[int]:
    """The sizes at which every method has a default-setting score: only those choose
    ``fuse``'s method (a size half run would pick among the methods it reached)."""
    have: dict[int, set[str]] = {}
    for a in aggregates:
        if a["setting"] == "default":
            have.setdefault(a["inputs"], set()).add(a["method"])
    return sorted(k for k, v in have.items() if v >= set(methods))


def standings_from(aggregates: Sequence[dict[str, Any]], evidence: str,
                   diffs: dict[tuple[int, str], dict[str, Any]] | None = None):
    """The standings table from the aggregates; ``diffs`` (``paired`` on the competing
    settings) gives each default or fixed row its difference from the leader at its size."""
    def rounded(x: float) -> float:  # 6 places: shown at 2, so a mean of 0.50497 stays "0.50"
        return round(x, 6)

    def vs_leader(a: dict[str, Any]) -> dict[str, Any]:
        d = (diffs or {}).get((a["inputs"], entry(a)))
        if a["setting"] not in COMPETING or d is None or d["leader"] == entry(a):
            return {}
        return {"vs": d["leader"], "diff": rounded(d["diff"]),
                "diff_ci95": (rounded(d["ci95"][0]), rounded(d["ci95"][1])) if d["ci95"] else None}

    rows = tuple(Standing(method=a["method"], inputs=a["inputs"], mean=rounded(a["mean"]),
                          params={k: v for k, v in a["params"].items() if k != WEIGHT}
                          if a["setting"] == "default" else a["params"],
                          label=entry(a),
                          ci95=(rounded(a["ci95"][0]), rounded(a["ci95"][1])) if a["ci95"] else None,
                          n=a["n"], setting=a["setting"],
                          fuse_seconds=round(a["fuse_seconds"], 3), **vs_leader(a))
                 for a in aggregates)
    return Standings(rows, evidence, seed_table=False)


def measured(rows: Sequence[dict[str, Any]]) -> str:
    """What the rows cover, for the standings' evidence line: sizes and subsets per size,
    and whether any setting was tuned (a resumed run may hold more than its arguments)."""
    per: dict[int, set[int]] = {}
    for r in rows:
        per.setdefault(r["size"], set()).add(r["subset"])
    sizes = ", ".join(f"{k} ({len(v)} subset{'s' * (len(v) != 1)})"
                      for k, v in sorted(per.items()))
    have = {r["setting"] for r in rows}
    settings = [x for x in SETTINGS if x in have]
    said = ", ".join(settings[:-1]) + " and " + settings[-1] if len(settings) > 1 else settings[0]
    return f"sizes {sizes}, {said} settings"


def scope(keep: Container[str] | None, min_gain: float) -> str:
    """Which tasks the means are over, in words."""
    if keep is None:
        return "means over every task"
    return (f"means over the {len(keep)} tasks whose own adapter is at least "
            f"{min_gain * 100:.0f} points above the base model")


def print_table(aggregates: Sequence[dict[str, Any]]) -> None:
    print("| inputs | method | setting | params | mean normalised | 95% interval | n | "
          "fuse (s) |")
    print("|---:|---|---|---|---:|---|---:|---:|")
    for a in aggregates:
        ci = f"[{a['ci95'][0]:.2f}, {a['ci95'][1]:.2f}]" if a["ci95"] else "-"
        print(f"| {a['inputs']} | {a['method']} | {a['setting']} | "
              f"{json.dumps(a['params'], sort_keys=True)} | {a['mean']:.2f} | {ci} | {a['n']} | "
              f"{a['fuse_seconds']:.2f} |")


def print_curve(aggregates: Sequence[dict[str, Any]],
                settings: Collection[str] = COMPETING) -> None:
    """One row a method (a fixed setting a row of its own), one column a size (mean
    normalised accuracy [95% interval]), sorted by the mean at the largest size; the last
    column is the fuse time there."""
    ags = [a for a in aggregates if a["setting"] in settings]
    if not ags:
        print(f"no rows with the {' or '.join(settings)} setting")
        return
    sizes = sorted({a["inputs"] for a in ags}, reverse=True)
    cell = {(entry(a), a["inputs"]): a for a in ags}
    subsets = {k: max(a["subsets"] for a in ags if a["inputs"] == k) for k in sizes}
    top = sizes[0]

    def rank(method: str) -> tuple[float, ...]:  # by the largest size, then the next
        return tuple(-cell[method, k]["mean"] if (method, k) in cell else math.inf
                     for k in sizes)

    heads = [f"{k} inputs ({subsets[k]} subset{'s' * (subsets[k] != 1)})" for k in sizes]
    print("| method | " + " | ".join(heads) + f" | fuse at {top} (s) |")
    print("|---|" + "---|" * len(sizes) + "---:|")
    for m in sorted({entry(a) for a in ags}, key=lambda m: (rank(m), m)):
        cells = []
        for k in sizes:
            a = cell.get((m, k))
            ci = (f" [{a['ci95'][0]:.2f}, {a['ci95'][1]:.2f}]" if a and a["ci95"] else "")
            cells.append(f"{a['mean']:.2f}{ci}" if a else "-")
        t = cell.get((m, top))
        secs = f"{t['fuse_seconds']:.2f}" if t else "-"
        print(f"| {m} | " + " | ".join(cells) + f" | {secs} |")


def paired(rows: Sequence[dict[str, Any]], keep: Container[str] | None = None,
           settings: Collection[str] = COMPETING) -> dict[tuple[int, str], dict[str, Any]]:
    """Per (size, ``entry``): its difference from the size's leader (the highest mean) over
    the same (subset, task) scores, with the t interval over subsets (over tasks when a size
    has one subset). Every method is scored on the same tasks, so this answers "is the leader
    ahead of it" directly, where the overlap of two methods' own intervals does not."""
    scores: dict[tuple[int, str], dict[tuple[int, str], float]] = {}
    for r in rows:
        if r["setting"] not in settings:
            continue
        got = scores.setdefault((r["size"], entry(r)), {})
        for task, v in r["normalised"].items():
            if keep is None or task in keep:
                got[(r["subset"], task)] = v
    out: dict[tuple[int, str], dict[str, Any]] = {}
    for size in sorted({k for k, _ in scores}):
        here = {m: v for (k, m), v in scores.items() if k == size and v}
        if not here:
            continue
        leader = max(sorted(here), key=lambda m: statistics.fmean(here[m].values()))
        for m, v in here.items():
            per: dict[int, list[float]] = {}
            for key in sorted(v.keys() & here[leader].keys()):
                per.setdefault(key[0], []).append(v[key] - here[leader][key])
            mean, ci = interval(list(per.values()))
            out[(size, m)] = {"leader": leader, "diff": mean, "ci95": ci}
    return out


def print_paired(rows: Sequence[dict[str, Any]], keep: Container[str] | None = None,
                 settings: Collection[str] = COMPETING) -> None:
    """The curve as differences from each column's leader (same tasks, paired), one row a
    method, sorted by the difference at the largest size."""
    diffs = paired(rows, keep, settings)
    if not diffs:
        return
    sizes = sorted({k for k, _ in diffs}, reverse=True)
    leaders = {k: d["leader"] for (k, _), d in diffs.items()}

    def rank(method: str) -> tuple[float, ...]:
        return tuple(-diffs[k, method]["diff"] if (k, method) in diffs else math.inf
                     for k in sizes)

    print("| method | " + " | ".join(f"{k} inputs: minus {leaders[k]}" for k in sizes) + " |")
    print("|---|" + "---|" * len(sizes))
    for m in sorted({m for _, m in diffs}, key=lambda m: (rank(m), m)):
        cells = []
        for k in sizes:
            d = diffs.get((k, m))
            if d is None:
                cells.append("-")
            elif m == leaders[k]:
                cells.append("leader")
            else:
                ci = f" [{d['ci95'][0]:+.2f}, {d['ci95'][1]:+.2f}]" if d["ci95"] else ""
                cells.append(f"{d['diff']:+.2f}{ci}")
        print(f"| {m} | " + " | ".join(cells) + " |")


def tuned_vs_default(rows: Sequence[dict[str, Any]], keep: Container[str] | None = None
                     ) -> list[dict[str, Any]]:
    """Per (size, method) with tuned rows: the tuned and the default mean over the same
    subsets (those the tuned setting reached), the setting chosen most often and its
    validation mean: what tuning on validation buys on test."""
    def mean(setting: str, size: int, method: str, subsets: set[int]) -> float | None:
        vals = [v for r in rows if (r["size"], r["method"], r["setting"]) == (size, method,
                                                                                setting)
                and r["subset"] in subsets
                for k, v in r["normalised"].items() if keep is None or k in keep]
        return statistics.fmean(vals) if vals else None

    out = []
    tuned = [r for r in rows if r["setting"] == "tuned"]
    for size, method in sorted({(r["size"], r["method"]) for r in tuned}):
        mine = [r for r in tuned if (r["size"], r["method"]) == (size, method)]
        subsets = {r["subset"] for r in mine}
        chosen = [json.dumps(r["params"], sort_keys=True) for r in mine]
        vals = [r["validation"] for r in mine if r.get("validation") is not None]
        out.append({"inputs": size, "method": method, "subsets": len(subsets),
                    "params": json.loads(max(set(chosen), key=chosen.count)),
                    "tuned": mean("tuned", size, method, subsets),
                    "default": mean("default", size, method, subsets),
                    "validation": statistics.fmean(vals) if vals else None})
    return out


def print_tuned(rows: Sequence[dict[str, Any]], keep: Container[str] | None = None) -> None:
    """``tuned_vs_default`` as a table, by size, then by the tuned mean."""
    got = tuned_vs_default(rows, keep)
    if not got:
        print("no tuned rows yet")
        return
    print("| inputs | method | tuned setting | validation | test, tuned | test, default | "
          "tuned - default |")
    print("|---:|---|---|---:|---:|---:|---:|")

    def num(x: float | None, sign: str = "") -> str:
        return "-" if x is None else f"{x:{sign}.2f}"

    for g in sorted(got, key=lambda g: (g["inputs"], -(g["tuned"] or 0), g["method"])):
        d = (g["tuned"] - g["default"]
             if g["tuned"] is not None and g["default"] is not None else None)
        params = params_text(g["params"]) or "-"
        print(f"| {g['inputs']} | {g['method']} | {params} | {num(g['validation'])} | "
              f"{num(g['tuned'])} | {num(g['default'])} | {num(d, '+')} |")


# the seed table ----------------------------------------------------------------------------
# Per-task normalised scores of the one quality run recorded in docs/benchmarks.md (Fusion,
# 2026-11-23: `python -m benchmarks.fusion quality --threads 1 --n-eval 30`): 4 SmolLM2-135M
# task adapters fused at once (bbc_topic, food_sentiment, uppercase, count_words), 30 test
# examples per task, default parameters (density 0.5), weight 1.
SEED_RUN: list[tuple[str, dict[str, Any], list[float], float]] = [
    ("task_arithmetic", {}, [0.76, 0.83, 0.00, 0.50], 0.03),
    ("linear", {}, [0.21, 0.83, 0.00, 0.00], 0.01),
    ("svd", {}, [0.76, 0.83, 0.00, 0.50], 0.06),
    ("ties_svd", {"density": 0.5}, [0.86, 0.83, 0.18, 0.50], 6.30),
    ("dare_ties_svd", {"density": 0.5}, [0.86, 0.83, 0.00, 0.60], 6.62),
    ("core_space", {}, [0.79, 0.83, 0.27, 0.80], 0.09),
    ("tsv", {}, [0.86, 0.94, 0.27, 0.80], 0.22),
    ("knots", {}, [0.83, 0.72, 0.09, 0.50], 0.10),
    ("iso_c", {}, [0.79, 0.89, 0.73, 0.30], 0.17),
    ("iso_cts", {}, [0.79, 0.89, 0.73, 0.30], 0.20),
    ("star", {}, [0.86, 1.00, 0.09, 0.50], 0.14),
    ("cart", {}, [0.90, 0.94, 0.91, 0.60], 0.14),
]
SEED_EVIDENCE = ("seed table (the curve has not run yet): 4 SmolLM2-135M adapters fused once, "
                 "4 task scores of 30 test examples each (docs/benchmarks.md, Fusion)")


def seed_standings():
    rows = []
    for method, params, scores, secs in SEED_RUN:
        mean, ci = mean_ci95(scores)
        rows.append(Standing(method=method, inputs=4, mean=round(mean, 4), params=params,
                             label=method, ci95=(round(ci[0], 4), round(ci[1], 4)) if ci else None,
                             n=len(scores), setting="default", fuse_seconds=secs))
    return Standings(tuple(rows), SEED_EVIDENCE, seed_table=True)


def standings_path() -> Path:
    return Path(__file__).resolve().parents[1] / "compose" / "fusion" / "standings.json"


def _write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    tmp.replace(path)


def write_standings(rows: Sequence[dict[str, Any]], scores: dict[str, dict[str, float]],
                    keep: Container[str] | None, min_gain: float) -> None:
    """Replace ``fuse``'s standings with those of ``rows`` (already ``finished`` by the
    caller), from the sizes where every method has a default-setting score."""
    from lorahive.compose.fusion import all_methods
    from lorahive.compose.fusion import standings as st

    agg = aggregate(rows, keep)
    sizes = complete_sizes(agg, [m.name for m in all_methods()])
    if not sizes:
        raise SystemExit("no size has every method scored: the standings are unchanged")
    agg = [x for x in agg if x["inputs"] in sizes]
    examples = [s["examples"] for s in scores.values()]
    evidence = (f"benchmarks/fusion_curve.py: {len(scores)} task adapters; "
                f"{measured(rows)}; {min(examples)}-{max(examples)} test examples per task; "
                f"{scope(keep, min_gain)}; n counts normalised task scores")
    st.write(standings_from(sorted(agg, key=lambda x: SETTINGS.index(x["setting"])), evidence,
                            paired(rows, keep, COMPETING)), standings_path())
    print(f"wrote {standings_path()} from sizes {', '.join(map(str, sizes))}")


def main() -> None:
    from lorahive.compose.fusion import standings as st

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("part", choices=["run", "table", "standings", "seed"],
                   help="run: fuse and score (resumes); table: print the saved rows; "
                        "standings: write fuse's standings from the saved rows; seed: write "
                        "the seed table")
    p.add_argument("--tasks", help="module:function returning a list of CurveTask")
    p.add_argument("--sizes", default=",".join(map(str, SIZES)))
    p.add_argument("--subsets", type=int, default=3)
    p.add_argument("--methods", default="", help="comma-separated (default: every method)")
    p.add_argument("--no-tune", action="store_true", help="default settings only")
    p.add_argument("--fixed", action="append", default=[], metavar="METHOD:NAME=VALUE",
                   help="also score this setting on every subset (repeatable, one a method)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rows", type=Path, default=ROWS,
                   help=f"where every scored row is written (default {ROWS})")
    p.add_argument("--fresh", action="store_true", help="ignore the rows of an earlier run")
    p.add_argument("--write-standings", action="store_true",
                   help="replace compose/fusion/standings.json with this run's standings")
    p.add_argument("--setting", choices=["default", FIXED, "tuned"], default="default",
                   help="table: the default settings; fixed: the default and fixed ones "
                        "(what fuse chooses among); tuned: the tuned ones")
    p.add_argument("--experts", type=Path, default=EXPERTS,
                   help=f"each task's own-adapter and base-model test accuracy (default {EXPERTS})")
    p.add_argument("--min-gain", type=float, default=MIN_GAIN,
                   help="a task counts when its own adapter is this far above the base model")
    p.add_argument("--all-tasks", action="store_true",
                   help="average over every task, experts or not")
    a = p.parse_args()
    if a.part in ("table", "standings"):
        if not a.rows.exists():
            raise SystemExit(f"no rows at {a.rows}: run the curve first")
        rows = finished(json.loads(a.rows.read_text()))
        if not a.experts.exists():
            raise SystemExit(f"no expert scores at {a.experts}: run the curve first")
        scores = json.loads(a.experts.read_text())
        keep = None if a.all_tasks else experts(scores, a.min_gain)
        if a.part == "standings":
            write_standings(rows, scores, keep, a.min_gain)
            return
        print(f"{a.rows}: {measured(rows)}; {scope(keep, a.min_gain)}")
        settings = COMPETING if a.setting == FIXED else (a.setting,)
        print_curve(aggregate(rows, keep), settings)
        print("\nEach method minus the column's leader, on the same tasks (paired):")
        print_paired(rows, keep, settings)
        if a.setting == "tuned":
            print("\nTuned on validation against the default, on the same subsets (test):")
            print_tuned(rows, keep)
        return
    if a.part == "seed":
        st.write(seed_standings(), standings_path())
        print(f"wrote {standings_path()}")
        return
    if not a.tasks:
        raise SystemExit("--tasks module:function is required (it returns the CurveTask list)")
    mod, _, fn = a.tasks.partition(":")
    fixed = parse_fixed(a.fixed)
    tasks = getattr(importlib.import_module(mod), fn)()
    sizes = [int(x) for x in a.sizes.split(",")]
    t0 = time.perf_counter()
    scores = expert_scores(tasks, a.experts)
    keep = None if a.all_tasks else experts(scores, a.min_gain)
    if keep is not None:
        print(f"experts: {len(keep)} of {len(tasks)} tasks; the others (own adapter less than "
              f"{a.min_gain * 100:.0f} points above the base model): "
              + ", ".join(sorted(set(scores) - keep)))
    done = json.loads(a.rows.read_text()) if a.rows.exists() and not a.fresh else []
    if done:
        print(f"resuming: {len(done)} rows from {a.rows} are kept (--fresh starts over)")
    rows = run_curve(tasks, sizes, a.subsets, [m for m in a.methods.split(",") if m],
                     a.seed, not a.no_tune, done=done,
                     on_rows=lambda rs: _write_json(a.rows, rs),
                     own_test={n: s["own"] for n, s in scores.items()}, score_only=keep,
                     fixed=fixed)
    rows = finished(rows)
    print_table(aggregate(rows, keep))
    if a.write_standings:
        write_standings(rows, scores, keep, a.min_gain)
    print(f"({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
