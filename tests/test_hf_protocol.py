"""Unit tests of the Hub wire-format helpers: ids, tree listings, ranges, NDJSON commits."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest
from huggingface_hub.utils.sha import git_hash

from lorahive.hub.errors import InvalidRequestError, UnsafeFileError
from lorahive.hub.protocol import FileEntry
from lorahive.registry.blobs import LocalBlobStore, ingest
from lorahive.registry.hf import protocol as proto
from lorahive.registry.hf.upload import apply_commit, parse_commit, upload_mode
from lorahive.registry.presign import check_upload_sig, sign_upload
from lorahive.registry.transfer import RangeNotSatisfiableError, parse_range


def fe(path: str, data: bytes) -> FileEntry:
    return FileEntry(path=path, sha256=hashlib.sha256(data).hexdigest(), size=len(data))


FILES = [fe("adapter_config.json", b"{}"), fe("adapter_model.safetensors", b"w" * 10),
         fe("sub/a.txt", b"a"), fe("sub/deep/b.txt", b"b")]


def test_commit_sha_is_stable_and_distinguishes_versions():
    a = proto.commit_sha("ns/x", "1", FILES)
    assert a == proto.commit_sha("ns/x", "1", list(reversed(FILES)))
    assert len(a) == 40 and int(a, 16) >= 0
    assert a != proto.commit_sha("ns/x", "2", FILES)
    assert a != proto.commit_sha("ns/y", "1", FILES)
    assert a != proto.commit_sha("ns/x", "1", FILES[:-1])


def test_git_ids_match_the_client():
    assert proto.git_blob_sha1(b"Hello, World!") == git_hash(b"Hello, World!")
    e = proto.file_entry_json(FILES[1])
    pointer = proto.lfs_pointer(FILES[1].sha256, 10)
    assert e["oid"] == git_hash(pointer)
    assert e["lfs"] == {"oid": FILES[1].sha256, "size": 10, "pointerSize": len(pointer)}


def test_tree_listing_levels_and_folders():
    top = proto.tree_entries(FILES)
    assert [(e["type"], e["path"]) for e in top] == [
        ("file", "adapter_config.json"), ("file", "adapter_model.safetensors"),
        ("directory", "sub")]
    rec = proto.tree_entries(FILES, recursive=True)
    assert [e["path"] for e in rec] == [
        "adapter_config.json", "adapter_model.safetensors", "sub", "sub/a.txt", "sub/deep",
        "sub/deep/b.txt"]
    assert [e["path"] for e in proto.tree_entries(FILES, "sub")] == ["sub/a.txt", "sub/deep"]
    with pytest.raises(proto.TreeError):
        proto.tree_entries(FILES, "nope")


def test_next_link_pages_until_the_end():
    assert proto.next_link("http://h/x", {"recursive": "true"}, 0, 5, 2) == \
        '<http://h/x?recursive=true&cursor=2>; rel="next"'
    assert proto.next_link("http://h/x", {"cursor": "4"}, 4, 5, 2) is None


@pytest.mark.parametrize("header,expected", [
    (None, None), ("bytes=0-3", (0, 3)), ("bytes=5-", (5, 9)), ("bytes=-3", (7, 9)),
    ("bytes=2-100", (2, 9)), ("bytes=-20", (0, 9)), (" bytes = 1 - 2 ", (1, 2)),
    # not one satisfiable-or-not byte range: ignored, the whole file is sent (RFC 9110 14.2)
    ("items=0-1", None), ("bytes=0-1,3-4", None), ("bytes=5-2", None), ("bytes=abc", None),
    ("bytes=-", None), ("bytes", None),
])
def test_parse_range(header, expected):
    assert parse_range(header, 10) == expected


@pytest.mark.parametrize("header", ["bytes=10-", "bytes=-0", "bytes=99-100"])
def test_unsatisfiable_range(header):
    with pytest.raises(RangeNotSatisfiableError) as e:
        parse_range(header, 10)
    assert e.value.status == 416 and e.value.headers == {"Content-Range": "bytes */10"}


def test_an_empty_file_is_always_sent_whole():
    assert parse_range("bytes=0-", 0) is None and parse_range("bytes=-5", 0) is None


def test_error_headers():
    r = proto.hf_error(404, proto.ENTRY_NOT_FOUND, "gone\nreally", commit="c" * 40)
    assert r.headers["X-Error-Code"] == "EntryNotFound"
    assert r.headers["X-Repo-Commit"] == "c" * 40
    assert "\n" not in r.headers["X-Error-Message"]
    assert json.loads(r.body) == {"error": "gone\nreally"}


def test_signed_upload_urls(tmp_path):
    key = b"k" * 32
    sig = sign_upload(key, "ns/x", "a" * 64, 10, "bob", 2**40)
    assert check_upload_sig(key, "ns/x", "a" * 64, 10, "bob", 2**40, sig)
    assert not check_upload_sig(key, "ns/x", "a" * 64, 11, "bob", 2**40, sig)
    assert not check_upload_sig(key, "ns/y", "a" * 64, 10, "bob", 2**40, sig)
    assert not check_upload_sig(b"other", "ns/x", "a" * 64, 10, "bob", 2**40, sig)
    expired = sign_upload(key, "ns/x", "a" * 64, 10, "bob", 1)
    assert not check_upload_sig(key, "ns/x", "a" * 64, 10, "bob", 1, expired)
    assert upload_mode(5, 10) == "regular" and upload_mode(11, 10) == "lfs"


def _ndjson(tmp_path: Path, items: list[dict]) -> Path:
    p = tmp_path / "body.ndjson"
    p.write_bytes(b"".join(json.dumps(i).encode() + b"\n" for i in items))
    return p


def test_parse_commit_streams_inline_files_into_the_store(tmp_path, monkeypatch):
    import lorahive.registry.hf.upload as up

    monkeypatch.setattr(up, "_SMALL_LINE", 64)  # force the memory-mapped path for big lines
    monkeypatch.setattr(up, "_B64_CHUNK", 8)
    store = LocalBlobStore(tmp_path / "blobs")

    def into_store(chunks):
        sha, size, _ = ingest(store, chunks, None, None, 10_000)
        return sha, size

    big = bytes(range(256)) * 3
    body = _ndjson(tmp_path, [
        {"key": "header", "value": {"summary": "s", "description": "d", "parentCommit": "p" * 40}},
        {"key": "file", "value": {"path": "small.txt", "encoding": "base64",
                                  "content": base64.b64encode(b"hi").decode()}},
        {"key": "file", "value": {"content": base64.b64encode(big).decode(), "path": "big.bin2",
                                  "encoding": "base64"}},
        {"key": "lfsFile", "value": {"path": "w.safetensors", "algo": "sha256", "oid": "f" * 64,
                                     "size": 3}},
        {"key": "deletedFile", "value": {"path": "old.txt"}},
        {"key": "deletedFolder", "value": {"path": "sub/"}},
    ])
    c = parse_commit(body, into_store)
    assert (c.summary, c.description, c.parent) == ("s", "d", "p" * 40)
    assert c.added["big.bin2"].sha256 == hashlib.sha256(big).hexdigest()
    assert b"".join(store.open_range(c.added["big.bin2"].sha256)) == big
    assert b"".join(store.open_range(c.added["small.txt"].sha256)) == b"hi"
    assert c.lfs == {"w.safetensors": ("f" * 64, 3)}
    parent = [fe("old.txt", b"o"), fe("keep.txt", b"k"), fe("sub/x", b"x")]
    files = apply_commit(parent, c, {"w.safetensors": fe("w.safetensors", b"abc")}, 10)
    assert [f.path for f in files] == ["big.bin2", "keep.txt", "small.txt", "w.safetensors"]


@pytest.mark.parametrize("item,err", [
    ({"key": "file", "value": {"path": "../x", "content": ""}}, InvalidRequestError),
    ({"key": "file", "value": {"path": "a.bin", "content": ""}}, UnsafeFileError),
    ({"key": "file", "value": {"path": "a", "content": "!!!"}}, InvalidRequestError),
    ({"key": "copy", "value": {"path": "a"}}, InvalidRequestError),
])
def test_parse_commit_rejects_bad_lines(tmp_path, item, err):
    with pytest.raises(err):
        store = LocalBlobStore(tmp_path / "b")
        parse_commit(_ndjson(tmp_path, [item]), lambda c: ingest(store, c, None, None, 100)[:2])
