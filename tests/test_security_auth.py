"""Auth: every route of the OpenAPI schema, /metrics and /healthz x {anonymous, read,
write-other-namespace, write, admin} answers the status the table says; private adapters are
404 to the unauthorised on every route, and lineage never names them to those callers; tokens
are random, stored hashed and looked up by their digest; failed auth attempts are rate limited
(429 + Retry-After)."""

from __future__ import annotations

import hashlib
import json
import re
import time
from pathlib import Path

import pytest
from sqlmodel import Session, select

from lorahive.hub.modelcard import render_card
from tests.malicious.corpus import CONFIG, WEIGHTS, read_dir
from tests.malicious.harness import API, Harness, open_harness
from tests.registry_helpers import unique

ROLES = ("anon", "read", "other", "write", "admin")
OK = "ok"  # any 2xx


@pytest.fixture(scope="module")
def hx(tmp_path_factory):
    yield from open_harness(tmp_path_factory.mktemp("auth-home"))


@pytest.fixture(scope="module")
def good(lora_dir):
    return read_dir(lora_dir)


@pytest.fixture(scope="module")
def world(hx: Harness, good):
    """Namespace ``own`` (user own: write + read tokens), user ``oth`` with its own namespace,
    the site admin; ``own/pub`` (public) and ``own/priv`` (private), each with version 1."""
    own, oth = unique("own"), unique("oth")
    toks = {"anon": None, "write": hx.user_token(own, "write"), "other": hx.user_token(oth),
            "admin": hx.admin}
    r = hx.client.post(f"{API}/tokens", headers=hx.headers(toks["write"]),
                       json={"name": "ro", "scope": "read"})
    toks["read"] = r.json()["token"]
    for name, private in (("pub", False), ("priv", True)):
        files = [{"path": p, "sha256": hashlib.sha256(b).hexdigest(), "size": len(b)}
                 for p, b in good.items()]
        for b in good.values():
            hx.put_blob(b, toks["write"])
        r = hx.client.post(f"{API}/adapters/{own}/{name}/versions",
                           headers=hx.headers(toks["write"]),
                           json={"files": files, "private": private})
        assert r.status_code == 201, r.text
    return {"own": own, "oth": oth, "tokens": toks, "good": good}


def _fresh_version(hx: Harness, w: dict, name: str) -> str:
    """Publish one more version of ``own/name`` (for routes that delete)."""
    files = [{"path": p, "sha256": hashlib.sha256(b).hexdigest(), "size": len(b)}
             for p, b in w["good"].items()]
    r = hx.client.post(f"{API}/adapters/{w['own']}/{name}/versions",
                       headers=hx.headers(w["tokens"]["write"]),
                       json={"files": files, "allow_duplicate": True})
    assert r.status_code == 201, r.text
    return r.json()["version"]


def _request(hx: Harness, w: dict, method: str, path: str, role: str,
             name: str = "pub", prepare: bool = True) -> int:
    """Fill the route's parameters with real objects and send it as ``role``; with
    ``prepare``, routes that delete get a fresh object to delete first."""
    tok = w["tokens"][role]
    own = w["own"]
    sha = hashlib.sha256(w["good"][WEIGHTS]).hexdigest()
    version = "1"
    if prepare and method == "DELETE" and "{version}" in path:
        version = _fresh_version(hx, w, name)
    if prepare and method == "DELETE" and path.endswith("/{name}"):
        name = f"gone{unique()}"
        _fresh_version(hx, w, name)
    if prepare and method == "DELETE" and "{alias}" in path:
        r = hx.client.put(f"{API}/adapters/{own}/{name}/aliases/prod",
                          headers=hx.headers(w["tokens"]["write"]), json={"version": "1"})
        assert r.status_code == 200, r.text
    token_id = None
    if "{token_id}" in path:
        r = hx.client.post(f"{API}/tokens", headers=hx.headers(w["tokens"]["write"]),
                           json={"name": "victim", "scope": "read"})
        token_id = r.json()["info"]["id"]
    values = {"ns": own, "name": name, "version": version,
              "alias": "latest" if method == "GET" else "prod",
              "path": CONFIG, "sha": sha, "token_id": token_id, "rev": "main",
              "repo_git": f"{name}.git", "oid": sha}
    url = re.sub(r"\{(\w+)\}", lambda m: str(values[m.group(1)]), path)
    kw: dict = {"headers": hx.headers(tok)}
    body = BODIES.get((method, path))
    if body is not None:
        kw["json"] = body(w, name) if callable(body) else body
    if (method, path) == ("PUT", "/api/v1/blobs/{sha}"):
        kw["content"] = w["good"][WEIGHTS]
    if (method, path) == ("PUT", "/api/v1/adapters/{ns}/{name}/aliases/{alias}"):
        kw["json"] = {"version": "1"}
    return hx.client.request(method, url, **kw).status_code


