"""The pages: thin handlers that ask ``RegistryService`` (as the visitor) and render a template.

URLs follow the Hub's: ``/`` searches, ``/{namespace}/{name}`` is an adapter (``?version=`` or
``?alias=`` picks one), with ``/files``, ``/lineage`` and ``/spectra`` beside it. Pages that
are not an adapter live under ``/-/`` (no namespace can be called ``-``). Errors the service
raises become HTML pages with the same status the REST API gives, so a private adapter is the
same 404 as a missing one.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import jinja2
from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from lorahive.hub.errors import (
    AuthenticationError,
    LorahiveError,
    NotFoundError,
    PayloadTooLargeError,
)
from lorahive.hub.protocol import VersionInfo
from lorahive.hub.refs import Ref, parse_ref
from lorahive.registry.auth import SCOPES
from lorahive.registry.card import redact_parents
from lorahive.registry.routes import files as file_routes
from lorahive.registry.routes.adapters import _ref
from lorahive.registry.service import LineageEdge, RegistryService
from lorahive.registry.web import cards, plots, spectra
from lorahive.registry.web.graph import lineage_svg
from lorahive.registry.web.session import (
    CSRF_COOKIE,
    Visitor,
    check_csrf,
    clear_session,
    login_csrf,
    read_form,
    secure_headers,
    set_login_csrf,
    set_session,
    visitor,
)
from lorahive.registry.web.snippets import snippets

HERE = Path(__file__).resolve().parent
PER_PAGE = 20
MAX_PAGE = 50_000
CARD_BYTES = 256 * 1024
RESERVED = {"api"}  # first path segments that belong to the APIs (JSON errors there)
SORTS = {"updated": "Recently updated", "downloads": "Most downloads", "name": "Name"}
STATIC_TYPES = {".css": "text/css; charset=utf-8", ".svg": "image/svg+xml",
                ".txt": "text/plain; charset=utf-8"}
STATIC = {p.name: p for p in (HERE / "static").iterdir() if p.suffix in STATIC_TYPES}

templates = jinja2.Environment(
    loader=jinja2.FileSystemLoader(HERE / "templates"),
    autoescape=jinja2.select_autoescape(["html"], default_for_string=True),
    trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined, auto_reload=False,
)


def _human_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    v = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if v < 1024 or unit == "TB":
            return f"{v:.0f} {unit}" if unit == "B" else f"{v:.1f} {unit}"
        v /= 1024
    return str(n)


templates.filters["bytes"] = _human_bytes
templates.filters["brief"] = cards.brief
templates.filters["num"] = lambda v: plots.fmt(v) if isinstance(v, int | float) and not isinstance(v, bool) else cards.brief(v)
templates.filters["dt"] = lambda t: t.strftime("%Y-%m-%d %H:%M") if t else "-"
templates.filters["q"] = lambda s: quote(str(s), safe="")
templates.globals["zip"] = zip


class PageRoute(APIRoute):
    """Answers errors as HTML pages and puts the security headers on every response."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        inner = super().get_route_handler()

        async def handler(request: Request) -> Response:
            try:
                response = await inner(request)
            except LorahiveError as e:
                response = await run_in_threadpool(error_page, request, e.status, e.message,
                                                   e.code)
            except RequestValidationError as e:
                errs = e.errors()
                where = ".".join(str(x) for x in errs[0].get("loc", ())) if errs else ""
                response = error_page(request, 400, f"invalid {where or 'request'}",
                                      "invalid_request")
            v: Visitor = getattr(request.state, "visitor", Visitor())
            return secure_headers(response, v.signed_in)

        return handler


router = APIRouter(route_class=PageRoute, include_in_schema=False)


async def page_visitor(request: Request) -> Visitor:
    v = await visitor(request)
    request.state.visitor = v
    return v


Page = Depends(page_visitor)


def svc_of(request: Request) -> RegistryService:
    return request.app.state.service


def render(request: Request, template: str, status_code: int = 200, **ctx: Any) -> HTMLResponse:
    v: Visitor = getattr(request.state, "visitor", Visitor())
    html = templates.get_template(template).render(
        v=v, me=v.principal, csrf=v.csrf or "", path=request.url.path,
        here=str(request.url.path) + (f"?{request.url.query}" if request.url.query else ""),
        **ctx)
    return HTMLResponse(html, status_code=status_code)


TITLES = {400: "Bad request", 401: "Sign-in needed", 403: "Not allowed", 404: "Not found",
          413: "Too large", 429: "Too many attempts"}


