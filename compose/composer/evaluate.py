"""Held-out accuracy of a mix: rank classification over a small label set, else exact match.

Rank classification scores every label after each input and picks the lowest summed token
loss; it needs no decoding loop and cannot produce an off-label answer, so for
classification it is both cheaper and more robust than generation.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from lorahive.compose.composer.examples import Example, encode
from lorahive.compose.composer.mixing import Mixer
from lorahive.compose.composer.objective import token_nll

MAX_LABELS = 10


def normalise(text: str) -> str:
    """LoRAHub's normalisation (strip, lower, drop '.') plus collapsed whitespace."""
    return re.sub(r"\s+", " ", text.strip().lower().replace(".", "")).strip()


def label_set(examples: Sequence[Example], max_labels: int = MAX_LABELS) -> list[str] | None:
    """The distinct outputs when they form a small label set: at least two labels, and at
    least twice as many examples as labels (one output repeated has nothing to rank)."""
    labels = sorted({e.output for e in examples})
    if not 2 <= len(labels) <= max_labels or len(labels) * 2 > len(examples):
        return None
    return labels


@dataclass
class Accuracy:
    metric: str  # "rank" or "exact"
    accuracy: float  # in [0, 1]
    predictions: list[str]
    n: int


@torch.inference_mode()
def rank_classify(model, tokenizer, is_encoder_decoder: bool, examples: Sequence[Example],
                  labels: Sequence[str], max_rows: int = 64) -> list[str]:
    """For each example, the label with the lowest summed token loss."""
    rows = [Example(e.input, lab) for e in examples for lab in labels]
    scores = []
    for s in range(0, len(rows), max_rows):
        scores.append(token_nll(model, encode(tokenizer, rows[s:s + max_rows],
                                              is_encoder_decoder).to(_device(model))).cpu())
    best = torch.cat(scores).view(len(examples), len(labels)).argmin(1)
    return [labels[int(i)] for i in best]


def _device(model) -> torch.device:
    return next(model.parameters()).device


@torch.inference_mode()
def generate(model, tokenizer, is_encoder_decoder: bool, examples: Sequence[Example],
             max_new_tokens: int = 32, batch: int = 16, stop_at_newline: bool = False) -> list[str]:
    """Greedy completions (left-padded prompts for causal models), each ending where an
    example's output ends: at the tokenizer's EOS, and at the first newline when
    ``stop_at_newline`` (the outputs are single lines)."""
    dev = _device(model)
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    out: list[str] = []
    for s in range(0, len(examples), batch):
        prompts = [tokenizer(e.input, add_special_tokens=True)["input_ids"]
                   for e in examples[s:s + batch]]
        width = max(map(len, prompts))
        ids = torch.full((len(prompts), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, p in enumerate(prompts):
            if is_encoder_decoder:
                ids[i, :len(p)], mask[i, :len(p)] = torch.tensor(p), 1
            else:
                ids[i, width - len(p):], mask[i, width - len(p):] = torch.tensor(p), 1
        gen = model.generate(input_ids=ids.to(dev), attention_mask=mask.to(dev),
                             max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad,
                             eos_token_id=eos)
        new = gen if is_encoder_decoder else gen[:, width:]
        for row in new.cpu().tolist():
            if is_encoder_decoder and row and row[0] == model.config.decoder_start_token_id:
                row = row[1:]
            if eos is not None and eos in row:
                row = row[:row.index(eos)]
            text = tokenizer.decode(row, skip_special_tokens=True)
            out.append(text.split("\n", 1)[0] if stop_at_newline else text)
    return out


def accuracy(model, tokenizer, is_encoder_decoder: bool, mixer: Mixer | None,
             weights: Sequence[float] | None, examples: Sequence[Example],
             labels: Sequence[str] | None = None, max_new_tokens: int = 32,
             stop_at_newline: bool = False) -> Accuracy:
    """Accuracy of one weight vector: rank classification when ``labels`` is given."""
    if mixer is not None and weights is not None:
        mixer.set_weights(torch.as_tensor([list(weights)], dtype=torch.float32))
    if labels:
        preds = rank_classify(model, tokenizer, is_encoder_decoder, examples, labels)
        metric = "rank"
    else:
        preds = generate(model, tokenizer, is_encoder_decoder, examples, max_new_tokens,
                         stop_at_newline=stop_at_newline)
        metric = "exact"
    hits = sum(normalise(p) == normalise(e.output) for p, e in zip(preds, examples, strict=True))
    return Accuracy(metric, hits / max(len(examples), 1), preds, len(examples))
