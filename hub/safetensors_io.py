"""Reading and writing safetensors with the header checked before any tensor is touched.

The header is parsed with bounds checks (size cap, offsets inside the file, no overlaps, spans
that match dtype x shape) so a hostile or truncated file is a clear error, never a crash or a
huge allocation.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import struct
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from lorahive.hub.atomic import atomic_path
from lorahive.hub.errors import InvalidAdapterError

MAX_HEADER_BYTES = 100_000_000

DTYPE_SIZES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
}

ST_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool, "U16": torch.uint16, "U32": torch.uint32,
    "U64": torch.uint64, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}
ST_NAMES = {v: k for k, v in ST_DTYPES.items()}


def _raw_header(path: Path) -> tuple[dict, dict[str, str] | None, int, int]:
    """Parse the header with its size bounds checked: ``(tensors, metadata, header bytes,
    file size)``; the one place the 8-byte length prefix is read."""
    size = path.stat().st_size
    name = path.name
    if size < 8:
        raise InvalidAdapterError(f"{name}: not a safetensors file (only {size} bytes)")
    with open(path, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        if n > MAX_HEADER_BYTES:
            raise InvalidAdapterError(
                f"{name}: safetensors header claims {n} bytes (limit {MAX_HEADER_BYTES}); "
                "the file is corrupt or hostile"
            )
        if 8 + n > size:
            raise InvalidAdapterError(f"{name}: truncated safetensors header ({n} bytes declared)")
        raw = fh.read(n)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InvalidAdapterError(f"{name}: safetensors header is not valid JSON ({e})") from None
    if not isinstance(header, dict):
        raise InvalidAdapterError(f"{name}: safetensors header is not a JSON object")
    meta = header.pop("__metadata__", None)
    if meta is not None and not isinstance(meta, dict):
        raise InvalidAdapterError(f"{name}: __metadata__ must be a string map")
    return header, meta, n, size


def read_header(path: str | os.PathLike[str]) -> tuple[dict, int]:
    """Return the validated header (without ``__metadata__``) and the data section's offset."""
    path = Path(path)
    name = path.name
    header, _, n, size = _raw_header(path)
    data_len = size - 8 - n
    spans = []
    for key, info in header.items():
        if not isinstance(info, dict) or {"dtype", "shape", "data_offsets"} - info.keys():
            raise InvalidAdapterError(f"{name}: tensor {key!r} has a malformed header entry")
        dtype = info["dtype"]
        if dtype not in DTYPE_SIZES:
            raise InvalidAdapterError(f"{name}: tensor {key!r} has unknown dtype {dtype!r}")
        shape = info["shape"]
        offs = info["data_offsets"]
        if (
            not isinstance(shape, list)
            or not all(isinstance(d, int) and d >= 0 for d in shape)
            or not isinstance(offs, list)
            or len(offs) != 2
            or not all(isinstance(o, int) for o in offs)
        ):
            raise InvalidAdapterError(f"{name}: tensor {key!r} has a malformed shape or offsets")
        begin, end = offs
        if not 0 <= begin <= end <= data_len:
            raise InvalidAdapterError(
                f"{name}: tensor {key!r} lies outside the file (offsets {begin}..{end}, "
                f"data is {data_len} bytes); the file is truncated or corrupt"
            )
        if end - begin != math.prod(shape) * DTYPE_SIZES[dtype]:
            raise InvalidAdapterError(
                f"{name}: tensor {key!r} spans {end - begin} bytes but {dtype}{shape} needs "
                f"{math.prod(shape) * DTYPE_SIZES[dtype]}"
            )
        spans.append((begin, end, key))
    spans.sort()
    for (_, e1, k1), (b2, _, k2) in itertools.pairwise(spans):
        if b2 < e1:
            raise InvalidAdapterError(f"{name}: tensors {k1!r} and {k2!r} overlap")
    return header, 8 + n


