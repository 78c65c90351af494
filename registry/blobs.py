"""Content-addressed blob stores keyed by sha256: a local directory or S3-compatible storage.

A blob becomes visible only after its bytes were hashed and sized against what the client
declared: uploads stream into a staging file (temp name, same filesystem), are verified, then
renamed (local) or uploaded (S3) under their hash. Readers therefore never see partial or
wrong content, and identical files are stored once.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol
from urllib.parse import quote, urlparse

from lorahive.hub.atomic import TEMP_PREFIX, fsync_dir, remove_stale_temps
from lorahive.hub.errors import (
    EntryNotFoundError,
    IntegrityError,
    InvalidRequestError,
    PayloadTooLargeError,
    ServiceUnavailableError,
)

SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
CHUNK = 1024 * 1024


def check_sha256(sha: str) -> str:
    if not SHA256_RE.fullmatch(sha or ""):
        raise InvalidRequestError(f"invalid sha256 {sha!r}: expected 64 lowercase hex digits")
    return sha


@dataclass
class BlobStat:
    sha256: str
    size: int
    modified: dt.datetime


class Staged:
    """A file being written and hashed; ``verify`` checks it against the declared sha/size."""

    def __init__(self, path: Path, fh: BinaryIO, max_bytes: int):
        self.path = path
        self.fh = fh
        self.max_bytes = max_bytes
        self.size = 0
        self._h = hashlib.sha256()

    def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.max_bytes:
            raise PayloadTooLargeError(
                f"upload exceeds the server's limit of {self.max_bytes} bytes per file"
            )
        self._h.update(chunk)
        self.fh.write(chunk)

    def digest(self) -> str:
        return self._h.hexdigest()

    def verify(self, sha: str, size: int | None) -> None:
        self.fh.flush()
        os.fsync(self.fh.fileno())
        if size is not None and self.size != size:
            raise IntegrityError(
                f"upload of {sha} ended after {self.size} of {size} bytes; retry the upload"
            )
        got = self._h.hexdigest()
        if got != sha:
            raise IntegrityError(f"content hashes to {got}, not the declared {sha}; nothing stored")


class BlobStore(Protocol):
    def exists(self, sha: str) -> bool: ...
    def size(self, sha: str) -> int | None: ...
    def staging(self, max_bytes: int) -> contextlib.AbstractContextManager[Staged]: ...
    def commit(self, staged: Staged, sha: str) -> None: ...
    def open_range(self, sha: str, start: int = 0, end: int | None = None) -> Iterator[bytes]: ...
    def local_path(self, sha: str) -> Path | None: ...
    def download_url(self, sha: str, ttl: int, filename: str | None = None) -> str | None: ...
    def delete(self, sha: str) -> None: ...
    def iter_blobs(self) -> Iterator[BlobStat]: ...


def ingest(store: BlobStore, chunks: Iterable[bytes], sha: str | None, size: int | None,
           max_bytes: int) -> tuple[str, int, bool]:
    """Stream ``chunks`` into ``store``, verified before it becomes visible: under ``sha``
    (checked against the content), or under the content's own sha256 when ``sha`` is None.
    Returns ``(sha256, size, existed)``; content already stored is not read again."""
    if size is not None and size > max_bytes:
        raise PayloadTooLargeError(f"{size} bytes exceeds the limit of {max_bytes} per file")
    if sha is not None:
        have = store.size(check_sha256(sha))
        if have is not None:
            return sha, have, True
    with store.staging(max_bytes) as staged:
        for chunk in chunks:
            staged.write(chunk)
        got = sha or staged.digest()
        staged.verify(got, size)
        if sha is None and store.exists(got):
            return got, staged.size, True
        store.commit(staged, got)
        return got, staged.size, False


@contextlib.contextmanager
def _staging_file(directory: Path, max_bytes: int) -> Iterator[Staged]:
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=directory)
    path = Path(tmp)
    try:
        with os.fdopen(fd, "wb") as fh:
            yield Staged(path, fh, max_bytes)
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


class LocalBlobStore:
    """Blobs as files ``<root>/ab/cd/<sha256>``; staging under ``<root>/.staging``."""

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.stage_dir = self.root / ".staging"

    def _path(self, sha: str) -> Path:
        check_sha256(sha)
        return self.root / sha[:2] / sha[2:4] / sha

    def exists(self, sha: str) -> bool:
        return self._path(sha).is_file()

    def size(self, sha: str) -> int | None:
        try:
            return self._path(sha).stat().st_size
        except FileNotFoundError:
            return None

    def staging(self, max_bytes: int) -> contextlib.AbstractContextManager[Staged]:
        return _staging_file(self.stage_dir, max_bytes)

    def commit(self, staged: Staged, sha: str) -> None:
        dest = self._path(sha)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged.path, dest)  # same filesystem: atomic; identical content if raced
        fsync_dir(dest.parent)

    def open_range(self, sha: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        path = self._path(sha)
        try:
            fh = open(path, "rb")  # noqa: SIM115 (closed by _read_range)
        except FileNotFoundError:
            raise EntryNotFoundError(f"blob {sha} is missing from the store") from None
        return _read_range(fh, start, end)

    def local_path(self, sha: str) -> Path | None:
        p = self._path(sha)
        return p if p.is_file() else None

    def download_url(self, sha: str, ttl: int, filename: str | None = None) -> str | None:
        return None  # a directory has no URL of its own: the server streams the file

    def delete(self, sha: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(sha).unlink()

    def iter_blobs(self) -> Iterator[BlobStat]:
        for p in self.root.glob("??/??/*"):
            if SHA256_RE.fullmatch(p.name):
                st = p.stat()
                yield BlobStat(p.name, st.st_size,
                               dt.datetime.fromtimestamp(st.st_mtime, dt.UTC))

    def remove_stale(self) -> int:
        return remove_stale_temps(self.stage_dir)


def _read_range(fh: BinaryIO, start: int, end: int | None) -> Iterator[bytes]:
    """Bytes ``start..end`` inclusive (``end=None``: to the end), closing the file after."""
    with fh:
        fh.seek(start)
        left = None if end is None else end - start + 1
        while left is None or left > 0:
            chunk = fh.read(CHUNK if left is None else min(CHUNK, left))
            if not chunk:
                break
            if left is not None:
                left -= len(chunk)
            yield chunk


class S3BlobStore:
    """Blobs as objects ``<prefix>blobs/<sha256>`` in an S3-compatible bucket.

    Uploads are staged and verified on local disk, then sent with boto3's managed transfer
    (multipart for big files); an object only exists once its content was checked.
    """

    def __init__(self, url: str, staging_dir: Path, endpoint_url: str | None = None,
                 region: str = "us-east-1", public_endpoint_url: str | None = None):
        import boto3
        from botocore.config import Config

        u = urlparse(url)
        self.bucket = u.netloc
        self.prefix = (u.path.lstrip("/").rstrip("/") + "/") if u.path.strip("/") else ""
        self.stage_dir = staging_dir
        self.client = boto3.client(
            "s3", endpoint_url=endpoint_url, region_name=region,
            config=Config(retries={"max_attempts": 3, "mode": "standard"}),
        )
        # presigned URLs name the endpoint clients reach, which may differ from the workers'
        # (a private network name inside, a public host or CDN outside); signing is local
        # (SigV4: what every region and S3-compatible store accepts)
        self._signer = boto3.client(
            "s3", endpoint_url=public_endpoint_url or endpoint_url, region_name=region,
            config=Config(signature_version="s3v4"))
        self._ensure_bucket()

    def _ensure_bucket(self) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("404", "NoSuchBucket"):
                self.client.create_bucket(Bucket=self.bucket)
            else:
                raise ServiceUnavailableError(f"object store: {e}") from None
        except BotoCoreError as e:
            raise ServiceUnavailableError(f"cannot reach the object store: {e}") from None

    def _key(self, sha: str) -> str:
        return f"{self.prefix}blobs/{check_sha256(sha)}"

    def size(self, sha: str) -> int | None:
        from botocore.exceptions import ClientError

        try:
            return int(self.client.head_object(Bucket=self.bucket, Key=self._key(sha))["ContentLength"])
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise ServiceUnavailableError(f"object store: {e}") from None

    def exists(self, sha: str) -> bool:
        return self.size(sha) is not None

    def staging(self, max_bytes: int) -> contextlib.AbstractContextManager[Staged]:
        return _staging_file(self.stage_dir, max_bytes)

    def commit(self, staged: Staged, sha: str) -> None:
        self.client.upload_file(str(staged.path), self.bucket, self._key(sha))

    def open_range(self, sha: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        from botocore.exceptions import ClientError

        rng = f"bytes={start}-" + ("" if end is None else str(end))
        try:
            obj = self.client.get_object(Bucket=self.bucket, Key=self._key(sha), Range=rng)
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey"):
                raise EntryNotFoundError(f"blob {sha} is missing from the store") from None
            raise ServiceUnavailableError(f"object store: {e}") from None
        return obj["Body"].iter_chunks(CHUNK)

    def local_path(self, sha: str) -> Path | None:
        return None

    def download_url(self, sha: str, ttl: int, filename: str | None = None) -> str | None:
        """A presigned GET of the blob, valid ``ttl`` seconds; the object store serves Range
        and the bytes, so the API worker never streams them. ``filename`` becomes the
        response's ``Content-Disposition`` (a browser saves the file under its own name)."""
        params = {"Bucket": self.bucket, "Key": self._key(sha)}
        if filename:
            params["ResponseContentDisposition"] = (
                f"attachment; filename*=UTF-8''{quote(filename)}")
        return self._signer.generate_presigned_url("get_object", Params=params, ExpiresIn=ttl)

    def delete(self, sha: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(sha))

    def iter_blobs(self) -> Iterator[BlobStat]:
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=f"{self.prefix}blobs/")
        for page in pages:
            for obj in page.get("Contents", []):
                sha = obj["Key"].rsplit("/", 1)[-1]
                if SHA256_RE.fullmatch(sha):
                    yield BlobStat(sha, int(obj["Size"]), obj["LastModified"])

    def remove_stale(self) -> int:
        return remove_stale_temps(self.stage_dir)


def open_store(storage_url: str, home: Path, endpoint_url: str | None = None,
               region: str = "us-east-1", public_endpoint_url: str | None = None) -> BlobStore:
    """The store named by ``storage_url``: ``file:///dir`` (or a bare path) or ``s3://bucket/prefix``."""
    if storage_url.startswith("s3://"):
        return S3BlobStore(storage_url, home / "staging", endpoint_url, region,
                           public_endpoint_url)
    if storage_url.startswith("file://"):
        return LocalBlobStore(urlparse(storage_url).path)
    if "://" in storage_url:
        raise InvalidRequestError(f"unsupported storage URL {storage_url!r}: use file:// or s3://")
    return LocalBlobStore(storage_url)


def copy_blob(store: BlobStore, sha: str, dest: Path) -> None:
    """Write a blob to ``dest``: a copy, never a hard link, so editing ``dest`` cannot
    corrupt the store."""
    src = store.local_path(sha)
    if src is not None:
        shutil.copyfile(src, dest)
        return
    with open(dest, "wb") as fh:
        for chunk in store.open_range(sha):
            fh.write(chunk)
