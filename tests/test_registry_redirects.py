"""File requests on S3 storage answer 302 to a presigned object URL (as the Hugging Face Hub
redirects to its CDN): the REST download and HF ``resolve`` carry ``X-Linked-Etag``,
``X-Linked-Size`` and ``X-Repo-Commit``; lorahive's client and unmodified ``huggingface_hub``
follow the redirect to a moto S3 server on loopback and still get the sha256 they asked for;
private adapters are refused before any redirect; each download counts once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from huggingface_hub import constants, hf_hub_download
from huggingface_hub.errors import RepositoryNotFoundError

from lorahive.hub.cache import PullCache
from lorahive.hub.client import HttpRegistry
from lorahive.hub.errors import AdapterNotFoundError, IntegrityError
from lorahive.hub.manifest import WEIGHTS_NAME
from lorahive.registry.blobs import S3BlobStore
from tests.registry_helpers import ThreadedServer, s3_endpoint, unique  # noqa: F401

pytestmark = pytest.mark.timeout(120)
AWS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
       "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> Iterator[None]:
    """Credentials for moto, and the HF client online (loopback only) with its own cache."""
    mp = pytest.MonkeyPatch()
    for k, v in AWS.items():
        mp.setenv(k, v)
    mp.setattr(constants, "HF_HUB_OFFLINE", False)
    mp.setattr(constants, "HF_HUB_CACHE", str(tmp_path_factory.mktemp("hf-cache")))
    mp.delenv("HF_HUB_OFFLINE", raising=False)
    mp.delenv("HF_TOKEN", raising=False)
    yield
    mp.undo()


@pytest.fixture(scope="module")
def server(tmp_path_factory, env, s3_endpoint) -> Iterator[ThreadedServer]:  # noqa: F811
    s = ThreadedServer(tmp_path_factory.mktemp("redirect-home"),
                       storage_url=f"s3://{unique('bucket')}/lh", s3_endpoint_url=s3_endpoint)
    assert isinstance(s.service.store, S3BlobStore)
    yield s
    s.stop()


def _downloads(server: ThreadedServer, ref: str) -> tuple[int, int]:
    """(adapter, version) download counts."""
    v = server.admin.resolve(ref)
    return server.admin.adapter(ref.split("@")[0]).downloads, v.downloads


def _weights(info) -> object:
    return next(f for f in info.files if f.path == WEIGHTS_NAME)


def _file_url(server: ThreadedServer, ref: str, version: str, path: str = WEIGHTS_NAME) -> str:
    return f"{server.url}/api/v1/adapters/{ref}/versions/{version}/files/{path}"


def test_rest_download_is_a_redirect_to_the_object(server, lora_dir, s3_endpoint):  # noqa: F811
    repo = f"admin/{unique('r')}"
    info = server.admin.publish(lora_dir, repo)
    w = _weights(info)
    with server.client(headers={"Authorization": f"Bearer {server.token}"}) as c:
        r = c.get(_file_url(server, repo, info.version))
        assert r.status_code == 302
        assert r.content == b""
        loc = r.headers["location"]
        assert urlsplit(loc).netloc == urlsplit(s3_endpoint).netloc
        assert r.headers["x-linked-etag"] == f'"{w.sha256}"'
        assert r.headers["x-linked-size"] == str(w.size)
        assert r.headers["cache-control"] == "no-store"  # the link expires
        assert c.head(_file_url(server, repo, info.version)).status_code == 302
        # a revalidation is answered here, not by the store
        r304 = c.get(_file_url(server, repo, info.version),
                     headers={"If-None-Match": f'"{w.sha256}"'})
        assert r304.status_code == 304 and "location" not in r304.headers
    # the presigned URL needs no registry token; the store serves the bytes and Range
    body = httpx.get(loc).content
    assert hashlib.sha256(body).hexdigest() == w.sha256 and len(body) == w.size
    part = httpx.get(loc, headers={"Range": "bytes=8-"})
    assert part.status_code == 206 and part.content == body[8:]


def test_lorahive_client_follows_and_verifies(server, lora_dir, tmp_path):
    repo = f"admin/{unique('c')}"
    info = server.admin.publish(lora_dir, repo)
    with HttpRegistry(server.url, token=server.token) as reg:
        out = reg.pull(repo, to=tmp_path / "out")
    for f in info.files:
        assert hashlib.sha256((out / f.path).read_bytes()).hexdigest() == f.sha256
    assert _downloads(server, repo) == (1, 1)  # the 302 counted; the store's GET is unseen
    assert server.service.metrics.redirects >= len(info.files)

    # content changed behind the registry's back (same size) is refused, not cached
    w = _weights(info)
    store = server.service.store
    good = b"".join(store.open_range(w.sha256))
    bad = bytearray(good)
    bad[-1] ^= 0xFF
    store.client.put_object(Bucket=store.bucket, Key=store._key(w.sha256), Body=bytes(bad))
    try:
        with HttpRegistry(server.url, token=server.token,
                          cache=PullCache(tmp_path / "fresh-cache")) as reg, \
                pytest.raises(IntegrityError):
            reg.pull(repo, to=tmp_path / "bad")
        assert not (tmp_path / "bad").exists()
    finally:  # the blob is shared by every test's publish of the same files
        store.client.put_object(Bucket=store.bucket, Key=store._key(w.sha256), Body=good)


def test_hf_hub_download_follows_the_redirect(server, lora_dir, tmp_path):
    repo = f"admin/{unique('h')}"
    info = server.admin.publish(lora_dir, repo)
    w = _weights(info)
    # the HEAD the client resolves with is a 302 carrying the Hub's headers
    with server.client(headers={"Authorization": f"Bearer {server.token}"}) as c:
        head = c.head(f"{server.url}/{repo}/resolve/main/{WEIGHTS_NAME}")
    assert head.status_code == 302
    assert head.headers["x-repo-commit"] and head.headers["x-linked-etag"] == f'"{w.sha256}"'
    assert head.headers["x-linked-size"] == str(w.size)
    assert _downloads(server, repo) == (1, 1)  # that HEAD handed out the link: one download

    before = _downloads(server, repo)[1]
    path = Path(hf_hub_download(repo, WEIGHTS_NAME, endpoint=server.url, token=server.token,
                                cache_dir=tmp_path / "hf"))
    assert hashlib.sha256(path.read_bytes()).hexdigest() == w.sha256
    assert path.resolve().name == w.sha256  # the cache names the blob by X-Linked-Etag
    assert _downloads(server, repo)[1] == before + 1  # counted once, not per request
    # a small file comes the same way
    cfg = Path(hf_hub_download(repo, "adapter_config.json", endpoint=server.url,
                               token=server.token, cache_dir=tmp_path / "hf"))
    assert cfg.read_bytes() == (lora_dir / "adapter_config.json").read_bytes()


def test_private_adapter_is_refused_before_any_redirect(server, lora_dir, tmp_path):
    repo = f"admin/{unique('p')}"
    info = server.admin.publish(lora_dir, repo, private=True)
    url = _file_url(server, repo, info.version)
    with server.client() as anon:
        for method in ("GET", "HEAD"):
            r = anon.request(method, url)
            assert r.status_code == 404 and "location" not in r.headers
            r = anon.request(method, f"{server.url}/{repo}/resolve/main/{WEIGHTS_NAME}")
            assert r.status_code in (401, 404) and "location" not in r.headers
            assert r.headers["x-error-code"] == "RepoNotFound"
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download(repo, WEIGHTS_NAME, endpoint=server.url, cache_dir=tmp_path / "hf")
    with HttpRegistry(server.url) as reg, pytest.raises(AdapterNotFoundError):
        reg.pull(f"{repo}@{info.version}", to=tmp_path / "anon")
    assert _downloads(server, repo) == (0, 0)
    with server.client(headers={"Authorization": f"Bearer {server.token}"}) as c:
        assert c.get(url).status_code == 302


def test_counting_with_redirects(server, lora_dir):
    """The request that hands out the weights' link from byte 0 counts; a resumed request,
    a revalidation and other files do not."""
    repo = f"admin/{unique('n')}"
    info = server.admin.publish(lora_dir, repo)
    w = _weights(info)
    with server.client(headers={"Authorization": f"Bearer {server.token}"}) as c:
        assert c.get(_file_url(server, repo, info.version),
                     headers={"Range": "bytes=100-"}).status_code == 302
        assert c.get(_file_url(server, repo, info.version, "adapter_config.json")
                     ).status_code == 302
        assert c.get(_file_url(server, repo, info.version),
                     headers={"If-None-Match": f'"{w.sha256}"'}).status_code == 304
        assert _downloads(server, repo) == (0, 0)
        assert c.get(_file_url(server, repo, info.version)).status_code == 302
    assert _downloads(server, repo) == (1, 1)


def test_redirects_can_be_turned_off(tmp_path, env, s3_endpoint, lora_dir):  # noqa: F811
    s = ThreadedServer(tmp_path / "home", storage_url=f"s3://{unique('bucket')}/lh",
                       s3_endpoint_url=s3_endpoint, redirect_downloads=False)
    try:
        info = s.admin.publish(lora_dir, "admin/streamed")
        w = _weights(info)
        with s.client(headers={"Authorization": f"Bearer {s.token}"}) as c:
            r = c.get(_file_url(s, "admin/streamed", info.version))
        assert r.status_code == 200 and hashlib.sha256(r.content).hexdigest() == w.sha256
        assert _downloads(s, "admin/streamed") == (1, 1)
    finally:
        s.stop()


def test_presigned_urls_name_the_public_endpoint(tmp_path, env, s3_endpoint):  # noqa: F811
    """Workers reach the store at one address, clients at another: links name the latter."""
    store = S3BlobStore(f"s3://{unique('bucket')}/x", tmp_path / "st", s3_endpoint,
                        public_endpoint_url="https://objects.example.org")
    url = store.download_url("a" * 64, 600, "adapter_model.safetensors")
    assert url is not None and url.startswith("https://objects.example.org/")
    assert "X-Amz-Expires=600" in url or "Expires=" in url  # signed locally, nothing fetched
