"""The whole run, as a user times it: ``lorahive compose --lorahub`` (start, load, search,
write the adapter) against LoRAHub's ``lorahub_learning`` (start, load, search, merge), each a
fresh process on the same base, candidates, shots, budget and seed.

The reference runs ``lorahub_learning``'s body (``benchmarks.lorahub_ref``: its loader,
``get_score`` and NGOpt, then ``get_final_weights``, ``set_peft_model_state_dict`` and
``merge_and_unload``) and writes nothing, which only favours it. Both report their final
objective; with the same search they must agree.

    python -m benchmarks.compose_whole [--tasks a,b] [--candidates 8] [--budget 40]
    python -m benchmarks.compose_whole --traces --tasks last_word_upper

``--traces`` runs both searches in this process instead, untimed, and prints their objective
values side by side up to where they part: where the final objectives differ, it shows
whether the two evaluators disagreed or the optimizer went elsewhere on equal values.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DEFAULT_TASKS = "news_sport_yesno,last_word_upper,bracket_depth"
NOISE = 3e-7  # relative: the size of the two evaluators' float32 disagreement


def reference_child(dirs: list[str], base: str, shots: Path, budget: int, seed: int) -> None:
    """In a fresh process: ``lorahub_learning`` for a causal model; prints its objective."""
    from lorahub.algorithm import get_final_weights
    from peft import set_peft_model_state_dict

    from benchmarks.lorahub_ref import reference_loader, run_reference

    rows = [json.loads(line) for line in shots.read_text().splitlines() if line.strip()]
    loaded = reference_loader(dirs, base, causal=True)
    run = run_reference(dirs, base, [r["input"] for r in rows], [r["output"] for r in rows],
                        budget, seed, loaded)
    model, _tok, cache = loaded
    set_peft_model_state_dict(model, get_final_weights(run.weights, dirs, cache))
    model.merge_and_unload()
    print(json.dumps({"objective": run.objective}))


def traces(task: str, dirs: list[str], base: str, budget: int, seed: int) -> None:
    """Both searches' objective values, evaluation by evaluation, with their relative
    difference; the first evaluation past float32 rounding (1e-5) is marked."""
    from benchmarks.lorahub_ref import run_reference
    from benchmarks.suite_tasks import draw_shots
    from lorahive.compose.composer import Composer, SearchConfig, resolve_candidates
    from lorahive.compose.composer.model import load_base
    from lorahive.compose.composer.search import search

    shots = draw_shots(task, 0)
    ref = run_reference(dirs, base, [e.input for e in shots], [e.output for e in shots],
                        budget, seed)
    cfg = SearchConfig(budget=budget, seed=seed)
    rng = np.random.default_rng(0)
    with Composer(load_base(base, "cpu"), resolve_candidates(dirs), list(shots),
                  mode="ab") as comp:
        ours = comp.run(cfg).search
        # the control: our own search again, each value moved by float32-sized noise
        noisy = search(lambda W: (v := comp.score(W)) * (1 + NOISE * rng.choice([-1, 1],
                                                                               v.shape)),
                       comp.dim, cfg)
    diffs = [abs(a - b) / max(abs(a), 1e-12)
             for a, b in zip(ref.trace, ours.trace, strict=True)]
    parted = next((i for i, d in enumerate(diffs) if d > 1e-5), None)
    print(f"{task}:\n| evaluation | LoRAHub | lorahive | relative difference |\n|---|---|---|---|")
    for i, (a, b, d) in enumerate(zip(ref.trace, ours.trace, diffs, strict=True)):
        print(f"| {i + 1} | {a:.6f} | {b:.6f} | {d:.1e} |" + (" parted" if i == parted else ""))
    agree = ("the traces agree throughout" if parted is None else
             "the first evaluation already differs" if parted == 0 else
             f"the first {parted} evaluations agree to {max(diffs[:parted]):.1e}")
    print(f"final: LoRAHub {ref.objective:.6f}, lorahive {ours.objective:.6f}; {agree}")
    own = next((i + 1 for i, (a, b) in enumerate(zip(ours.trace, noisy.trace, strict=True))
                if abs(a - b) / abs(a) > 1e-5), None)
    print(f"control: lorahive's search with its values moved by +-{NOISE:.0e} (relative) "
          + ("never parts from itself" if own is None else f"parts from itself at evaluation "
             f"{own} and ends at {noisy.objective:.6f}"))


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:4])} ... failed ({done.returncode}):\n"
                         f"{done.stderr[-2000:]}")
    return wall, done.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", default=DEFAULT_TASKS, help="held-out suite tasks")
    ap.add_argument("--candidates", type=int, default=8, help="library adapters mixed")
    ap.add_argument("--budget", type=int, default=40)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--reps", type=int, default=2, help="interleaved rounds; the best counts")
    ap.add_argument("--traces", action="store_true",
                    help="both searches in this process, untimed: their objective values "
                    "side by side")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reference-child", nargs=3, metavar=("CANDIDATES", "BASE", "SHOTS"),
                    help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.reference_child:
        import torch

        torch.set_num_threads(args.threads)
        dirs, base, shots = args.reference_child
        reference_child(dirs.split(","), base, Path(shots), args.budget, args.seed)
        return

    from benchmarks.library import library_dirs
    from benchmarks.smollm2 import smollm2_dir
    from benchmarks.suite_tasks import draw_shots

    base = str(smollm2_dir())
    dirs = [str(d) for d in library_dirs()[:args.candidates]]
    if args.traces:
        import torch

        torch.set_num_threads(args.threads)
        for task in args.tasks.split(","):
            traces(task, dirs, base, args.budget, args.seed)
        return
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(args.threads),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(Path.cwd()),
                                                       os.environ.get("PYTHONPATH")]))}
    print("| task | LoRAHub `lorahub_learning` s | `lorahive compose --lorahub` s | speed-up "
          "| objective (LoRAHub) | objective (lorahive) |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for task in args.tasks.split(","):
            shots = Path(tmp, f"{task}.jsonl")
            shots.write_text("".join(json.dumps({"input": e.input, "output": e.output}) + "\n"
                                     for e in draw_shots(task, 0)))
            ref_cmd = [sys.executable, "-m", "benchmarks.compose_whole", "--budget",
                       str(args.budget), "--seed", str(args.seed), "--threads",
                       str(args.threads), "--reference-child", ",".join(dirs), base, str(shots)]
            ours_cmd = [sys.executable, "-m", "lorahive", "compose", "--lorahub", "--base", base,
                        "--examples", str(shots), "--budget", str(args.budget), "--seed",
                        str(args.seed), "--device", "cpu", "--out", str(Path(tmp, task)),
                        "--json", *[x for d in dirs for x in ("--candidates", d)]]
            best = {"ref": float("inf"), "ours": float("inf")}
            for _ in range(args.reps):
                wall, out = timed(ref_cmd, env)
                best["ref"] = min(best["ref"], wall)
                ref_obj = json.loads(out.strip().splitlines()[-1])["objective"]
                wall, out = timed(ours_cmd, env)
                best["ours"] = min(best["ours"], wall)
                ours_obj = json.loads(out)["objective"]
            print(f"| {task} | {best['ref']:.1f} | {best['ours']:.1f} | "
                  f"{best['ref'] / best['ours']:.1f}x | {ref_obj:.4f} | {ours_obj:.4f} |",
                  flush=True)
    print(f"\n{len(dirs)} candidates, budget {args.budget}, seed {args.seed}, best of "
          f"{args.reps}; {platform.machine()} CPU, {os.cpu_count()} cores, "
          f"{args.threads} threads")


if __name__ == "__main__":
    main()