def _files(w: dict) -> list[dict]:
    return [{"path": p, "sha256": hashlib.sha256(b).hexdigest(), "size": len(b)}
            for p, b in w["good"].items()]


BODIES: dict = {
    ("POST", "/api/v1/adapters/{ns}/{name}/versions"): lambda w, n: {"files": _files(w),
                                                                      "allow_duplicate": True},
    ("POST", "/api/v1/adapters/{ns}/{name}/preflight"): lambda w, n: {"files": _files(w)},
    ("POST", "/api/v1/blobs/missing"): {"sha256": ["0" * 64]},
    ("POST", "/api/v1/namespaces"): lambda w, n: {"name": unique("nsx")},
    ("POST", "/api/v1/tokens"): {"name": "t", "scope": "read"},
    ("POST", "/api/repos/create"): lambda w, n: {"name": unique("r"), "organization": w["own"]},
    ("POST", "/api/models/{ns}/{name}/preupload/{rev}"): {"files": [{"path": "x.json",
                                                                       "size": 2,
                                                                       "sample": "e30="}]},
    ("POST", "/{ns}/{repo_git}/info/lfs/objects/batch"): lambda w, n: {
        "operation": "upload", "transfers": ["basic"],
        "objects": [{"oid": hashlib.sha256(w["good"][WEIGHTS]).hexdigest(),
                     "size": len(w["good"][WEIGHTS])}]},
    ("POST", "/{ns}/{repo_git}/info/lfs/objects/verify"): lambda w, n: {
        "oid": hashlib.sha256(w["good"][WEIGHTS]).hexdigest(), "size": len(w["good"][WEIGHTS])},
    ("POST", "/api/validate-yaml"): {"content": "---\nlicense: mit\n---\n", "repoType": "model"},
}


# operational routes kept out of the OpenAPI schema, in the table all the same
OPERATIONAL = [("GET", "/metrics"), ("GET", "/healthz")]


def routes(app) -> list[tuple[str, str]]:
    schema = app.openapi()
    served = {(m, r.path) for r in app.routes for m in getattr(r, "methods", ())}
    assert set(OPERATIONAL) <= served
    return [(m.upper(), p) for p, ops in schema["paths"].items() for m in ops] + OPERATIONAL


