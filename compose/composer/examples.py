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
TREE_WIDTH = 512  # tokens per row of label trees, unless one tree is longer


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


def first_fit(sizes: Sequence[int], width: int) -> list[list[int]]:
    """Indices of ``sizes`` in rows of ``width``: longest first, each into the first row with
    room (first-fit decreasing)."""
    bins: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(sizes)), key=lambda i: -sizes[i]):
        slot = next((b for b, r in enumerate(room) if r >= sizes[i]), None)
        if slot is None:
            bins.append([])
            room.append(width)
            slot = len(bins) - 1
        bins[slot].append(i)
        room[slot] -= sizes[i]
    return bins


def pack(enc: Encoded) -> Packed | None:
    """The causal batch packed, or ``None`` where packing saves no row."""
    if enc.is_encoder_decoder:
        return None
    lengths = enc.attention_mask.sum(1).tolist()
    width = int(enc.input_ids.shape[1])
    bins = first_fit(lengths, width)
    if len(bins) >= len(lengths):
        return None
    dev = enc.input_ids.device
    ids = torch.full((len(bins), width), pad_id_of(enc), dtype=torch.long, device=dev)
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


@dataclass
class Tree:
    """Rows that share a prompt, packed as trees: the prompt once, then each row's output as a
    branch that attends to the prompt and to itself.

    The label objective scores every example once per label; written out, each prompt is
    computed once per label. As a tree it is computed once, so a pass costs about the prompt
    plus the labels instead of the number of labels times the prompt. A branch holds its
    output's tokens but the last (which is only predicted), at the positions the row would
    give them. Scored tokens are listed flat: ``src`` is the flat index (row * width + column)
    of the state that predicts ``target``, and ``owner`` the original row it belongs to.
    ``mask`` is additive (``0`` where a token may attend, the dtype's minimum elsewhere) so
    that every attention implementation reads it; padding attends to itself only.
    """

    input_ids: torch.Tensor  # [R, W]
    position_ids: torch.Tensor  # [R, W]
    allowed: torch.Tensor  # [R, W, W] bool
    src: torch.Tensor  # [S]
    target: torch.Tensor  # [S]
    owner: torch.Tensor  # [S]
    n: int  # original rows

    def repeat(self, k: int) -> Tree:
        """``k`` groups of rows; group ``g``'s original rows are numbered ``g * n ...``."""
        cells = self.input_ids.numel()
        g = torch.arange(k, device=self.src.device).repeat_interleave(self.src.shape[0])
        return Tree(self.input_ids.repeat(k, 1), self.position_ids.repeat(k, 1),
                    self.allowed.repeat(k, 1, 1), self.src.repeat(k) + g * cells,
                    self.target.repeat(k), self.owner.repeat(k) + g * self.n, self.n * k)

    def mask(self, dtype: torch.dtype) -> torch.Tensor:
        """``[R, 1, W, W]`` additive mask in ``dtype``."""
        m = torch.zeros(self.allowed.shape, dtype=dtype, device=self.allowed.device)
        return m.masked_fill_(~self.allowed, torch.finfo(dtype).min).unsqueeze(1)


def tree_pack(enc: Encoded, per: int) -> Tree | None:
    """Causal rows in groups of ``per`` consecutive rows with one prompt (the label objective's
    example-major rows) packed as trees; ``None`` where rows of a group differ before their
    outputs or there is nothing to share."""
    if enc.is_encoder_decoder or per < 2 or len(enc) % per:
        return None
    scored = enc.labels != IGNORE
    groups: list[tuple[list[int], list[list[int]], list[int]]] = []  # prompt, branches, rows
    for g in range(0, len(enc), per):
        rows = list(range(g, g + per))
        starts = [int(scored[r].nonzero()[0]) for r in rows]
        if len(set(starts)) != 1 or starts[0] == 0:
            return None
        p = starts[0]
        prompt = enc.input_ids[g, :p]
        if any(not torch.equal(enc.input_ids[r, :p], prompt) for r in rows):
            return None
        branches = [enc.labels[r][scored[r]].tolist() for r in rows]
        groups.append((prompt.tolist(), branches, rows))
    sizes = [len(p) + sum(len(b) - 1 for b in bs) for p, bs, _ in groups]
    # rows wide enough to take several trees: padding costs a token's full compute, while the
    # attention a wider row adds is small beside the layers' matmuls at these widths
    width = max(max(sizes), min(sum(sizes), TREE_WIDTH))
    bins = first_fit(sizes, width)
    dev = enc.input_ids.device
    ids = torch.full((len(bins), width), pad_id_of(enc), dtype=torch.long)
    pos = torch.zeros_like(ids)
    allowed = torch.eye(width, dtype=torch.bool).repeat(len(bins), 1, 1)
    src: list[int] = []
    target: list[int] = []
    owner: list[int] = []
    for b, members in enumerate(bins):
        at = 0
        for i in members:
            prompt, branches, rows = groups[i]
            p = len(prompt)
            ids[b, at:at + p] = torch.tensor(prompt)
            pos[b, at:at + p] = torch.arange(p)
            allowed[b, at:at + p, at:at + p] = torch.ones(p, p, dtype=torch.bool).tril()
            last = at + p - 1  # the state that predicts each branch's first token
            at += p
            for toks, row in zip(branches, rows, strict=True):
                m = len(toks) - 1
                ids[b, at:at + m] = torch.tensor(toks[:-1], dtype=torch.long)
                pos[b, at:at + m] = torch.arange(p, p + m)
                allowed[b, at:at + m, last - p + 1:last + 1] = True
                allowed[b, at:at + m, at:at + m] = torch.ones(m, m, dtype=torch.bool).tril()
                srcs = [last, *range(at, at + m)]
                src += [b * width + c for c in srcs]
                target += toks
                owner += [row] * len(toks)
                at += m
    return Tree(ids.to(dev), pos.to(dev), allowed.to(dev), torch.tensor(src, device=dev),
                torch.tensor(target, device=dev), torch.tensor(owner, device=dev), len(enc))


def pad_id_of(enc: Encoded) -> int:
    """The padding id an encoded batch uses (0 where it has no padding)."""
    pads = enc.input_ids[enc.attention_mask == 0]
    return int(pads[0]) if pads.numel() else 0
