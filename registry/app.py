"""The REST app: ``/api/v1`` routers, JSON errors, ``/healthz`` and ``/metrics``.

Every ``LorahiveError`` becomes ``{"error": {"code", "message"}}`` with its own status;
malformed requests are 400s; only a bug is a 500.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from sqlalchemy import text
from sqlalchemy.exc import DataError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lorahive.hub.errors import LorahiveError
from lorahive.registry import fastpath, ratelimit, resilience, web
from lorahive.registry.hf import routes as hf_routes
from lorahive.registry.http import bearer_token
from lorahive.registry.routes import accounts, adapters, files
from lorahive.registry.service import RegistryService, metrics_text
from lorahive.registry.settings import Settings

API_PREFIX = "/api/v1"
log = logging.getLogger("lorahive.registry")


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


def create_app(settings: Settings | None = None, service: RegistryService | None = None) -> FastAPI:
    """Build the app; migrations run when the service is created (at start-up)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if getattr(app.state, "service", None) is None:
            app.state.service = RegistryService(settings)
        yield
        app.state.service.close()

    app = FastAPI(title="lorahive registry", version="1", lifespan=lifespan,
                  openapi_url=f"{API_PREFIX}/openapi.json", docs_url=f"{API_PREFIX}/docs",
                  redoc_url=None)
    app.state.service = service
    fastpath.install(app, API_PREFIX)  # the polled resolve reads, before FastAPI's router
    ratelimit.install(app)  # 429 + Retry-After after repeated failed auth
    resilience.install_handlers(app)  # full disk 507, lost database 503

    @app.exception_handler(LorahiveError)
    async def _lorahive_error(_: Request, e: LorahiveError) -> JSONResponse:
        r = _error(e.status, e.code, e.message)
        r.headers.update(getattr(e, "headers", None) or {})
        return r

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, e: RequestValidationError) -> JSONResponse:
        errs = e.errors()
        where = ".".join(str(x) for x in errs[0].get("loc", ())) if errs else ""
        msg = errs[0].get("msg", "invalid request") if errs else "invalid request"
        return _error(400, "invalid_request", f"{where}: {msg}" if where else msg)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, e: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code, "http_error")
        return _error(e.status_code, code, str(e.detail))

    @app.exception_handler(DataError)
    async def _bad_value(_: Request, e: DataError) -> JSONResponse:
        return _error(400, "invalid_request", "a value is out of range for the database")

    @app.exception_handler(OperationalError)
    async def _db_down(_: Request, e: OperationalError) -> JSONResponse:
        log.error("database error: %s", e)
        return _error(503, "service_unavailable", "the database is unavailable; retry later")

    app.add_middleware(ObserveMiddleware)  # outermost: times what the limiter refuses too

    for r in (adapters.router, files.router, accounts.router):
        app.include_router(r, prefix=API_PREFIX)
    app.include_router(hf_routes.router)  # Hugging Face Hub-compatible routes (HF_ENDPOINT)
    app.include_router(web.router)  # the web pages at / (last: the APIs' paths win)

    @app.get("/healthz", include_in_schema=False)
    def healthz(request: Request) -> JSONResponse:
        svc: RegistryService = request.app.state.service
        try:
            with svc.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except OperationalError:
            return _error(503, "service_unavailable", "database unreachable")
        return JSONResponse({"status": "ok"})

    @app.get("/metrics", include_in_schema=False)
    def metrics(request: Request) -> PlainTextResponse:
        """Prometheus text for a site admin or the scrape token (``LORAHIVE_METRICS_TOKEN``)."""
        return PlainTextResponse(metrics_text(request.app.state.service, bearer_token(request)),
                                 media_type="text/plain; version=0.0.4")

    return app


class ObserveMiddleware:
    """Request counts and latency (to the response's start) per route, as plain ASGI
    middleware: ``@app.middleware("http")`` costs a task and a body stream per request."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()

        async def observed(message: Message) -> None:
            if message["type"] == "http.response.start":
                route = scope.get("route")
                path = getattr(route, "path", "unmatched")
                if scope["path"].startswith(API_PREFIX) and not path.startswith(API_PREFIX):
                    path = API_PREFIX + path  # routes of included routers carry their local path
                scope["app"].state.service.metrics.observe(
                    scope["method"], path, message["status"], time.perf_counter() - t0)
            await send(message)

        await self.app(scope, receive, observed)


def app_factory() -> FastAPI:
    """Entry point for ``uvicorn --factory`` (each worker builds its own app from settings)."""
    return create_app()
