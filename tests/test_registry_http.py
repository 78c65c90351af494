"""The REST API against hostile or malformed requests: each gets the right 4xx with a JSON
error body, and leaves nothing behind (no blob, no staging file, no version)."""

from __future__ import annotations

import hashlib
import socket

import httpx
import pytest

from lorahive.hub.client import HttpRegistry
from lorahive.hub.manifest import file_sha256
from tests.registry_helpers import start_server, unique

API = "/api/v1"
LIMIT = 1_000_000


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = start_server(tmp_path_factory.mktemp("http-home"),
                     env={"LORAHIVE_MAX_FILES": "6", "LORAHIVE_MAX_UPLOAD_BYTES": str(LIMIT)})
    yield s
    s.stop()


@pytest.fixture(scope="module")
def admin(server):
    with httpx.Client(base_url=server.url + API, timeout=30,
                      headers={"Authorization": f"Bearer {server.admin_token}"}) as c:
        yield c


@pytest.fixture()
def anon(server):
    with httpx.Client(base_url=server.url + API, timeout=30) as c:
        yield c


def _err(resp: httpx.Response, status: int, code: str) -> str:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert body["error"]["code"] == code, body
    return body["error"]["message"]


def _staging_empty(server) -> bool:
    d = server.home / "blobs" / ".staging"
    return not d.exists() or not any(d.iterdir())


def _blob_exists(admin: httpx.Client, sha: str) -> bool:
    return admin.head(f"/blobs/{sha}").status_code == 200


def test_wrong_sha256_is_rejected_and_not_stored(server, admin):
    data = b"some bytes " + unique().encode()
    wrong = hashlib.sha256(b"other").hexdigest()
    _err(admin.put(f"/blobs/{wrong}", content=data), 422, "integrity_error")
    assert not _blob_exists(admin, wrong) and _staging_empty(server)
    right = hashlib.sha256(data).hexdigest()
    r = admin.put(f"/blobs/{right}", content=data)
    assert r.status_code == 201 and r.json() == {"sha256": right, "size": len(data), "existed": False}
    assert admin.put(f"/blobs/{right}", content=data).json()["existed"] is True
    _err(admin.put("/blobs/not-a-hash", content=data), 400, "invalid_request")
    _err(admin.put(f"/blobs/{right.upper()}", content=data), 400, "invalid_request")


