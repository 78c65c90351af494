"""The suite's rows. A new row is one decorated function ``(task, shots, seed, ctx)`` that
returns the predictions on ``task.eval`` (usually ``ctx.predict(task, adapter)``), with what
it wants recorded in ``RowOutput.info`` (``evaluations``: objective evaluations it spent).

Search rows get LoRAHub's budget (``--budget``, 40 evaluations) and the suite's seed.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.suite import Context, RowOutput, TaskData, row
from lorahive.cli.commands.compose import NOT_HELPING

LORAHUB_MODULES = 20  # LoRAHub's protocol: 20 candidates drawn at random from the library
FT_STEPS, FT_LR = 30, 1e-3  # the 5-shot fine-tune: 30 full-batch steps
UPPER_STEPS, UPPER_EXAMPLES = 40, 320  # the library's recipe, run longer on the task's own pool
RETRIEVE, BLOCKS = 8, 4  # the --retrieve and --blocks rows' settings


@row("zero_shot", "zero-shot", seeded=False)
def zero_shot(task: TaskData, shots, seed: int, ctx: Context):
    return ctx.predict(task)


@row("icl", "in-context (5 shots)")
def in_context(task: TaskData, shots, seed: int, ctx: Context):
    """The five shots written before every prompt, each as ``input + output``, separated by
    blank lines."""
    prefix = "".join(e.input + e.output + "\n\n" for e in shots)
    return ctx.predict(task, prefix=prefix)


@row("best_single", "best single", library=True)
def best_single(task: TaskData, shots, seed: int, ctx: Context):
    """The library adapter with the lowest few-shot objective on the shots (never chosen by
    test accuracy): one evaluation per candidate."""
    from lorahive.compose.composer import Composer

    cands = ctx.candidates
    with Composer(ctx.base, cands, shots, mode="ab") as comp:
        scores = comp.score(np.eye(len(cands)))
    best = int(np.argmin(scores))
    return RowOutput(ctx.predict(task, cands[best].adapter),
                     {"chosen": cands[best].name, "objective": float(scores[best]),
                      "evaluations": len(cands)})


@row("uniform", "uniform average", seeded=False, library=True)
def uniform(task: TaskData, shots, seed: int, ctx: Context):
    """Every library adapter with weight 1/n, mixed as LoRAHub mixes (``ab``)."""
    from lorahive.compose.composer import Composer

    cands = ctx.candidates
    with Composer(ctx.base, cands, shots, mode="ab") as comp:
        adapter, _ = comp.adapter(np.full(len(cands), 1.0 / len(cands)))
    return RowOutput(ctx.predict(task, adapter), {"evaluations": 0})


@row("lorahub", "LoRAHub (reference)", library=True)
def lorahub(task: TaskData, shots, seed: int, ctx: Context):
    """The ``lorahub`` 0.1.0 package's own loop (``benchmarks.lorahub_ref``): 20 library
    adapters drawn at random per (task, seed), as LoRAHub's paper draws them, NGOpt with
    ``--budget`` evaluations from 0; its weights mixed as LoRAHub mixes them (``ab``)."""
    from benchmarks.lorahub_ref import run_reference
    from lorahive.compose.composer import Composer

    rng = random.Random(f"lorahub:{task.name}:{seed}")
    n = len(ctx.library_dirs)
    idx = sorted(rng.sample(range(n), min(LORAHUB_MODULES, n)))
    dirs = [ctx.library_dirs[i] for i in idx]
    model, tok, cache = ctx.lorahub
    sub = {d: cache[d] for d in dirs}
    ref = run_reference(dirs, str(ctx.base_dir), [e.input for e in shots],
                        [e.output for e in shots], ctx.args.budget, seed, (model, tok, sub))
    cands = [ctx.candidates[i] for i in idx]
    with Composer(ctx.base, cands, shots, mode="ab") as comp:
        adapter, _ = comp.adapter(ref.weights)
    return RowOutput(ctx.predict(task, adapter), {
        "candidates": [Path(d).name for d in dirs],
        "weights": [round(float(w), 4) for w in ref.weights], "objective": ref.objective,
        "evaluations": len(ref.trace), "search_seconds": round(ref.search_seconds, 1)})


@row("lora_ft", "LoRA fine-tune (5 shots)")
def lora_ft(task: TaskData, shots, seed: int, ctx: Context):
    """LoRAHub's "LoRA FT" row: a fresh LoRA (the library's shape: r=8 on q/v) trained on the
    same five shots, 30 full-batch steps at lr 1e-3."""
    from benchmarks.train_task_adapters import train_lora
    from lorahive.hub.peft_format import load_peft

    out = ctx.work / "lora_ft" / f"{task.name}-seed{seed}"
    info = _trained(out, lambda: train_lora(ctx.base_dir, list(shots), out, steps=FT_STEPS,
                                             batch=len(shots), lr=FT_LR, seed=seed))
    return RowOutput(ctx.predict(task, load_peft(out)),
                     {"train_seconds": info["seconds"], "loss_last5": info["loss_last5"]})


@row("default", "lorahive default", library=True, version=5)
def lorahive_default(task: TaskData, shots, seed: int, ctx: Context):
    """``lorahive compose`` as a user runs it, with its defaults: every library adapter by
    registry reference (``library/<task>``, from the library's own registry), the shots as
    ``--examples``, ``--seed`` the suite's seed; the adapter it writes is then scored, or the
    base model where it writes nothing. Version 5: retrieval and the label objective wherever
    the shots' outputs repeat, no out-of-fold check; versions 2-4 checked leave-one-out and
    took the label objective with two shots per label; version 1 was LoRAHub's procedure,
    now the ``lorahub_ours`` row."""
    return _compose(task, shots, seed, ctx, [])


@row("default_ft", f"lorahive default + --fine-tune {FT_STEPS}", library=True, quick=False,
     version=3)
def lorahive_default_ft(task: TaskData, shots, seed: int, ctx: Context):
    """The default, then ``FT_STEPS`` gradient steps on the shots at ``FT_LR`` (the
    ``lora_ft`` row's recipe) from the mix (version 3: the default's, unchecked); version 2
    started from the base model where the check refused the mix or could pass none: not
    gradient-free."""
    return _compose(task, shots, seed, ctx, ["--fine-tune", str(FT_STEPS), "--fine-tune-lr",
                                             str(FT_LR)])


@row("lorahub_ours", "lorahive --lorahub", library=True)
def lorahive_lorahub(task: TaskData, shots, seed: int, ctx: Context):
    """LoRAHub's procedure in lorahive (``--lorahub``: the answer-token loss over every
    candidate, pre-screened to 20 by evaluation, no check): the options below start here."""
    return _compose(task, shots, seed, ctx, ["--lorahub"])


@row("retrieve", f"lorahive --lorahub --retrieve {RETRIEVE}", library=True, quick=False)
def lorahive_retrieve(task: TaskData, shots, seed: int, ctx: Context):
    """The library adapters whose stored example prompts are nearest the shots (MiniLM)."""
    return _compose(task, shots, seed, ctx, ["--lorahub", "--retrieve", str(RETRIEVE)])


@row("folds", "lorahive --lorahub --folds 5", library=True, quick=False)
def lorahive_folds(task: TaskData, shots, seed: int, ctx: Context):
    """Leave-one-out first: where no mix beats the base model out of fold, nothing is
    written and the user keeps the base model, which is what is scored."""
    return _compose(task, shots, seed, ctx, ["--lorahub", "--folds", "5"])


@row("label", "lorahive --lorahub --objective label", library=True, quick=False)
def lorahive_label(task: TaskData, shots, seed: int, ctx: Context):
    """Rank classification's cross-entropy over the label set (label tasks; the answer
    loss elsewhere, as the default)."""
    return _compose(task, shots, seed, ctx, ["--lorahub", *_label(task)])


@row("retrieve_label", f"lorahive --lorahub --retrieve {RETRIEVE} + label", library=True,
     quick=False)
def lorahive_retrieve_label(task: TaskData, shots, seed: int, ctx: Context):
    """Retrieval, and rank classification on label tasks: LoRAHub's budget, no prescreen."""
    return _compose(task, shots, seed, ctx,
                    ["--lorahub", "--retrieve", str(RETRIEVE), *_label(task)])