# expected status per route and role (anon, read, other, write, admin) on the public adapter
# own/pub; "read" is a read-scope token of the namespace's owner, "other" a write token of
# another user on their own namespace, "write" the owner's write token, "admin" the site admin.
R = (200, 200, 200, 200, 200)
TABLE: dict[tuple[str, str], tuple[int, ...]] = {
    ("GET", "/api/v1/adapters"): R,
    ("GET", "/api/v1/adapters/{ns}/{name}"): R,
    ("DELETE", "/api/v1/adapters/{ns}/{name}"): (401, 403, 403, 403, 204),
    ("GET", "/api/v1/adapters/{ns}/{name}/versions"): R,
    ("POST", "/api/v1/adapters/{ns}/{name}/versions"): (401, 403, 403, 201, 201),
    ("POST", "/api/v1/adapters/{ns}/{name}/preflight"): (401, 403, 403, 200, 200),
    ("GET", "/api/v1/adapters/{ns}/{name}/versions/{version}"): R,
    ("DELETE", "/api/v1/adapters/{ns}/{name}/versions/{version}"): (401, 403, 403, 204, 204),
    ("GET", "/api/v1/adapters/{ns}/{name}/aliases/{alias}"): R,
    ("PUT", "/api/v1/adapters/{ns}/{name}/aliases/{alias}"): (401, 403, 403, 200, 200),
    ("DELETE", "/api/v1/adapters/{ns}/{name}/aliases/{alias}"): (401, 403, 403, 204, 204),
    ("POST", "/api/v1/blobs/missing"): (401, 403, 200, 200, 200),
    ("HEAD", "/api/v1/blobs/{sha}"): (401, 403, 200, 200, 200),
    ("PUT", "/api/v1/blobs/{sha}"): (401, 403, 200, 200, 200),
    ("GET", "/api/v1/adapters/{ns}/{name}/versions/{version}/files/{path}"): R,
    ("HEAD", "/api/v1/adapters/{ns}/{name}/versions/{version}/files/{path}"): R,
    ("GET", "/api/v1/whoami"): R,
    ("POST", "/api/v1/namespaces"): (401, 403, 201, 201, 201),
    ("POST", "/api/v1/tokens"): (401, 201, 201, 201, 201),  # never above the caller's scope
    ("GET", "/api/v1/tokens"): (401, 200, 200, 200, 200),  # each user sees their own
    ("DELETE", "/api/v1/tokens/{token_id}"): (401, 204, 404, 204, 204),  # owner's token
    ("POST", "/api/v1/gc"): (401, 403, 403, 403, 200),
    ("GET", "/metrics"): (401, 403, 403, 403, 200),  # counts include private adapters
    ("GET", "/healthz"): R,
    ("GET", "/api/whoami-v2"): (401, 200, 200, 200, 200),
    ("GET", "/api/models"): R,
    ("GET", "/api/models/{ns}/{name}"): R,
    ("GET", "/api/models/{ns}/{name}/revision/{rev}"): R,
    ("GET", "/api/models/{ns}/{name}/tree/{rev}/{path}"): (404,) * 5,  # a file, not a folder
    ("GET", "/api/models/{ns}/{name}/tree/{rev}"): R,
    ("GET", "/api/models/{ns}/{name}/refs"): R,
    ("GET", "/api/models/{ns}/{name}/commits/{rev}"): R,
    ("POST", "/api/models/{ns}/{name}/paths-info/{rev}"): R,
    ("GET", "/{ns}/{name}/resolve/{rev}/{path}"): R,
    ("HEAD", "/{ns}/{name}/resolve/{rev}/{path}"): R,
    ("POST", "/api/validate-yaml"): R,
    ("POST", "/api/repos/create"): (401, 403, 403, 200, 200),
    ("POST", "/api/models/{ns}/{name}/preupload/{rev}"): (401, 403, 403, 200, 200),
    ("POST", "/{ns}/{repo_git}/info/lfs/objects/batch"): (401, 403, 403, 200, 200),
    ("PUT", "/api/lorahive-lfs/{ns}/{name}/{oid}"): (400,) * 5,  # needs a signed URL
    ("POST", "/{ns}/{repo_git}/info/lfs/objects/verify"): (401, 403, 403, 200, 200),
    ("POST", "/api/models/{ns}/{name}/commit/{rev}"): (401, 403, 403, 400, 400),  # no body
    ("GET", "/api/models/{ns}/{name}/xet-read-token/{rev}"): (501,) * 5,
    ("POST", "/api/models/{ns}/{name}/xet-read-token/{rev}"): (501,) * 5,
    ("GET", "/api/models/{ns}/{name}/xet-write-token/{rev}"): (501,) * 5,
    ("POST", "/api/models/{ns}/{name}/xet-write-token/{rev}"): (501,) * 5,
}


