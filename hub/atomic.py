"""Atomic writes: a reader sees a whole file (or directory) or none.

Everything is written under a temporary name in the destination's own directory (same
filesystem, so the final ``rename`` is atomic), flushed with ``fsync``, then renamed.

The temporary names come from ``tempfile``, which creates files 0600 and directories 0700 for
its own safety; a result is not a secret, so it gets the permissions ``cp`` would give it under
the caller's umask (files 0666 & ~umask, directories 0777 & ~umask). A file that must stay
private (credentials, a token) sets its mode explicitly after opening.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from lorahive.hub.errors import InvalidRequestError

TEMP_PREFIX = ".lorahive-tmp-"


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (another thread may be
    creating files at this moment)."""
    try:
        with open("/proc/self/status") as fh:
            for text in fh:
                if text.startswith("Umask:"):
                    return int(text.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode a new file gets from ``open``/``cp``: 0666 less the umask."""
    return 0o666 & ~current_umask()


def dir_mode() -> int:
    """The mode a new directory gets from ``mkdir``: 0777 less the umask."""
    return 0o777 & ~current_umask()


def apply_umask(root: Path) -> None:
    """Give a finished temp tree the modes ``cp`` would: the tempfile-made root becomes
    0777 & ~umask, and no file or directory inside keeps a permission the umask withholds
    (copies that preserved their source's mode). Symlinks and files with other hard links
    (shared cache blobs) are left alone."""
    mask = current_umask()
    os.chmod(root, 0o777 & ~mask)
    for top, dirs, files in os.walk(root):  # never follows symlinks
        for name in [*dirs, *files]:
            p = os.path.join(top, name)
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode) or (stat.S_ISREG(st.st_mode) and st.st_nlink > 1):
                continue
            mode = stat.S_IMODE(st.st_mode)
            if mode & mask:
                os.chmod(p, mode & ~mask)


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
        os.fchmod(fd, file_mode())
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
    """Yield a temp path next to ``dest`` for code that writes by path (safetensors). The
    writer may replace the file (safetensors writes a new one, 0600): the mode is set after."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=dest.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fchmod(fh.fileno(), file_mode())
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
        apply_umask(tmp)
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