def error_page(request: Request, status: int, message: str, code: str = "") -> HTMLResponse:
    return render(request, "error.html", status, title=TITLES.get(status, "Error"),
                  status=status, message=message, code=code)


def _check_ns(ns: str) -> None:
    if ns in RESERVED:
        raise StarletteHTTPException(404, "Not Found")  # the APIs' own JSON 404
    if ns == "-":
        raise NotFoundError("there is no such page")


def _version_ref(ns: str, name: str, version: str | None, alias: str | None) -> Ref:
    _check_ns(ns)
    if version:
        return _ref(ns, name, version=version)
    if alias:
        return _ref(ns, name, alias=alias)
    return _ref(ns, name)


def _safe_next(target: str | None) -> str:
    """Only a path on this site may be a redirect target: no scheme, no ``//host``, and no
    backslash, whitespace or control character (browsers drop tabs and newlines and read
    a backslash as ``/``, which would turn "/<tab>/evil.example" into "//evil.example")."""
    if (not target or not target.startswith("/") or target.startswith("//")
            or any(c == "\\" or c.isspace() or ord(c) < 32 or ord(c) == 127 for c in target)):
        return "/"
    return target


def _url(path: str, **params: Any) -> str:
    pairs = [(k, x) for k, v in params.items() if v not in (None, "", [])
             for x in (v if isinstance(v, list) else [v])]
    return path + ("?" + urlencode(pairs) if pairs else "")


# -------------------------------------------------------------------------- static and search
@router.get("/-/static/{name}")
def static(name: str) -> Response:
    path = STATIC.get(name)
    if path is None:
        raise StarletteHTTPException(404, "Not Found")
    return Response(path.read_bytes(), media_type=STATIC_TYPES[path.suffix],
                    headers={"Cache-Control": "public, max-age=3600"})


@router.get("/")
def search_page(
    request: Request, v: Visitor = Page, q: str = "", task: str = "", base_model: str = "",
    tag: list[str] = Query([]), namespace: str = "", sort: str = "updated",
    page: int = Query(1, ge=1, le=MAX_PAGE),
) -> HTMLResponse:
    svc = svc_of(request)
    sort = sort if sort in SORTS else "updated"
    tags = list(dict.fromkeys(t for t in tag if t))[:10]
    result = svc.search(v.principal, q or None, task=task or None, base_model=base_model or None,
                        tags=tags, namespace=namespace or None, sort=sort,
                        offset=(page - 1) * PER_PAGE, limit=PER_PAGE)
    facets = _facets(svc, v)
    pages = max(1, math.ceil(result.total / PER_PAGE))
    state = dict(q=q, task=task, base_model=base_model, tag=tags, namespace=namespace, sort=sort)

    def link(**change: Any) -> str:
        return _url("/", **{**state, "page": None, **change})

    return render(request, "search.html", result=result, facets=facets, page=page, pages=pages,
                  state=state, link=link, sorts=SORTS, per_page=PER_PAGE)


FACETS_TTL = 30.0
_FACETS: dict[tuple[Any, ...], tuple[float, dict[str, list[tuple[str, int]]]]] = {}


def _facets(svc: RegistryService, v: Visitor) -> dict[str, list[tuple[str, int]]]:
    """The filters' choices and counts, kept ``FACETS_TTL`` seconds per kind of visitor (they
    group every visible adapter; the results themselves are always read fresh)."""
    p = v.principal
    key = (p.user_id, p.is_admin, p.scope, p.namespaces)
    now = time.monotonic()
    hit = _FACETS.get(key)
    if hit is not None and now - hit[0] < FACETS_TTL:
        return hit[1]
    facets = svc.facets(p)
    if len(_FACETS) > 1024:
        _FACETS.clear()
    _FACETS[key] = (now, facets)
    return facets


# -------------------------------------------------------------------------- accounts
@router.get("/-/signin")
def signin_page(request: Request, v: Visitor = Page, next: str = "/-/account") -> HTMLResponse:
    token = login_csrf(request)
    response = render(request, "signin.html", next=_safe_next(next), error=None,
                      form_csrf=token)
    set_login_csrf(response, request, token)
    return response