def test_table_covers_every_route_of_the_schema(hx: Harness):
    """Every operation of the schema, plus /metrics and /healthz, has a row."""
    assert set(routes(hx.client.app)) == set(TABLE), "a route was added: extend TABLE"


def test_every_route_times_every_role(hx: Harness, world):
    bad = []
    for method, path in routes(hx.client.app):
        got = tuple(_request(hx, world, method, path, role) for role in ROLES)
        if got != TABLE[(method, path)]:
            bad.append(f"{method} {path}: expected {TABLE[(method, path)]}, got {got}")
    assert not bad, "\n".join(bad)


def test_private_adapters_are_indistinguishable_from_missing_ones(hx: Harness, world):
    """For the unauthorised (anonymous, another user), every route with an adapter in it
    answers for ``own/priv`` exactly as for a name that does not exist (404 on reads), and the
    owner's tokens and the admin see it."""
    leaks = []
    for method, path in routes(hx.client.app):
        if "{name}" not in path and "{repo_git}" not in path:
            continue
        for role in ("anon", "other"):
            priv = _request(hx, world, method, path, role, name="priv", prepare=False)
            missing = _request(hx, world, method, path, role, name=unique("nope"),
                               prepare=False)
            if priv != missing or 200 <= priv < 300:
                leaks.append(f"{role} {method} {path}: private {priv}, missing {missing}")
            if method in ("GET", "HEAD") and "xet" not in path and priv != 404:
                leaks.append(f"{role} {method} {path}: private gives {priv}, not 404")
    assert not leaks, "\n".join(leaks)
    for role in ("read", "write", "admin"):
        for path in ("/api/v1/adapters/{ns}/{name}", "/api/v1/adapters/{ns}/{name}/versions/"
                     "{version}/files/{path}", "/api/models/{ns}/{name}",
                     "/{ns}/{name}/resolve/{rev}/{path}"):
            assert _request(hx, world, "GET", path, role, name="priv", prepare=False) == 200


def test_search_and_listings_hide_private_adapters(hx: Harness, world):
    own = world["own"]
    for role in ROLES:
        h = hx.headers(world["tokens"][role])
        names = {a["name"] for a in hx.client.get(f"{API}/adapters", params={
            "namespace": own, "limit": 200}, headers=h).json()["items"]}
        hf = {m["id"] for m in hx.client.get("/api/models", params={"author": own},
                                             headers=h).json()}
        text = {a["name"] for a in hx.client.get(f"{API}/adapters", params={
            "q": "priv", "limit": 200}, headers=h).json()["items"]}
        sees = role in ("read", "write", "admin")
        assert ("priv" in names) is sees and (f"{own}/priv" in hf) is sees, (role, names, hf)
        assert ("priv" in text) is sees
        assert "pub" in names


# -- lineage never names what the caller may not see --------------------------------------------
SECRET_SHA = "5ec12e7" + "0" * 57  # the private parent's weights hash, as lineage records it
PUBLIC_SHA = "9ab1c" + "1" * 59


def _with_lineage(w: dict, *parents: dict) -> dict[str, bytes]:
    sidecar = {"lineage": {"method": "fuse:linear", "parents": list(parents), "params": {}}}
    files = {k: v for k, v in w["good"].items() if k != "README.md"}  # the card is generated
    return {**files, "lorahive.json": json.dumps(sidecar).encode()}


def _parent(ref: str | None, sha: str, weight: float) -> dict:
    version = ref.rsplit("@", 1)[1] if ref and "@" in ref else None
    return {"ref": ref, "version": version, "sha256": sha, "weight": weight}


