"""Few-shot examples: read once, hashed for lineage, tokenised once for every evaluation.

The token layout is shared by the composer, the evaluation and the benchmark's training
script, so a candidate is trained and scored on exactly the same sequences.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lorahive.hub.errors import InvalidRequestError

IGNORE = -100


@dataclass(frozen=True)
class Example:
    input: str
    output: str


def load_examples(path: str | os.PathLike[str]) -> list[Example]:
    """``{"input": ..., "output": ...}`` per line; blank lines are skipped."""
    p = Path(path)
    if not p.is_file():
        raise InvalidRequestError(f"examples file {p} does not exist; give a JSONL file")
    out: list[Example] = []
    for n, line in enumerate(p.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise InvalidRequestError(f"{p}:{n}: not JSON ({e.msg})") from None
        if not isinstance(row, dict) or not isinstance(row.get("input"), str) \
                or not isinstance(row.get("output"), str):
            raise InvalidRequestError(
                f'{p}:{n}: each line must be {{"input": "...", "output": "..."}} with strings'
            )
        out.append(Example(row["input"], row["output"]))
    if not out:
        raise InvalidRequestError(f"{p} holds no examples")
    return out


def write_examples(path: str | os.PathLike[str], examples: Sequence[Example]) -> Path:
    p = Path(path)
    p.write_text("".join(json.dumps({"input": e.input, "output": e.output}) + "\n"
                         for e in examples))
    return p


def examples_sha256(examples: Sequence[Example]) -> str:
    """Order-sensitive hash of the examples, recorded in the composed adapter's lineage."""
    h = hashlib.sha256()
    for e in examples:
        h.update(json.dumps([e.input, e.output]).encode())
        h.update(b"\n")
    return h.hexdigest()


@dataclass
class Encoded:
    """Tokenised examples, padded once; ``labels`` is ``IGNORE`` outside the scored tokens.

    Causal LMs: ``labels[i, t]`` is the token at ``t`` scored from position ``t - 1``
    (the model shifts). Encoder-decoders: ``labels`` are the decoder targets.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    is_encoder_decoder: bool

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def to(self, device: torch.device) -> Encoded:
        return Encoded(self.input_ids.to(device), self.attention_mask.to(device),
                       self.labels.to(device), self.is_encoder_decoder)

    def select(self, idx: torch.Tensor | slice) -> Encoded:
        return Encoded(self.input_ids[idx], self.attention_mask[idx], self.labels[idx],
                       self.is_encoder_decoder)

    def repeat(self, k: int) -> Encoded:
        """The batch repeated ``k`` times, group after group (one group per candidate)."""
        return Encoded(self.input_ids.repeat(k, 1), self.attention_mask.repeat(k, 1),
                       self.labels.repeat(k, 1), self.is_encoder_decoder)

    @property
    def token_counts(self) -> torch.Tensor:
        return (self.labels != IGNORE).sum(1)


def causal_ids(tokenizer: Any, example: Example, max_length: int = 512,
               append_eos: bool = True) -> tuple[list[int], list[int]]:
    """Input and target ids of one causal example: the prompt as the tokenizer encodes it,
    then the output tokens (encoded apart, as LoRAHub does) and EOS so stopping is learnt."""
    prompt = tokenizer(example.input, add_special_tokens=True)["input_ids"]
    target = tokenizer(example.output, add_special_tokens=False)["input_ids"]
    eos = getattr(tokenizer, "eos_token_id", None)
    if append_eos and eos is not None:
        target = [*target, eos]
    if not target:
        raise InvalidRequestError(f"example output {example.output!r} encodes to no tokens")
    keep = max(1, max_length - len(target))
    return prompt[-keep:], target[:max_length - 1]


def pad_id(tokenizer: Any) -> int:
    for attr in ("pad_token_id", "eos_token_id", "unk_token_id"):
        v = getattr(tokenizer, attr, None)
        if v is not None:
            return int(v)
    return 0


def encode_causal(tokenizer: Any, examples: Sequence[Example], max_length: int = 512,
                  append_eos: bool = True) -> Encoded:
    """Right-padded ``prompt + output`` sequences; loss only on the output tokens."""
    rows = [causal_ids(tokenizer, e, max_length, append_eos) for e in examples]
    width = max(len(p) + len(t) for p, t in rows)
    pad = pad_id(tokenizer)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    for i, (p, t) in enumerate(rows):
        seq = p + t
        ids[i, : len(seq)] = torch.tensor(seq)
        mask[i, : len(seq)] = 1
        labels[i, len(p): len(seq)] = torch.tensor(t)
    return Encoded(ids, mask, labels, is_encoder_decoder=False)


def encode_seq2seq(tokenizer: Any, examples: Sequence[Example], max_length: int = 2048) -> Encoded:
    """As LoRAHub's preprocessing: inputs and targets tokenised apart, padded, pad -> IGNORE."""
    enc = tokenizer([e.input for e in examples], max_length=max_length, padding=True,
                    truncation=True, return_tensors="pt")
    lab = tokenizer([e.output for e in examples], max_length=max_length, padding=True,
                    truncation=True, return_tensors="pt")["input_ids"]
    lab[lab == tokenizer.pad_token_id] = IGNORE
    return Encoded(enc["input_ids"], enc["attention_mask"], lab, is_encoder_decoder=True)


