"""The composer on a real LM: SmolLM2-135M-Instruct, 9 task adapters, held-out tasks.

For each held-out task (5 few-shot examples, disjoint held-out examples): zero-shot, the best
single candidate (lowest few-shot objective), the uniform average, LoRAHub's own loop (its
loader and ``get_score`` with NGOpt and PEFT), and lorahive's composer in modes ``ab`` and
``delta`` with 1 and 4 workers — same model, candidates, examples, budget and seed. Accuracy is
rank classification over the task's labels, computed for every method by the same evaluator
(for LoRAHub's weights through the ``ab`` mixer, whose objective equals its ``get_score``).

    python -m benchmarks.train_task_adapters   # once, ~10 min of CPU
    python -m benchmarks.compose [--tasks a,b,c] [--budget 40] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.lorahub_ref import reference_loader, run_reference
from benchmarks.smollm2 import CACHE, smollm2_dir
from benchmarks.tasks import HELD_OUT, few_shot_split
from benchmarks.train_task_adapters import ADAPTERS
from compose.composer import Composer, SearchConfig, resolve_candidates
from compose.composer.evaluate import label_set
from compose.composer.model import load_base

DEFAULT_TASKS = "news_sport_yesno,review_liked_yesno,question_domain"


def _row(task: str, method: str, acc: float, obj: float, per_eval: float | None = None,
         total: float | None = None, weights: np.ndarray | None = None) -> dict:
    return {"task": task, "method": method, "accuracy": acc, "objective": obj,
            "ms_per_eval": None if per_eval is None else per_eval * 1000,
            "search_s": total, "weights": None if weights is None else
            [round(float(x), 4) for x in weights]}


def overhead_per_eval(comp: Composer, ref_model, cache, n: int, reps: int = 20
                      ) -> tuple[float, float]:
    """Seconds per evaluation spent outside the forward pass: our re-mix vs LoRAHub's
    state-dict composition and reload (its ``get_score`` with a zero loss)."""
    from lorahub.algorithm import default_l1_regularization, get_score

    rng = np.random.default_rng(0)
    W = rng.uniform(-1.5, 1.5, (reps, n))
    t = time.perf_counter()
    for w in W:
        comp.mixer.set_weights(torch.as_tensor(w[None], dtype=torch.float32))
    ours = (time.perf_counter() - t) / reps
    t = time.perf_counter()
    for w in W:
        get_score(w, ref_model, cache, None, None, lambda *_: 0.0, default_l1_regularization)
    ref = (time.perf_counter() - t) / reps
    return ours, ref


def run_task(task: str, bm, dirs: list[str], loaded, args) -> list[dict]:
    shots, held = few_shot_split(task, args.shots, args.n_eval, args.seed)
    labels = label_set(shots + held)
    n = len(dirs)
    rows: list[dict] = []
    cfg = SearchConfig(budget=args.budget, seed=args.seed)

    with Composer(bm, resolve_candidates(dirs), shots, mode="ab") as comp:
        comp.score(np.zeros((4, n)))  # warm-up: first passes allocate

        def acc(w) -> float:
            return comp.accuracy(w, held, labels).accuracy

        zero = np.zeros(n)
        rows.append(_row(task, "zero-shot", acc(zero), float(comp.score(zero[None])[0])))
        singles = comp.score(np.eye(n))
        best = int(np.argmin(singles))
        rows.append(_row(task, f"best single ({Path(dirs[best]).name})", acc(np.eye(n)[best]),
                         float(singles[best])))
        uni = np.full(n, 1.0 / n)
        rows.append(_row(task, "uniform average (ab)", acc(uni), float(comp.score(uni[None])[0])))

        run_reference(dirs, str(bm.path), [e.input for e in shots], [e.output for e in shots],
                      1, args.seed, loaded)  # warm-up, as ours
        ref = run_reference(dirs, str(bm.path), [e.input for e in shots],
                            [e.output for e in shots], args.budget, args.seed, loaded)
        rows.append(_row(task, "LoRAHub reference (NGOpt)", acc(ref.weights), ref.objective,
                         ref.seconds_per_eval, ref.search_seconds, ref.weights))
        for workers in (1, 4):
            t = time.perf_counter()
            res = comp.search(SearchConfig(**{**cfg.__dict__, "workers": workers}))
            wall = time.perf_counter() - t
            rows.append(_row(task, f"lorahive ab, workers {workers}", acc(res.weights),
                             res.objective, res.seconds_per_eval, wall, res.weights))
            if workers == 1:
                rows[-1]["same_trace_as_reference"] = bool(np.allclose(
                    res.trace, ref.trace, rtol=1e-4, atol=1e-5))
        mix_s, ref_overhead_s = overhead_per_eval(comp, loaded[0], loaded[2], n)
    with Composer(bm, resolve_candidates(dirs), shots, mode="delta") as comp:
        comp.score(np.zeros((4, n)))
        for workers in (1, 4):
            t = time.perf_counter()
            res = comp.search(SearchConfig(**{**cfg.__dict__, "workers": workers}))
            wall = time.perf_counter() - t
            a = comp.accuracy(res.weights, held, labels).accuracy
            rows.append(_row(task, f"lorahive delta, workers {workers}", a, res.objective,
                             res.seconds_per_eval, wall, res.weights))
    for r in rows:
        r.update(labels=labels, shots=len(shots), n_eval=len(held),
                 overhead_ms={"lorahive_mix": mix_s * 1000, "lorahub_reload": ref_overhead_s * 1000})
    return rows


def print_table(rows: list[dict]) -> str:
    head = "| task | method | held-out acc | objective | ms / eval | search s |"
    lines = [head, "|" + "---|" * 6]
    for r in rows:
        ms = "" if r["ms_per_eval"] is None else f"{r['ms_per_eval']:.0f}"
        tot = "" if r["search_s"] is None else f"{r['search_s']:.1f}"
        lines.append(f"| {r['task']} | {r['method']} | {r['accuracy']:.1%} | "
                     f"{r['objective']:.4f} | {ms} | {tot} |")
    text = "\n".join(lines)
    print(text, flush=True)
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default=DEFAULT_TASKS, help=f"of {', '.join(HELD_OUT)}")
    ap.add_argument("--budget", type=int, default=40)
    ap.add_argument("--shots", type=int, default=5)
    ap.add_argument("--n-eval", type=int, default=40)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=CACHE / "compose_results.json")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)
    base = smollm2_dir()
    dirs = sorted(str(p) for p in ADAPTERS.iterdir() if (p / "adapter_model.safetensors").exists())
    if len(dirs) < 2:
        raise SystemExit("train the candidates first: python -m benchmarks.train_task_adapters")
    print(f"{len(dirs)} candidates: {', '.join(Path(d).name for d in dirs)}", flush=True)
    bm = load_base(base, "cpu", "float32")
    loaded = reference_loader(dirs, str(base), causal=True)
    rows: list[dict] = []
    t0 = time.time()
    for task in args.tasks.split(","):
        rows += run_task(task, bm, dirs, loaded, args)
        print_table([r for r in rows if r["task"] == task])
    table = print_table(rows)
    meta = {"machine": f"{platform.machine()} CPU, {os.cpu_count()} cores, torch threads "
                       f"{args.threads}, no GPU", "budget": args.budget, "shots": args.shots,
            "seed": args.seed, "candidates": [Path(d).name for d in dirs],
            "wall_s": time.time() - t0}
    args.out.write_text(json.dumps({"meta": meta, "rows": rows, "table": table}, indent=2))
    print(f"\n{meta}\nwrote {args.out}")


if __name__ == "__main__":
    main()
