"""The pull cache: resumes partial downloads, verifies sha256 before anything is visible,
refuses hostile manifests, and answers offline for what it holds."""

from __future__ import annotations

import datetime as dt
import hashlib
import os

import pytest

from lorahive.hub.cache import PullCache
from lorahive.hub.errors import IntegrityError, InvalidRequestError, OfflineError
from lorahive.hub.protocol import FileEntry, VersionInfo
from lorahive.hub.refs import parse_ref


def _info(files: dict[str, bytes], version: str = "1") -> VersionInfo:
    entries = [FileEntry(path=p, sha256=hashlib.sha256(b).hexdigest(), size=len(b))
               for p, b in files.items()]
    return VersionInfo(namespace="ns", name="a", version=version,
                       created_at=dt.datetime.now(dt.UTC), files=entries,
                       size=sum(len(b) for b in files.values()), sha256=entries[0].sha256)


class Source:
    """A fetcher over in-memory files that records the offsets it was asked for."""

    def __init__(self, files: dict[str, bytes], corrupt: bool = False):
        self.by_sha = {hashlib.sha256(b).hexdigest(): b for b in files.values()}
        self.calls: list[tuple[str, int]] = []
        self.corrupt = corrupt

    def __call__(self, f: FileEntry, offset: int):
        self.calls.append((f.path, offset))
        data = self.by_sha[f.sha256][offset:]
        if self.corrupt:
            data = bytes(len(data))
        for i in range(0, len(data), 1000):
            yield data[i:i + 1000]


def test_resume_from_partial_download(tmp_path):
    body = os.urandom(10_000)
    files = {"adapter_model.safetensors": body, "adapter_config.json": b"{}"}
    info = _info(files)
    cache = PullCache(tmp_path)
    part = tmp_path / "partial" / f"{info.files[0].sha256}.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(body[:4000])  # an interrupted earlier pull
    src = Source(files)
    snap = cache.materialize(parse_ref("ns/a"), info, src)
    assert ("adapter_model.safetensors", 4000) in src.calls
    assert (snap / "adapter_model.safetensors").read_bytes() == body
    assert not part.exists()
    src.calls.clear()
    assert cache.materialize(parse_ref("ns/a@1"), info, src) == snap and src.calls == []


def test_corrupt_partial_is_refetched_and_bad_content_never_visible(tmp_path):
    body = os.urandom(5000)
    info = _info({"adapter_model.safetensors": body})
    cache = PullCache(tmp_path)
    part = tmp_path / "partial" / f"{info.files[0].sha256}.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"\0" * 100)  # garbage from an earlier run
    src = Source({"adapter_model.safetensors": body})
    cache.materialize(parse_ref("ns/a"), info, src)
    assert src.calls == [("adapter_model.safetensors", 100), ("adapter_model.safetensors", 0)]
    other = PullCache(tmp_path / "other")
    with pytest.raises(IntegrityError):
        other.materialize(parse_ref("ns/a"), info, Source({"x": body}, corrupt=True))
    assert not other.blob_path(info.files[0].sha256).exists()
    assert not other.snapshot_dir(info).exists()


def test_hostile_manifest_cannot_escape(tmp_path):
    info = _info({"../../escape.txt": b"x"})
    with pytest.raises(InvalidRequestError):
        PullCache(tmp_path / "c").materialize(parse_ref("ns/a"), info, Source({"x": b"x"}))
    assert not (tmp_path / "escape.txt").exists()


def test_offline_lookup(tmp_path):
    files = {"adapter_model.safetensors": b"abc"}
    cache = PullCache(tmp_path)
    with pytest.raises(OfflineError):
        cache.offline_pull(parse_ref("ns/a"))
    info = _info(files, version="7")
    cache.materialize(parse_ref("ns/a:prod"), info, Source(files))
    assert cache.lookup(parse_ref("ns/a:prod")).version == "7"
    assert cache.lookup(parse_ref("ns/a@7")).version == "7"
    assert cache.lookup(parse_ref("ns/a")) is None  # latest was never resolved here
    assert cache.offline_pull(parse_ref("ns/a@7")) == cache.snapshot_dir(info)
    out = cache.export(info, tmp_path / "out")
    assert (out / "adapter_model.safetensors").read_bytes() == b"abc"