def read_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The ``__metadata__`` string map of a safetensors file (``{}`` when absent)."""
    return _raw_header(Path(path))[1] or {}


def load_tensors(path: str | os.PathLike[str], device: str = "cpu") -> dict[str, torch.Tensor]:
    """Validate the header, then load every tensor."""
    read_header(path)
    try:
        return load_file(str(path), device=device)
    except Exception as e:  # safetensors raises its own error types
        raise InvalidAdapterError(f"{Path(path).name}: cannot read safetensors ({e})") from None


def save_tensors(
    tensors: dict[str, torch.Tensor],
    path: str | os.PathLike[str],
    metadata: dict[str, str] | None = None,
) -> None:
    """Write atomically; tensors are made contiguous and moved to CPU first."""
    clean = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(clean, str(tmp), metadata=metadata or {"format": "pt"})


# one tensor at a time ----------------------------------------------------------------------
def read_at(fd: int, offset: int, dtype: str, shape: list[int], name: str = "file") -> torch.Tensor:
    """One tensor by positioned reads into a buffer of exactly its size.

    ``os.preadv`` has no shared file position, so several threads may read one open file at
    once; ``offset`` is absolute (the data section's start plus the header's data offset).
    """
    n = math.prod(shape) * DTYPE_SIZES[dtype]
    buf = torch.empty(n, dtype=torch.uint8)
    view = memoryview(buf.numpy())
    done = 0
    while done < n:
        got = os.preadv(fd, [view[done:]], offset + done)
        if got <= 0:
            raise InvalidAdapterError(f"{name} is truncated (a tensor at byte {offset} ends "
                                      "past the end of the file)")
        done += got
    return buf.view(ST_DTYPES[dtype]).reshape(shape)


def header_bytes(entries: list[tuple[str, str, list[int]]], metadata: dict[str, str]) -> bytes:
    """The safetensors header for tensors written back to back in ``entries`` order."""
    header: dict[str, Any] = {"__metadata__": metadata}
    offset = 0
    for key, dtype, shape in entries:
        n = math.prod(shape) * DTYPE_SIZES[dtype]
        header[key] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    return raw + b" " * (-len(raw) % 8)


class StreamWriter:
    """Stream tensors into one safetensors file behind a header reserved up front.

    ``planned`` lists every tensor in write order with its largest possible shape (real
    tensors may be fewer or smaller, never larger); the header written at the end, with the
    real shapes and offsets, is then never longer than the planned one and is padded with
    spaces to the reserved size, as the format allows. Peak memory is one tensor, not the
    file. Every ``WRITEBACK`` bytes the kernel is asked to start writing what came before
    (``posix_fadvise``), so the final fsync does not wait for the whole file at once.
    """

    WRITEBACK = 64 << 20

    def __init__(self, path: str | os.PathLike[str], planned: list[tuple[str, str, list[int]]],
                 metadata: dict[str, str]):
        self.path = Path(path)
        self.metadata = metadata
        self.reserved = len(header_bytes(planned, metadata))
        self.entries: list[tuple[str, str, list[int]]] = []
        self.fh = open(self.path, "wb")  # noqa: SIM115 (closed by close() or abort())
        self.fh.seek(8 + self.reserved)
        self._flushed = 8 + self.reserved

    def write(self, key: str, t: torch.Tensor) -> None:
        t = t.detach().to("cpu").contiguous()
        self.entries.append((key, ST_NAMES[t.dtype], list(t.shape)))
        self.fh.write(t.reshape(-1).view(torch.uint8).numpy().data)
        end = self.fh.tell()
        if end - self._flushed >= self.WRITEBACK and hasattr(os, "posix_fadvise"):
            self.fh.flush()
            os.posix_fadvise(self.fh.fileno(), self._flushed, end - self._flushed,
                             os.POSIX_FADV_DONTNEED)  # starts writeback of those pages
            self._flushed = end

    def close(self) -> int:
        """Write the header and flush; returns the data bytes written."""
        raw = header_bytes(self.entries, self.metadata)
        if len(raw) > self.reserved:
            self.abort()
            raise AssertionError("a tensor grew past its planned size")
        raw += b" " * (self.reserved - len(raw))
        size = self.fh.tell() - 8 - self.reserved
        self.fh.seek(0)
        self.fh.write(struct.pack("<Q", len(raw)))
        self.fh.write(raw)
        self.fh.close()
        return size

    def abort(self) -> None:
        self.fh.close()
