"""Atomic writes: a reader sees a whole file (or directory) or none.

Everything is written under a temporary name in the destination's own directory (same
filesystem, so the final ``rename`` is atomic), flushed with ``fsync``, then renamed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from lorahive.hub.errors import InvalidRequestError

TEMP_PREFIX = ".lorahive-tmp-"


def fsync_dir(path: Path) -> None:
    """Persist a rename: the directory entry must reach the disk too."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_file(dest: str | os.PathLike[str], mode: str = "wb") -> Iterator:
    """Open a temp file next to ``dest``; on clean exit fsync and rename it onto ``dest``."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=dest.parent)
    try:
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
        fsync_dir(dest.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temp path next to ``dest`` for code that writes by path (safetensors)."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=dest.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, dest)
        fsync_dir(dest.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


@contextlib.contextmanager
def atomic_directory(dest: str | os.PathLike[str], overwrite: bool = False) -> Iterator[Path]:
    """Build a directory under a temp name and rename it to ``dest`` only on success."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=dest.parent))
    try:
        yield tmp
        for f in tmp.rglob("*"):
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        if dest.exists():
            if not overwrite:
                raise FileExistsError(dest)
            old = dest.with_name(f"{TEMP_PREFIX}old-{dest.name}")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(dest, old)
            os.replace(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dest)
        fsync_dir(dest.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def require_free_dir(dest: str | os.PathLike[str], param: str = "out") -> None:
    """An output directory must be absent or empty, so a result never mixes with older files;
    ``param`` names the argument that chose it (the CLI shows it as its flag)."""
    dest = Path(dest)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise InvalidRequestError(f"{dest} exists and is not empty; choose another {param}",
                                  params=param)


def remove_paths(paths: Iterable[Path], min_age: float = 0.0) -> int:
    """Delete files and directories (never following symlinks), skipping any younger than
    ``min_age`` seconds (a writer may still be using it); returns how many were removed."""
    cutoff = time.time() - min_age
    n = 0
    for p in list(paths):
        try:
            if min_age > 0 and p.lstat().st_mtime > cutoff:
                continue
        except FileNotFoundError:
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
        n += 1
    return n


def remove_stale_temps(root: str | os.PathLike[str]) -> int:
    """Delete temp files/dirs left by a killed writer under ``root``; returns how many."""
    root = Path(root)
    if not root.exists():
        return 0
    return remove_paths(root.rglob(f"{TEMP_PREFIX}*"))
