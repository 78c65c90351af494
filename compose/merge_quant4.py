"""Merging adapters into a bitsandbytes 4-bit base (QLoRA), and saying what survived.

A QLoRA adapter was trained against the *dequantized* 4-bit weights, so by default its delta is
added to them (``against="dequantized"``). What is written:

- 16-bit shards (bf16 / fp16 / fp32; default the dtype the weights were quantized from), which
  transformers loads without bitsandbytes — the lossless choice;
- or, with ``requantize``, a 4-bit checkpoint in the base's own layout (block size, double
  quantization, storage) that transformers loads with bitsandbytes. Only adapted weights (and
  every weight when the quant type changes) are re-quantized; the rest are copied byte for byte.
  A low-rank delta is small next to the spacing of 4-bit codes (neighbouring NF4 values are
  0.08-0.30 of a block's absmax apart), so much of it can round away; each module's report
  gives the relative error of the delta the 4-bit model really gets,
  ``||(dequant(Q') - dequant(Q)) - delta|| / ||delta||``. With double quantization every
  re-quantized weight also gets new 8-bit scale codes (their offset is the mean of the new
  scales), a change of its own that a small delta can be smaller than; the error then exceeds
  1, and the merged 4-bit model is further from the adapter's than the base is.

16-bit output reports the same figure for the cast: bf16 keeps about 3 significant digits, so a
delta well under 1% of its weight loses part of itself there too (float32 keeps it).

With the original 16-bit base at hand (``original``), ``against="original"`` adds the deltas to
its weights instead (the 16-bit output is then the original model plus the deltas), and either
way each module reports the quantization gap ``||W_original - dequant(Q)||`` beside the delta's
norm: when the gap dwarfs the delta, the adapter learnt partly to undo the rounding and belongs
on the dequantized weights.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from lorahive.compose.checkpoint import (
    FLOAT_DTYPES,
    Checkpoint,
    Item,
    Reader,
    open_checkpoint,
    set_config_dtype,
)
from lorahive.hub import quant4
from lorahive.hub.errors import InvalidRequestError, ShapeMismatchError
from lorahive.hub.safetensors_io import ST_DTYPES, ST_NAMES

if TYPE_CHECKING:
    from lorahive.compose.merge import DeltaSource

AGAINST = ("dequantized", "original")
MOSTLY_LOST = 0.5  # relative error above which a module's delta counts as rounded away
FOREIGN_GAP = 0.5  # ||original - dequantized|| / ||weight|| far beyond 4-bit rounding


@dataclass
class ModuleReport:
    """Figures for one adapted weight of a 4-bit base."""

    key: str
    delta_norm: float
    weight_norm: float  # of the weights the delta was added to
    gap_norm: float | None = None  # ||original - dequantized||, with an original base
    rel_error: float | None = None  # error of the delta the written model really gets
    codes_changed: float | None = None  # re-quantized: share of 4-bit codes that moved

    @property
    def gap_to_delta(self) -> float | None:
        if self.gap_norm is None:
            return None
        return self.gap_norm / self.delta_norm if self.delta_norm > 0 else math.inf

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "gap_to_delta": self.gap_to_delta}


def _norm(t: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(t.float()))


def _written_error(merged: torch.Tensor, unmerged: torch.Tensor, delta: torch.Tensor) -> float:
    """Relative error of the delta as written: ``(merged - unmerged)`` against ``delta``, both
    in the output dtype (a bf16 weight has ~3 significant digits, and a small delta loses
    some of itself in them too)."""
    return quant4.relative_error(merged.float() - unmerged.float(), delta)


@dataclass
class Quant4Merge:
    """The plan for merging into one 4-bit base, and the figures it collects."""

    ckpt: Checkpoint
    requantize: str | None
    against: str
    out_dtype: torch.dtype  # of 16-bit output (unused when re-quantizing)
    original: Checkpoint | None = None
    rows: list[ModuleReport] = field(default_factory=list)
    _orig: Reader | None = None

    @classmethod
    def prepare(cls, ckpt: Checkpoint, requantize: str | None, original: str | Path | None,
                against: str | None, dtype: torch.dtype | None) -> Quant4Merge | None:
        """Validate the options for this base; ``None`` for a float base (nothing to do)."""
        if not ckpt.is_4bit:
            if requantize is not None:
                raise InvalidRequestError(
                    "requantize needs a bitsandbytes 4-bit base; this base stores float weights",
                    params="requantize")
            if original is not None or against is not None:
                raise InvalidRequestError(
                    "original and against apply to a bitsandbytes 4-bit base; this base stores "
                    "float weights", params=("original", "against"))
            return None
        rq = None
        if requantize is not None:
            rq = requantize.lower()
            if rq not in quant4.QUANT_TYPES:
                raise InvalidRequestError(
                    f"requantize takes {' or '.join(quant4.QUANT_TYPES)}, not {requantize!r}",
                    params="requantize")
            if dtype is not None:
                raise InvalidRequestError(
                    "dtype applies to 16-bit output; with requantize the base's other tensors "
                    "keep their stored dtype", params=("dtype", "requantize"))
        against = against or "dequantized"
        if against not in AGAINST:
            raise InvalidRequestError(f"against takes {' or '.join(AGAINST)}, not {against!r}",
                                      params="against")
        if against == "original" and original is None:
            raise InvalidRequestError(
                "adding the deltas to the 16-bit weights needs original: the 16-bit base this "
                "4-bit base was quantized from", params="original")
        orig = None
        if original is not None:
            orig = open_checkpoint(original)
            if orig.is_4bit:
                raise InvalidRequestError(
                    f"original {original} is 4-bit too; give the 16-bit model the 4-bit base "
                    "was quantized from", params="original")
        if dtype is None:
            dtype = Counter(m.dtype for m in ckpt.meta.values()).most_common(1)[0][0]
        return cls(ckpt, rq, against, dtype, orig)

    # the original base -------------------------------------------------------------------
    def _from_original(self) -> set[str]:
        """Keys whose output is read from the original base (16-bit output against it)."""
        if self.original is None or self.against != "original" or self.requantize:
            return set()
        return {k for k in self.ckpt.tensors if k in self.original.tensors
                and k not in self.ckpt.state_keys()}

    def check_original(self, adapted: Iterable[str]) -> None:
        """Every weight read from the original base is there, float, of the same shape."""
        if self.original is None:
            return
        orig = self.original
        for key in sorted(set(adapted) | self._from_original()):
            info = orig.tensors.get(key)
            if info is None:
                raise ShapeMismatchError(
                    f"the 16-bit base given as original has no {key}; is it the model the "
                    "4-bit base was quantized from?", params="original")
            if info.shape != self.ckpt.shape(key):
                raise ShapeMismatchError(
                    f"{key} is {info.shape} in the 16-bit base given as original but "
                    f"{self.ckpt.shape(key)} in the 4-bit base; is it the model the 4-bit base "
                    "was quantized from?", params="original")
            if key in self.ckpt.quantized and ST_DTYPES[info.dtype] not in FLOAT_DTYPES:
                raise InvalidRequestError(f"{key} is {info.dtype} in the base given as "
                                          "original; it must hold float weights",
                                          params="original")
        self._orig = Reader(orig)

    def close(self) -> None:
        if self._orig is not None:
            self._orig.__exit__(None, None, None)
            self._orig = None

    def _reference(self, key: str, W_deq: torch.Tensor, device: torch.device, adapted: bool
                   ) -> tuple[torch.Tensor, float | None]:
        """The weights the delta goes onto, and the quantization gap when it is measured."""
        if self._orig is None or not (adapted or self.against == "original"):
            return W_deq, None
        W_orig = self._orig.weight(key, device)
        gap = _norm(W_orig - W_deq)
        return (W_orig if self.against == "original" else W_deq), gap

    def _row(self, key: str, delta: torch.Tensor, ref: torch.Tensor, gap: float | None,
             **extra: float) -> None:
        self.rows.append(ModuleReport(key, _norm(delta), _norm(ref), gap, **extra))

    # what is written -----------------------------------------------------------------------
    def items(self, keys: list[str], reader: Reader, deltas: DeltaSource,
              device: torch.device) -> list[Item]:
        """The items of one shard: a 4-bit weight consumes its state tensors wherever they
        are stored; its outputs go where its codes were."""
        state_keys = self.ckpt.state_keys()
        from_orig = self._from_original()
        out = []
        for key in keys:
            if key in state_keys:
                continue
            if key in self.ckpt.quantized:
                make = self._requantized if self.requantize else self._dequantized
                out.append(make(key, reader, deltas, device))
            else:
                out.append(self._plain(key, reader, deltas, device, key in from_orig))
        return out

    def _plain(self, key: str, reader: Reader, deltas: DeltaSource, device: torch.device,
               from_orig: bool) -> Item:
        """A tensor the base stores as is (embeddings, norms, the LM head)."""
        info = self.ckpt.tensors[key]
        floating = ST_DTYPES[info.dtype].is_floating_point
        dt = ST_NAMES[self.out_dtype] if floating and not self.requantize else info.dtype

        def produce() -> list[tuple[str, torch.Tensor]]:
            t = self._orig.tensor(key) if (from_orig and self._orig) else reader.tensor(key)
            want = ST_DTYPES[dt]
            if key in deltas.terms:
                W = t.to(device=device, dtype=torch.float32)
                d = deltas.delta(key, W, device)
                out = (W + d).to(want)
                self._row(key, d, W, None, rel_error=_written_error(out, W.to(want), d))
                return [(key, out)]
            return [(key, t.to(want))]

        return Item([key], [(key, dt, info.shape)], produce)

    def _dequantized(self, key: str, reader: Reader, deltas: DeltaSource,
                     device: torch.device) -> Item:
        """A 4-bit weight written as one float tensor."""
        keys = self.ckpt.quantized[key]
        adapted = key in deltas.terms

        def produce() -> list[tuple[str, torch.Tensor]]:
            W_deq = reader.weight(key, device)
            W, gap = self._reference(key, W_deq, device, adapted)
            if not adapted:
                return [(key, W.to(self.out_dtype))]
            d = deltas.delta(key, W, device)
            out = (W + d).to(self.out_dtype)
            self._row(key, d, W, gap,
                      rel_error=_written_error(out, W.to(self.out_dtype), d))
            return [(key, out)]

        planned = [(key, ST_NAMES[self.out_dtype], list(self.ckpt.meta[key].shape))]
        return Item(keys.all_keys, planned, produce)

    def _requantized(self, key: str, reader: Reader, deltas: DeltaSource,
                     device: torch.device) -> Item:
        """A 4-bit weight written as 4-bit again: copied when untouched, else re-quantized."""
        ckpt, keys, meta = self.ckpt, self.ckpt.quantized[key], self.ckpt.meta[key]
        target = self.requantize
        assert target is not None
        adapted = key in deltas.terms
        if not adapted and meta.quant_type == target:
            planned = [(k, ckpt.tensors[k].dtype, ckpt.tensors[k].shape) for k in keys.all_keys]
            return Item(keys.all_keys, planned,
                        lambda: [(k, reader.tensor(k)) for k in keys.all_keys])
        storage = ST_DTYPES[ckpt.tensors[key].dtype]

        def produce() -> list[tuple[str, torch.Tensor]]:
            packed, state = reader.tensor(key), reader.state(key)
            W_deq = quant4.dequantize(packed, state, device=device).float()
            W, gap = self._reference(key, W_deq, device, adapted)
            d = deltas.delta(key, W, device) if adapted else None
            merged = W + d if d is not None else W
            new, new_state = quant4.quantize(merged, target, state.blocksize, like=state,
                                             storage=storage)
            if d is not None:
                got = quant4.dequantize(new, new_state, torch.float32) - W_deq
                self._row(key, d, W, gap, rel_error=quant4.relative_error(got, d),
                          codes_changed=quant4.codes_changed(packed, new, state.numel))
            return [(key, new), *quant4.state_tensors(key, new_state).items()]

        return Item(keys.all_keys, self._planned_requantized(key, meta, target, storage),
                    produce)

    @staticmethod
    def _planned_requantized(key: str, meta: quant4.Quant4Meta, target: str,
                             storage: torch.dtype) -> list[tuple[str, str, list[int]]]:
        """The tensors ``quant4.state_tensors`` writes, with the packed JSON at its longest."""
        n = math.prod(meta.shape)
        size = torch.empty((), dtype=storage).element_size()
        nested = meta.nested_blocksize is not None
        planned = [(key, ST_NAMES[storage], [(n + 1) // 2 // size, 1]),
                   (f"{key}.absmax", "U8" if nested else "F32", [meta.blocks]),
                   (f"{key}.quant_map", "F32", [16])]
        like = quant4.Quant4State(target, meta.blocksize, torch.float32, meta.shape,
                                  torch.empty(0), torch.empty(0))
        if nested:
            assert meta.nested_blocksize is not None
            planned += [(f"{key}.nested_absmax", "F32", [-(-meta.blocks // meta.nested_blocksize)]),
                        (f"{key}.nested_quant_map", "F32", [256])]
            like = quant4.Quant4State(
                target, meta.blocksize, torch.float32, meta.shape, torch.empty(0),
                torch.empty(0), quant4.Nested(torch.empty(0), torch.empty(0),
                                              meta.nested_blocksize, 0.0,
                                              meta.nested_dtype or torch.float32))
        planned.append((f"{key}.{quant4.PACKED_PREFIX}{target}", "U8",
                        [quant4.packed_state_bound(like)]))
        return planned

    def edit_config(self, cfg: dict[str, Any]) -> None:
        """16-bit output drops the quantization config; a re-quantized one names its type."""
        if self.requantize is None:
            cfg.pop("quantization_config", None)
            set_config_dtype(cfg, self.out_dtype)
            return
        qc = cfg.get("quantization_config")
        if isinstance(qc, dict):
            qc["bnb_4bit_quant_type"] = self.requantize

    # what is said --------------------------------------------------------------------------
    def warnings(self) -> list[str]:
        out = []
        rq = [r.rel_error for r in self.rows if r.rel_error is not None]
        lost = sum(e > MOSTLY_LOST for e in rq)
        if rq and lost * 2 > len(rq):
            written = self.summary()["output"]
            instead = "merge to 16-bit instead" if self.requantize else "write float32 instead"
            out.append(
                f"most of the adapter's delta rounds away in {written}: relative error above "
                f"{MOSTLY_LOST} in {lost} of {len(rq)} modules (median "
                f"{statistics.median(rq):.2f}), so the merged model stays close to the base; "
                f"{instead}, or serve the adapter unmerged on the 4-bit base")
        gaps = [r.gap_norm / r.weight_norm for r in self.rows
                if r.gap_norm is not None and r.weight_norm > 0]
        if gaps and statistics.median(gaps) > FOREIGN_GAP:
            out.append(
                "the original base differs from the dequantized 4-bit base far more than 4-bit "
                f"rounding does (median ||original - dequantized|| / ||weight|| "
                f"{statistics.median(gaps):.2f}); is it the model the 4-bit base was quantized "
                "from?")
        return out

    def summary(self) -> dict[str, Any]:
        rq = [r.rel_error for r in self.rows if r.rel_error is not None]
        gaps = [g for r in self.rows if (g := r.gap_to_delta) is not None]
        return {
            "output": f"4-bit {self.requantize}" if self.requantize
            else str(self.out_dtype).removeprefix("torch."),
            "against": self.against,
            "modules": len(self.rows),
            "median_rel_error": statistics.median(rq) if rq else None,
            "modules_mostly_lost": sum(e > MOSTLY_LOST for e in rq) if rq else None,
            "median_gap_to_delta": statistics.median(gaps) if gaps else None,
        }
