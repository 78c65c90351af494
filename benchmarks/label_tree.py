"""The label objective's cost: each shot written out once per label, against the shots packed
as trees (each prompt once, every label a branch), on SmolLM2 and the suite's shots.

Both layouts score the same weight vectors with the same mixer; the table gives the tokens a
pass computes, the time per evaluation (best of ``--reps`` interleaved rounds of K vectors)
and the largest difference between the two layouts' summed token losses.

    python -m benchmarks.label_tree [--tasks a,b] [--candidates 8] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import torch

DEFAULT_TASKS = "news_sport_yesno,review_mc,chat_domain,count_objects_mc,bracket_depth"


def measure(task: str, base, cands, k: int, reps: int) -> dict:
    from benchmarks.suite_tasks import draw_shots, splits
    from lorahive.compose.composer import Composer, Example
    from lorahive.compose.composer.evaluate import label_set

    pool, ev = splits(task)
    labels = [lab.strip() for lab in label_set(list(pool) + list(ev))]
    shots = [Example(e.input, e.output.strip()) for e in draw_shots(task, 0)]
    W = torch.as_tensor(np.random.default_rng(0).uniform(-1, 1, (k, len(cands))),
                        dtype=torch.float32)
    best = {True: float("inf"), False: float("inf")}
    nll: dict[bool, torch.Tensor] = {}
    cells: dict[bool, int] = {}
    for _ in range(reps):
        for tree in (True, False):
            comp = Composer(base, cands, shots, labels=labels, pack_examples=tree)
            try:
                comp.scorer.nll(W[:1])  # warm
                t0 = time.perf_counter()
                nll[tree] = comp.scorer.nll(W)
                best[tree] = min(best[tree], (time.perf_counter() - t0) / k)
                layout = comp.scorer.packed
                cells[tree] = int(comp.encoded.input_ids.numel() if layout is None
                                  else layout.input_ids.numel())
                if tree and type(layout).__name__ != "Tree":
                    raise RuntimeError(f"{task}: the tree layout was not taken")
            finally:
                comp.close()
    return {"task": task, "labels": len(labels), "rows_tokens": cells[False],
            "tree_tokens": cells[True], "rows_ms": 1000 * best[False],
            "tree_ms": 1000 * best[True], "speedup": best[False] / best[True],
            "max_diff": float((nll[True] - nll[False]).abs().max())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", default=DEFAULT_TASKS)
    ap.add_argument("--candidates", type=int, default=8, help="library adapters mixed")
    ap.add_argument("--k", type=int, default=4, help="weight vectors per pass")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from benchmarks.library import library_dirs
    from benchmarks.smollm2 import smollm2_dir
    from lorahive.compose.composer import resolve_candidates
    from lorahive.compose.composer.model import load_base

    base = load_base(str(smollm2_dir()), "cpu")
    cands = resolve_candidates([str(d) for d in library_dirs()[:args.candidates]])
    rows = [measure(t, base, cands, args.k, args.reps) for t in args.tasks.split(",")]
    print("| task | labels | tokens a pass, written out (padded) | tokens a pass, trees "
          "| ms / eval written out | ms / eval trees | speed-up | max abs. loss difference |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['task']} | {r['labels']} | {r['rows_tokens']} | {r['tree_tokens']} | "
              f"{r['rows_ms']:.0f} | {r['tree_ms']:.0f} | {r['speedup']:.1f}x | "
              f"{r['max_diff']:.1e} |")
    print(f"\n{len(cands)} candidates, K={args.k} per pass, best of {args.reps}; "
          f"{platform.machine()} CPU, {os.cpu_count()} cores, torch threads {args.threads}")


if __name__ == "__main__":
    main()
