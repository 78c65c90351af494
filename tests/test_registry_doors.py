"""The REST routes, the Hugging Face routes and the embedded registry are doors onto one
service: every blob that becomes visible went through the service's one ingest, every byte
served went through its one download step (one Range policy, one download-count rule), and
the HF layer only translates (no tables, sessions, blobs or private service helpers)."""

from __future__ import annotations

import ast
import base64
import hashlib
import json
import traceback
from pathlib import Path

import pytest

from lorahive.hub.cache import PullCache
from lorahive.registry import blobs
from lorahive.registry.local import LocalRegistry
from tests.malicious.corpus import WEIGHTS, read_dir
from tests.malicious.harness import API, Harness, open_harness
from tests.registry_helpers import unique

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def hx(tmp_path_factory):
    yield from open_harness(tmp_path_factory.mktemp("doors-home"))


@pytest.fixture(scope="module")
def good(lora_dir):
    return read_dir(lora_dir)


@pytest.fixture(scope="module")
def repo(hx: Harness, good):
    ns = unique("ns")
    tok = hx.user_token(ns)
    status, body = hx.commit(f"{ns}/door", good, tok)
    assert status == 201, body
    return {"ns": ns, "token": tok, "repo": f"{ns}/door"}


def _frames() -> list[str]:
    return [f"{Path(f.filename).name}:{f.name}" for f in traceback.extract_stack()]


@pytest.fixture()
def commits(monkeypatch):
    """Record the call stack of every blob that becomes visible in the store."""
    seen: list[list[str]] = []
    real = blobs.LocalBlobStore.commit

    def spy(self, staged, sha):
        seen.append(_frames())
        return real(self, staged, sha)

    monkeypatch.setattr(blobs.LocalBlobStore, "commit", spy)
    return seen


@pytest.fixture()
def reads(monkeypatch):
    """Record the call stack of every blob read that serves bytes."""
    seen: list[list[str]] = []
    real = blobs.LocalBlobStore.open_range

    def spy(self, sha, start=0, end=None):
        seen.append(_frames())
        return real(self, sha, start, end)

    monkeypatch.setattr(blobs.LocalBlobStore, "open_range", spy)
    return seen


def _through(stack: list[str], fn: str) -> bool:
    return f"service.py:{fn}" in stack


def test_every_door_ingests_through_the_service(hx: Harness, repo, good, commits, tmp_path):
    tok = repo["token"]
    # REST blob upload
    assert hx.put_blob(b"rest " + unique().encode(), tok) == 201
    # HF: LFS batch -> signed PUT
    body = b"lfs " + unique().encode()
    oid = hashlib.sha256(body).hexdigest()
    batch = hx.client.post(f"/{repo['repo']}.git/info/lfs/objects/batch",
                           headers=hx.headers(tok),
                           json={"operation": "upload", "objects": [{"oid": oid,
                                                                     "size": len(body)}]})
    href = batch.json()["objects"][0]["actions"]["upload"]["href"]
    assert hx.client.put(href.replace("http://testserver", ""), content=body).status_code == 200
    # HF: an inline commit (a new README becomes a new version, with the other files kept)
    readme = f"---\nlicense: mit\n---\n{unique()}\n".encode()
    lines = [{"key": "header", "value": {"summary": "card"}},
             {"key": "file", "value": {"path": "README.md", "encoding": "base64",
                                       "content": base64.b64encode(readme).decode()}}]
    r = hx.client.post(f"/api/models/{repo['repo']}/commit/main", headers=hx.headers(tok),
                       content="\n".join(json.dumps(x) for x in lines))
    assert r.status_code == 200, r.text
    # the embedded registry, and the generated model card of a commit
    d = tmp_path / "a"
    d.mkdir()
    for name, data in good.items():
        if name != "README.md":  # so that the commit generates the card
            (d / name).write_bytes(data)
    (d / "notes.txt").write_text(unique())
    reg = LocalRegistry(service=hx.service, token=tok, cache=PullCache(tmp_path / "c"))
    reg.publish(d, f"{repo['ns']}/embedded")
    assert len(commits) >= 5
    bad = [s for s in commits if not _through(s, "_ingest")]
    assert not bad, "a blob was stored without the service's ingest:\n" + "\n".join(
        " > ".join(s[-8:]) for s in bad)


