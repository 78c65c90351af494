"""The held-out suite: every row on every held-out task, mean accuracy with a 95% interval.

    python -m benchmarks.library build                 # once: the candidate library
    python -m benchmarks.suite [--quick] [--rows a,b] [--tasks a,b] [--seeds 0,1,2]

A row is one way of answering a task from five examples (zero-shot, in-context, a mix of
library adapters, a fine-tune, ...): a function ``(task, shots, seed, ctx) -> predictions``
registered with ``@row``; ``benchmarks.suite_rows`` holds them. Every row is scored by the
same evaluator (``benchmarks.suite_eval``) on the same 100 examples per task; a seed draws the
five shots. Each finished (row, task, seed) is written as JSON under
``$LORAHIVE_BENCH_CACHE/suite/results/`` with a key (evaluation set, shots, library and row
version); a rerun reuses every entry whose key still matches, so an interrupted run resumes
and a new row costs only itself. The table (task x row: mean [95% interval], in %) is printed
and written as Markdown; ``benchmarks.suite_stats`` says how the interval is computed.

``--quick``: 3 tasks (one per kind), seed 0, the first 50 evaluation examples, every row
but the upper bound.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks.corpora import Item
from benchmarks.smollm2 import CACHE
from benchmarks.suite_stats import interval
from benchmarks.suite_tasks import N_EVAL, SUITE, SuiteTask, draw_shots, splits

RESULTS = CACHE / "suite" / "results"
QUICK_TASKS = ("news_sport_yesno", "boolean_xor", "last_word_upper")
SEEDS = (0, 1, 2)


@dataclass
class TaskData:
    spec: SuiteTask
    pool: list[Item]
    eval: list[Item]
    labels: list[str] | None
    max_new_tokens: int

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def references(self) -> list[str]:
        return [e.output for e in self.eval]


@dataclass
class RowOutput:
    predictions: list[str]
    info: dict[str, Any] = field(default_factory=dict)


RowFn = Callable[[TaskData, list[Item], int, "Context"], "RowOutput | list[str]"]


@dataclass(frozen=True)
class Row:
    name: str
    title: str
    fn: RowFn
    seeded: bool = True  # False: the result does not depend on the shots (run once)
    library: bool = False  # reads the candidate library (its fingerprint joins the key)
    version: int = 1  # bump when the row's method changes: cached results are redone
    quick: bool = True


ROWS: dict[str, Row] = {}


def row(name: str, title: str, *, seeded: bool = True, library: bool = False,
        version: int = 1, quick: bool = True):
    """Register ``fn(task, shots, seed, ctx)`` as a row of the suite."""
    def deco(fn: RowFn) -> RowFn:
        ROWS[name] = Row(name, title, fn, seeded, library, version, quick)
        return fn
    return deco


def examples_key(items: Sequence[Item]) -> str:
    h = hashlib.sha256()
    for e in items:
        h.update(json.dumps([e.input, e.output]).encode())
    return h.hexdigest()[:16]


def head(items: Sequence[Item], n: int, labels: Sequence[str] | None) -> list[Item]:
    """The first ``n`` evaluation examples; for a label set, taking the labels in turn, so that
    a short evaluation (``--quick``) is as balanced as the whole set (whose order follows the
    task's generator: one news task's first 50 were 39 "no" to 11 "yes")."""
    if n >= len(items) or not labels:
        return list(items[:n])
    groups = {lab: [i for i, e in enumerate(items) if e.output == lab] for lab in labels}
    picked: list[int] = []
    while len(picked) < n:
        for lab in labels:
            if groups[lab] and len(picked) < n:
                picked.append(groups[lab].pop(0))
    return [items[i] for i in sorted(picked)]


def task_data(name: str, n_eval: int = N_EVAL) -> TaskData:
    from lorahive.compose.composer.evaluate import label_set

    pool, whole = splits(name)
    labels = label_set(list(pool) + list(whole))
    ev = head(whole, n_eval, labels)
    longest = max(len(e.output.split()) for e in list(pool) + ev)
    return TaskData(SUITE[name], list(pool), ev, labels, max_new_tokens=4 * longest + 8)


class Context:
    """What rows share: the base model (loaded once), the evaluator, the candidate library,
    LoRAHub's loaded modules, and where rows may keep files. Heavy parts load on first use."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.work = CACHE / "suite" / "work"

    @cached_property
    def base_dir(self) -> Path:
        from benchmarks.smollm2 import smollm2_dir

        return smollm2_dir()

    @cached_property
    def base(self):
        from lorahive.compose.composer.model import load_base

        return load_base(self.base_dir, self.args.device, "float32")

    @cached_property
    def predictor(self):
        from benchmarks.suite_eval import Predictor

        return Predictor(self.base.model, self.base.tokenizer, self.args.eval_batch)

    def predict(self, task: TaskData, adapter=None, prefix: str = "") -> list[str]:
        """The row's answers on the evaluation set: ``adapter`` (a ``hub.Adapter``) added to
        the base weights, ``prefix`` written before every prompt."""
        from benchmarks.suite_eval import applied

        with applied(self.base.model, adapter):
            return self.predictor.predict([e.input for e in task.eval], task.labels,
                                          task.max_new_tokens, prefix)

    @cached_property
    def library_dirs(self) -> list[str]:
        from benchmarks.library import library_dirs

        dirs = [str(d) for d in library_dirs()]
        if len(dirs) < 2:
            raise SystemExit("build the library first: python -m benchmarks.library build")
        return dirs

    @cached_property
    def library_key(self) -> str:
        from lorahive.hub.manifest import weights_sha256

        h = hashlib.sha256()
        for d in self.library_dirs:
            h.update(f"{Path(d).name}:{weights_sha256(d)}\n".encode())
        return h.hexdigest()[:16]

    @cached_property
    def candidates(self):
        from lorahive.compose.composer import resolve_candidates

        return resolve_candidates(self.library_dirs)

    @cached_property
    def lorahub(self):
        """LoRAHub's loader run once on the whole library (model, tokenizer, state dicts);
        rows pass it the subset they draw (its ``get_score`` mixes what the cache holds)."""
        from benchmarks.lorahub_ref import reference_loader

        return reference_loader(self.library_dirs, str(self.base_dir), causal=True)


