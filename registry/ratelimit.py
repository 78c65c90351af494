"""Rate limiting of failed authentication: a client (by IP) that sends ``limit`` bad
credentials within ``window`` seconds gets ``429`` with ``Retry-After`` on every request
until the window has passed, so tokens cannot be guessed at speed.

Counted: responses ``401`` to requests that carried an ``Authorization`` header (anonymous
requests to routes that need a token are not guesses). The state is per process: with
several workers a client gets at most ``workers x limit`` tries per window. Tune with
``LORAHIVE_AUTH_FAIL_LIMIT`` and ``LORAHIVE_AUTH_FAIL_WINDOW`` (seconds).
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections import deque

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class FailedAuthLimiter:
    """Sliding window of failure times per client key."""

    def __init__(self, limit: int = 20, window: float = 60.0, max_keys: int = 100_000):
        self.limit = limit
        self.window = window
        self.max_keys = max_keys
        self._fails: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, key: str, now: float) -> deque[float] | None:
        q = self._fails.get(key)
        if q is None:
            return None
        while q and q[0] <= now - self.window:
            q.popleft()
        if not q:
            del self._fails[key]
            return None
        return q

    def retry_after(self, key: str, now: float | None = None) -> int | None:
        """Seconds to wait when ``key`` is over the limit, else ``None``."""
        now = time.monotonic() if now is None else now
        with self._lock:
            q = self._recent(key, now)
            if q is None or len(q) < self.limit:
                return None
            return max(1, math.ceil(q[-self.limit] + self.window - now))

    def failed(self, key: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            if len(self._fails) >= self.max_keys and key not in self._fails:
                for k in list(self._fails)[: self.max_keys // 10]:  # shed the oldest keys
                    del self._fails[k]
            self._fails.setdefault(key, deque(maxlen=self.limit * 2)).append(now)


class FailedAuthMiddleware:
    """The limiter as plain ASGI middleware (no per-request task or body stream, unlike
    ``@app.middleware("http")``): refuses a client over the limit, counts the 401s it gets
    to requests that carried credentials."""

    def __init__(self, app: ASGIApp, limiter: FailedAuthLimiter):
        self.app = app
        self.limiter = limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        key = client[0] if client else "unknown"
        wait = self.limiter.retry_after(key)
        if wait is not None:
            response = JSONResponse(
                {"error": {"code": "rate_limited",
                           "message": f"too many failed authentication attempts; retry in "
                                      f"{wait} s with a valid token"}},
                status_code=429, headers={"Retry-After": str(wait)})
            await response(scope, receive, send)
            return
        if not any(k == b"authorization" and v for k, v in scope["headers"]):
            await self.app(scope, receive, send)
            return

        async def counting(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] == 401:
                self.limiter.failed(key)
            await send(message)

        await self.app(scope, receive, counting)


def install(app: FastAPI) -> FailedAuthLimiter:
    """Add the limiter as a middleware of ``app`` (every route, the HF ones included)."""
    limiter = FailedAuthLimiter(int(os.environ.get("LORAHIVE_AUTH_FAIL_LIMIT", "20")),
                                float(os.environ.get("LORAHIVE_AUTH_FAIL_WINDOW", "60")))
    app.state.auth_limiter = limiter
    app.add_middleware(FailedAuthMiddleware, limiter=limiter)
    return limiter
