"""Metadata routes revalidate: ``ETag`` on resolve (alias and version), adapter info, version
lists and search pages, 304 with no body to a matching ``If-None-Match``, a new tag when what
the caller would see changes; visibility is decided before any 304. A resolve is one SQL
statement once the version's immutable part is known to the process."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from sqlalchemy import event

from lorahive.hub.protocol import SearchPage, VersionInfo
from tests.registry_helpers import ThreadedServer, unique

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[ThreadedServer]:
    s = ThreadedServer(tmp_path_factory.mktemp("meta-home"))
    yield s
    s.stop()


@contextmanager
def statements(engine) -> Iterator[list[str]]:
    seen: list[str] = []

    def count(conn, cursor, statement, params, context, executemany):
        if statement.split()[0].upper() not in ("BEGIN", "COMMIT", "ROLLBACK"):
            seen.append(statement)  # queries, not transaction control

    event.listen(engine, "before_cursor_execute", count)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", count)


def _revalidates(c, url: str) -> str:
    first = c.get(url)
    assert first.status_code == 200, first.text
    tag = first.headers["etag"]
    assert tag.startswith('"') and first.headers["cache-control"] == "no-cache"
    assert "authorization" in first.headers["vary"].lower()
    again = c.get(url, headers={"If-None-Match": tag})
    assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == tag
    # the weak form and a list naming it match too; another tag does not
    assert c.get(url, headers={"If-None-Match": f'"x", W/{tag}'}).status_code == 304
    assert c.get(url, headers={"If-None-Match": '"other"'}).status_code == 200
    return tag


def test_etags_on_metadata_routes(server, lora_dir, tmp_path):
    repo = f"admin/{unique('m')}"
    v1 = server.admin.publish(lora_dir, repo, tags=["etag"])
    base = f"/api/v1/adapters/{repo}"
    urls = {"alias": f"{base}/aliases/latest", "version": f"{base}/versions/1",
            "adapter": base, "versions": f"{base}/versions",
            "search": "/api/v1/adapters?tag=etag&limit=5"}
    with server.client(headers={"Authorization": f"Bearer {server.token}"}) as c:
        tags = {k: _revalidates(c, u) for k, u in urls.items()}
        body = c.get(urls["alias"]).json()
        assert VersionInfo.model_validate(body) == server.admin.resolve(f"{repo}:latest")
        assert SearchPage.model_validate(c.get(urls["search"]).json()).total == 1

        # a moved alias, a new version, a download: the caller would see something else
        cfg = tmp_path / "v2"
        cfg.mkdir()
        for f in lora_dir.iterdir():
            (cfg / f.name).write_bytes(f.read_bytes())
        (cfg / "notes.txt").write_text("second version")
        server.admin.publish(cfg, repo)
        for k in urls:  # version 1 too: ``latest`` left it
            r = c.get(urls[k], headers={"If-None-Match": tags[k]})
            assert r.status_code == 200 and r.headers["etag"] != tags[k], k
        tag = c.get(urls["version"]).headers["etag"]
        server.admin.publish(lora_dir, f"admin/{unique('other')}")
        assert c.get(urls["version"], headers={"If-None-Match": tag}).status_code == 304
        server.admin.pull(f"{repo}@1", to=tmp_path / "pulled")  # counts a download of 1
        r = c.get(urls["version"], headers={"If-None-Match": tag})
        assert r.status_code == 200 and r.json()["downloads"] == v1.downloads + 1


def test_visibility_before_revalidation(server, lora_dir):
    repo = f"admin/{unique('s')}"
    server.admin.publish(lora_dir, repo, private=True)
    url = f"/api/v1/adapters/{repo}/aliases/latest"
    with server.client(headers={"Authorization": f"Bearer {server.token}"}) as c:
        tag = c.get(url).headers["etag"]
    with server.client() as anon:  # a known tag reveals nothing to who may not see it
        r = anon.get(url, headers={"If-None-Match": tag})
        assert r.status_code == 404 and "etag" not in r.headers


def test_resolve_is_one_statement(server, lora_dir):
    repo = f"admin/{unique('q')}"
    server.admin.publish(lora_dir, repo)
    svc, caller = server.service, server.admin.principal
    svc.resolve(caller, f"{repo}@1")  # the immutable part, once per process
    for ref in (f"{repo}:latest", f"{repo}@1", repo):
        with statements(svc.engine) as seen:
            info = svc.resolve(caller, ref)
        assert info.version == "1" and info.aliases == ["latest"]
        assert len(seen) == 1, seen
    with server.client() as anon, statements(svc.engine) as seen:  # through the REST route
        assert anon.get(f"/api/v1/adapters/{repo}/aliases/latest").status_code == 200
    assert len(seen) == 1, seen