# --- caching ------------------------------------------------------------------------------------
def result_path(r: Row, task: str, seed: int | None, n_eval: int) -> Path:
    return RESULTS / r.name / task / f"{'all' if seed is None else f'seed{seed}'}-n{n_eval}.json"


def result_key(r: Row, task: TaskData, shots: Sequence[Item] | None, ctx: Context) -> dict:
    from benchmarks.suite_eval import VERSION

    key = {"row": r.name, "version": r.version, "evaluator": VERSION,
           "eval": examples_key(task.eval)}
    if shots is not None:
        key["shots"] = examples_key(shots)
    if r.library:
        key["library"] = ctx.library_key
    return key


def load_result(path: Path, key: dict) -> dict | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    return data if data.get("key") == key else None


def save_result(path: Path, data: dict) -> None:
    from lorahive.hub.atomic import atomic_file

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path, "w") as fh:
        json.dump(data, fh, indent=1)


def run_cell(r: Row, task: TaskData, seed: int | None, ctx: Context, log=print,
             cached_only: bool = False) -> dict | None:
    """One (row, task, seed): from the cache when its key matches, else computed and saved
    (``cached_only``: else ``None``)."""
    from benchmarks.suite_eval import correct

    shots = draw_shots(task.name, seed) if seed is not None else None
    path = result_path(r, task.name, seed, len(task.eval))
    key = result_key(r, task, shots, ctx)
    cached = load_result(path, key)
    if cached is not None or cached_only:
        return cached
    t0 = time.perf_counter()
    out = r.fn(task, shots if shots is not None else draw_shots(task.name, 0), seed or 0, ctx)
    if not isinstance(out, RowOutput):
        out = RowOutput(list(out))
    if len(out.predictions) != len(task.eval):
        raise RuntimeError(f"row {r.name} gave {len(out.predictions)} predictions for "
                           f"{len(task.eval)} examples")
    hits = correct(out.predictions, task.references)
    data = {"key": key, "row": r.name, "task": task.name, "seed": seed,
            "accuracy": sum(hits) / len(hits), "correct": hits,
            "predictions": out.predictions, "seconds": round(time.perf_counter() - t0, 2),
            "info": out.info}
    save_result(path, data)
    log(f"  {r.name} / {task.name} / seed {seed}: {data['accuracy']:.1%} "
        f"({data['seconds']:.0f} s)")
    return data


