"""Hostile input: every malicious file, name and body is refused with the right 4xx and leaves
no trace (no version row, no temp file; blobs an attacker uploaded stay unreferenced and the
next ``gc`` removes them)."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from tests.malicious.corpus import (
    BAD_NAMES,
    CASE_NAMES,
    CONFIG,
    ENCODED_PATHS,
    WEIGHTS,
    all_cases,
    case,
    materialise,
    pickle_bomb,
    read_dir,
)
from tests.malicious.harness import API, Harness, open_harness
from tests.registry_helpers import run_cli, unique

# every refusal in this module is counted here and reported in docs/reliability.md
TRIED: list[str] = []


@pytest.fixture(scope="module")
def hx(tmp_path_factory):
    yield from open_harness(tmp_path_factory.mktemp("sec-home"), max_upload_bytes=4 * 1024**2,
                            max_files=8, max_manifest_bytes=64 * 1024)


@pytest.fixture(scope="module")
def good(lora_dir):
    return read_dir(lora_dir)


@pytest.fixture()
def owner(hx: Harness):
    ns = unique("ns")
    return ns, hx.user_token(ns)


def _gc(hx: Harness) -> None:
    r = hx.client.post(f"{API}/gc", params={"grace_seconds": 0}, headers=hx.headers(hx.admin))
    assert r.status_code == 200, r.text


def test_good_adapter_is_accepted(hx: Harness, good, owner):
    """The corpus is built from an adapter the server accepts: refusals are due to the change."""
    ns, tok = owner
    status, body = hx.commit(f"{ns}/ok", good, tok)
    assert status == 201, body


def test_corpus_names_in_step(good):
    assert [c.name for c in all_cases(good)] == CASE_NAMES


@pytest.mark.parametrize("name", CASE_NAMES)
def test_malicious_adapter_files_are_refused_without_trace(hx: Harness, good, owner, name):
    c = case(good, name)
    ns, tok = owner
    _gc(hx)
    before = hx.trace()
    files = {k: v for k, v in good.items() if k not in c.drop}
    files.update(c.files)
    status, body = hx.commit(f"{ns}/evil", files, tok)
    assert 400 <= status < 500, (c.name, status, body)
    assert set(body["error"]) == {"code", "message"} and "\n" not in body["error"]["message"]
    after = hx.trace()
    assert after.rows == before.rows and after.temps == before.temps == ()
    r = hx.client.get(f"{API}/adapters/{ns}/evil", headers=hx.headers(tok))
    assert r.status_code == 404
    _gc(hx)
    assert hx.trace().blobs == before.blobs  # what the attacker uploaded is collected
    TRIED.append(c.name)


@pytest.mark.parametrize("bad", BAD_NAMES)
def test_traversal_and_absolute_names_in_a_manifest_are_refused(hx: Harness, good, owner, bad):
    ns, tok = owner
    before = hx.trace()
    status, body = hx.commit(f"{ns}/names", {**good, bad: b"{}"}, tok, upload=False)
    assert status in (400, 422), (bad, status, body)
    assert hx.trace() == before
    TRIED.append(f"name {bad!r}")


@pytest.mark.parametrize("enc", ENCODED_PATHS)
def test_url_encoded_traversal_never_serves_a_file(hx: Harness, good, owner, enc):
    """Downloads (REST and HF routes) decode, then check: never a 200, never a 500."""
    ns, tok = owner
    status, body = hx.commit(f"{ns}/dl", good, tok)
    assert status == 201, body  # the file next to the traversal exists and is served
    ok = hx.client.get(f"{API}/adapters/{ns}/dl/versions/1/files/{CONFIG}",
                       headers=hx.headers(tok))
    assert ok.status_code == 200 and ok.content == good[CONFIG]
    for url in (f"{API}/adapters/{ns}/dl/versions/1/files/{enc}",
                f"{API}/adapters/{ns}/dl/versions/1/files/sub/{enc}",
                f"/{ns}/dl/resolve/main/{enc}"):
        r = hx.client.get(url, headers=hx.headers(tok))
        assert r.status_code in (400, 404), (url, r.status_code, r.text[:200])
        assert b"root:" not in r.content
    TRIED.append(f"url {enc}")


def test_lying_sha_and_size_and_oversized_bodies(hx: Harness, good, owner):
    ns, tok = owner
    _gc(hx)
    before = hx.trace()
    body = os.urandom(4096)
    sha = hashlib.sha256(body).hexdigest()
    other = hashlib.sha256(b"something else").hexdigest()
    assert hx.put_blob(body, tok, sha=other) == 422  # content hashes to something else
    # declared Content-Length larger than the body that arrives
    assert hx.put_blob(body, tok, sha=sha, length=len(body) + 10) in (400, 422)
    assert hx.put_blob(body, tok, sha="A" * 64) == 400  # not lowercase hex
    assert hx.put_blob(body, tok, sha="../" + sha[3:]) in (400, 404)
    # declared over the per-file limit: refused before a byte is read
    r = hx.client.put(f"{API}/blobs/{sha}", content=b"x",
                      headers={**hx.headers(tok), "Content-Length": str(5 * 1024**2)})
    assert r.status_code in (400, 413)
    # a streamed body over the limit (no trustworthy length) is cut off at the limit
    big = os.urandom(4 * 1024**2 + 1)
    assert hx.put_blob(big, tok) == 413
    # oversized JSON body and too many files
    huge = {"files": [{"path": f"f{i}.json", "sha256": sha, "size": 1} for i in range(2000)]}
    r = hx.client.post(f"{API}/adapters/{ns}/big/versions", headers=hx.headers(tok),
                       content=json.dumps(huge))
    assert r.status_code == 413, r.text
    many = {f"extra{i}.json": b"{}" for i in range(10)}
    status, _ = hx.commit(f"{ns}/many", {**good, **many}, tok, upload=False)
    assert status == 413
    # a manifest whose declared size or sha disagrees with the uploaded blob
    for key, fake in (("size", 7), ("sha256", other)):
        entries = [{"path": p, "sha256": hashlib.sha256(b).hexdigest(), "size": len(b)}
                   for p, b in good.items()]
        for b in good.values():
            hx.put_blob(b, tok)
        next(e for e in entries if e["path"] == WEIGHTS)[key] = fake
        r = hx.client.post(f"{API}/adapters/{ns}/lie/versions", headers=hx.headers(tok),
                           json={"files": entries})
        assert r.status_code in (404, 422), (key, r.text)
    after = hx.trace()
    assert after.rows == before.rows and after.temps == ()
    _gc(hx)
    assert hx.trace().blobs == before.blobs
    TRIED.extend(["lying sha", "short body", "bad sha", "declared over limit",
                  "streamed over limit", "oversized JSON", "too many files", "lying size",
                  "missing blob"])


def test_client_refuses_symlinks_and_pickles_before_uploading(hx: Harness, good, owner, tmp_path):
    """The SDK checks the directory first: a symlink (which could leak any local file) or a
    pickle is refused and not one byte is uploaded."""
    from lorahive.hub.client import HttpRegistry
    from lorahive.hub.errors import InvalidRequestError, UnsafeFileError

    ns, tok = owner
    secret = tmp_path / "secret.txt"
    secret.write_text("private key material")
    link_dir = materialise(case(good, "config-missing"), good, tmp_path / "link")
    (link_dir / CONFIG).symlink_to(tmp_path / "elsewhere.json")
    (tmp_path / "elsewhere.json").write_bytes(good[CONFIG])
    (link_dir / "notes.txt").symlink_to(secret)
    sub = materialise(case(good, "config-missing"), good, tmp_path / "subdir-link")
    (sub / CONFIG).write_bytes(good[CONFIG])
    (sub / "extra").symlink_to(tmp_path, target_is_directory=True)
    pkl = materialise(case(good, "pickle-.bin"), good, tmp_path / "pkl")
    _gc(hx)
    before = hx.trace()
    reg = HttpRegistry("http://testserver", tok)
    reg.http = hx.client
    hx.client.headers["Authorization"] = f"Bearer {tok}"
    try:
        for d, err in ((link_dir, InvalidRequestError), (sub, InvalidRequestError),
                       (pkl, UnsafeFileError)):
            with pytest.raises(err) as ei:
                reg.publish(d, f"{ns}/linked")
            assert "\n" not in str(ei.value)
    finally:
        del hx.client.headers["Authorization"]
    assert hx.trace() == before
    TRIED.extend(["symlinked file", "symlinked directory", "pickle via SDK"])


def test_cli_publish_errors_are_one_line_and_store_nothing(good, tmp_path):
    """The real CLI on the embedded registry: exit 1, one ``error:`` line, nothing stored."""
    home = tmp_path / "home"
    evil = materialise(case(good, "pickle-.pt"), good, tmp_path / "evil")
    (evil / "adapter_model.pt").unlink()
    (evil / "adapter_model.pt").write_bytes(pickle_bomb())
    (tmp_path / "passwd").write_text("root:x:0:0")
    linked = materialise(case(good, "config-missing"), good, tmp_path / "linked")
    (linked / CONFIG).write_bytes(good[CONFIG])
    (linked / "leak.txt").symlink_to(tmp_path / "passwd")
    trunc = materialise(case(good, "header-truncated"), good, tmp_path / "trunc")
    for d in (evil, linked, trunc):
        cp = run_cli(home, "publish", str(d), "--name", "admin/evil", check=False)
        assert cp.returncode == 1, cp.stdout + cp.stderr
        lines = cp.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), cp.stderr
    assert not list((home / "blobs").glob("??/??/*"))
    assert not [p for p in home.rglob(".lorahive-tmp*")]
    TRIED.extend(["CLI pickle", "CLI symlink", "CLI truncated header"])


def test_zz_report_count():
    """Every hostile input of this module was tried and refused (a run where none or only
    some ran fails here); prints how many (quoted in docs/reliability.md)."""
    print(f"\nhostile inputs refused: {len(TRIED)}")
    expected = {*CASE_NAMES, *(f"name {b!r}" for b in BAD_NAMES),
                *(f"url {e}" for e in ENCODED_PATHS)}
    assert expected <= set(TRIED), sorted(expected - set(TRIED))
    assert len(TRIED) >= len(expected) + 15