def encode(tokenizer: Any, examples: Sequence[Example], is_encoder_decoder: bool,
           max_length: int = 512) -> Encoded:
    if is_encoder_decoder:
        return encode_seq2seq(tokenizer, examples, max_length)
    return encode_causal(tokenizer, examples, max_length)


@dataclass
class Packed:
    """Causal examples packed several to a row, so a pass computes fewer padding tokens.

    Rows are as wide as the longest example; examples go in longest first, each into the
    first row with room. Positions restart at every example, which transformers reads as
    independent sequences (block-diagonal causal attention). ``example`` holds each token's
    example index (``-1`` on padding).
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    labels: torch.Tensor
    example: torch.Tensor
    n: int

    def repeat(self, k: int) -> Packed:
        """``k`` groups of rows; group ``g``'s examples are numbered ``g * n ...``."""
        offset = (torch.arange(k, device=self.example.device) * self.n).repeat_interleave(
            self.example.shape[0]).unsqueeze(1)
        ex = self.example.repeat(k, 1)
        return Packed(self.input_ids.repeat(k, 1), self.position_ids.repeat(k, 1),
                      self.labels.repeat(k, 1), torch.where(ex >= 0, ex + offset, ex), self.n * k)


def pack(enc: Encoded) -> Packed | None:
    """The causal batch packed, or ``None`` where packing saves no row."""
    if enc.is_encoder_decoder:
        return None
    lengths = enc.attention_mask.sum(1).tolist()
    width = int(enc.input_ids.shape[1])
    bins: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        slot = next((b for b, r in enumerate(room) if r >= lengths[i]), None)
        if slot is None:
            bins.append([])
            room.append(width)
            slot = len(bins) - 1
        bins[slot].append(i)
        room[slot] -= lengths[i]
    if len(bins) >= len(lengths):
        return None
    dev = enc.input_ids.device
    pad = int(enc.input_ids[enc.attention_mask == 0][0])  # uneven rows: some padding exists
    ids = torch.full((len(bins), width), pad, dtype=torch.long, device=dev)
    pos = torch.zeros_like(ids)
    labels = torch.full_like(ids, IGNORE)
    example = torch.full_like(ids, -1)
    for b, members in enumerate(bins):
        at = 0
        for i in members:
            n = lengths[i]
            ids[b, at:at + n] = enc.input_ids[i, :n]
            pos[b, at:at + n] = torch.arange(n, device=dev)
            labels[b, at:at + n] = enc.labels[i, :n]
            example[b, at:at + n] = i
            at += n
        pos[b, at:] = torch.arange(width - at, device=dev)  # padding: its own segment
    return Packed(ids, pos, labels, example, len(lengths))
