"""Manifest checks the service runs before touching the database: names, counts, sizes."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence

from lorahive.hub.errors import InvalidAdapterError, InvalidRequestError, PayloadTooLargeError
from lorahive.hub.manifest import CONFIG_NAME, WEIGHTS_NAME, check_filename
from lorahive.hub.protocol import FileEntry


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


_TORCH_LOCK = threading.Lock()


@contextlib.contextmanager
def single_threaded_torch() -> Iterator[None]:
    """Run adapter statistics with one torch thread, then restore the caller's setting.

    The factors' QRs are small; on a busy or shared CPU torch's thread pool makes them up to
    100x slower (4 ms vs 500 ms for 4096x64 on 2 loaded cores). Validations take turns.
    """
    import torch

    with _TORCH_LOCK:
        before = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(before)
