"""The web pages over plain HTTP against a live server: security headers, session cookies,
CSRF refusals, 404 parity with the REST API, lineage redaction, downloads for a signed-in
browser, search filters and pagination."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator

import httpx
import pytest

from lorahive.registry.web.session import CSRF_COOKIE, SESSION_COOKIE
from tests.web_helpers import LiveServer, Seeded, csrf_field, seed, sign_in

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def live(tmp_path_factory, tiny_llama_dir) -> Iterator[tuple[LiveServer, Seeded]]:
    server = LiveServer(tmp_path_factory.mktemp("web-http"))
    seeded = seed(server, tiny_llama_dir, tmp_path_factory.mktemp("web-http-work"))
    yield server, seeded
    server.stop()


def test_root_is_the_search_page_with_strict_headers(live):
    server, _ = live
    with server.client() as c:
        r = c.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "admin/<strong>sentiment-en</strong>" in r.text
    csp = r.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src" not in csp  # no script source at all
    assert "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["x-frame-options"] == "DENY"
    assert "<script" not in r.text and " style=" not in r.text  # nothing the CSP would block
    css = httpx.get(server.url + "/-/static/lorahive.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")


def test_every_page_has_the_csp_and_no_inline_script_or_style(live):
    server, _ = live
    paths = ["/", "/admin/sentiment-en", "/admin/sentiment-en/files",
             "/admin/reviews-composed/lineage", "/admin/sentiment-en/spectra",
             "/-/compare?a=admin/sentiment-en@1&b=admin/sentiment-en@2", "/-/signin",
             "/admin/hostile", "/admin/missing"]
    with server.client() as c:
        for path in paths:
            r = c.get(path)
            assert r.status_code in (200, 404), (path, r.status_code)
            assert "default-src 'none'" in r.headers["content-security-policy"], path
            assert "<script" not in r.text.lower(), path
            assert not re.search(r"<[^>]+\sstyle=", r.text), path
            assert not re.search(r"<[^>]+\son[a-z]+=", r.text, re.I), path


def test_private_adapter_is_the_same_404_as_a_missing_one_and_as_the_api(live):
    server, seeded = live
    with server.client() as c:
        private = c.get("/alice/secret-project")
        missing = c.get("/alice/no-such-thing")
        api = c.get("/api/v1/adapters/alice/secret-project")
        for sub in ("/files", "/lineage", "/spectra"):
            assert c.get("/alice/secret-project" + sub).status_code == 404
        assert c.get("/alice/secret-project/download/1/adapter_config.json").status_code == 404
    assert private.status_code == missing.status_code == api.status_code == 404
    assert api.json()["error"]["code"] == "adapter_not_found"
    norm = [r.text.replace("secret-project", "X").replace("no-such-thing", "X")
            for r in (private, missing)]
    assert norm[0] == norm[1]  # nothing tells a private adapter from a missing one
    assert "not found (or private)" in private.text
    with server.client() as c:
        sign_in(c, seeded.alice_token)
        assert c.get("/alice/secret-project").status_code == 200
        assert c.get("/api/v1/adapters/alice/secret-project").status_code == 404  # no bearer


def test_session_cookie_flags_and_secure_over_https(live):
    server, seeded = live
    with server.client() as c:
        r = sign_in(c, seeded.alice_token)
    cookie = next(v for k, v in r.headers.multi_items()
                  if k == "set-cookie" and v.startswith(SESSION_COOKIE + "="))
    flags = {f.strip().split("=")[0].lower() for f in cookie.split(";")}
    assert {"httponly", "path", "max-age"} <= flags and "samesite=lax" in cookie.lower()
    assert "secure" not in flags  # plain http on loopback
    with server.client(headers={"x-forwarded-proto": "https"}) as c:  # behind a TLS proxy
        page = c.get("/-/signin")
        assert "secure" in page.headers["set-cookie"].lower()
        csrf = csrf_field(page.text)  # a Secure cookie: httpx keeps it for https URLs only
        r = c.post("/-/signin", data={"csrf": csrf, "token": seeded.alice_token},
                   headers={"cookie": f"{CSRF_COOKIE}={csrf}"})
        cookie = next(v for k, v in r.headers.multi_items()
                      if k == "set-cookie" and v.startswith(SESSION_COOKIE + "="))
        assert "; secure" in cookie.lower()
    # only a hash of the cookie's secret is stored
    sid = cookie.split(";")[0].split("=", 1)[1]
    assert server.service.web_session(sid) is not None
    with server.service.engine.connect() as conn:
        rows = conn.exec_driver_sql("SELECT session_hash FROM web_sessions").fetchall()
    assert all(sid not in r[0] for r in rows)
    assert hashlib.sha256(sid.encode()).hexdigest() in {r[0] for r in rows}


def test_csrf_refusals(live):
    server, seeded = live
    with server.client() as c:
        page = c.get("/-/signin")
        token = csrf_field(page.text)
        no_field = c.post("/-/signin", data={"token": seeded.alice_token})
        wrong = c.post("/-/signin", data={"csrf": "x" * 43, "token": seeded.alice_token})
        other_site = c.post("/-/signin", data={"csrf": token, "token": seeded.alice_token},
                            headers={"origin": "https://evil.example"})
        as_json = c.post("/-/signin", json={"csrf": token, "token": seeded.alice_token})
    with httpx.Client(base_url=server.url) as fresh:  # the form field without its cookie
        no_cookie = fresh.post("/-/signin", data={"csrf": token, "token": seeded.alice_token})
    for r in (no_field, wrong, other_site, as_json, no_cookie):
        assert r.status_code == 403, r.text
        assert SESSION_COOKIE not in r.headers.get("set-cookie", "")
    with server.client() as c:
        sign_in(c, seeded.alice_token)
        account = c.get("/-/account")
        csrf = csrf_field(account.text)
        assert c.post("/-/tokens", data={"name": "x", "scope": "read"}).status_code == 403
        assert c.post("/-/tokens", data={"name": "x", "scope": "read", "csrf": csrf},
                      headers={"origin": "http://evil.example"}).status_code == 403
        made = c.post("/-/tokens", data={"name": "from-page", "scope": "read", "csrf": csrf})
        assert made.status_code == 201 and "from-page" in made.text
        secret = re.search(r'data-testid="new-token-secret">(lh_[^<]+)<', made.text).group(1)
        assert server.service.authenticate(secret).user == "alice"
        assert c.post("/-/signout", data={}).status_code == 403  # sign-out needs it too
        assert c.get("/-/account").status_code == 200
    assert CSRF_COOKIE == "lorahive_csrf"


@pytest.mark.parametrize("target", ["//evil.example/x", "https://evil.example", "/\\evil.example",
                                    "/\t/evil.example", "javascript:alert(1)", "/%0a/x\n"])
def test_sign_in_redirects_only_within_the_site(live, target):
    server, seeded = live
    with server.client() as c:
        page = c.get("/-/signin")
        r = c.post("/-/signin", data={"csrf": csrf_field(page.text), "token": seeded.alice_token,
                                      "next": target})
    assert r.status_code == 303 and r.headers["location"] == "/"


def test_revoking_the_token_or_signing_out_ends_the_session(live):
    server, _ = live
    tok = server.admin.create_token("short-lived", scope="read", user="alice")
    with server.client() as c:
        sign_in(c, tok.token)
        assert c.get("/-/account").status_code == 200
        server.service.revoke_token(server.service.authenticate(server.token), tok.info.id)
        r = c.get("/-/account")
        assert r.status_code == 303 and r.headers["location"].startswith("/-/signin")
        assert c.get("/alice/secret-project").status_code == 404
    tok2 = server.admin.create_token("again", scope="read", user="alice")
    with server.client() as c:
        sign_in(c, tok2.token)
        sid = c.cookies[SESSION_COOKIE]
        csrf = csrf_field(c.get("/-/account").text)
        out = c.post("/-/signout", data={"csrf": csrf})
        assert out.status_code == 303
    assert server.service.web_session(sid) is None  # gone server-side, not just the cookie
    with server.client(cookies={SESSION_COOKIE: sid}) as c:
        assert c.get("/-/account").status_code == 303


def test_revoking_from_the_page(live):
    server, _ = live
    tok = server.admin.create_token("page-revoke", scope="read", user="alice")
    victim = server.admin.create_token("victim", scope="read", user="alice")
    with server.client() as c:
        sign_in(c, tok.token)
        csrf = csrf_field(c.get("/-/account").text)
        r = c.post(f"/-/tokens/{victim.info.id}/revoke", data={"csrf": csrf})
        assert r.status_code == 303
        with pytest.raises(Exception, match="revoked"):
            server.service.authenticate(victim.token)
        other = server.admin.create_token("admins-own", scope="read")
        r = c.post(f"/-/tokens/{other.info.id}/revoke", data={"csrf": csrf})
        assert r.status_code == 404  # someone else's token: the service's rule
    assert server.service.authenticate(other.token).user == "admin"


def test_lineage_never_names_a_private_parent(live):
    server, seeded = live
    with server.client() as c:
        pages = [c.get("/admin/reviews-composed/lineage"), c.get("/admin/reviews-composed")]
        for r in pages:
            assert r.status_code == 200
            assert "secret-project" not in r.text and "alice/" not in r.text
        assert "a private adapter" in pages[0].text and 'href="/admin/sentiment-en/lineage' in pages[0].text
        assert "held-out accuracy" in pages[0].text and "80.0%" in pages[0].text
        children = c.get("/admin/sentiment-en/lineage").text
        assert "admin/reviews-composed@1" in children
        sign_in(c, seeded.alice_token)
        assert "alice/secret-project" in c.get("/admin/reviews-composed/lineage").text


def test_download_links_work_for_the_signed_in_browser(live):
    server, seeded = live
    files = server.service.resolve(server.service.authenticate(seeded.alice_token),
                                   "alice/secret-project").files
    want = {f.path: f.sha256 for f in files}
    with server.client() as c:
        sign_in(c, seeded.alice_token)
        page = c.get("/alice/secret-project/files")
        links = re.findall(r'href="(/alice/secret-project/download/1/[^"]+)"', page.text)
        assert len(links) == len(want)
        for link in links:
            r = c.get(link)
            assert r.status_code == 200 and "attachment" in r.headers["content-disposition"]
            assert hashlib.sha256(r.content).hexdigest() == want[link.rsplit("/", 1)[1]]
        part = c.get(links[0], headers={"range": "bytes=0-9"})
        assert part.status_code == 206 and len(part.content) == 10


def test_search_filters_sort_and_pages(live):
    server, seeded = live
    with server.client() as c:
        assert "admin/<strong>summarise-news</strong>" in c.get("/?q=news").text
        assert "sentiment-en" not in c.get("/?q=news").text
        r = c.get("/?task=text-classification&tag=en&tag=sentiment&sort=downloads")
        assert "sentiment-en" in r.text and "summarise-news" not in r.text
        assert "secret-project" not in c.get("/").text
        assert "secret-project" not in c.get("/?namespace=alice").text
        assert '<option value="alice"' not in c.get("/").text  # facets leak nothing
        first = c.get("/?sort=name&page=1")
        assert f"1–{seeded.public} of {seeded.public}" in first.text
        assert c.get("/?page=0").status_code == 400
        assert c.get("/?page=2").status_code == 200
        sign_in(c, seeded.alice_token)
        assert "secret-project" in c.get("/?namespace=alice").text


def test_adapter_page_shows_versions_config_files_and_card(live):
    server, _ = live
    with server.client() as c:
        page = c.get("/admin/sentiment-en")
        one = c.get("/admin/sentiment-en?version=1")
        prod = c.get("/admin/sentiment-en?alias=prod")
        files = c.get("/admin/sentiment-en/files?version=2")
    assert "Sentiment of English product reviews" in page.text
    assert "<table>" in page.text and "macro F1" in page.text  # the card's table, rendered
    assert re.search(r'data-testid="shown-version">2<', page.text)
    assert re.search(r'data-testid="shown-version">1<', one.text)
    assert re.search(r'data-testid="shown-version">1<', prod.text)
    for key in ("rank", "alpha", "rsLoRA", "DoRA", "targets"):
        assert f"<th>{key}</th>" in page.text
    assert "k_proj, o_proj, q_proj, v_proj" in page.text and "q_proj, v_proj" in one.text
    info = server.admin.resolve("admin/sentiment-en@2")
    for f in info.files:
        assert f.sha256 in files.text and f.path in files.text
    assert "compare with 1" in files.text


def test_compare_and_spectra(live):
    server, _ = live
    with server.client() as c:
        same = c.get("/-/compare?a=admin/sentiment-en@2&b=admin/sentiment-en:latest")
        diff = c.get("/-/compare?a=admin/sentiment-en@1&b=admin/sentiment-en@2")
        spectra = c.get("/admin/sentiment-en/spectra?module=model.layers.1.self_attn.v_proj")
        bad = c.get("/-/compare?a=nope&b=admin/x")
        hidden = c.get("/-/compare?a=alice/secret-project@1&b=admin/sentiment-en@1")
    assert same.status_code == diff.status_code == spectra.status_code == 200
    assert "output space <strong>1.000</strong>, input space <strong>1.000</strong>" in same.text
    m = re.search(r"output space <strong>([0-9.]+)</strong>", diff.text)
    assert m and 0.0 < float(m.group(1)) < 0.9
    assert "<svg" in spectra.text and "model.layers.1.self_attn.v_proj" in spectra.text
    assert bad.status_code == 400 and hidden.status_code == 404


def test_overlap_is_bounded_by_settings(tmp_path, lora_dir):
    server = LiveServer(tmp_path / "small", web_overlap_max_bytes=10)
    try:
        server.admin.publish(lora_dir, "admin/a")
        with server.client() as c:
            r = c.get("/-/compare?a=admin/a@1&b=admin/a@1")
        assert r.status_code == 200 and "web_overlap_max_bytes" in r.text
    finally:
        server.stop()


def test_api_paths_keep_json_errors(live):
    server, _ = live
    with server.client() as c:
        r = c.get("/api/nothing-here")
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
        assert c.get("/healthz").json() == {"status": "ok"}
        assert c.get("/-/static/..%2fapp.py").status_code == 404
        assert c.get("/-/static/../app.py").status_code == 404  # the client makes it /-/app.py
        assert c.get("/-/nowhere").status_code == 404


@pytest.mark.slow
def test_lorahive_serve_shows_the_page_and_sessions_work_across_workers(tmp_path):
    """The real ``lorahive serve`` with two worker processes: ``/`` is the page, and a session
    made by one worker is honoured by the other (sessions live in the database)."""
    from tests.registry_helpers import start_server

    server = start_server(tmp_path / "serve", workers=2)
    try:
        root = httpx.get(server.url + "/")
        assert root.status_code == 200 and "<title>Adapters · lorahive</title>" in root.text
        with httpx.Client(base_url=server.url) as c:
            sign_in(c, server.admin_token)
            cookie = f"{SESSION_COOKIE}={c.cookies[SESSION_COOKIE]}"
        for _ in range(24):  # a new connection each time: the kernel spreads them over workers
            r = httpx.get(server.url + "/-/account", headers={"cookie": cookie,
                                                              "connection": "close"})
            assert r.status_code == 200 and "Signed in with a <strong>admin</strong>" in r.text
    finally:
        server.stop()