@pytest.fixture(scope="module")
def lineage(hx: Harness, world):
    """``own/child`` (explicitly public) made from the private ``own/priv@1``, the public
    ``own/pub@1`` and a local directory; ``own/kid`` the same without a privacy choice."""
    own, tok = world["own"], world["tokens"]["write"]
    files = _with_lineage(world, _parent(f"{own}/priv@1", SECRET_SHA, 0.5),
                          _parent(f"{own}/pub@1", PUBLIC_SHA, 0.3),
                          _parent("/data/adapters/local-one", "c" * 64, 0.2))
    for name, private in (("child", False), ("kid", None)):
        entries = [{"path": k, "sha256": hashlib.sha256(b).hexdigest(), "size": len(b)}
                   for k, b in files.items()]
        for b in files.values():
            hx.put_blob(b, tok)
        body = {"files": entries} if private is None else {"files": entries, "private": private}
        r = hx.client.post(f"{API}/adapters/{own}/{name}/versions", headers=hx.headers(tok),
                           json=body)
        assert r.status_code == 201, r.text
    # ``own/carded``: the same, public, with the card a composition writes (it names every
    # parent with its sha256)
    side = json.loads(files["lorahive.json"])
    card = render_card(f"{own}/carded", "base", lineage=side["lineage"]).encode()
    assert SECRET_SHA.encode() in card and f"{own}/priv@1".encode() in card
    carded = {**files, "README.md": card}
    for b in carded.values():
        hx.put_blob(b, tok)
    r = hx.client.post(f"{API}/adapters/{own}/carded/versions", headers=hx.headers(tok), json={
        "private": False, "files": [{"path": k, "sha256": hashlib.sha256(b).hexdigest(),
                                     "size": len(b)} for k, b in carded.items()]})
    assert r.status_code == 201, r.text
    return {"own": own}


def test_a_supplied_card_never_names_a_private_parent(hx: Harness, world, lineage):
    own = lineage["own"]
    for role in ROLES:
        h = hx.headers(world["tokens"][role])
        for url in (f"/{own}/carded/resolve/main/README.md",
                    f"{API}/adapters/{own}/carded/versions/1/files/README.md"):
            r = hx.client.get(url, headers=h)
            assert r.status_code == 200, (role, url, r.status_code)
            assert not _sees_secret(r.text, own), (role, url)
            assert f"{own}/pub@1" in r.text and "a private adapter" in r.text


def _sees_secret(text: str, own: str) -> bool:
    return f"{own}/priv" in text or SECRET_SHA in text


# role -> does the caller see the private parent's name? (the owner's tokens and the admin)
SEES_PARENT = {"anon": False, "read": True, "other": False, "write": True, "admin": True}


def test_lineage_hides_private_parents_by_role(hx: Harness, world, lineage):
    own = lineage["own"]
    bad = []
    for role in ROLES:
        h = hx.headers(world["tokens"][role])
        for url in (f"{API}/adapters/{own}/child/versions/1", f"{API}/adapters/{own}/child/versions",
                    f"{API}/adapters/{own}/child/aliases/latest"):
            r = hx.client.get(url, headers=h)
            assert r.status_code == 200, (role, url, r.status_code)
            data = r.json()
            v = data[0] if isinstance(data, list) else data
            parents = v["lineage"]["parents"]
            if _sees_secret(r.text, own) != SEES_PARENT[role]:
                bad.append(f"{role} GET {url}: parent named={_sees_secret(r.text, own)}")
            if not SEES_PARENT[role]:
                hidden = parents[0]
                if hidden != {"ref": "private", "version": None, "sha256": None,
                              "weight": 0.5}:
                    bad.append(f"{role} GET {url}: hidden parent shown as {hidden}")
            assert parents[1]["ref"] == f"{own}/pub@1" and parents[1]["sha256"] == PUBLIC_SHA
            assert parents[2]["ref"] == "/data/adapters/local-one"
        # files anyone with access downloads name no private parent, whoever asks
        for url in (f"/{own}/child/resolve/main/README.md",
                    f"/{own}/child/resolve/main/lorahive.json",
                    f"{API}/adapters/{own}/child/versions/1/files/README.md",
                    f"{API}/adapters/{own}/child/versions/1/files/lorahive.json",
                    f"/api/models/{own}/child", f"/api/models/{own}/child/revision/main"):
            r = hx.client.get(url, headers=h)
            assert r.status_code == 200, (role, url, r.status_code)
            if _sees_secret(r.text, own):
                bad.append(f"{role} GET {url}: names the private parent")
            if "resolve" in url or "/files/" in url:
                assert f"{own}/pub@1" in r.text, (role, url)  # public parents stay named
    assert not bad, "\n".join(bad)
    card = hx.client.get(f"/api/models/{own}/child").json()["cardData"]
    assert card["lorahive_lineage"]["parents"][0]["ref"] == "private"


