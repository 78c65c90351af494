"""LoRAHub's own loop (the ``lorahub`` package, 0.1.0) pointed at a causal model.

Its loader hard-codes ``AutoModelForSeq2SeqLM``; we swap in the causal class for the call and
otherwise run its code: ``load_base_model_and_lora_modules``, ``get_score`` with its L1 term,
NGOpt over ``[-1.5, 1.5]`` from 0, seeded as ``lorahub_learning`` seeds. Its loader caches live
views of the adapter state dicts, which its later loads and ``get_score`` overwrite, so the
cache is deep-copied right after loading.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import torch


def reference_loader(adapter_dirs: Sequence[str], base_dir: str, causal: bool):
    from lorahub import algorithm
    from transformers import AutoModelForCausalLM

    saved = algorithm.AutoModelForSeq2SeqLM
    if causal:
        algorithm.AutoModelForSeq2SeqLM = AutoModelForCausalLM
    try:
        model, tokenizer, cache = algorithm.load_base_model_and_lora_modules(
            list(adapter_dirs), base_dir)
    finally:
        algorithm.AutoModelForSeq2SeqLM = saved
    cache = {k: {kk: vv.detach().clone() for kk, vv in v.items()} for k, v in cache.items()}
    return model, tokenizer, cache


def reference_causal_get_loss(tokenizer, append_eos: bool = True):
    """A ``get_loss`` for ``get_score`` on a causal model, shaped like LoRAHub's default: per
    batch the model's own mean token loss (prompt masked, output + EOS scored), summed, / N."""

    def get_loss(dataset, model, batch_size):
        n = len(dataset["input"])
        step = n if batch_size is None else min(n, batch_size)
        total = 0.0
        for s in range(0, n, step):
            rows = []
            for inp, out in zip(dataset["input"][s:s + step], dataset["output"][s:s + step],
                                strict=True):
                p = tokenizer(inp)["input_ids"]
                t = tokenizer(out, add_special_tokens=False)["input_ids"]
                if append_eos:
                    t = [*t, tokenizer.eos_token_id]
                rows.append((p, t))
            width = max(len(p) + len(t) for p, t in rows)
            pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None \
                else tokenizer.eos_token_id
            ids = torch.full((len(rows), width), pad)
            mask = torch.zeros_like(ids)
            labels = torch.full_like(ids, -100)
            for i, (p, t) in enumerate(rows):
                ids[i, :len(p) + len(t)] = torch.tensor(p + t)
                mask[i, :len(p) + len(t)] = 1
                labels[i, len(p):len(p) + len(t)] = torch.tensor(t)
            dev = next(model.parameters()).device  # LoRAHub's loader moves it to cuda if any
            with torch.no_grad():
                total += float(model(input_ids=ids.to(dev), attention_mask=mask.to(dev),
                                     labels=labels.to(dev)).loss)
        return total / n

    return get_loss


@dataclass
class ReferenceRun:
    weights: np.ndarray
    objective: float
    trace: list[float] = field(default_factory=list)
    seconds_per_eval: float = 0.0
    search_seconds: float = 0.0
    setup_seconds: float = 0.0


def run_reference(adapter_dirs: Sequence[str], base_dir: str, inputs: Sequence[str],
                  outputs: Sequence[str], budget: int = 40, seed: int = 42,
                  loaded=None) -> ReferenceRun:
    """``lorahub_learning`` for a causal model; ``loaded`` reuses a ``reference_loader`` result."""
    import nevergrad as ng
    from lorahub.algorithm import default_l1_regularization, get_score

    t0 = time.perf_counter()
    random.seed(seed)
    np.random.seed(seed)
    model, tok, cache = loaded or reference_loader(adapter_dirs, base_dir, causal=True)
    setup = time.perf_counter() - t0
    dataset = {"input": list(inputs), "output": list(outputs)}
    score = partial(get_score, model=model, cache=cache, example_dataset=dataset,
                    batch_size=None, get_loss=reference_causal_get_loss(tok),
                    get_regular=default_l1_regularization)
    trace: list[float] = []
    spent = [0.0]

    def timed(weights):
        s = time.perf_counter()
        v = score(weights)
        spent[0] += time.perf_counter() - s
        trace.append(float(v))
        return v

    n = len(adapter_dirs)
    instrum = ng.p.Array(init=[0] * n, upper=[1.5] * n, lower=[-1.5] * n)
    opt = ng.optimizers.NGOpt(parametrization=instrum, budget=budget)
    t1 = time.perf_counter()
    rec = opt.minimize(timed)
    search = time.perf_counter() - t1
    w = np.asarray(rec.value, dtype=np.float64)
    return ReferenceRun(w, float(score(w)), trace, spent[0] / max(len(trace), 1), search, setup)
