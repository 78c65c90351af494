"""Browser sign-in for the pages: a session cookie, CSRF checks and the security headers.

- The session lives in the database (``RegistryService.start_web_session``), so any worker
  accepts it, signing out ends it everywhere, and revoking the token it acts through ends it
  at the next request. The cookie holds only a random secret: ``HttpOnly``, ``SameSite=Lax``,
  ``Secure`` when the page was served over https.
- Every form that changes something carries a CSRF token: the session's own for a signed-in
  visitor; a double-submit cookie (``SameSite=Strict``) for the sign-in form. A cross-site
  ``Origin`` is refused as well.
- Every page carries a Content-Security-Policy that allows no script at all, styles and images
  from this server only, and forms that post back to it.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

import anyio
from fastapi import Request, Response

from lorahive.hub.errors import LorahiveError
from lorahive.registry.auth import ANONYMOUS, Principal

SESSION_COOKIE = "lorahive_session"
CSRF_COOKIE = "lorahive_csrf"
MAX_FORM_BYTES = 64 * 1024
CSP = ("default-src 'none'; style-src 'self'; img-src 'self' data:; font-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
}


class CsrfError(LorahiveError, PermissionError):
    code = "csrf_failed"
    status = 403


@dataclass(frozen=True)
class Visitor:
    """Who is looking at a page: anonymous, or signed in through a session."""

    principal: Principal = ANONYMOUS
    csrf: str | None = None
    sid: str | None = None

    @property
    def signed_in(self) -> bool:
        return self.sid is not None and not self.principal.anonymous


async def visitor(request: Request) -> Visitor:
    """The page's visitor from the session cookie (one database read when there is one)."""
    sid = request.cookies.get(SESSION_COOKIE)
    if not sid:
        return Visitor()
    found = await anyio.to_thread.run_sync(request.app.state.service.web_session, sid)
    if found is None:
        return Visitor()
    return Visitor(found[0], found[1], sid)


def secure_headers(response: Response, signed_in: bool) -> Response:
    for k, v in HEADERS.items():
        response.headers.setdefault(k, v)
    # pages of a signed-in visitor may show private adapters: never stored by a shared cache
    response.headers.setdefault("Cache-Control", "no-store" if signed_in else "no-cache")
    return response


def is_https(request: Request) -> bool:
    return request.url.scheme == "https"


def set_session(response: Response, request: Request, sid: str, max_age: int) -> None:
    response.set_cookie(SESSION_COOKIE, sid, max_age=max_age, path="/", httponly=True,
                        samesite="lax", secure=is_https(request))


def clear_session(response: Response, request: Request) -> None:
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="lax",
                           secure=is_https(request))


def login_csrf(request: Request) -> str:
    """The sign-in form's CSRF token: the browser's cookie when it has one, else a new one."""
    token = request.cookies.get(CSRF_COOKIE) or ""
    return token if 32 <= len(token) <= 64 else secrets.token_urlsafe(32)


def set_login_csrf(response: Response, request: Request, token: str) -> None:
    response.set_cookie(CSRF_COOKIE, token, max_age=3600, path="/-/", httponly=True,
                        samesite="strict", secure=is_https(request))


async def read_form(request: Request) -> dict[str, str]:
    """A small ``application/x-www-form-urlencoded`` body (first value of each field)."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/x-www-form-urlencoded":
        raise CsrfError("forms must be posted from this site's pages")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise CsrfError("form too large")
    fields = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
    return {k: v[0] for k, v in fields.items()}


def check_origin(request: Request) -> None:
    """Refuse a form posted from another origin (browsers send ``Origin`` on POST)."""
    origin = request.headers.get("origin")
    if origin is None:  # not sent by every client; the CSRF token still applies
        return
    host = request.headers.get("host", "")
    if urlsplit(origin).netloc != host:
        raise CsrfError("this form was posted from another site; reload the page and retry")


def check_csrf(request: Request, expected: str | None, form: dict[str, str]) -> None:
    check_origin(request)
    got = form.get("csrf", "")
    if not expected or not got or not hmac.compare_digest(got.encode(), expected.encode()):
        raise CsrfError("this form has expired or did not come from this site; reload the "
                        "page and try again")