def run(rows: Sequence[Row], tasks: Sequence[str], seeds: Sequence[int], n_eval: int,
        ctx: Context, log=print, cached_only: bool = False
        ) -> dict[tuple[str, str], list[dict]]:
    """Every cell, task by task; returns (row, task) -> results per seed (``cached_only``:
    the finished cells only, nothing computed)."""
    out: dict[tuple[str, str], list[dict]] = {}
    for name in tasks:
        task = task_data(name, n_eval)
        log(f"{name} ({task.spec.kind}; {len(task.eval)} examples, "
            f"{'rank over ' + str(len(task.labels)) + ' labels' if task.labels else 'exact'})")
        for r in rows:
            cells = [run_cell(r, task, seed, ctx, log, cached_only)
                     for seed in (seeds if r.seeded else [None])]
            if all(c is not None for c in cells):  # a row's seeds are all there, or none
                out[(r.name, name)] = cells
    return out


# --- the table ----------------------------------------------------------------------------------
def table(results: dict[tuple[str, str], list[dict]], rows: Sequence[Row],
          tasks: Sequence[str]) -> str:
    head = "| task | " + " | ".join(r.title for r in rows) + " |"
    lines = [head, "|---|" + "---|" * len(rows)]
    means: dict[str, list[float]] = {r.name: [] for r in rows}
    complete = [t for t in tasks if all(results.get((r.name, t)) for r in rows)]
    for t in tasks:
        cells = []
        for r in rows:
            res = results.get((r.name, t))
            if not res:
                cells.append("")
                continue
            iv = interval([x["correct"] for x in res])
            if t in complete:
                means[r.name].append(iv.mean)
            cells.append(iv.format())
        lines.append(f"| {t} | " + " | ".join(cells) + " |")
    # rows are compared on the same tasks: a partial run averages those every row finished
    label = "mean over tasks" if len(complete) == len(tasks) else \
        f"mean over the {len(complete)} tasks every row has"
    lines.append(f"| {label} | " + " | ".join(
        f"{100 * (sum(v) / len(v)):.1f}" if v else "" for v in means.values()) + " |")
    return "\n".join(lines)


# the part-4 targets, and the rows they are measured against
TARGET_BEATS, TARGET_APART, TARGET_GAIN, TARGET_SHARE = 10 / 12, 6 / 12, 0.05, 0.90
REFERENCES = ("zero_shot", "lorahub", "lora_ft")


