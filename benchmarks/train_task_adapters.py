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
import time
from collections.abc import Callable
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks.smollm2 import CACHE, MODEL_ID, smollm2_dir
from benchmarks.tasks import TRAIN_TASKS, build
from lorahive.compose.composer.examples import IGNORE, encode_causal

ADAPTERS = CACHE / "adapters"


def output_token_loss(model, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor):
    """Mean cross-entropy over the output tokens; the LM head runs only where it is scored."""
    hidden = model.get_decoder()(input_ids=ids, attention_mask=mask).last_hidden_state
    target = labels[:, 1:]
    sel = target != IGNORE
    logits = model.get_output_embeddings()(hidden[:, :-1][sel])
    return torch.nn.functional.cross_entropy(logits.float(), target[sel])


def fit(model, tok, examples: list, batch: int, lr: float, steps: int | None = None,
        max_length: int = 96, on_step: Callable[[int, int, float], None] | None = None
        ) -> tuple[list[float], float]:
    """AdamW over ``examples`` in batches, a 3-step warm-up, linear decay to 10%, gradient
    clipping at 1. ``steps`` defaults to one epoch; more steps cycle through the examples
    again. Returns the losses per step and the seconds taken."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    per_epoch = (len(examples) + batch - 1) // batch
    steps = steps or per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 3) * max(0.1, 1 - s / steps))
    losses: list[float] = []
    t0 = time.time()
    for s in range(steps):
        i = s % per_epoch
        enc = encode_causal(tok, examples[i * batch:(i + 1) * batch], max_length=max_length)
        loss = output_token_loss(model, enc.input_ids, enc.attention_mask, enc.labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad()
        losses.append(round(float(loss.detach()), 4))
        if on_step is not None:
            on_step(s + 1, steps, losses[-1])
    return losses, time.time() - t0


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
