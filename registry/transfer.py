"""What an upload and a download are, for every door of the registry (REST, Hugging Face
routes, the embedded registry): the one Range policy, the shape of a planned download, and
the bridge that lets an async request body feed the service's one (blocking) ingest.

Range policy (RFC 9110, section 14): a single ``bytes=`` range is served as a 206. A Range
header the server does not serve as one range (another unit, a syntax error such as
``bytes=5-2``, several ranges) is ignored and the whole file is sent with 200, as the RFC
requires for unknown units and allows for the rest. A valid range that starts at or beyond
the end of the file, or a zero-length suffix (``bytes=-0``), is unsatisfiable: 416 with
``Content-Range: bytes */<size>``. An empty file is always sent whole.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import anyio.from_thread

from lorahive.hub.errors import LorahiveError
from lorahive.hub.protocol import FileEntry

_SPEC = re.compile(r"^\s*(\d*)\s*-\s*(\d*)\s*$")
BATCH = 1024 * 1024  # bytes handed to the ingest thread at a time


class RangeNotSatisfiableError(LorahiveError):
    code = "range_not_satisfiable"
    status = 416

    def __init__(self, message: str, size: int):
        super().__init__(message)
        self.size = size

    @property
    def headers(self) -> dict[str, str]:
        return {"Content-Range": f"bytes */{self.size}"}


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """``(start, end)`` inclusive for a served range, ``None`` for the whole file; raises
    ``RangeNotSatisfiableError`` for a valid range outside the file."""
    if not header or size == 0:
        return None
    unit, sep, spec = header.partition("=")
    if not sep or unit.strip().lower() != "bytes" or "," in spec:
        return None
    m = _SPEC.fullmatch(spec)
    if m is None or (m.group(1) == "" and m.group(2) == ""):
        return None
    first, last = m.group(1), m.group(2)
    if first == "":
        n = int(last)
        if n == 0:
            raise RangeNotSatisfiableError(f"range {header!r} asks for no bytes", size)
        return (max(0, size - n), size - 1)
    start = int(first)
    if last and int(last) < start:
        return None  # invalid (last before first): ignored
    if start >= size:
        raise RangeNotSatisfiableError(
            f"range {header!r} starts beyond the end of the file ({size} bytes)", size)
    return (start, min(int(last), size - 1) if last else size - 1)


def not_modified(if_none_match: str | None, tag: str) -> bool:
    """Whether an ``If-None-Match`` header names ``tag`` (unquoted) or ``*``: the weak
    comparison of RFC 9110, section 13.1.2, which revalidation uses."""
    if if_none_match is None:
        return False
    tags = {t.strip().removeprefix("W/").strip('"') for t in if_none_match.split(",")}
    return bool(tags & {tag, "*"})


@dataclass
class Download:
    """One planned response for a file: status 200, 206, 302 or 304, the byte span, and the
    body (``None`` for HEAD, 302 and 304). A 302 carries ``location``, a presigned URL of the
    object in the store, which serves the bytes (and any Range) itself."""

    entry: FileEntry
    status: int
    start: int = 0
    end: int = -1  # inclusive; -1 for an empty body
    body: Iterator[bytes] | None = field(default=None, repr=False)
    location: str | None = None

    @property
    def length(self) -> int:
        return max(0, self.end - self.start + 1)

    @property
    def content_range(self) -> str | None:
        return f"bytes {self.start}-{self.end}/{self.entry.size}" if self.status == 206 else None


@dataclass(frozen=True)
class StoredBlob:
    """What an ingest stored: the content's sha256 and size, and whether it was there before."""

    sha256: str
    size: int
    existed: bool


async def batched(chunks: AsyncIterator[bytes], size: int = BATCH) -> AsyncIterator[bytes]:
    """Join small socket reads into ``size``-byte batches (one thread hop per batch)."""
    buf = bytearray()
    async for chunk in chunks:
        buf += chunk
        if len(buf) >= size:
            yield bytes(buf)
            buf.clear()
    if buf:
        yield bytes(buf)


def blocking(chunks: AsyncIterator[bytes]) -> Iterator[bytes]:
    """Iterate an async iterator from a worker thread started by ``anyio.to_thread``: each
    step runs on the event loop, the caller's writes stay off it."""
    it = chunks.__aiter__()
    while True:
        try:
            yield anyio.from_thread.run(it.__anext__)
        except StopAsyncIteration:
            return
