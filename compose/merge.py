"""Merge adapters into a base checkpoint, streaming it tensor by tensor.

The base's safetensors shards are read one tensor at a time, each with one positioned read into
a buffer of its own size (a whole-file memory map would keep every touched page resident, so
the process would grow to the model's size); each adapted weight gets its delta added in
float32 on the chosen device and is cast back (to the stored dtype, or ``dtype``). Output shards keep the input's layout and index and are written by a
streaming writer (header first, then each tensor's bytes), so peak memory is a few tensors,
not a shard. Every adapter module is checked against the base's header before anything is
written; the output is built in a temp directory renamed on success.
"""

from __future__ import annotations

import json
import math
import shutil
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import torch

from lorahive.compose.fusion import fuse
from lorahive.hub.adapter import Adapter, LoraModule
from lorahive.hub.atomic import atomic_directory, require_free_dir
from lorahive.hub.devices import resolve_device, resolve_dtype
from lorahive.hub.errors import (
    InvalidAdapterError,
    InvalidRequestError,
    ShapeMismatchError,
    UnsupportedAdapterError,
)
from lorahive.hub.manifest import is_pickle_name
from lorahive.hub.safetensors_io import DTYPE_SIZES, read_header, read_metadata

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf")

ST_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool, "U16": torch.uint16, "U32": torch.uint32,
    "U64": torch.uint64, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}
ST_NAMES = {v: k for k, v in ST_DTYPES.items()}


@dataclass
class TensorInfo:
    shard: str
    dtype: str
    shape: list[int]
    offset: int = 0  # absolute byte offset of the data in the shard file

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * DTYPE_SIZES[self.dtype]


@dataclass
class Checkpoint:
    """A base model directory's safetensors layout, read from headers only."""

    root: Path
    shards: list[str]  # file names in order
    tensors: dict[str, TensorInfo]  # in file order within each shard
    metadata: dict[str, dict[str, str]] = field(default_factory=dict)  # per shard
    index: dict[str, Any] | None = None

    @property
    def total_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors.values())


