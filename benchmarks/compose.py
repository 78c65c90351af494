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
from benchmarks.roofline import update_peaks
from benchmarks.smollm2 import CACHE, smollm2_dir
from benchmarks.tasks import HELD_OUT, few_shot_split
from benchmarks.train_task_adapters import ADAPTERS
from lorahive.compose.composer import Composer, SearchConfig, resolve_candidates
from lorahive.compose.composer.evaluate import label_set
from lorahive.compose.composer.model import load_base

DEFAULT_TASKS = "news_sport_yesno,review_liked_yesno,question_domain,last_word_upper"


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


def speed(task: str, bm, bm16, dirs: list[str], loaded, peaks: dict[str, float], args) -> dict:
    """Median ms per evaluation, measured interleaved so machine load hits every method alike:
    LoRAHub's get_score, ours in each mode with K=1 and K=4 vectors per pass (and mode ab in
    bfloat16), one plain forward of the base model over the same examples, and the floor: the
    exact forward's FLOPs at this machine's measured matmul peak (``benchmarks.roofline``)."""
    from lorahub.algorithm import default_l1_regularization, get_score

    from benchmarks.lorahub_ref import reference_causal_get_loss
    from benchmarks.roofline import forward_flops
    from lorahive.compose.composer.objective import token_nll

    shots, _ = few_shot_split(task, args.shots, args.n_eval, args.seed)
    n = len(dirs)
    model, tok, cache = loaded
    ds = {"input": [e.input for e in shots], "output": [e.output for e in shots]}
    get_loss = reference_causal_get_loss(tok)
    W = np.random.default_rng(1).uniform(-1.5, 1.5, (4, n))
    times: dict[str, list[float]] = {}
    enc = None
    objectives: dict[str, np.ndarray] = {}

    def clock(key: str, fn, evals: int) -> None:
        t = time.perf_counter()
        fn()
        times.setdefault(key, []).append((time.perf_counter() - t) / evals * 1000)

    for label, base, mode in (("ab", bm, "ab"), ("delta", bm, "delta"), ("ab bf16", bm16, "ab")):
        with Composer(base, resolve_candidates(dirs), shots, mode=mode) as comp:
            objectives[label] = comp.score(W)
            for _ in range(args.speed_reps):
                update_peaks(peaks, args.device)
                clock("lorahub get_score", lambda: [get_score(
                    w, model, cache, ds, None, get_loss, default_l1_regularization) for w in W], 4)
                clock(f"{label} K=1", lambda c=comp: [c.score(w[None]) for w in W], 4)
                clock(f"{label} K=4", lambda c=comp: c.score(W), 4)
            if base is bm:
                enc = comp.encoded
    with torch.inference_mode():
        for _ in range(args.speed_reps):
            clock("base forward", lambda: token_nll(bm.model, enc).cpu(), 1)
    out = {k: float(np.median(v)) for k, v in times.items()}
    lengths = enc.attention_mask.sum(1).tolist()
    flops = forward_flops(bm.model, lengths, int((enc.labels != -100).sum()))
    out.update(tokens=int(sum(lengths)), task=task, gflop=flops / 1e9)
    out["bf16 objective rel err"] = float(np.max(
        np.abs(objectives["ab bf16"] - objectives["ab"]) / np.abs(objectives["ab"])))
    return out


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


SPEED_COLS = ("lorahub get_score", "ab K=1", "ab K=4", "delta K=1", "delta K=4",
              "ab bf16 K=1", "ab bf16 K=4", "base forward", "floor float32", "floor bfloat16")


