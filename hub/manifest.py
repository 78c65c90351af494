"""What a published version is made of: its files' relative names, sha256 and sizes.

The same name rules run on the client (before anything is uploaded) and on the server (before
anything is committed): plain relative POSIX paths only, and no pickle-format files.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
import unicodedata
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lorahive.hub.atomic import TEMP_PREFIX
from lorahive.hub.errors import InvalidAdapterError, InvalidRequestError, UnsafeFileError

if TYPE_CHECKING:  # pydantic is imported only where a manifest is built (CLI start-up)
    from lorahive.hub.protocol import FileEntry

# PEFT's file names (torch-free here, so light clients need not import torch).
CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
# Example prompts of the adapter's task, one {"input", "output"} JSON object per line: what
# candidate retrieval embeds (the model card shows them too).
EXAMPLES_NAME = "lorahive_examples.jsonl"
CARD_NAME = "README.md"  # the model card
# Pickle-format files: never unpickled unless the user asks for a weights-only load.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib", ".npy", ".npz")
PICKLE_NAMES = ("adapter_model.bin", "adapter_model.pt", "adapter_model.pth", "adapter_model.pkl")
FORBIDDEN_DIRS = frozenset({".git", ".cache"})
_DRIVE = re.compile(r"^[A-Za-z]:")
CHUNK = 1024 * 1024


def check_filename(path: str, max_length: int = 255) -> str:
    """Return ``path`` if it is a safe relative file name inside a version, else raise.

    Rejected: empty or too long, control/format characters, backslashes, absolute, drive or
    home paths, ``.``/``..``/empty segments, ``.git``/``.cache`` folders, pickle suffixes.
    """

    def bad(why: str) -> InvalidRequestError:
        return InvalidRequestError(f"invalid file name {path!r}: {why}")

    if not isinstance(path, str) or not path or len(path) > max_length:
        raise bad(f"must be 1-{max_length} characters")
    if any(unicodedata.category(c) in ("Cc", "Cf") for c in path):
        raise bad("control characters are not allowed")
    if "\\" in path:
        raise bad("backslashes are not allowed; use '/'")
    if path.startswith("/") or _DRIVE.match(path) or path.startswith("~"):
        raise bad("must be relative to the adapter directory")
    parts = path.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise bad("'.', '..' and empty segments are not allowed")
    if any(p in FORBIDDEN_DIRS for p in parts[:-1]):
        raise bad(f"folders {sorted(FORBIDDEN_DIRS)} are not allowed")
    if is_pickle_name(path):
        raise UnsafeFileError(
            f"{path} is a pickle-format file, which can run code when loaded; lorahive "
            "publishes safetensors only. Remove it from the directory (convert adapter weights "
            "with `lorahive convert DIR --allow-pickle --out NEW`)"
        )
    return path


def is_pickle_name(path: str) -> bool:
    """Whether a file name is of a pickle format (by suffix, case-insensitive)."""
    return path.lower().endswith(PICKLE_SUFFIXES)


def sha256_of_chunks(chunks: Iterable[bytes]) -> str:
    h = hashlib.sha256()
    for chunk in chunks:
        h.update(chunk)
    return h.hexdigest()


def read_chunks(path: str | os.PathLike[str], length: int | None = None) -> Iterator[bytes]:
    """A file's bytes in 1 MiB chunks (only the first ``length`` bytes when given)."""
    left = length
    with open(path, "rb") as fh:
        while left is None or left > 0:
            chunk = fh.read(CHUNK if left is None else min(CHUNK, left))
            if not chunk:
                return
            if left is not None:
                left -= len(chunk)
            yield chunk


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The sha256 of a file's content: what blobs are keyed by and lineage records."""
    return sha256_of_chunks(read_chunks(path))


def weights_sha256(adapter_dir: str | os.PathLike[str]) -> str | None:
    """sha256 of a directory's adapter weights (what lineage records of a parent), or None."""
    path = Path(adapter_dir) / WEIGHTS_NAME
    return file_sha256(path) if path.is_file() else None


def collect_files(directory: str | os.PathLike[str]) -> list[tuple[str, Path]]:
    """Every regular file under ``directory`` as ``(relative posix name, path)``, checked.

    Temp files of interrupted writers and hidden top-level entries (``.git``) are skipped.
    """
    root = Path(directory)
    if not root.is_dir():
        raise InvalidAdapterError(f"{root} is not a directory; pass the adapter's directory")
    out: list[tuple[str, Path]] = []
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if any(part.startswith((TEMP_PREFIX, ".")) for part in rel.split("/")):
            continue
        if p.is_symlink():
            raise InvalidRequestError(
                f"{rel} in {root} is a symbolic link; lorahive publishes regular files only "
                "(it could point anywhere on this machine): copy the file in its place"
            )
        if p.is_file():
            out.append((check_filename(rel), p))
    return out


def build_manifest(directory: str | os.PathLike[str]) -> tuple[list[FileEntry], dict[str, Path]]:
    """Hash every file of an adapter directory; ``(entries, {name: local path})``."""
    from lorahive.hub.protocol import FileEntry

    files = collect_files(directory)
    entries = [FileEntry(path=rel, sha256=file_sha256(p), size=p.stat().st_size)
               for rel, p in files]
    return entries, dict(files)


@contextlib.contextmanager
def publish_source(source: str | os.PathLike[str] | Any) -> Iterator[Path]:
    """The directory to publish: ``source`` itself, or an in-memory ``hub.Adapter`` written
    to a temporary PEFT directory for the duration of the publish."""
    if isinstance(source, str | os.PathLike):
        yield Path(source)
        return
    from lorahive.hub.adapter import Adapter
    from lorahive.hub.peft_format import save_peft

    if not isinstance(source, Adapter):
        raise InvalidAdapterError(
            f"cannot publish a {type(source).__name__}: pass a directory or a hub.Adapter")
    with tempfile.TemporaryDirectory(prefix=TEMP_PREFIX) as tmp:
        yield save_peft(source, Path(tmp) / "adapter")
