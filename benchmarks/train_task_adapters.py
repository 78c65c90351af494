"""Train the composer benchmark's candidate adapters: one LoRA per task on SmolLM2-135M.

CPU, one thread, fixed seeds, short runs (one epoch over a few hundred short examples), loss
on the output tokens only, with the same token layout the composer scores. Each adapter is
saved with PEFT under ``$LORAHIVE_BENCH_CACHE/adapters/<task>/`` with a ``train.json``
(examples, steps, losses, seconds); tasks already trained are skipped.

    nice -n 10 python -m benchmarks.train_task_adapters [--tasks a,b] [--n 240]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks.smollm2 import CACHE, MODEL_ID, smollm2_dir
from benchmarks.tasks import TRAIN_TASKS, build
from lorahive.compose.composer.finetune import fit

ADAPTERS = CACHE / "adapters"


def train_lora(base: Path, examples: list, out: Path, *, steps: int | None = None,
               batch: int = 8, lr: float = 2e-3, rank: int = 8, seed: int = 0,
               max_length: int = 96, extra: dict | None = None) -> dict:
    """Train one LoRA (q_proj, v_proj; alpha = 2 r) on ``examples`` with :func:`fit` and save
    it with PEFT at ``out`` (written beside, then renamed) with a ``train.json``."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    cfg = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0,
                     target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    model = get_peft_model(model, cfg)
    model.train()
    examples = list(examples)
    random.Random(seed).shuffle(examples)
    losses, seconds = fit(model, tok, examples, batch, lr, steps=steps, max_length=max_length)
    model.peft_config["default"].base_model_name_or_path = MODEL_ID
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(tmp)
    info = {"examples": len(examples), "steps": len(losses), "batch": batch, "lr": lr,
            "rank": rank, "seed": seed, "seconds": round(seconds, 1),
            "loss_first": losses[0], "loss_last5": sum(losses[-5:]) / len(losses[-5:]),
            "losses": losses, **(extra or {})}
    (tmp / "train.json").write_text(json.dumps(info, indent=2))
    tmp.rename(out)
    return info


def train_one(task: str, base: Path, out: Path, n: int, batch: int, lr: float, rank: int,
              seed: int) -> dict:
    return train_lora(base, build(task, n, seed), out, batch=batch, lr=lr, rank=rank,
                      seed=seed, extra={"task": task})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default=",".join(TRAIN_TASKS))
    ap.add_argument("--n", type=int, default=320, help="training examples per task (1 epoch)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    base = smollm2_dir()
    for task in args.tasks.split(","):
        out = ADAPTERS / task
        if (out / "adapter_model.safetensors").exists():
            print(f"{task}: already trained ({out})", flush=True)
            continue
        info = train_one(task, base, out, args.n, args.batch, args.lr, args.rank, args.seed)
        print(f"{task}: {info['steps']} steps in {info['seconds']} s, loss "
              f"{info['loss_first']:.3f} -> {info['loss_last5']:.3f}  ({out})", flush=True)


if __name__ == "__main__":
    main()