def test_a_child_of_a_private_parent_is_private_unless_made_public(hx: Harness, world, lineage):
    own = lineage["own"]
    for role in ROLES:
        h = hx.headers(world["tokens"][role])
        kid = hx.client.get(f"{API}/adapters/{own}/kid", headers=h)
        child = hx.client.get(f"{API}/adapters/{own}/child", headers=h)
        assert child.status_code == 200 and child.json()["private"] is False
        assert kid.status_code == (200 if SEES_PARENT[role] else 404), (role, kid.status_code)
        if kid.status_code == 200:
            assert kid.json()["private"] is True
    # only public or local parents: public as before; an unknown registry parent counts as
    # private (it is not visible here, so nothing says it may be shown)
    tok = world["tokens"]["write"]
    for name, parents, private in (
            ("pubkid", [_parent(f"{own}/pub@1", PUBLIC_SHA, 1.0),
                        _parent("/data/x", "d" * 64, 1.0)], False),
            ("ghostkid", [_parent("nobody/ghost@3", "e" * 64, 1.0)], True)):
        status, body = hx.commit(f"{own}/{name}", _with_lineage(world, *parents), tok)
        assert status == 201, body
        a = hx.client.get(f"{API}/adapters/{own}/{name}", headers=hx.headers(tok)).json()
        assert a["private"] is private, name
    # another user who names our private adapter as a parent cannot learn it exists: the
    # child is private, exactly as for a parent that does not exist
    other = world["tokens"]["other"]
    oth = world["oth"]
    for name, ref in (("probe1", f"{own}/priv@1"), ("probe2", f"{own}/nothing@1")):
        status, body = hx.commit(f"{oth}/{name}", _with_lineage(
            world, _parent(ref, "f" * 64, 1.0)), other)
        assert status == 201, body
        r = hx.client.get(f"{API}/adapters/{oth}/{name}/versions/1", headers=hx.headers(other))
        assert r.json()["lineage"]["parents"][0]["ref"] == "private"
        assert hx.client.get(f"{API}/adapters/{oth}/{name}").status_code == 404


