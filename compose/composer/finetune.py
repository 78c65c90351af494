"""Gradient steps after the search: the composed adapter trained on the shots themselves.

A mix of library adapters carries the skills the library has, and a 5-shot LoRA fine-tune
moves what no mix moves (a label prior, a new output format): on the held-out suite the
fine-tune wins the label tasks and the mix wins where the library holds the missing parts
(docs/benchmarks.md). ``--fine-tune N`` starts the fine-tune from the composed adapter
instead of from nothing. It is not gradient-free, and every record of the result says so.

The loop (``fit``) is the one the benchmarks' adapters are trained with: AdamW, a short
warm-up, linear decay, clipping at 1, the loss on the answer tokens only in the composer's
token layout.
"""

from __future__ import annotations

import hashlib
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch

from lorahive.compose.composer.examples import IGNORE, Example, encode_causal
from lorahive.hub.adapter import Adapter
from lorahive.hub.errors import InvalidRequestError

LR = 1e-3  # the suite's 5-shot fine-tune: 30 full-batch steps at 1e-3
SUFFIX = "+fine-tune"  # on the lineage's method: the adapter is no longer the parents' mix


def fine_tune_recipe(recipe: str | None, steps: int, lr: float) -> str | None:
    """The recipe of a composition fine-tuned after its search: the search's recipe and the
    fine-tune's settings (a rerun with other settings is another result)."""
    if recipe is None:
        return None
    return hashlib.sha256(f"{recipe}|fine-tune|{steps}|{lr!r}".encode()).hexdigest()


def output_token_loss(model: Any, ids: torch.Tensor, mask: torch.Tensor,
                      labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the output tokens; the LM head runs only where it is scored."""
    hidden = model.get_decoder()(input_ids=ids, attention_mask=mask).last_hidden_state
    target = labels[:, 1:]
    sel = target != IGNORE
    logits = model.get_output_embeddings()(hidden[:, :-1][sel])
    return torch.nn.functional.cross_entropy(logits.float(), target[sel])


def fit(model: Any, tok: Any, examples: Sequence[Example], batch: int, lr: float,
        steps: int | None = None, max_length: int = 512,
        on_step: Callable[[int, int, float], None] | None = None
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
        loss = output_token_loss(model, enc.input_ids.to(model.device),
                                 enc.attention_mask.to(model.device),
                                 enc.labels.to(model.device))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad()
        losses.append(round(float(loss.detach()), 4))
        if on_step is not None:
            on_step(s + 1, steps, losses[-1])
    return losses, time.time() - t0


def check_fine_tune(model: Any, steps: int) -> None:
    """Refuse what the loop cannot train, before any search is spent."""
    if steps < 1:
        raise InvalidRequestError("fine-tune steps must be at least 1", params="fine_tune")
    if getattr(model.config, "is_encoder_decoder", False):
        raise InvalidRequestError("--fine-tune needs a causal base model (decoder-only)",
                                  params="fine_tune")
    if next(model.parameters()).dtype != torch.float32:
        raise InvalidRequestError("--fine-tune trains in float32: run with --dtype float32",
                                  params="fine_tune")


def fine_tune(model: Any, tokenizer: Any, adapter: Adapter, examples: Sequence[Example],
              steps: int, lr: float = LR, seed: int = 0,
              on_step: Callable[[int, int, float], None] | None = None
              ) -> tuple[Adapter, dict[str, Any]]:
    """``steps`` full-batch steps on ``examples`` starting from ``adapter`` on ``model`` (a
    causal LM in float32, left as it was found); returns the trained adapter (same targets,
    rank and scale) and what the record keeps (steps, lr, losses, seconds).

    A mix whose weights are all zero has A = B = 0, where no gradient moves either factor;
    its A is then drawn as PEFT draws a new LoRA's (seeded), so the steps are a plain LoRA
    fine-tune from the base model."""
    from peft import PeftModel
    from peft.tuners.lora.layer import LoraLayer
    from peft.utils import get_peft_model_state_dict

    from lorahive.hub.peft_format import from_state_dict, save_peft

    check_fine_tune(model, steps)
    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # transformers' deprecation notes
        save_peft(adapter, tmp)
        peft_model = PeftModel.from_pretrained(model, tmp, is_trainable=True)
    redrawn = 0
    try:
        for mod in peft_model.modules():
            if isinstance(mod, LoraLayer) and "default" in mod.lora_A \
                    and not torch.any(mod.lora_A["default"].weight):
                with torch.no_grad():  # PEFT's own draw of a new LoRA (A random, B zero)
                    mod.reset_lora_parameters("default", True)
                redrawn += 1
        peft_model.train()
        losses, seconds = fit(peft_model, tokenizer, list(examples), len(examples), lr,
                              steps=steps, on_step=on_step)
        # no embedding layers to save: PEFT would otherwise look the base model up online
        state = {k: v.detach().clone() for k, v in get_peft_model_state_dict(
            peft_model, save_embedding_layers=False).items()}
    finally:
        peft_model.unload()  # the base model as it was: the LoRA layers go, weights unmerged
        model.eval()
    trained = from_state_dict(adapter.config, state, adapter.metadata)
    record = {"steps": steps, "lr": lr, "batch": len(examples), "seed": seed,
              "loss_first": losses[0], "loss_last": losses[-1], "losses": losses,
              "seconds": round(seconds, 2), "redrawn_A": redrawn}
    return trained, record
