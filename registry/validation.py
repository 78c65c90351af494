"""Manifest checks the service runs before touching the database: names, counts, sizes."""

from __future__ import annotations

from collections.abc import Sequence

from hub.errors import InvalidAdapterError, InvalidRequestError, PayloadTooLargeError
from hub.manifest import CONFIG_NAME, WEIGHTS_NAME, check_filename
from hub.registry_api import FileEntry


def check_manifest(files: Sequence[FileEntry], max_files: int, max_bytes: int,
                   max_filename_length: int = 255) -> None:
    """Names, count, per-file size, duplicates and the two files every adapter needs."""
    if len(files) > max_files:
        raise PayloadTooLargeError(
            f"{len(files)} files exceeds the limit of {max_files} files per version"
        )
    seen: set[str] = set()
    for f in files:
        check_filename(f.path, max_filename_length)
        if f.path in seen:
            raise InvalidRequestError(f"file {f.path!r} is listed twice")
        seen.add(f.path)
        if f.size > max_bytes:
            raise PayloadTooLargeError(
                f"{f.path} is {f.size} bytes, over the limit of {max_bytes} per file"
            )
    for needed in (CONFIG_NAME, WEIGHTS_NAME):
        if needed not in seen:
            raise InvalidAdapterError(
                f"the version has no {needed}; publish a PEFT adapter directory "
                f"({CONFIG_NAME} + {WEIGHTS_NAME})"
            )