def test_tokens_are_random_stored_hashed_and_looked_up_by_digest(hx: Harness, world):
    """Only the sha256 of a token is stored, and only that digest reaches SQL. The lookup
    is an indexed equality, not a constant-time comparison, and nothing claims otherwise:
    its timing could only tell how much of a guess's *digest* matches a stored one, which
    brings no guess nearer to a 256-bit secret (see registry/auth.py)."""
    from sqlalchemy import event

    from lorahive.registry.tables import Token

    secrets_ = [hx.client.post(f"{API}/tokens", headers=hx.headers(hx.admin),
                               json={"name": f"r{i}", "scope": "read"}).json()["token"]
                for i in range(32)]
    assert len(set(secrets_)) == 32
    for s in secrets_:
        assert s.startswith("lh_") and len(s) >= 43  # 32 random bytes, urlsafe
    # no two tokens share a long prefix: the randomness is in every position
    assert len({s[3:9] for s in secrets_}) == 32
    with Session(hx.service.engine) as db:
        stored = {t.token_hash: t for t in db.exec(select(Token)).all()}
        rows = [json.dumps(t.model_dump(), default=str) for t in stored.values()]
    for s in secrets_:
        assert hashlib.sha256(s.encode()).hexdigest() in stored
        assert not any(s in r or s[3:] in r for r in rows)  # the secret itself is nowhere
    sent: list[str] = []

    def capture(conn, cursor, statement, params, context, executemany):
        sent.append(f"{statement} {params}")

    event.listen(hx.service.engine, "before_cursor_execute", capture)
    try:
        assert hx.client.get(f"{API}/whoami", headers=hx.headers(secrets_[0])).status_code == 200
        assert hx.client.get(f"{API}/whoami", headers=hx.headers("lh_wrong")).status_code == 401
    finally:
        event.remove(hx.service.engine, "before_cursor_execute", capture)
    digest = hashlib.sha256(secrets_[0].encode()).hexdigest()
    assert any(digest in q and "token_hash" in q for q in sent)
    assert not any(secrets_[0] in q or "lh_wrong" in q for q in sent)
    root = Path(__file__).resolve().parents[1]
    for doc in ("docs/registry.md", "docs/reliability.md", "registry/auth.py"):
        text = (root / doc).read_text().lower()
        assert not re.search(r"compared[\s_]+in[\s_]+constant[\s_-]+time", text), doc


def test_metrics_need_an_admin_or_the_scrape_token(tmp_path):
    gen = open_harness(tmp_path / "m", metrics_token="scrape-" + "s" * 40)
    h = next(gen)
    try:
        assert h.client.get("/metrics").status_code == 401
        assert h.client.get("/metrics", headers=h.headers("scrape-wrong")).status_code == 401
        reader = h.user_token("reader", "read")
        assert h.client.get("/metrics", headers=h.headers(reader)).status_code == 403
        for tok in ("scrape-" + "s" * 40, h.admin):
            r = h.client.get("/metrics", headers=h.headers(tok))
            assert r.status_code == 200 and "lorahive_adapters " in r.text
        assert h.client.get("/healthz").json() == {"status": "ok"}
    finally:
        gen.close()


def test_failed_auth_is_rate_limited_with_retry_after(tmp_path, world):
    """A client sending bad tokens gets 429 + Retry-After once over the limit (even with a
    good token, until the window passes); other clients are unaffected."""
    from lorahive.registry.ratelimit import FailedAuthLimiter

    gen = open_harness(tmp_path / "rl")
    h = next(gen)
    try:
        limiter: FailedAuthLimiter = h.client.app.state.auth_limiter
        limiter.limit, limiter.window = 5, 2.0
        statuses = [h.client.get(f"{API}/whoami", headers=h.headers(f"lh_guess{i}")).status_code
                    for i in range(7)]
        assert statuses == [401] * 5 + [429] * 2
        r = h.client.get(f"{API}/whoami", headers=h.headers(h.admin))
        assert r.status_code == 429 and 1 <= int(r.headers["Retry-After"]) <= 2
        assert r.json()["error"]["code"] == "rate_limited"
        hf = h.client.get("/api/whoami-v2", headers=h.headers("lh_guess"))
        assert hf.status_code == 429  # HF routes are behind the same limiter
        # another client (another peer address) on the same app is not affected
        from fastapi.testclient import TestClient

        other = TestClient(h.client.app, client=("10.20.30.40", 5000))  # no second lifespan
        assert other.get(f"{API}/whoami", headers=h.headers(h.admin)).status_code == 200
        assert other.get(f"{API}/whoami", headers=h.headers("lh_x")).status_code == 401
        assert limiter.retry_after("10.20.30.40") is None and limiter.retry_after("testclient")
        time.sleep(2.1)
        assert h.client.get(f"{API}/whoami", headers=h.headers(h.admin)).status_code == 200
        for _ in range(10):
            assert h.client.post(f"{API}/gc").status_code == 401
        assert h.client.get(f"{API}/whoami", headers=h.headers(h.admin)).status_code == 200
    finally:
        gen.close()