@router.post("/-/signin")
async def signin(request: Request, v: Visitor = Page) -> Response:
    form = await read_form(request)
    check_csrf(request, request.cookies.get(CSRF_COOKIE), form)
    target = _safe_next(form.get("next"))
    limiter = request.app.state.auth_limiter
    key = request.client.host if request.client else "unknown"
    wait = limiter.retry_after(key)
    if wait is not None:
        return error_page(request, 429, f"too many failed sign-ins; retry in {wait} s")
    svc = svc_of(request)
    try:
        sid, _, _ = await run_in_threadpool(svc.start_web_session, form.get("token", "").strip())
    except AuthenticationError as e:
        limiter.failed(key)
        msg = e.message
        if msg.startswith("unknown token"):  # the CLI's hint names its own settings
            msg = "unknown token: paste the whole token, as `lorahive token create` printed it"
        return render(request, "signin.html", 401, next=target, error=msg,
                      form_csrf=form.get("csrf", ""))
    response = RedirectResponse(target, status_code=303)
    set_session(response, request, sid, int(svc.settings.web_session_hours * 3600))
    return response


@router.post("/-/signout")
async def signout(request: Request, v: Visitor = Page) -> Response:
    form = await read_form(request)
    if v.sid is not None:
        check_csrf(request, v.csrf, form)
        await run_in_threadpool(svc_of(request).end_web_session, v.sid)
    response = RedirectResponse("/", status_code=303)
    clear_session(response, request)
    request.state.visitor = Visitor()
    return response


def _account(request: Request, v: Visitor, status: int = 200, **extra: Any) -> HTMLResponse:
    svc = svc_of(request)
    owned = svc.owned_namespaces(v.principal)
    mine = {ns: svc.search(v.principal, namespace=ns, limit=10) for ns in owned[:20]}
    return render(request, "account.html", status, who=svc.whoami(v.principal), owned=owned,
                  mine=mine, tokens=svc.list_tokens(v.principal), scopes=SCOPES,
                  **{"new_token": None, "error": None, **extra})


@router.get("/-/account", response_model=None)
def account_page(request: Request, v: Visitor = Page) -> Response:
    if not v.signed_in:
        return RedirectResponse("/-/signin?next=/-/account", status_code=303)
    return _account(request, v)


@router.post("/-/tokens", response_model=None)
async def create_token(request: Request, v: Visitor = Page) -> Response:
    form = await read_form(request)
    if not v.signed_in:
        return RedirectResponse("/-/signin?next=/-/account", status_code=303)
    check_csrf(request, v.csrf, form)
    namespaces = [n for n in form.get("namespaces", "").replace(",", " ").split() if n]
    days_text = form.get("expires_in_days", "").strip()
    svc = svc_of(request)
    try:
        days = float(days_text) if days_text else None
    except ValueError:
        return await run_in_threadpool(lambda: _account(
            request, v, 400, error="expiry must be a number of days"))
    try:
        new = await run_in_threadpool(svc.create_token, v.principal, form.get("name", "").strip(),
                                      form.get("scope", "read"), namespaces, None, days)
    except LorahiveError as e:
        status, error = e.status, e.message
        return await run_in_threadpool(lambda: _account(request, v, status, error=error))
    return await run_in_threadpool(lambda: _account(request, v, 201, new_token=new))


@router.post("/-/tokens/{token_id}/revoke", response_model=None)
async def revoke_token(token_id: int, request: Request, v: Visitor = Page) -> Response:
    form = await read_form(request)
    if not v.signed_in:
        return RedirectResponse("/-/signin?next=/-/account", status_code=303)
    check_csrf(request, v.csrf, form)
    await run_in_threadpool(svc_of(request).revoke_token, v.principal, token_id)
    return RedirectResponse("/-/account", status_code=303)


# -------------------------------------------------------------------------- compare
@router.get("/-/compare")
def compare_page(request: Request, v: Visitor = Page, a: str = "", b: str = "") -> HTMLResponse:
    if not a or not b:
        return render(request, "compare.html", a=a, b=b, pair=None)
    svc = svc_of(request)
    ra, rb = parse_ref(a.strip()), parse_ref(b.strip())
    ia, ib = svc.resolve(v.principal, ra), svc.resolve(v.principal, rb)
    overlap: dict[str, tuple[float, float]] | None = None
    overlap_error = None
    try:
        overlap = _overlap(svc, v, ia, ib)
    except PayloadTooLargeError as e:
        overlap_error = e.message
    norms = {s["name"]: s for s in ia.stats}
    norms_b = {s["name"]: s for s in ib.stats}
    modules = sorted(set(norms) | set(norms_b), key=_module_key)
    chart = plots.line_chart(
        [plots.Series(f"A {ia.ref}", spectra.layer_norms(ia.stats)),
         plots.Series(f"B {ib.ref}", spectra.layer_norms(ib.stats), dashed=True)],
        "layer", "norm of the layer's deltas", title="per-layer norms", width=560)
    mean = None
    if overlap:
        mean = (sum(o for o, _ in overlap.values()) / len(overlap),
                sum(i for _, i in overlap.values()) / len(overlap))
    metric_keys = sorted(set(ia.metrics) | set(ib.metrics))
    return render(request, "compare.html", a=a, b=b, pair=(ia, ib), rows=_config_rows,
                  overlap=overlap, overlap_error=overlap_error, mean=mean, modules=modules,
                  norms=norms, norms_b=norms_b, chart=chart, metric_keys=metric_keys)


