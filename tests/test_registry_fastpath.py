"""The polled resolve reads (``.../aliases/<a>``, ``.../versions/<v>``) are answered before
FastAPI's router with the route's exact response, and everything that is not a successful
read (unknown adapters, invalid names, private adapters, bad tokens) still reaches the route,
which answers it as before: the limiter counts the 401s and the metrics name the route."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from lorahive.hub.protocol import VersionInfo
from lorahive.registry.deps import get_principal
from tests.registry_helpers import ThreadedServer, unique
from tests.test_registry_metadata import statements

pytestmark = pytest.mark.timeout(120)

ALIAS_ROUTE = "/api/v1/adapters/{ns}/{name}/aliases/{alias}"
VERSION_ROUTE = "/api/v1/adapters/{ns}/{name}/versions/{version}"


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[ThreadedServer]:
    s = ThreadedServer(tmp_path_factory.mktemp("fast-home"))
    yield s
    s.stop()


def _app(server: ThreadedServer):
    return server._server.config.app


def _observed(server: ThreadedServer, route: str, status: int) -> int:
    return server.service.metrics.requests.get(("GET", route, status), 0)


def test_reads_skip_the_router_with_the_routes_response(server, lora_dir):
    repo = f"admin/{unique('f')}"
    server.admin.publish(lora_dir, repo, tags=["fast"])
    app = _app(server)

    def router_reached() -> None:
        raise AssertionError("the router answered a read the fast path owns")

    app.dependency_overrides[get_principal] = router_reached
    try:
        with server.client(headers={"Authorization": f"Bearer {server.token}"}) as c:
            before = (_observed(server, ALIAS_ROUTE, 200), _observed(server, VERSION_ROUTE, 200))
            alias = c.get(f"/api/v1/adapters/{repo}/aliases/latest")
            version = c.get(f"/api/v1/adapters/{repo}/versions/1")
            # any other route goes through the router (and its overridden dependency)
            assert c.get(f"/api/v1/adapters/{repo}").status_code == 500
    finally:
        app.dependency_overrides.clear()
    expected = server.admin.resolve(f"{repo}:latest")
    for r in (alias, version):
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "application/json"
        assert r.headers["cache-control"] == "no-cache" and r.headers["etag"].startswith('"')
        assert VersionInfo.model_validate(r.json()) == expected
    assert alias.headers["etag"] == version.headers["etag"]
    assert (_observed(server, ALIAS_ROUTE, 200), _observed(server, VERSION_ROUTE, 200)) == (
        before[0] + 1, before[1] + 1)
    # revalidation on the fast path: the tag it gave answers 304
    with server.client(headers={"Authorization": f"Bearer {server.token}"}) as c:
        assert c.get(f"/api/v1/adapters/{repo}/aliases/latest",
                     headers={"If-None-Match": alias.headers["etag"]}).status_code == 304


def test_errors_reach_the_route(server, lora_dir):
    repo = f"admin/{unique('p')}"
    server.admin.publish(lora_dir, repo, private=True)
    with server.client() as anon:
        r = anon.get(f"/api/v1/adapters/{repo}/aliases/latest")  # private: as if absent
        assert r.status_code == 404 and r.json()["error"]["code"].endswith("not_found")
        assert "etag" not in r.headers
        r = anon.get(f"/api/v1/adapters/admin/{unique('none')}/versions/1")
        assert r.status_code == 404 and "error" in r.json()
        r = anon.get(f"/api/v1/adapters/{repo}/versions/99")
        assert r.status_code == 404
        r = anon.get("/api/v1/adapters/admin/bad%20name/aliases/latest")
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_reference"
        r = anon.get(f"/api/v1/adapters/{repo}/aliases/latest",
                     headers={"Authorization": "Basic eDp5"})
        assert r.status_code == 401 and "Bearer" in r.json()["error"]["message"]
    assert _observed(server, ALIAS_ROUTE, 404) >= 1
    with server.client(headers={"Authorization": f"Bearer {server.token}"}) as c:
        assert c.get(f"/api/v1/adapters/{repo}/aliases/latest").status_code == 200


def test_bad_tokens_are_counted_by_the_limiter(tmp_path, lora_dir, monkeypatch):
    monkeypatch.setenv("LORAHIVE_AUTH_FAIL_LIMIT", "3")
    s = ThreadedServer(tmp_path / "home")
    try:
        repo = f"admin/{unique('l')}"
        s.admin.publish(lora_dir, repo)
        url = f"/api/v1/adapters/{repo}/aliases/latest"
        with s.client(headers={"Authorization": "Bearer lh_not_a_token"}) as bad:
            codes = [bad.get(url).status_code for _ in range(3)]
        assert codes == [401, 401, 401]
        with s.client(headers={"Authorization": f"Bearer {s.token}"}) as good:
            r = good.get(url)  # the same client address, now over the limit
        assert r.status_code == 429 and "retry-after" in r.headers
    finally:
        s.stop()


def test_an_authenticated_read_is_two_statements(server, lora_dir):
    repo = f"admin/{unique('s')}"
    server.admin.publish(lora_dir, repo)
    url = f"/api/v1/adapters/{repo}/aliases/latest"
    with server.client(headers={"Authorization": f"Bearer {server.token}"}) as c:
        assert c.get(url).status_code == 200  # the version's immutable part, once
        with statements(server.service.engine) as seen:
            assert c.get(url).status_code == 200
    assert len(seen) == 2, seen  # the token with its user, the resolve


def test_search_pages_match_the_route(server, lora_dir):
    tag = unique("tag")
    repos = [f"admin/{unique('s')}" for _ in range(3)]
    for r in repos:
        server.admin.publish(lora_dir, r, tags=[tag], task="fastpath-task")
    app = _app(server)
    queries = [f"tag={tag}&limit=2", f"tag={tag}&limit=2&offset=2", f"tag={tag}&sort=name",
               f"q=&task=fastpath-task&tag={tag}&peft_type=lora&limit=5"]
    with server.client(headers={"Authorization": f"Bearer {server.token}"}) as c:
        fast = {q: c.get(f"/api/v1/adapters?{q}") for q in queries}
        app.dependency_overrides[get_principal] = lambda: server.admin.principal
        try:  # the route's own answer: a parameter the fast path leaves to it
            routed = {q: c.get(f"/api/v1/adapters?{q}&unknown=1") for q in queries}
        finally:
            app.dependency_overrides.clear()
    for q in queries:
        assert fast[q].status_code == routed[q].status_code == 200, q
        assert fast[q].json() == routed[q].json(), q
        assert fast[q].headers["etag"] == routed[q].headers["etag"], q
    assert fast[queries[0]].json()["total"] == 3
    assert [i["name"] for i in fast[queries[2]].json()["items"]] == sorted(
        r.split("/")[1] for r in repos)
    with server.client() as anon:  # what the route refuses, it still refuses
        assert anon.get("/api/v1/adapters?limit=-1").status_code == 400
        assert anon.get("/api/v1/adapters?sort=nope").status_code == 400
        assert anon.get("/api/v1/adapters?offset=99999999999").status_code == 400


def test_search_arguments_are_the_routes():
    """The fast path reads exactly the search route's query parameters."""
    from lorahive.registry.app import create_app
    from lorahive.registry.fastpath import SEARCH_PARAMS, search_args

    spec = create_app().openapi()["paths"]["/api/v1/adapters"]["get"]
    assert sorted(p["name"] for p in spec["parameters"] if p["in"] == "query") == sorted(
        SEARCH_PARAMS)
    assert search_args(b"q=a+b&tag=x&tag=y&limit=5") == {
        "text": "a b", "tags": ["x", "y"], "limit": 5}
    assert search_args(b"limit=5&limit=6") is None and search_args(b"offset=1e3") is None
    assert search_args(b"other=1") is None
