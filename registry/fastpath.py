"""The polled metadata reads answered before FastAPI's router.

A fleet of inference servers polls ``GET /api/v1/adapters/<ns>/<name>/aliases/<alias>``
(and ``.../versions/<v>``) to follow a moving alias, and catalogues page through
``GET /api/v1/adapters?...``. For those routes, FastAPI's routing, parameter parsing,
dependency solving and thread hop cost several times what the service's prebuilt queries do,
so this plain ASGI layer matches them itself and answers a successful read with the same
service call and the same response (:func:`registry.http.revalidated`). Anything else,
including every error and any query it does not read exactly as the route would, goes on to
the app unchanged, which answers it as the route does: one owner for errors, authentication
failures (the limiter counts them) and validation.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl

import anyio.to_thread
from starlette.types import ASGIApp, Receive, Scope, Send

from lorahive.registry.auth import ANONYMOUS, Principal
from lorahive.registry.deps import bearer_secret
from lorahive.registry.http import revalidated
from lorahive.registry.routes.adapters import _ref


class MetadataFastPath:
    """Answers the resolve reads directly (see the module's docstring); sets
    ``scope["route"]`` to the FastAPI route it stands for, so metrics label it the same."""

    def __init__(self, app: ASGIApp, prefix: str):
        self.app = app
        self.read = re.compile(re.escape(prefix)
                               + r"/adapters/([^/]+)/([^/]+)/(aliases|versions)/([^/]+)")
        self.search = prefix + "/adapters"
        self.routes: dict[str, Any] | None = None  # found on the first request

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "GET":
            await self.app(scope, receive, send)
            return
        if scope["path"] == self.search:
            kind = "search"
            args = search_args(scope["query_string"])
            if args is None:
                await self.app(scope, receive, send)
                return
        else:
            m = self.read.fullmatch(scope["path"])
            if m is None:
                await self.app(scope, receive, send)
                return
            ns, name, kind, key = m.groups()
        auth = if_none_match = None
        for k, v in scope["headers"]:
            if k == b"authorization":
                auth = v.decode("latin-1")
            elif k == b"if-none-match":
                if_none_match = v.decode("latin-1")
        svc = scope["app"].state.service
        try:
            if kind == "search":
                info = await self._call(svc, _search, svc, auth, args)
            else:
                ref = _ref(ns, name, **({"alias": key} if kind == "aliases" else {"version": key}))
                info = await self._call(svc, _read, svc, auth, ref)
        except Exception:  # any failure: a 4xx, a lost database's 503, ...
            await self.app(scope, receive, send)  # the route answers the error its own way
            return
        if self.routes is None:
            self.routes = _routes(scope["app"])
        route = self.routes.get(kind)
        if route is not None:
            scope["route"] = route
        await revalidated(if_none_match, info)(scope, receive, send)

    @staticmethod
    async def _call(svc: Any, fn: Any, *args: Any) -> Any:
        """SQLite answers a resolve in well under a millisecond from its page cache: inline,
        as a thread hop would cost more than the read. A networked database goes to a
        thread, so the event loop never waits on a socket."""
        if svc.engine.dialect.name == "sqlite":
            return fn(*args)
        return await anyio.to_thread.run_sync(fn, *args)


def _read(svc: Any, authorization: str | None, ref: Any) -> Any:
    return svc.resolve(_principal(svc, authorization), ref)


def _search(svc: Any, authorization: str | None, args: dict[str, Any]) -> Any:
    return svc.search(_principal(svc, authorization), **args)


SEARCH_PARAMS = ("q", "task", "base_model", "tag", "peft_type", "namespace", "sort", "offset",
                 "limit")  # the search route's query parameters (a test compares them)


def search_args(query_string: bytes) -> dict[str, Any] | None:
    """The search route's arguments from a query string, read as the route reads them
    (Starlette's parsing: blanks kept, ``tag`` repeated), or ``None`` for anything the route
    should judge itself: an unknown or repeated parameter, an offset or limit that is not a
    plain number."""
    args: dict[str, Any] = {"tags": []}
    for k, v in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True):
        if k == "tag":
            args["tags"].append(v)
            continue
        if k not in SEARCH_PARAMS or k in args or (k == "q" and "text" in args):
            return None
        if k in ("offset", "limit"):
            if not (v.isascii() and v.isdigit()) or len(v) > 9:
                return None
            args[k] = int(v)
        elif k == "q":
            args["text"] = v
        else:
            args[k] = v
    return args


def _principal(svc: Any, authorization: str | None) -> Principal:
    """As ``deps.get_principal`` (a malformed header raises, and the route then refuses it)."""
    secret = bearer_secret(authorization)
    return ANONYMOUS if secret is None else svc.authenticate(secret)


def _routes(app: Any) -> dict[str, Any]:
    """The FastAPI routes the fast path stands for, by kind (inside included routers too)."""
    out: dict[str, Any] = {}
    todo = list(app.routes)
    while todo:
        r = todo.pop()
        inner = getattr(r, "original_router", None)
        if inner is not None:
            todo += inner.routes
            continue
        path = getattr(r, "path", "")
        if "GET" in (getattr(r, "methods", None) or ()):
            if path.endswith("/adapters") and getattr(r, "name", "") == "search":
                out["search"] = r
            elif path.endswith("/adapters/{ns}/{name}/aliases/{alias}"):
                out["aliases"] = r
            elif path.endswith("/adapters/{ns}/{name}/versions/{version}"):
                out["versions"] = r
    return out


def install(app: Any, prefix: str) -> None:
    """Add the fast path to ``app``; called before the limiter and the metrics are added, so
    it runs inside them (a refused client is refused here too, a read is timed)."""
    app.add_middleware(MetadataFastPath, prefix=prefix)