_OVERLAPS: dict[tuple[str, str], dict[str, tuple[float, float]]] = {}


def _overlap(svc: RegistryService, v: Visitor, ia: VersionInfo, ib: VersionInfo
             ) -> dict[str, tuple[float, float]]:
    """Cached by the two weights' sha256 (versions are immutable); visibility was checked by
    resolving both for this visitor."""
    key = (ia.sha256, ib.sha256)
    hit = _OVERLAPS.get(key)
    if hit is None:
        hit = svc.subspace_overlap(v.principal, Ref(ia.namespace, ia.name, version=ia.version),
                                   Ref(ib.namespace, ib.name, version=ib.version))
        if len(_OVERLAPS) > 256:
            _OVERLAPS.clear()
        _OVERLAPS[key] = hit
    return hit


def _module_key(name: str) -> tuple[str, int, str]:
    layer, kind = spectra.module_parts(name)
    return (kind, -1 if layer is None else layer, name)


def _config_rows(info: VersionInfo) -> list[tuple[str, Any]]:
    s = info.summary
    rank, alpha = s.get("rank"), s.get("lora_alpha")
    scale = None
    if isinstance(rank, int) and rank > 0 and isinstance(alpha, int | float):
        scale = alpha / math.sqrt(rank) if s.get("use_rslora") else alpha / rank
    return [
        ("PEFT type", info.peft_type), ("base model", info.base_model),
        ("task type", s.get("task_type")),
        ("rank", rank if s.get("min_rank") in (None, rank) else f"{s.get('min_rank')}–{rank}"),
        ("alpha", alpha), ("scale", scale), ("rsLoRA", s.get("use_rslora")),
        ("DoRA", s.get("use_dora")), ("targets", ", ".join(info.target_modules) or None),
        ("modules", s.get("num_modules")), ("parameters", info.num_parameters),
        ("size", _human_bytes(info.size)),
    ]


# -------------------------------------------------------------------------- adapter pages
def _adapter_ctx(request: Request, v: Visitor, ns: str, name: str, version: str | None,
                 alias: str | None, tab: str, card: bool = False) -> dict[str, Any]:
    ref = _version_ref(ns, name, version, alias)
    view = svc_of(request).adapter_view(v.principal, ref, "README.md" if card else None,
                                        CARD_BYTES)
    pinned = {"version": version} if version else ({"alias": alias} if alias else {})
    base = f"/{ns}/{name}"
    return dict(adapter=view.adapter, info=view.version, tab=tab, base=base, pinned=pinned,
                tab_url=lambda t: _url(base + ("" if t == "card" else f"/{t}"), **pinned),
                version_url=lambda ver: _url(base + ("" if tab == "card" else f"/{tab}"),
                                             version=ver),
                versions=view.versions, config=_config_rows(view.version), card_bytes=view.file)


@router.get("/{ns}/{name}")
def adapter_page(ns: str, name: str, request: Request, v: Visitor = Page,
                 version: str | None = None, alias: str | None = None) -> HTMLResponse:
    ctx = _adapter_ctx(request, v, ns, name, version, alias, "card", card=True)
    svc = svc_of(request)
    info: VersionInfo = ctx["info"]
    parents = svc.lineage_parents(info)
    raw = ctx.pop("card_bytes")
    card = None
    if raw is not None:
        card = cards.render_card(_redact(raw.decode("utf-8", "replace"), info, parents))
    server = str(request.base_url)
    return render(request, "adapter.html", **ctx, card=card, parents=parents,
                  front=_front_rows(card.front if card else {}),
                  snippets=snippets(server, info, ctx["adapter"].private),
                  metrics=sorted(info.metrics.items()))