def _label(task: TaskData) -> list[str]:
    return ["--objective", "label"] if task.labels else []


@row("blocks", f"lorahive --lorahub --blocks {BLOCKS}", library=True, quick=False)
def lorahive_blocks(task: TaskData, shots, seed: int, ctx: Context):
    """Contiguous blocks of layers, each mixed with its own weights."""
    return _compose(task, shots, seed, ctx, ["--lorahub", "--blocks", str(BLOCKS)])


@row("arrow", "lorahive --route arrow", library=True)
def lorahive_arrow(task: TaskData, shots, seed: int, ctx: Context):
    """Arrow routing over the whole library: per module, the candidates' routing
    coefficients averaged over the shots' tokens; no search, no objective evaluations."""
    return _compose(task, shots, seed, ctx, ["--route", "arrow"])


def _compose(task: TaskData, shots, seed: int, ctx: Context, extra: list[str]):
    """``lorahive compose`` through the CLI with the library by reference, plus ``extra``."""
    from benchmarks.library import HOME, NAMESPACE
    from lorahive.hub.peft_format import load_peft

    refs = [f"{NAMESPACE}/{Path(d).name}" for d in ctx.library_dirs]
    with tempfile.TemporaryDirectory(dir=_mkdir(ctx.work)) as tmp:
        ex = Path(tmp) / "shots.jsonl"
        ex.write_text("".join(json.dumps({"input": e.input, "output": e.output}) + "\n"
                              for e in shots))
        out = Path(tmp) / "composed"
        cmd = [sys.executable, "-m", "lorahive", "compose", "--base", str(ctx.base_dir),
               "--examples", str(ex), "--out", str(out), "--seed", str(seed),
               "--budget", str(ctx.args.budget), "--device", ctx.args.device, "--json",
               *extra]
        for r in refs:
            cmd += ["-c", r]
        env = {**_env(ctx), "LORAHIVE_HOME": str(HOME)}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        if proc.returncode not in (0, NOT_HELPING):
            raise RuntimeError(f"lorahive compose failed: {proc.stderr.strip()[-2000:]}")
        res = json.loads(proc.stdout)
        adapter = load_peft(out) if proc.returncode == 0 else None  # None: the base model
    preds = ctx.predict(task, adapter)
    weights = {k.split("/")[-1].split("@")[0]: round(v, 4) for k, v in res["weights"].items()}
    # pre-screening scored every candidate alone where neither retrieval nor the route ran
    screened = len(refs) if res.get("retrieval") is None and "--route" not in extra \
        and len(refs) > len(weights) else 0
    return RowOutput(preds, {"weights": weights, "objective": res.get("objective"),
                             "evaluations": res.get("evaluations", 0) + screened
                             + res.get("evaluations_out_of_fold", 0),
                             "prescreen_evaluations": screened,
                             "written": proc.returncode == 0,
                             # a cell after the same search (default_ft after default) reuses it
                             "search_reused": bool(res.get("search_reused")),
                             **({"fine_tune_start": res["fine_tune_start"]}
                                if "fine_tune_start" in res else {})})


@row("upper", "upper bound (full-data LoRA)", seeded=False, quick=False)
def upper_bound(task: TaskData, shots, seed: int, ctx: Context):
    """A LoRA trained on the task's own training pool (up to 320 examples, disjoint from the
    evaluation set) with the library's recipe for 40 steps instead of 24: what a full
    training run would give."""
    from benchmarks.train_task_adapters import train_lora
    from lorahive.hub.peft_format import load_peft

    out = ctx.work / "upper" / task.name
    data = task.pool[:UPPER_EXAMPLES]
    info = _trained(out, lambda: train_lora(ctx.base_dir, data, out, steps=UPPER_STEPS,
                                             batch=8, lr=2e-3, seed=0))
    return RowOutput(ctx.predict(task, load_peft(out)),
                     {"train_examples": len(data), "train_seconds": info["seconds"]})


def _trained(out: Path, train) -> dict:
    """Train once: an adapter already saved at ``out`` is reused."""
    if not (out / "adapter_model.safetensors").exists():
        train()
    return json.loads((out / "train.json").read_text())


def _mkdir(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


def _env(ctx: Context) -> dict[str, str]:
    import os

    threads = str(ctx.args.threads)
    return {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads,
            "HF_HUB_OFFLINE": "1"}