def test_truncated_upload_leaves_nothing(server, admin):
    data = unique().encode() * 2000
    sha = hashlib.sha256(data).hexdigest()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        head = (f"PUT {API}/blobs/{sha} HTTP/1.1\r\nHost: x\r\n"
                f"Authorization: Bearer {server.admin_token}\r\n"
                f"Content-Length: {len(data)}\r\n\r\n").encode()
        sock.sendall(head + data[: len(data) // 2])
        sock.shutdown(socket.SHUT_WR)
        sock.recv(4096)
    httpx.get(server.url + "/healthz")  # the server is fine afterwards
    assert not _blob_exists(admin, sha) and _staging_empty(server)


def test_upload_limits(server, admin):
    sha = hashlib.sha256(b"x").hexdigest()
    _err(admin.put(f"/blobs/{sha}", content=b"x" * (LIMIT + 1)), 413, "payload_too_large")
    assert not _blob_exists(admin, sha)


def test_bad_manifests(server, admin, lora_dir):
    ns = unique("ns")
    tok = admin.post("/tokens", json={"name": "w", "scope": "write", "user": ns}).json()["token"]
    owner = HttpRegistry(server.url, tok)
    owner.publish(lora_dir, f"{ns}/ok")  # uploads the real blobs
    files = [{"path": p.name, "sha256": file_sha256(p), "size": p.stat().st_size}
             for p in lora_dir.iterdir() if p.is_file()]
    url = f"/adapters/{ns}/bad/versions"
    h = {"Authorization": f"Bearer {tok}"}

    def commit(extra: list[dict], **kw):
        return admin.post(url, json={"files": [*files, *extra], **kw}, headers=h)

    one = files[0]
    for bad in ("../escape", "/etc/passwd", "a\\b", "dir/../../x", "C:evil", "a\x00b", "a\nb",
                ".git/config", "./x", "a//b", "x" * 300, ""):
        _err(commit([{**one, "path": bad}]), 400, "invalid_request")
    for pickled in ("adapter_model.bin", "training_args.bin", "sub/model.pt", "x.pkl"):
        _err(commit([{**one, "path": pickled}]), 422, "unsafe_file")
    _err(commit([{**one, "path": one["path"]}]), 400, "invalid_request")  # listed twice
    _err(commit([{**one, "path": f"extra{i}.txt"} for i in range(6)]), 413, "payload_too_large")
    ghost = hashlib.sha256(b"never uploaded").hexdigest()
    _err(commit([{"path": "notes.txt", "sha256": ghost, "size": 3}]), 404, "entry_not_found")
    _err(commit([{**one, "path": "copy.json", "size": one["size"] + 1}]), 422, "integrity_error")
    no_weights = [f for f in files if f["path"] != "adapter_model.safetensors"]
    _err(admin.post(url, json={"files": no_weights}, headers=h), 422, "invalid_adapter")
    cfg = next(f for f in files if f["path"] == "adapter_config.json")
    swapped = [f if f["path"] != "adapter_model.safetensors" else {**f, "sha256": cfg["sha256"],
                                                                    "size": cfg["size"]}
               for f in files]
    _err(admin.post(url, json={"files": swapped}, headers=h), 422, "invalid_adapter")
    _err(admin.post(url, json={"files": files, "version": "../1"}, headers=h), 400,
         "invalid_reference")
    _err(admin.post(url, json={"files": "nope"}, headers=h), 400, "invalid_request")
    _err(admin.post(url, content=b"{not json", headers={**h, "Content-Type": "application/json"}),
         400, "invalid_request")
    _err(admin.get(f"/adapters/{ns}/bad"), 404, "adapter_not_found")  # nothing was created
    # duplicate version with different content
    _err(admin.post(f"/adapters/{ns}/ok/versions",
                    json={"files": [*files, {**one, "path": "x.txt"}], "version": "1"},
                    headers=h), 409, "conflict")
    owner.close()


def test_auth_header_and_tokens(server, admin, anon):
    _err(anon.get("/tokens"), 401, "unauthenticated")
    _err(anon.get("/whoami", headers={"Authorization": "Basic abc"}), 401, "unauthenticated")
    _err(anon.get("/whoami", headers={"Authorization": "Bearer lh_wrong"}), 401, "unauthenticated")
    _err(anon.post("/gc"), 401, "unauthenticated")
    ns = unique("ns")
    ro = admin.post("/tokens", json={"name": "r", "scope": "read", "user": ns}).json()["token"]
    h = {"Authorization": f"Bearer {ro}"}
    sha = hashlib.sha256(b"z").hexdigest()
    _err(anon.put(f"/blobs/{sha}", content=b"z", headers=h), 403, "forbidden")
    _err(anon.post("/gc", headers=h), 403, "forbidden")
    _err(anon.post("/tokens", json={"name": "x", "scope": "superuser"}, headers=h), 400,
         "invalid_request")
    assert anon.get("/whoami", headers=h).json()["user"] == ns


def test_private_probing_matches_absent(server, admin, anon, lora_dir):
    ns = unique("ns")
    tok = admin.post("/tokens", json={"name": "w", "scope": "write", "user": ns}).json()["token"]
    with HttpRegistry(server.url, tok) as owner:
        v = owner.publish(lora_dir, f"{ns}/hidden", private=True)
    paths = ["", "/versions", "/versions/1", "/aliases/latest",
             "/versions/1/files/adapter_model.safetensors"]
    for p in paths:
        hidden = anon.get(f"/adapters/{ns}/hidden{p}")
        absent = anon.get(f"/adapters/{ns}/absent{p}")
        assert hidden.status_code == absent.status_code == 404
        assert hidden.json()["error"]["code"] == absent.json()["error"]["code"]
    assert anon.get("/adapters", params={"namespace": ns}).json()["total"] == 0
    h = {"Authorization": f"Bearer {tok}"}
    r = anon.get(f"/adapters/{ns}/hidden/versions/1/files/adapter_model.safetensors", headers=h)
    assert r.status_code == 200 and hashlib.sha256(r.content).hexdigest() == v.sha256


def test_download_range_etag_and_head(server, admin, lora_dir):
    ns = unique("ns")
    tok = admin.post("/tokens", json={"name": "w", "scope": "write", "user": ns}).json()["token"]
    with HttpRegistry(server.url, tok) as owner:
        v = owner.publish(lora_dir, f"{ns}/dl")
    body = (lora_dir / "adapter_model.safetensors").read_bytes()
    url = f"/adapters/{ns}/dl/versions/1/files/adapter_model.safetensors"
    full = admin.get(url)
    assert full.status_code == 200 and full.content == body
    assert full.headers["etag"] == f'"{v.sha256}"'
    assert int(full.headers["content-length"]) == len(body)
    part = admin.get(url, headers={"Range": "bytes=100-199"})
    assert part.status_code == 206 and part.content == body[100:200]
    assert part.headers["content-range"] == f"bytes 100-199/{len(body)}"
    tail = admin.get(url, headers={"Range": "bytes=-10"})
    assert tail.status_code == 206 and tail.content == body[-10:]
    rest = admin.get(url, headers={"Range": f"bytes={len(body) - 5}-"})
    assert rest.content == body[-5:]
    tail416 = admin.get(url, headers={"Range": f"bytes={len(body)}-"})
    _err(tail416, 416, "range_not_satisfiable")
    assert tail416.headers["content-range"] == f"bytes */{len(body)}"
    for ignored in ("bytes=5-2", "items=0-1", "bytes=0-1,4-5"):  # RFC 9110: sent whole
        r = admin.get(url, headers={"Range": ignored})
        assert r.status_code == 200 and r.content == body, ignored
    assert admin.get(url, headers={"If-None-Match": f'"{v.sha256}"'}).status_code == 304
    head = admin.head(url)
    assert head.status_code == 200 and int(head.headers["content-length"]) == len(body)
    _err(admin.get(f"/adapters/{ns}/dl/versions/1/files/nope.txt"), 404, "entry_not_found")
    _err(admin.get(f"/adapters/{ns}/dl/versions/1/files/..%2F..%2Fetc%2Fpasswd"), 400,
         "invalid_request")


def test_health_metrics_openapi_and_unknown_routes(server, anon):
    assert httpx.get(server.url + "/healthz").json() == {"status": "ok"}
    assert httpx.get(server.url + "/metrics").status_code == 401  # counts private adapters
    text = httpx.get(server.url + "/metrics",
                     headers={"Authorization": f"Bearer {server.admin_token}"}).text
    assert "# TYPE lorahive_http_requests_total counter" in text
    assert "lorahive_adapters " in text and 'direction="download"' in text
    spec = anon.get("/openapi.json").json()
    assert f"{API}/blobs/{{sha}}" in spec["paths"]
    _err(anon.get("/no/such/route"), 404, "not_found")
    _err(anon.delete("/whoami"), 405, "method_not_allowed")
    _err(anon.get("/adapters", params={"limit": 100000}), 400, "invalid_request")
    _err(anon.get("/adapters", params={"sort": "random"}), 400, "invalid_request")
    _err(anon.get("/adapters/bad name/x"), 400, "invalid_reference")


def test_client_resumes_with_range(server, admin, lora_dir, tmp_path):
    from lorahive.hub.cache import PullCache

    ns = unique("ns")
    tok = admin.post("/tokens", json={"name": "w", "scope": "write", "user": ns}).json()["token"]
    with HttpRegistry(server.url, tok) as owner:
        v = owner.publish(lora_dir, f"{ns}/resume")
    body = (lora_dir / "adapter_model.safetensors").read_bytes()
    cache = PullCache(tmp_path / "cache")
    part = cache.root / "partial" / f"{v.sha256}.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(body[:1000])
    def partial_gets() -> float:
        text = httpx.get(server.url + "/metrics",
                         headers={"Authorization": f"Bearer {server.admin_token}"}).text
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("lorahive_http_requests_total") and "/files/" in line
                   and 'status="206"' in line)

    before = partial_gets()
    with HttpRegistry(server.url, None, cache=cache) as anon_client:
        snap = anon_client.pull(f"{ns}/resume")
    assert (snap / "adapter_model.safetensors").read_bytes() == body
    assert partial_gets() == before + 1  # the weights resumed at byte 1000; the rest were 200s


def test_out_of_range_values_are_400_not_500(server, admin):
    cases = [
        admin.get("/adapters", params={"offset": 10**24}),
        admin.post("/tokens", json={"name": "x", "expires_in_days": 1e308}),
        admin.post("/gc", params={"grace_seconds": -100}),
        admin.post("/gc", params={"grace_seconds": "nan"}),
        admin.post("/adapters/admin/x/versions", content=b'{"files": [], "metrics": {"a": NaN}}',
                   headers={"Content-Type": "application/json"}),
    ]
    for r in cases:
        _err(r, 400, "invalid_request")
    _err(admin.delete(f"/tokens/{10**30}"), 404, "not_found")
