"""The local pull cache: content-addressed, atomic, resumable, verified, usable offline.

Layout under ``<LORAHIVE_HOME>/cache`` (or ``LORAHIVE_CACHE``)::

    blobs/<sha256>                          verified file bodies (read-only)
    partial/<sha256>.part                   interrupted downloads, resumed with Range
    snapshots/<ns>/<name>/<version>/<path>  a version's files (hard links to blobs)
    manifests/<ns>/<name>/<version>.json    the VersionInfo the snapshot was built from
    refs/<ns>/<name>/<alias>                the version an alias pointed to when last seen

A blob is renamed into ``blobs/`` only after its sha256 and size match the manifest, and a
snapshot directory appears in one rename, so a reader never sees a half-pulled version.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import shutil
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO

from lorahive.hub.atomic import (
    atomic_directory,
    atomic_file,
    dir_mode,
    file_mode,
    fsync_dir,
    require_free_dir,
)
from lorahive.hub.credentials import lorahive_home
from lorahive.hub.errors import IntegrityError, InvalidRequestError, LorahiveError, OfflineError
from lorahive.hub.manifest import check_filename, file_sha256, read_chunks
from lorahive.hub.protocol import FileEntry, ProgressFn, VersionInfo
from lorahive.hub.refs import DEFAULT_ALIAS, Ref

CHUNK = 1024 * 1024
# fetch(entry, offset) -> iterator over the file's bytes from ``offset`` on
Fetcher = Callable[[FileEntry, int], Iterator[bytes]]


def default_cache_dir() -> Path:
    env = os.environ.get("LORAHIVE_CACHE")
    if env:
        return Path(env).expanduser()
    return lorahive_home() / "cache"


class PullCache:
    """Pulled versions on local disk, keyed by content."""

    def __init__(self, root: str | os.PathLike[str] | None = None, workers: int = 4):
        self.root = Path(root) if root is not None else default_cache_dir()
        self.workers = workers

    # -- paths ---------------------------------------------------------------------------
    def blob_path(self, sha: str) -> Path:
        return self.root / "blobs" / sha

    def snapshot_dir(self, info: VersionInfo) -> Path:
        return self.root / "snapshots" / info.namespace / info.name / info.version

    def _manifest_path(self, ns: str, name: str, version: str) -> Path:
        return self.root / "manifests" / ns / name / f"{version}.json"

    def _ref_path(self, ns: str, name: str, alias: str) -> Path:
        return self.root / "refs" / ns / name / alias

    # -- offline lookup ------------------------------------------------------------------
    def lookup(self, ref: Ref) -> VersionInfo | None:
        """The cached manifest a reference last resolved to, if its snapshot is complete."""
        version = ref.version
        if version is None:
            p = self._ref_path(ref.namespace, ref.name, ref.alias or DEFAULT_ALIAS)
            if not p.is_file():
                return None
            version = p.read_text().strip()
        mp = self._manifest_path(ref.namespace, ref.name, version)
        if not mp.is_file():
            return None
        info = VersionInfo.model_validate_json(mp.read_text())
        return info if self.snapshot_dir(info).is_dir() else None

    def offline_pull(self, ref: Ref, reason: str = "") -> Path:
        info = self.lookup(ref)
        if info is None:
            raise OfflineError(
                f"cannot reach the registry{': ' + reason if reason else ''}, and {ref} is not "
                "in the local cache; pull it once while online"
            )
        return self.snapshot_dir(info)

    def remember(self, ref: Ref, info: VersionInfo) -> None:
        """Record which version ``ref`` resolved to, for offline use later."""
        with atomic_file(self._manifest_path(info.namespace, info.name, info.version), "w") as fh:
            fh.write(info.model_dump_json())
        alias = ref.alias or (None if ref.version else DEFAULT_ALIAS)
        if alias:
            with atomic_file(self._ref_path(info.namespace, info.name, alias), "w") as fh:
                fh.write(info.version)

    # -- download ------------------------------------------------------------------------
    def materialize(self, ref: Ref, info: VersionInfo, fetch: Fetcher,
                    progress: ProgressFn | None = None) -> Path:
        """Make sure every file of ``info`` is cached and verified; return its snapshot dir."""
        for f in info.files:
            check_filename(f.path)  # a hostile manifest must not write outside the snapshot
        snap = self.snapshot_dir(info)
        todo = [f for f in info.files if not self._have(f)]
        if progress is not None:
            progress(0, sum(f.size for f in todo), f"{info.ref}")
        if todo:
            with ThreadPoolExecutor(max_workers=max(1, min(self.workers, len(todo)))) as pool:
                for fut in [pool.submit(self._download, f, fetch, progress) for f in todo]:
                    fut.result()
        if not snap.is_dir() or todo:  # a re-fetched blob is a new file: relink the snapshot
            with contextlib.suppress(FileExistsError), \
                    atomic_directory(snap, overwrite=snap.is_dir()) as tmp:
                for f in info.files:
                    dest = tmp / f.path
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    _link_or_copy(self.blob_path(f.sha256), dest)
        self.remember(ref, info)
        return snap

    def _have(self, f: FileEntry) -> bool:
        """A cached blob counts only if its size and sha256 match (a corrupted file is
        fetched again)."""
        p = self.blob_path(f.sha256)
        return p.is_file() and p.stat().st_size == f.size and file_sha256(p) == f.sha256

    def _download(self, f: FileEntry, fetch: Fetcher, progress: ProgressFn | None) -> None:
        """Download one blob, resuming a partial file, verifying before it becomes visible."""
        part_dir = self.root / "partial"
        part_dir.mkdir(parents=True, exist_ok=True)
        part = part_dir / f"{f.sha256}.part"
        # unbuffered: on a full disk nothing is left in a buffer to flush at close
        with open(part, "ab+", buffering=0) as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)  # one writer per blob across processes
            try:
                if self._have(f):
                    return
                for attempt in range(2):
                    fh.seek(0, os.SEEK_END)
                    offset = fh.tell()
                    if offset > f.size:
                        fh.truncate(0)
                        offset = 0
                    if progress is not None and offset:
                        progress(offset, 0, f.path)
                    h = _hasher_of(part, offset)  # what an earlier run left, read once
                    size = offset
                    if offset < f.size:
                        for chunk in fetch(f, offset):
                            _write_all(fh, chunk)
                            h.update(chunk)  # hashed as written: no second pass over the file
                            size += len(chunk)
                            if progress is not None:
                                progress(len(chunk), 0, f.path)
                    fh.flush()
                    os.fsync(fh.fileno())
                    if h.hexdigest() == f.sha256 and size == f.size == part.stat().st_size:
                        break
                    fh.truncate(0)  # corrupt partial data: start once more from zero
                    if attempt == 1:
                        raise IntegrityError(
                            f"{f.path}: downloaded content does not match sha256 {f.sha256}; "
                            "nothing was kept, retry the pull"
                        )
                dest = self.blob_path(f.sha256)
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.chmod(part, 0o444)
                os.replace(part, dest)
                fsync_dir(dest.parent)
            except OSError as e:
                if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                    raise
                with contextlib.suppress(OSError):
                    os.ftruncate(fh.fileno(), 0)
                with contextlib.suppress(OSError):
                    part.unlink()
                raise LorahiveError(
                    f"no space left on the device of {self.root} while downloading {f.path}; "
                    "nothing partial was kept: free some space (or point LORAHIVE_CACHE at a "
                    "bigger disk) and pull again") from None
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    # -- export --------------------------------------------------------------------------
    @staticmethod
    def check_export(to: str | os.PathLike[str], force: bool = False) -> None:
        """An export target must be absent or empty (a version's files never mix with older
        ones) unless ``force`` replaces it; checked before anything is downloaded."""
        if force:
            return
        try:
            require_free_dir(to, "to")
        except InvalidRequestError:
            raise InvalidRequestError(
                f"{to} exists and is not empty; choose another to, or force (which replaces "
                "it)", params=("to", "force")) from None

    def export(self, info: VersionInfo, to: str | os.PathLike[str], force: bool = False) -> Path:
        """Copy a cached version's files into ``to``, which appears (or, with ``force``, is
        replaced) in one rename once every file is written."""
        self.check_export(to, force)
        out = Path(to)
        with atomic_directory(out, overwrite=True) as tmp:
            for f in info.files:
                dest = tmp / f.path
                dest.parent.mkdir(parents=True, exist_ok=True)
                with open(dest, "wb") as fh, open(self.blob_path(f.sha256), "rb") as src:
                    shutil.copyfileobj(src, fh, CHUNK)
                    os.fchmod(fh.fileno(), file_mode())
            for d in [tmp, *(p for p in tmp.rglob("*") if p.is_dir())]:
                os.chmod(d, dir_mode())  # as `cp` or `mkdir` would make it
        return out


def _write_all(fh: BinaryIO, data: bytes) -> None:
    """Write every byte to an unbuffered file (a raw write may be short)."""
    view = memoryview(data)
    while view:
        n = fh.write(view)
        if not n:
            raise OSError(errno.EIO, "write made no progress")
        view = view[n:]


def _hasher_of(path: Path, length: int) -> Any:
    """A sha256 object fed with the first ``length`` bytes of ``path``."""
    h = hashlib.sha256()
    for chunk in read_chunks(path, length):
        h.update(chunk)
    return h


def _link_or_copy(src: Path, dest: Path) -> None:
    try:
        os.link(src, dest)
    except OSError:
        shutil.copyfile(src, dest)