def targets(results: dict[tuple[str, str], list[dict]], rows: Sequence[Row],
            tasks: Sequence[str]) -> str:
    """Each row against the targets, on the tasks where it and the three reference rows
    (zero-shot, LoRAHub, the 5-shot LoRA fine-tune) all finished; "" when a reference is
    missing. Beating zero-shot counts means; "apart" counts intervals that do not overlap;
    "worse" counts tasks where the row's interval lies wholly below zero-shot's."""
    names = [r.name for r in rows]
    if not set(REFERENCES) <= set(names):
        return ""
    lines = ["| row | tasks | beats zero-shot | intervals apart | worse beyond the interval | "
             "mean | mean - LoRAHub | share of the LoRA fine-tune | targets met |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r.name in REFERENCES or r.name == "upper":
            continue
        done = [t for t in tasks if all(results.get((n, t)) for n in (*REFERENCES, r.name))]
        if not done:
            continue
        iv = {(n, t): interval([x["correct"] for x in results[(n, t)]])
              for t in done for n in (*REFERENCES, r.name)}
        z = [iv[("zero_shot", t)] for t in done]
        x = [iv[(r.name, t)] for t in done]
        beats = sum(a.mean > b.mean for a, b in zip(x, z, strict=True))
        apart = sum(a.low > b.high for a, b in zip(x, z, strict=True))
        worse = [t for t, a, b in zip(done, x, z, strict=True) if a.high < b.low]
        mean = {n: sum(iv[(n, t)].mean for t in done) / len(done)
                for n in (*REFERENCES, r.name)}
        m, gain = mean[r.name], mean[r.name] - mean["lorahub"]
        share = m / mean["lora_ft"] if mean["lora_ft"] else float("nan")
        met = [beats >= TARGET_BEATS * len(done), apart >= TARGET_APART * len(done),
               gain >= TARGET_GAIN, share >= TARGET_SHARE, not worse]
        lines.append(
            f"| {r.title} | {len(done)} | {beats} | {apart} | "
            f"{len(worse)}{' (' + ', '.join(worse) + ')' if worse else ''} | {100 * m:.1f} | "
            f"{100 * gain:+.1f} | {100 * share:.0f}% | {sum(met)} of 5 |")
    head = (f"Targets: beats zero-shot on at least {TARGET_BEATS:.0%} of the tasks (10 of 12), "
            f"intervals apart on at least {TARGET_APART:.0%} (6 of 12), mean at least "
            f"{100 * TARGET_GAIN:.0f} points above LoRAHub and at least {TARGET_SHARE:.0%} of "
            "the 5-shot LoRA fine-tune, never below zero-shot beyond the interval.")
    return head + "\n\n" + "\n".join(lines) if len(lines) > 2 else ""


def costs(results: dict[tuple[str, str], list[dict]], rows: Sequence[Row]) -> str:
    lines = ["| row | cells | seconds (total) | seconds / cell | evaluations / search |",
             "|---|---|---|---|---|"]
    for r in rows:
        cells = [x for (rn, _), v in results.items() if rn == r.name for x in v]
        if not cells:
            continue
        total = sum(x["seconds"] for x in cells)
        evals = sorted({x["info"].get("evaluations") for x in cells} - {None})
        reused = sum(1 for x in cells if x["info"].get("search_reused"))
        lines.append(f"| {r.title} | {len(cells)} | {total:.0f} | {total / len(cells):.0f} | "
                     f"{', '.join(map(str, evals))}"
                     + (f" ({reused} {'cell' if reused == 1 else 'cells'} reused an earlier "
                        "cell's search)" if reused else "")
                     + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    import benchmarks.suite_rows  # noqa: F401  (registers the rows)

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="3 tasks, seed 0, 50 examples")
    ap.add_argument("--rows", help=f"comma-separated, of {', '.join(ROWS)}")
    ap.add_argument("--tasks", help=f"comma-separated, of {', '.join(SUITE)}")
    ap.add_argument("--seeds", help="comma-separated few-shot seeds (default 0,1,2)")
    ap.add_argument("--n-eval", type=int, help=f"evaluation examples per task (default {N_EVAL})")
    ap.add_argument("--budget", type=int, default=40, help="evaluations per search (LoRAHub's)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    ap.add_argument("--eval-batch", type=int, default=16)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, default=CACHE / "suite" / "table.md")
    ap.add_argument("--cached", action="store_true",
                    help="the table of the finished cells only; compute nothing")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    rows = [ROWS[r] for r in args.rows.split(",")] if args.rows else \
        [r for r in ROWS.values() if r.quick or not args.quick]
    tasks = args.tasks.split(",") if args.tasks else list(QUICK_TASKS if args.quick else SUITE)
    unknown = sorted(set(tasks) - set(SUITE))
    if unknown:
        raise SystemExit(f"unknown tasks: {', '.join(unknown)}")
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else \
        ([0] if args.quick else list(SEEDS))
    n_eval = args.n_eval or (50 if args.quick else N_EVAL)
    ctx = Context(args)
    t0 = time.time()
    results = run(rows, tasks, seeds, n_eval, ctx, cached_only=args.cached)
    text = table(results, rows, tasks)
    goal = targets(results, rows, tasks)
    cost = costs(results, rows)
    text = text + ("\n\n" + goal if goal else "")
    print("\n" + text + "\n\n" + cost)
    meta = (f"{len(tasks)} tasks, seeds {','.join(map(str, seeds))}, {n_eval} evaluation "
            f"examples, budget {args.budget}; {platform.machine()} CPU, {os.cpu_count()} cores, "
            f"torch threads {args.threads}, device {args.device}; wall {time.time() - t0:.0f} s "
            "(cached cells cost nothing)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(f"{meta}\n\n{text}\n\n{cost}\n")
    print(f"\n{meta}\nwrote {args.out}")


if __name__ == "__main__":
    # run the imported module's main: rows register into ``benchmarks.suite``, not __main__
    from benchmarks.suite import main as _main

    _main()