def open_checkpoint(root: str | Path) -> Checkpoint:
    root = Path(root)
    if not root.is_dir():
        raise InvalidRequestError(f"base model {root} is not a directory")
    index = None
    if (root / INDEX_NAME).is_file():
        index = json.loads((root / INDEX_NAME).read_text())
        shards = list(dict.fromkeys(index.get("weight_map", {}).values()))
    elif (root / SINGLE_NAME).is_file():
        shards = [SINGLE_NAME]
    else:
        found = sorted(p.name for p in root.glob("*.safetensors"))
        if len(found) != 1:
            other = [p.name for p in root.iterdir() if is_pickle_name(p.name)]
            hint = " (pickle weights are not read; convert the base to safetensors)" if other else ""
            raise InvalidRequestError(
                f"{root} has no {SINGLE_NAME} or {INDEX_NAME}{hint}; pass a base model directory"
            )
        shards = found
    tensors: dict[str, TensorInfo] = {}
    metadata: dict[str, dict[str, str]] = {}
    for shard in shards:
        path = root / shard
        if not path.is_file():
            raise InvalidRequestError(f"{root}: the index names {shard}, which is missing")
        header, data_start = read_header(path)
        metadata[shard] = read_metadata(path)
        for key, info in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
            tensors[key] = TensorInfo(shard, info["dtype"], list(info["shape"]),
                                      data_start + info["data_offsets"][0])
    return Checkpoint(root, shards, tensors, metadata, index)


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
        info = ckpt.tensors[key]
        if tuple(info.shape) != tuple(m.weight_shape):
            raise ShapeMismatchError(
                f"adapter module {name} expects a base weight of shape {list(m.weight_shape)} "
                f"but {key} is {info.shape}; the adapter was made for another base model"
            )
        if ST_DTYPES.get(info.dtype) not in (torch.float16, torch.bfloat16, torch.float32,
                                             torch.float64):
            raise UnsupportedAdapterError(
                f"{key} is stored as {info.dtype}; quantized bases are not merged here"
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


# reading and writing -----------------------------------------------------------------------
def read_tensor(fh: BinaryIO, info: TensorInfo) -> torch.Tensor:
    """One tensor from an open shard: a positioned read into a buffer of exactly its size."""
    buf = torch.empty(info.nbytes, dtype=torch.uint8)
    fh.seek(info.offset)
    if info.nbytes and fh.readinto(buf.numpy()) != info.nbytes:
        raise InvalidRequestError(f"{info.shard} is truncated; the base checkpoint is corrupt")
    return buf.view(ST_DTYPES[info.dtype]).reshape(info.shape)


def _write_shard(
    src: Path, dest: Path, keys: list[str], ckpt: Checkpoint, deltas: DeltaSource,
    device: torch.device, out_dtype: torch.dtype | None, on_bytes: Callable[[int], None],
) -> int:
    """Stream one shard: header with final offsets, then each tensor's bytes in order."""
    def final_dtype(info: TensorInfo) -> str:
        floating = ST_DTYPES[info.dtype].is_floating_point
        return ST_NAMES[out_dtype] if (out_dtype is not None and floating) else info.dtype

    header: dict[str, Any] = {}
    meta = ckpt.metadata.get(src.name) or {"format": "pt"}
    header["__metadata__"] = meta
    offset = 0
    for key in keys:
        info = ckpt.tensors[key]
        dt = final_dtype(info)
        n = math.prod(info.shape) * DTYPE_SIZES[dt]
        header[key] = {"dtype": dt, "shape": info.shape, "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(src, "rb") as f, open(dest, "wb") as out:
        out.write(struct.pack("<Q", len(raw)))
        out.write(raw)
        for key in keys:
            t = read_tensor(f, ckpt.tensors[key])
            want = ST_DTYPES[header[key]["dtype"]]
            if key in deltas.terms:
                W = t.to(device=device, dtype=torch.float32)
                t = (W + deltas.delta(key, W, device)).to(want)
            elif t.dtype != want:
                t = t.to(want)
            out.write(t.to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().data)
            on_bytes(ckpt.tensors[key].nbytes)
    return offset


def copy_side_files(src: Path, dest: Path) -> list[str]:
    """Config, generation config, tokenizer and chat template: every non-weight file."""
    copied = []
    for p in sorted(src.iterdir()):
        if p.is_file() and not p.name.startswith(".") and p.suffix not in WEIGHT_SUFFIXES \
                and p.name != INDEX_NAME:
            shutil.copy2(p, dest / p.name)
            copied.append(p.name)
    return copied


@dataclass
class MergeReport:
    out: Path
    shards: list[str]
    merged: list[str]  # base keys that changed
    bytes_read: int
    bytes_written: int
    copied: list[str]


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
) -> MergeReport:
    """Write ``base + sum of deltas`` to ``out_dir`` (same shards and index as the base)."""
    out_dir = Path(out_dir)
    if not overwrite:
        require_free_dir(out_dir)
    ckpt = open_checkpoint(base_dir)
    dev = resolve_device(device)
    out_dtype = resolve_dtype(dtype)
    if out_dtype is not None and out_dtype not in ST_NAMES:
        raise InvalidRequestError(f"dtype {dtype} cannot be stored in safetensors", params="dtype")
    deltas = build_deltas(adapters, ckpt, weights, method, params, rank, seed, dev)
    total = ckpt.total_bytes
    done = 0

    def on_bytes(n: int) -> None:
        nonlocal done
        done += n
        if progress:
            progress(done, total)

    written = 0
    with atomic_directory(out_dir, overwrite=True) as tmp:
        for shard in ckpt.shards:
            keys = [k for k, t in ckpt.tensors.items() if t.shard == shard]
            written += _write_shard(ckpt.root / shard, tmp / shard, keys, ckpt, deltas, dev,
                                    out_dtype, on_bytes)
        copied = copy_side_files(ckpt.root, tmp)
        for rel, data in (extra_files or {}).items():
            (tmp / rel).write_bytes(data)
        if ckpt.index is not None:
            index = dict(ckpt.index)
            index["metadata"] = {**(index.get("metadata") or {}), "total_size": written}
            (tmp / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
        if out_dtype is not None and (tmp / "config.json").is_file():
            _set_config_dtype(tmp / "config.json", out_dtype)
    return MergeReport(out_dir, ckpt.shards, sorted(deltas.terms), total, written, copied)


def _set_config_dtype(path: Path, dtype: torch.dtype) -> None:
    try:
        cfg = json.loads(path.read_text())
    except json.JSONDecodeError:
        raise InvalidAdapterError(f"{path}: not valid JSON") from None
    name = str(dtype).removeprefix("torch.")
    for key in ("torch_dtype", "dtype"):
        if key in cfg:
            cfg[key] = name
    path.write_text(json.dumps(cfg, indent=2) + "\n")
