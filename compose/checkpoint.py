"""A base model checkpoint's safetensors shards, read and written one tensor at a time.

Reading: the layout comes from the headers alone; each tensor is one positioned read into a
buffer of its own size (a whole-file memory map would keep every touched page resident, so the
process would grow to the model's size). A bitsandbytes 4-bit base is recognised from its keys
(``hub.quant4``); only the small JSON state of each 4-bit weight is read when the checkpoint is
opened, its scales when the weight itself is.

Writing: a shard is streamed, data first behind a reserved header that is filled in last, so
tensors whose exact size is known only once computed (a re-quantized weight's JSON state) need
no second pass; when every size is known in advance the header is exactly the minimal one.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import torch

from lorahive.hub import quant4
from lorahive.hub.errors import InvalidAdapterError, InvalidRequestError
from lorahive.hub.manifest import is_pickle_name
from lorahive.hub.safetensors_io import (
    DTYPE_SIZES,
    ST_DTYPES,
    StreamWriter,
    read_header,
    read_metadata,
)

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf")
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)



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
    config: dict[str, Any] | None = None
    quantized: dict[str, quant4.Quant4Keys] = field(default_factory=dict)  # 4-bit weights
    meta: dict[str, quant4.Quant4Meta] = field(default_factory=dict)

    @property
    def total_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors.values())

    @property
    def is_4bit(self) -> bool:
        return bool(self.quantized)

    def shape(self, key: str) -> list[int]:
        """The weight's own shape (a 4-bit weight's, not its packed codes')."""
        m = self.meta.get(key)
        return list(m.shape) if m is not None else self.tensors[key].shape

    def dtype(self, key: str) -> torch.dtype:
        """What the weight is as a float: a 4-bit weight's recorded dtype, else the stored one."""
        m = self.meta.get(key)
        return m.dtype if m is not None else ST_DTYPES[self.tensors[key].dtype]

    def state_keys(self) -> set[str]:
        """Keys that belong to 4-bit weights besides the codes themselves."""
        return {k for q in self.quantized.values() for k in q.state_keys}


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
    config = None
    if (root / "config.json").is_file():
        try:
            config = json.loads((root / "config.json").read_text())
        except json.JSONDecodeError:
            raise InvalidRequestError(f"{root / 'config.json'} is not valid JSON") from None
    ckpt = Checkpoint(root, shards, tensors, metadata, index, config)
    says_4bit = isinstance(config, dict) and quant4.is_4bit_config(config)
    ckpt.quantized = quant4.find_quantized(tensors)
    if says_4bit and not ckpt.quantized:
        raise InvalidRequestError(
            f"{root}/config.json says the weights are 4-bit but no weight has a quant state "
            "(…quant_state.bitsandbytes__nf4); the checkpoint is incomplete")
    if ckpt.quantized:
        with Reader(ckpt) as r:
            for key, keys in ckpt.quantized.items():
                ckpt.meta[key] = quant4.parse_meta(keys, r.tensor(keys.packed_state))
    return ckpt


def read_tensor(fh: BinaryIO, info: TensorInfo) -> torch.Tensor:
    """One tensor from an open shard: a positioned read into a buffer of exactly its size."""
    buf = torch.empty(info.nbytes, dtype=torch.uint8)
    fh.seek(info.offset)
    if info.nbytes and fh.readinto(buf.numpy()) != info.nbytes:
        raise InvalidRequestError(f"{info.shard} is truncated; the base checkpoint is corrupt")
    return buf.view(ST_DTYPES[info.dtype]).reshape(info.shape)


class Reader:
    """Tensors of one checkpoint by key, each shard opened once (use as a context manager)."""

    def __init__(self, ckpt: Checkpoint):
        self.ckpt = ckpt
        self._stack = ExitStack()
        self._files: dict[str, BinaryIO] = {}

    def __enter__(self) -> Reader:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()
        self._files.clear()

    def tensor(self, key: str) -> torch.Tensor:
        info = self.ckpt.tensors[key]
        fh = self._files.get(info.shard)
        if fh is None:
            fh = self._files[info.shard] = self._stack.enter_context(
                open(self.ckpt.root / info.shard, "rb"))  # noqa: SIM115 (closed by the stack)
        return read_tensor(fh, info)

    def state(self, key: str) -> quant4.Quant4State:
        """The full 4-bit state (scales and code books) of weight ``key``."""
        keys = self.ckpt.quantized[key]
        return quant4.parse_state(keys, {k: self.tensor(k) for k in keys.state_keys})

    def weight(self, key: str, device: torch.device, dtype: torch.dtype = torch.float32
               ) -> torch.Tensor:
        """A weight as floats on ``device``. A 4-bit weight is dequantized to its recorded
        dtype first, as bitsandbytes' forward pass does: these are the weights a QLoRA
        adapter was trained against."""
        if key in self.ckpt.quantized:
            return quant4.dequantize(self.tensor(key), self.state(key), device=device).to(dtype)
        return self.tensor(key).to(device=device, dtype=dtype)


# writing ----------------------------------------------------------------------------------
def copy_side_files(src: Path, dest: Path, skip: tuple[str, ...] = ()) -> list[str]:
    """Config, generation config, tokenizer and chat template: every non-weight file."""
    copied = []
    for p in sorted(src.iterdir()):
        if p.is_file() and not p.name.startswith(".") and p.suffix not in WEIGHT_SUFFIXES \
                and p.name != INDEX_NAME and p.name not in skip:
            shutil.copy2(p, dest / p.name)
            copied.append(p.name)
    return copied


@dataclass
class Item:
    """Input tensors consumed together and the tensors written for them, in order.

    ``planned`` gives each output's dtype and largest shape (the header is reserved from it);
    ``produce`` computes the outputs when the item's turn comes, so one item's tensors are in
    memory at a time.
    """

    inputs: list[str]
    planned: list[tuple[str, str, list[int]]]
    produce: Callable[[], list[tuple[str, torch.Tensor]]]


def write_shard(path: Path, items: list[Item], metadata: dict[str, str],
                on_done: Callable[[Item], None]) -> tuple[int, list[str]]:
    """Stream ``items`` into one shard; returns the data bytes and the keys written."""
    writer = StreamWriter(path, [p for it in items for p in it.planned], metadata)
    try:
        for it in items:
            for key, t in it.produce():
                writer.write(key, t)
            on_done(it)
        return writer.close(), [e[0] for e in writer.entries]
    except BaseException:
        writer.abort()
        raise


def set_config_dtype(cfg: dict[str, Any], dtype: torch.dtype) -> None:
    """Record the weights' dtype under whichever key the config uses."""
    name = str(dtype).removeprefix("torch.")
    for key in ("torch_dtype", "dtype"):
        if key in cfg:
            cfg[key] = name


def update_config(path: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    try:
        cfg = json.loads(path.read_text())
    except json.JSONDecodeError:
        raise InvalidAdapterError(f"{path}: not valid JSON") from None
    edit(cfg)
    path.write_text(json.dumps(cfg, indent=2) + "\n")