RANGES = [None, "bytes=0-3", "bytes=5-", "bytes=-3", "bytes=2-99999999", "items=0-1",
          "bytes=0-1,3-4", "bytes=5-2", "bytes=abc", "bytes=-0", "bytes=99999999-"]


def test_one_range_policy_for_rest_and_hf(hx: Harness, repo, good, reads):
    """RFC 9110: a Range in an unknown unit, with a syntax error or with several ranges is
    ignored (200, whole file); a valid range outside the file is 416."""
    data = good[WEIGHTS]
    rest = f"{API}/adapters/{repo['repo']}/versions/1/files/{WEIGHTS}"
    hf = f"/{repo['repo']}/resolve/1/{WEIGHTS}"
    for header in RANGES:
        got = []
        for url in (rest, hf):
            h = {"Range": header} if header else {}
            r = hx.client.get(url, headers=h)
            got.append((r.status_code, r.content if r.status_code < 300 else b"",
                        r.headers.get("content-range")))
        assert got[0] == got[1], (header, got[0][0], got[1][0], got[0][2], got[1][2])
        status, content, _ = got[0]
        if header in ("bytes=-0", "bytes=99999999-"):
            assert status == 416 and got[0][2] == f"bytes */{len(data)}"
        elif header in (None, "items=0-1", "bytes=0-1,3-4", "bytes=5-2", "bytes=abc"):
            assert status == 200 and content == data, header
        else:
            assert status == 206, header
    assert reads and all(_through(s, "download") for s in reads)


def test_one_download_count_rule_for_every_door(hx: Harness, repo, tmp_path, reads):
    """A GET of the weights that starts at byte 0 counts once, on every door; HEAD, a GET from
    another offset and other files do not."""
    def count() -> int:
        return hx.client.get(f"{API}/adapters/{repo['repo']}").json()["downloads"]

    rest = f"{API}/adapters/{repo['repo']}/versions/1/files/"
    hf = f"/{repo['repo']}/resolve/1/"
    for base in (rest, hf):
        n = count()
        hx.client.head(base + WEIGHTS)
        hx.client.get(base + WEIGHTS, headers={"Range": "bytes=10-"})
        hx.client.get(base + "adapter_config.json")
        assert count() == n, base
        hx.client.get(base + WEIGHTS)
        assert count() == n + 1, base
        hx.client.get(base + WEIGHTS, headers={"Range": "bytes=0-99"})
        assert count() == n + 2, base
    n = count()
    reg = LocalRegistry(service=hx.service, token="", cache=PullCache(tmp_path / "c"))
    reg.pull(f"{repo['repo']}@1")
    assert count() == n + 1
    assert reads and all(_through(s, "download") for s in reads)


# -- the HF layer translates ------------------------------------------------------------------
FORBIDDEN_MODULES = ("sqlmodel", "sqlalchemy", "lorahive.registry.db", "lorahive.registry.tables",
                     "lorahive.registry.blobs")


@pytest.mark.parametrize("folder", ["registry/hf", "registry/routes"])
def test_doors_touch_no_table_session_or_blob(folder):
    problems = []
    for path in sorted((ROOT / folder).glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                if node.module.startswith(FORBIDDEN_MODULES):
                    problems.append(f"{path.name}: imports {node.module}")
            elif isinstance(node, ast.Import):
                problems += [f"{path.name}: imports {a.name}" for a in node.names
                             if a.name.startswith(FORBIDDEN_MODULES)]
            elif isinstance(node, ast.Attribute):
                if node.attr in ("store", "engine") or node.attr == "session_scope":
                    problems.append(f"{path.name}:{node.lineno}: uses .{node.attr}")
                inner = node.value
                if (node.attr.startswith("_") and not node.attr.startswith("__")
                        and isinstance(inner, ast.Attribute) and inner.attr == "service"):
                    problems.append(f"{path.name}:{node.lineno}: calls service.{node.attr}")
                if (node.attr.startswith("_") and not node.attr.startswith("__")
                        and isinstance(inner, ast.Name) and inner.id in ("svc", "service")):
                    problems.append(f"{path.name}:{node.lineno}: calls {inner.id}.{node.attr}")
    assert not problems, "\n".join(problems)