def _redact(text: str, info: VersionInfo, parents: list[LineageEdge]) -> str:
    """The card as this visitor may read it: parents hidden from them are not named."""
    raw = (info.lineage or {}).get("parents") or []
    return redact_parents(text, [p for edge, p in zip(parents, raw, strict=False)
                                 if edge.hidden])


def _front_rows(front: dict[str, Any]) -> list[tuple[str, str]]:
    skip = {"lorahive_lineage", "lorahive_metrics"}  # shown (redacted) by the lineage tab
    return [(str(k), cards.brief(v)) for k, v in list(front.items())[:40] if k not in skip]


@router.get("/{ns}/{name}/files")
def files_page(ns: str, name: str, request: Request, v: Visitor = Page,
               version: str | None = None, alias: str | None = None) -> HTMLResponse:
    ctx = _adapter_ctx(request, v, ns, name, version, alias, "files")
    return render(request, "files.html", **ctx)


@router.get("/{ns}/{name}/lineage")
def lineage_page(ns: str, name: str, request: Request, v: Visitor = Page,
                 version: str | None = None, alias: str | None = None) -> HTMLResponse:
    ctx = _adapter_ctx(request, v, ns, name, version, alias, "lineage")
    svc = svc_of(request)
    info: VersionInfo = ctx["info"]
    parents = svc.lineage_parents(info)
    children = svc.lineage_children(v.principal, Ref(ns, name))
    lineage = info.lineage or {}
    params = lineage.get("params") if isinstance(lineage.get("params"), dict) else {}
    shown = [(k, cards.brief(x, 160)) for k, x in list(params.items())[:40]
             if k not in ("objective_trace",)]
    trace = params.get("objective_trace") if isinstance(params.get("objective_trace"), list) else None

    def href(e: LineageEdge) -> str | None:
        if e.namespace is None or e.name is None:
            return None
        return _url(f"/{e.namespace}/{e.name}/lineage", version=e.version)

    graph = lineage_svg((info.ref, str(lineage.get("method") or "")), parents, children, href)
    m = info.metrics
    composed = str(lineage.get("method") or "").startswith("compose")
    return render(request, "lineage.html", **ctx, parents=parents, children=children,
                  method=lineage.get("method"), params=shown, graph=graph, href=href,
                  composed=composed, metrics=m, trace_len=len(trace) if trace else 0)


@router.get("/{ns}/{name}/spectra")
def spectra_page(ns: str, name: str, request: Request, v: Visitor = Page,
                 version: str | None = None, alias: str | None = None,
                 module: str | None = None) -> HTMLResponse:
    ctx = _adapter_ctx(request, v, ns, name, version, alias, "spectra")
    info: VersionInfo = ctx["info"]
    stats = sorted(info.stats, key=lambda s: _module_key(str(s.get("name", ""))))
    chosen = spectra.pick_module(stats, module)
    norm_chart = plots.line_chart(spectra.by_kind(stats, "norm"), "layer",
                                  "‖ΔW‖ (Frobenius)", title="norm by layer", width=560)
    rank_chart = plots.line_chart(spectra.by_kind(stats, "effective_rank_90"), "layer",
                                  "effective rank (90% energy)", title="effective rank by layer",
                                  width=560)
    sv_chart = None
    if chosen is not None:
        sv_chart = plots.bar_chart([float(x) for x in chosen.get("singular_values") or []],
                                   "index", "singular value", title="singular values",
                                   width=1160)
    kinds = [s.label for s in spectra.by_kind(stats, "norm")]
    return render(request, "spectra.html", **ctx, stats=stats, chosen=chosen,
                  norm_chart=norm_chart, rank_chart=rank_chart, sv_chart=sv_chart, kinds=kinds,
                  module_url=lambda m: _url(f"/{ns}/{name}/spectra", **ctx["pinned"], module=m))


@router.get("/{ns}/{name}/download/{version}/{path:path}", response_model=None)
def download(ns: str, name: str, version: str, path: str, request: Request, v: Visitor = Page,
             range: str | None = Header(default=None),
             if_none_match: str | None = Header(default=None)) -> Response:
    """A file of a version for the signed-in browser: the REST download (Range, ETag, download
    counts) with the session's principal instead of a bearer token."""
    _check_ns(ns)
    response = file_routes.download(ns, name, version, path, request, svc_of(request),
                                    v.principal, range, if_none_match)
    response.headers["Content-Disposition"] = (
        f"attachment; filename*=UTF-8''{quote(path.rsplit('/', 1)[-1])}")
    return response
