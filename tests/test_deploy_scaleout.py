"""The scale-out deployment of docs/deploy.md, started on loopback: two ``lorahive serve``
processes (each with its own data directory) sharing one PostgreSQL database and one S3 bucket
(moto), behind Debian's nginx running ``deploy/nginx.conf``. Everything goes through the proxy
with lorahive's client: publish, resolve, search, pull with the store's redirects (and
``hf_hub_download``); both workers
answer; an alias moved through one worker is what the other resolves next; with one worker
killed the proxy keeps serving.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from huggingface_hub import constants, hf_hub_download

from benchmarks.scaleout import Deployment, deployment, nginx_exe, shared_env
from lorahive.hub.cache import PullCache
from lorahive.hub.client import HttpRegistry
from lorahive.hub.manifest import WEIGHTS_NAME
from tests.registry_helpers import pg, s3_endpoint, unique  # noqa: F401

pytestmark = [pytest.mark.timeout(180), pytest.mark.postgres]
API = "/api/v1"
REPO = "admin/scaled"


@pytest.fixture()
def deploy(tmp_path, pg, s3_endpoint) -> Iterator[Deployment]:  # noqa: F811
    nginx_exe()  # a missing nginx fails here (make test installs it), it is not skipped
    env = shared_env(pg.url(pg.create_db()), s3_endpoint, unique("bucket"))
    # info: uvicorn's access log shows which worker answered each request
    with deployment(2, env, tmp_path / "deploy", log_level="info") as d:
        yield d


def test_two_workers_behind_nginx(deploy, lora_dir, tmp_path, monkeypatch):
    """One scenario in order (the last step kills a worker)."""
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # loopback only
    monkeypatch.delenv("HF_TOKEN", raising=False)
    publish_resolve_search_pull(deploy, lora_dir, tmp_path / "1")
    alias_moved_on_one_worker_is_seen_on_the_other(deploy, tmp_path / "2")
    the_proxy_keeps_serving_when_a_worker_dies(deploy, lora_dir, tmp_path / "3")


def _served(deploy: Deployment, path: str) -> list[int]:
    """Requests for ``path`` (or under it, when it ends with ``/``) in each worker's access
    log."""
    end = "" if path.endswith("/") else "[ ?]"
    pat = re.compile(rf'"(GET|HEAD|PUT|POST) {re.escape(path)}{end}')
    return [len(pat.findall(w.log.read_text())) for w in deploy.workers]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _second_version(lora_dir: Path, tmp: Path) -> Path:
    """The same adapter with a different config, so it is a new version."""
    out = tmp / "v2"
    shutil.copytree(lora_dir, out)
    cfg = out / "adapter_config.json"
    cfg.write_text(json.dumps({**json.loads(cfg.read_text()), "lora_dropout": 0.05}))
    return out


def publish_resolve_search_pull(deploy: Deployment, lora_dir: Path, tmp_path: Path) -> None:
    with HttpRegistry(deploy.url, deploy.admin_token, cache=PullCache(tmp_path / "pub")) as reg:
        v1 = reg.publish(lora_dir, REPO, task="scaleout")
        v2 = reg.publish(_second_version(lora_dir, tmp_path), REPO)
    assert (v1.version, v2.version) == ("1", "2")
    assert not any((w.home / "blobs").exists() for w in deploy.workers)  # bodies went to S3

    resolve = f"{API}/adapters/{REPO}/aliases/latest"
    search = f"{API}/adapters"
    files = f"{API}/adapters/{REPO}/versions/1/files/"
    before = {p: _served(deploy, p) for p in (resolve, search, files)}
    with HttpRegistry(deploy.url, None, cache=PullCache(tmp_path / "anon")) as anon:
        for _ in range(6):
            assert anon.resolve(REPO).version == "2"
        for _ in range(6):
            page = anon.search(task="scaleout")
            assert [a.name for a in page.items] == ["scaled"]
        for i in range(4):  # fresh caches: every pull downloads through the redirects
            with HttpRegistry(deploy.url, None, cache=PullCache(tmp_path / f"c{i}")) as r:
                out = r.pull(f"{REPO}@1", to=tmp_path / f"out{i}")
            for f in v1.files:
                assert _sha256(out / f.path) == f.sha256 == _sha256(lora_dir / f.path)
    for path, n in ((resolve, 6), (search, 6), (files, 4 * len(v1.files))):
        served = [a - b for a, b in zip(_served(deploy, path), before[path], strict=True)]
        # nginx rotates requests over the workers: both answered a share of each kind
        assert sum(served) >= n and min(served) >= n // 4, (path, served)

    # the proxy hands the worker's redirect to the store through unchanged
    w = next(f for f in v1.files if f.path == WEIGHTS_NAME)
    r = httpx.get(f"{deploy.url}{API}/adapters/{REPO}/versions/1/files/{WEIGHTS_NAME}")
    assert r.status_code == 302 and r.headers["x-linked-etag"] == f'"{w.sha256}"'
    loc = r.headers["location"]
    assert urlsplit(loc).netloc != urlsplit(deploy.url).netloc  # the store, not the proxy
    assert hashlib.sha256(httpx.get(loc).content).hexdigest() == w.sha256
    # and unmodified huggingface_hub, through the proxy's Hugging Face routes
    got = Path(hf_hub_download(REPO, WEIGHTS_NAME, endpoint=deploy.url,
                               cache_dir=tmp_path / "hf"))
    assert _sha256(got) == w.sha256


def alias_moved_on_one_worker_is_seen_on_the_other(deploy: Deployment, tmp_path: Path) -> None:
    a, b = deploy.workers
    token = deploy.admin_token
    with HttpRegistry(a.url, token, cache=PullCache(tmp_path / "a")) as ra, \
            HttpRegistry(b.url, token, cache=PullCache(tmp_path / "b")) as rb:
        ra.set_alias(f"{REPO}@1", "prod")
        assert rb.resolve(f"{REPO}:prod").version == "1"
        etag = httpx.get(f"{b.url}{API}/adapters/{REPO}/aliases/prod").headers["etag"]
        rb.set_alias(f"{REPO}@2", "prod")
        assert ra.resolve(f"{REPO}:prod").version == "2"
        # a poller revalidating on the other worker sees the move, not a 304
        r = httpx.get(f"{a.url}{API}/adapters/{REPO}/aliases/prod",
                      headers={"If-None-Match": etag})
        assert r.status_code == 200 and r.json()["version"] == "2"
        ra.set_alias(f"{REPO}@1", "prod")
    with HttpRegistry(deploy.url, None, cache=PullCache(tmp_path / "p")) as proxy:
        assert {proxy.resolve(f"{REPO}:prod").version for _ in range(6)} == {"1"}


def the_proxy_keeps_serving_when_a_worker_dies(deploy: Deployment, lora_dir: Path,
                                                tmp_path: Path) -> None:
    survivor = deploy.workers[1]
    resolve = f"{API}/adapters/{REPO}/aliases/latest"
    deploy.workers[0].kill()
    before = _served(deploy, resolve)[1]
    with HttpRegistry(deploy.url, None, cache=PullCache(tmp_path / "anon")) as anon:
        for _ in range(10):  # none of them fails: a refused connection goes to the next
            assert anon.resolve(REPO).version == "2"
        out = anon.pull(f"{REPO}@2", to=tmp_path / "out")
    assert _sha256(out / WEIGHTS_NAME) == _sha256(lora_dir / WEIGHTS_NAME)
    assert _served(deploy, resolve)[1] - before >= 10  # all on the survivor
    with HttpRegistry(deploy.url, deploy.admin_token, cache=PullCache(tmp_path / "w")) as reg:
        v3 = reg.publish(_second_version(lora_dir, tmp_path), "admin/after-failover")
    with HttpRegistry(survivor.url, None, cache=PullCache(tmp_path / "s")) as direct:
        assert direct.resolve("admin/after-failover").version == v3.version
