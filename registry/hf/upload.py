"""The write half of the Hub protocol, independent of HTTP: upload modes and the NDJSON commit
body turned into a new file list (signed LFS upload URLs are the service's, ``registry.presign``).

Why inline ("regular") uploads are the default: ``huggingface_hub`` >= 1.0 sends every file the
server marks ``lfs`` through Xet storage whenever ``hf_xet`` is installed (it is a default
dependency), with no fallback to the plain LFS protocol. lorahive does not speak Xet, so files
up to ``inline_max_bytes`` are marked ``regular`` and arrive base64-encoded in the commit body;
larger ones are ``lfs`` and need a client with ``HF_HUB_DISABLE_XET=1`` (or without hf_xet),
which then uses the LFS batch API, a signed PUT and the verify call implemented here.

The commit body is spooled to disk and memory-mapped, so a large inline file is decoded into
the blob store in chunks instead of being held as one Python string.
"""

from __future__ import annotations

import base64
import contextlib
import json
import mmap
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from lorahive.hub.errors import InvalidRequestError, PayloadTooLargeError
from lorahive.hub.manifest import check_filename
from lorahive.hub.protocol import FileEntry

# stores one inline file (its decoded bytes) and returns its sha256 and size
Ingest = Callable[[Iterable[bytes]], "tuple[str, int]"]

DEFAULT_INLINE_MAX = 1024**3
_CONTENT = re.compile(rb'"content"\s*:\s*"([A-Za-z0-9+/=]*)"')
_SMALL_LINE = 1024 * 1024
_MAX_META_LINE = 16 * 1024 * 1024
_B64_CHUNK = 4 * 1024 * 1024  # multiple of 4: decodes independently


def inline_max_bytes() -> int:
    """Files above this size are announced as ``lfs`` (env ``LORAHIVE_HF_INLINE_MAX_BYTES``)."""
    return int(os.environ.get("LORAHIVE_HF_INLINE_MAX_BYTES") or DEFAULT_INLINE_MAX)


def upload_mode(size: int, inline_max: int) -> str:
    return "regular" if size <= inline_max else "lfs"


@dataclass
class Commit:
    """What one NDJSON commit asks for; inline contents are already in the blob store."""

    summary: str = ""
    description: str = ""
    parent: str | None = None
    added: dict[str, FileEntry] = field(default_factory=dict)
    lfs: dict[str, tuple[str, int | None]] = field(default_factory=dict)
    deleted_files: list[str] = field(default_factory=list)
    deleted_folders: list[str] = field(default_factory=list)


def _lines(buf: mmap.mmap) -> Iterator[tuple[int, int]]:
    pos, n = 0, len(buf)
    while pos < n:
        end = buf.find(b"\n", pos)
        end = n if end < 0 else end
        if end > pos:
            yield pos, end
        pos = end + 1


def _decoded(buf: mmap.mmap, start: int, end: int) -> Iterator[bytes]:
    """``buf[start:end]`` (base64) decoded chunk by chunk."""
    for off in range(start, end, _B64_CHUNK):
        try:
            yield base64.b64decode(buf[off:min(off + _B64_CHUNK, end)], validate=True)
        except ValueError:
            raise InvalidRequestError("a file's content is not valid base64") from None


def parse_commit(body: Path, ingest: Ingest, max_name: int = 255) -> Commit:
    """Read an NDJSON commit body (``header``, ``file``, ``lfsFile``, ``deletedFile``,
    ``deletedFolder`` lines). Inline files are decoded in chunks and handed to ``ingest``
    (the registry's, which stores them under their sha256)."""
    commit = Commit()
    if body.stat().st_size == 0:
        raise InvalidRequestError("empty commit body: expected application/x-ndjson lines")
    with open(body, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        for start, end in _lines(buf):
            span = None
            if end - start > _SMALL_LINE:
                m = _CONTENT.search(buf, start, end)
                if m is not None:
                    span = m.span(1)
                    raw = buf[start:span[0]] + buf[span[1]:end]
                elif end - start > _MAX_META_LINE:
                    raise InvalidRequestError("commit line over 16 MiB without file content")
                else:
                    raw = buf[start:end]
            else:
                raw = buf[start:end]
            try:
                item = json.loads(raw)
                key, value = item["key"], item["value"]
            except (ValueError, KeyError, TypeError):
                raise InvalidRequestError("malformed commit line: expected {key, value} JSON") from None
            if not isinstance(value, dict):
                raise InvalidRequestError(f"malformed {key!r} line in the commit")
            if key == "header":
                commit.summary = str(value.get("summary") or "")
                commit.description = str(value.get("description") or "")
                commit.parent = value.get("parentCommit")
                continue
            raw_path = str(value.get("path", ""))
            if key == "deletedFolder":
                raw_path = raw_path.rstrip("/")
            path = check_filename(raw_path, max_name)
            if key == "file":
                if value.get("encoding", "base64") != "base64":
                    raise InvalidRequestError(f"{path}: only base64 file contents are accepted")
                if span is None:
                    content = str(value.get("content", "")).encode()
                    with _bytes_map(content) as small:
                        sha, size = ingest(_decoded(small, 0, len(content)))
                else:
                    sha, size = ingest(_decoded(buf, span[0], span[1]))
                commit.added[path] = FileEntry(path=path, sha256=sha, size=size)
            elif key == "lfsFile":
                if value.get("algo", "sha256") != "sha256":
                    raise InvalidRequestError(f"{path}: only sha256 LFS objects are accepted")
                size = value.get("size")
                commit.lfs[path] = (str(value.get("oid", "")), int(size) if size is not None else None)
            elif key == "deletedFile":
                commit.deleted_files.append(path)
            elif key == "deletedFolder":
                commit.deleted_folders.append(path)
            else:
                raise InvalidRequestError(f"unsupported commit operation {key!r}")
    return commit


@contextlib.contextmanager
def _bytes_map(data: bytes) -> Iterator[mmap.mmap]:
    m = mmap.mmap(-1, max(len(data), 1))
    try:
        m.write(data)
        yield m
    finally:
        m.close()


def apply_commit(parent: list[FileEntry], commit: Commit, lfs_entries: dict[str, FileEntry],
                 max_files: int) -> list[FileEntry]:
    """The new version's files: the parent's, minus deletions, plus additions (git semantics:
    files a commit does not mention are kept)."""
    files = {f.path: f for f in parent}
    for p in commit.deleted_files:
        files.pop(p, None)
    for folder in commit.deleted_folders:
        for p in [p for p in files if p.startswith(folder + "/")]:
            del files[p]
    files.update(commit.added)
    files.update(lfs_entries)
    if len(files) > max_files:
        raise PayloadTooLargeError(f"{len(files)} files exceeds the limit of {max_files} per version")
    return [files[p] for p in sorted(files)]