def print_speed(rows: list[dict], peaks: dict[str, float]) -> str:
    """Times per evaluation in ms, then the largest speedup over LoRAHub any exact float32
    (bfloat16) evaluation could reach here: its time over the floor (the forward's FLOPs at
    the best matmul throughput measured during the whole run)."""
    for r in rows:
        for k, peak in peaks.items():
            r[f"floor {k}"] = r["gflop"] * 1e9 / peak * 1000
    lines = ["| task | tokens | GFLOP | " + " | ".join(f"{c} ms" for c in SPEED_COLS)
             + " | best ours / LoRAHub | max possible fp32 | max possible bf16 |",
             "|" + "---|" * (len(SPEED_COLS) + 6)]
    for r in rows:
        ref = r["lorahub get_score"]
        ours = min(r[c] for c in ("ab K=1", "ab K=4", "delta K=1", "delta K=4"))
        lines.append(f"| {r['task']} | {r['tokens']} | {r['gflop']:.1f} | "
                     + " | ".join(f"{r[c]:.0f}" for c in SPEED_COLS)
                     + f" | {ref / ours:.1f}x | {ref / r['floor float32']:.1f}x"
                     f" | {ref / r['floor bfloat16']:.1f}x |")
    text = "\n".join(lines)
    print(text, flush=True)
    return text


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
    ap.add_argument("--n-eval", type=int, default=30)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1 avoids oversubscription on a shared machine)")
    ap.add_argument("--speed-reps", type=int, default=3)
    ap.add_argument("--device", default="cpu",
                    help="cpu or cuda; LoRAHub's loader takes cuda whenever one is present")
    ap.add_argument("--speed-only", action="store_true",
                    help="only the interleaved speed table (no searches, no accuracy)")
    ap.add_argument("--out", type=Path, default=CACHE / "compose_results.json")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)
    base = smollm2_dir()
    dirs = sorted(str(p) for p in ADAPTERS.iterdir() if (p / "adapter_model.safetensors").exists())
    if len(dirs) < 2:
        raise SystemExit("train the candidates first: python -m benchmarks.train_task_adapters")
    print(f"{len(dirs)} candidates: {', '.join(Path(d).name for d in dirs)}", flush=True)
    bm = load_base(base, args.device, "float32")
    bm16 = load_base(base, args.device, "bfloat16")
    args.device = str(bm.device)
    peaks = update_peaks({}, args.device)
    print("matmul peak GFLOP/s: " + ", ".join(f"{k} {v / 1e9:.0f}" for k, v in peaks.items()),
          flush=True)
    loaded = reference_loader(dirs, str(base), causal=True)
    rows: list[dict] = []
    speeds: list[dict] = []
    t0 = time.time()
    for task in args.tasks.split(","):
        if not args.speed_only:
            rows += run_task(task, bm, dirs, loaded, args)
            print_table([r for r in rows if r["task"] == task])
        speeds.append(speed(task, bm, bm16, dirs, loaded, peaks, args))
        print_speed(speeds[-1:], peaks)
        _save(args.out, args, dirs, t0, rows, speeds, "", peaks)  # partial results survive a stop
    table = print_table(rows) + "\n\n" + print_speed(speeds, peaks)
    meta = _save(args.out, args, dirs, t0, rows, speeds, table, peaks)
    print(f"\n{meta}\nwrote {args.out}")


def _save(out: Path, args, dirs: list[str], t0: float, rows: list[dict], speeds: list[dict],
          table: str, peaks: dict[str, float]) -> dict:
    gpu = torch.cuda.get_device_name() if args.device.startswith("cuda") else "no GPU"
    meta = {"machine": f"{platform.machine()} CPU, {os.cpu_count()} cores, torch threads "
                       f"{args.threads}, {gpu}", "device": args.device, "budget": args.budget, "shots": args.shots,
            "seed": args.seed, "candidates": [Path(d).name for d in dirs],
            "wall_s": time.time() - t0,
            "matmul_peak_gflops": {k: v / 1e9 for k, v in peaks.items()}}
    out.write_text(json.dumps({"meta": meta, "rows": rows, "speed": speeds, "table": table},
                              indent=2))
    return meta


if __name__ == "__main__":
    main()
