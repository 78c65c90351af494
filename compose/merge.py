"""Merge adapters into a base checkpoint, streaming it tensor by tensor.

The base is read one tensor at a time (``compose.checkpoint``); each adapted weight gets its
delta added in float32 on the chosen device and is cast back (to the stored dtype, or
``dtype``). Output shards keep the input's layout and index and are streamed, so peak memory is
a few tensors, not a shard. Every adapter module is checked against the base's header before
anything is written; the output is built in a temp directory renamed on success.

A bitsandbytes 4-bit base (QLoRA) is dequantized weight by weight in plain torch; what is
written then — 16-bit shards, or 4-bit ones re-quantized with a per-module account of how much
of each delta survived — is ``compose.merge_quant4``'s business.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lorahive.compose.checkpoint import (
    FLOAT_DTYPES,
    INDEX_NAME,
    Checkpoint,
    Item,
    Reader,
    TensorInfo,
    copy_side_files,
    open_checkpoint,
    set_config_dtype,
    update_config,
    write_shard,
)
from lorahive.compose.fusion import fuse
from lorahive.compose.merge_quant4 import ModuleReport, Quant4Merge
from lorahive.hub.adapter import Adapter, LoraModule
from lorahive.hub.atomic import atomic_directory, require_free_dir
from lorahive.hub.devices import resolve_device, resolve_dtype
from lorahive.hub.errors import (
    InvalidRequestError,
    ShapeMismatchError,
    UnsupportedAdapterError,
)
from lorahive.hub.safetensors_io import ST_DTYPES, ST_NAMES

__all__ = ["Checkpoint", "DeltaSource", "MergeReport", "TensorInfo", "build_deltas",
           "check_against_base", "merge_into_base", "open_checkpoint"]

# checks ------------------------------------------------------------------------------------
def base_key(name: str, ckpt: Checkpoint) -> str:
    """The base weight an adapter module adapts: ``<name>.weight``, or a unique suffix match."""
    key = f"{name}.weight"
    if key in ckpt.tensors:
        return key
    hits = [k for k in ckpt.tensors if k.endswith(f".{key}") or key.endswith(f".{k}")]
    if len(hits) == 1:
        return hits[0]
    raise ShapeMismatchError(
        f"the base model has no weight for adapter module {name!r} (looked for {key}); "
        "is this the adapter's base model?"
    )


def check_against_base(adapter: Adapter, ckpt: Checkpoint) -> dict[str, str]:
    """Map every module onto a base weight of the right shape; returns module -> base key."""
    adapter.require_lora("merging")
    if adapter.config.residual_init:
        raise UnsupportedAdapterError(
            f"this adapter was trained on a residual base ({adapter.config.residual_init}); "
            "merging it into the original base is wrong. Convert it first with "
            "`lorahive convert --initial DIR` (plain delta against the original base)"
        )
    out = {}
    for name, m in adapter.modules.items():
        key = base_key(name, ckpt)
        shape = ckpt.shape(key)
        if tuple(shape) != tuple(m.weight_shape):
            raise ShapeMismatchError(
                f"adapter module {name} expects a base weight of shape {list(m.weight_shape)} "
                f"but {key} is {shape}; the adapter was made for another base model"
            )
        if key not in ckpt.quantized and ckpt.dtype(key) not in FLOAT_DTYPES:
            raise UnsupportedAdapterError(
                f"{key} is stored as {ckpt.tensors[key].dtype}; only float and bitsandbytes "
                "4-bit (NF4/FP4) weights are merged"
            )
        out[name] = key
    return out


# deltas ------------------------------------------------------------------------------------
@dataclass
class DeltaSource:
    """Per base key, the (module, weight) terms whose deltas are added to it."""

    terms: dict[str, list[tuple[LoraModule, float]]]

    def delta(self, key: str, W32: torch.Tensor, device: torch.device) -> torch.Tensor:
        total = None
        for m, w in self.terms[key]:
            d = m.delta(device, torch.float32, base_weight=W32 if m.magnitude is not None
                        else None)
            total = d * w if total is None else total + d * w
        assert total is not None
        return total


def build_deltas(
    adapters: Sequence[Adapter],
    ckpt: Checkpoint,
    weights: Sequence[float] | None = None,
    method: str | None = None,
    params: dict[str, Any] | None = None,
    rank: int | None = None,
    seed: int = 0,
    device: str | torch.device = "auto",
) -> DeltaSource:
    """Check every adapter against the base, then say which deltas go onto which weights.

    With no method (or exact ``task_arithmetic`` without a rank) each adapter's own delta is
    added, weighted: DoRA and rsLoRA adapters merge exactly as PEFT merges them. Any other
    method fuses the adapters first and merges the fused adapter.
    """
    if not adapters:
        raise InvalidRequestError("give at least one adapter", params="adapter")
    w = [1.0] * len(adapters) if weights is None else [float(x) for x in weights]
    if len(w) != len(adapters):
        raise InvalidRequestError(f"{len(w)} weights for {len(adapters)} adapters")
    maps = [check_against_base(ad, ckpt) for ad in adapters]
    if method not in (None, "task_arithmetic") or rank is not None:
        fused = fuse(adapters, method or "task_arithmetic", w, params, rank=rank, seed=seed,
                     device=device).adapter
        adapters, maps, w = [fused], [check_against_base(fused, ckpt)], [1.0]
    terms: dict[str, list[tuple[LoraModule, float]]] = {}
    for ad, mp, wi in zip(adapters, maps, w, strict=True):
        for name, key in mp.items():
            terms.setdefault(key, []).append((ad.modules[name], wi))
    return DeltaSource(terms)


# writing ----------------------------------------------------------------------------------
def float_items(keys: list[str], ckpt: Checkpoint, reader: Reader, deltas: DeltaSource,
                device: torch.device, out_dtype: torch.dtype | None) -> list[Item]:
    """One item per tensor of a float base: ``W + delta`` where adapted, else a copy (cast to
    ``out_dtype`` when given)."""
    items = []
    for key in keys:
        info = ckpt.tensors[key]
        floating = ST_DTYPES[info.dtype].is_floating_point
        dt = ST_NAMES[out_dtype] if (out_dtype is not None and floating) else info.dtype

        def produce(key: str = key, want: torch.dtype = ST_DTYPES[dt]):
            t = reader.tensor(key)
            if key in deltas.terms:
                W = t.to(device=device, dtype=torch.float32)
                t = (W + deltas.delta(key, W, device)).to(want)
            elif t.dtype != want:
                t = t.to(want)
            return [(key, t)]

        items.append(Item([key], [(key, dt, info.shape)], produce))
    return items


@dataclass
class MergeReport:
    out: Path
    shards: list[str]
    merged: list[str]  # base keys that changed
    bytes_read: int
    bytes_written: int
    copied: list[str]
    quant: Quant4Merge | None = None  # 4-bit bases: output kind and per-module figures

    @property
    def modules(self) -> list[ModuleReport]:
        return self.quant.rows if self.quant is not None else []

    @property
    def warnings(self) -> list[str]:
        return self.quant.warnings() if self.quant is not None else []


def merge_into_base(
    base_dir: str | Path,
    adapters: Sequence[Adapter],
    out_dir: str | Path,
    weights: Sequence[float] | None = None,
    method: str | None = None,
    params: dict[str, Any] | None = None,
    rank: int | None = None,
    seed: int = 0,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype | None = None,
    progress: Callable[[int, int], None] | None = None,
    overwrite: bool = False,
    extra_files: dict[str, bytes] | None = None,
    requantize: str | None = None,
    original: str | Path | None = None,
    against: str | None = None,
) -> MergeReport:
    """Write ``base + sum of deltas`` to ``out_dir`` (same shards and index as the base).

    A 4-bit base is written as 16-bit shards (``dtype``, default the dtype its weights were
    quantized from) or, with ``requantize="nf4"``/``"fp4"``, as a 4-bit checkpoint; with
    ``original`` (the 16-bit base it was quantized from) ``against`` says which weights the
    deltas are added to, ``"dequantized"`` (what the adapter was trained on, the default) or
    ``"original"``, and the quantization gap is reported beside each delta.
    """
    out_dir = Path(out_dir)
    if not overwrite:
        require_free_dir(out_dir)
    ckpt = open_checkpoint(base_dir)
    dev = resolve_device(device)
    out_dtype = resolve_dtype(dtype)
    if out_dtype is not None and out_dtype not in ST_NAMES:
        raise InvalidRequestError(f"dtype {dtype} cannot be stored in safetensors", params="dtype")
    quant = Quant4Merge.prepare(ckpt, requantize, original, against, out_dtype)
    deltas = build_deltas(adapters, ckpt, weights, method, params, rank, seed, dev)
    if quant is not None:
        quant.check_original(deltas.terms)
    total = ckpt.total_bytes
    done = 0

    def on_done(item: Item) -> None:
        nonlocal done
        done += sum(ckpt.tensors[k].nbytes for k in item.inputs)
        if progress:
            progress(done, total)

    written = 0
    shard_keys: dict[str, list[str]] = {}
    try:
        with Reader(ckpt) as reader, atomic_directory(out_dir, overwrite=True) as tmp:
            for shard in ckpt.shards:
                keys = [k for k, t in ckpt.tensors.items() if t.shard == shard]
                items = quant.items(keys, reader, deltas, dev) if quant is not None else \
                    float_items(keys, ckpt, reader, deltas, dev, out_dtype)
                n, shard_keys[shard] = write_shard(
                    tmp / shard, items, ckpt.metadata.get(shard) or {"format": "pt"}, on_done)
                written += n
            copied = copy_side_files(ckpt.root, tmp)
            for rel, data in (extra_files or {}).items():
                (tmp / rel).write_bytes(data)
            if ckpt.index is not None:
                _write_index(tmp / INDEX_NAME, ckpt.index, shard_keys, written)
            if (tmp / "config.json").is_file():
                if quant is not None:
                    update_config(tmp / "config.json", quant.edit_config)
                elif out_dtype is not None:
                    update_config(tmp / "config.json",
                                  lambda cfg: set_config_dtype(cfg, out_dtype))
    finally:
        if quant is not None:
            quant.close()
    return MergeReport(out_dir, ckpt.shards, sorted(deltas.terms), total, written, copied,
                       quant)


def _write_index(path: Path, index: dict[str, Any], shard_keys: dict[str, list[str]],
                 total: int) -> None:
    """The base's index with the keys really written (a 4-bit base's state keys come and go),
    in the base's order."""
    out = dict(index)
    old = index.get("weight_map") or {}
    where = {k: shard for shard, keys in shard_keys.items() for k in keys}
    out["weight_map"] = {**{k: where[k] for k in old if k in where},
                         **{k: v for k, v in where.items() if k not in old}}
    out["metadata"] = {**(index.get("metadata") or {}), "total_size": total}
    path.write_text(json.dumps(out, indent=2) + "\n")
