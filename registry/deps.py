"""FastAPI dependencies: the service (one per process) and the caller from the bearer token.

They are ``async`` so that FastAPI does not hand each of them to its thread pool: only the
token lookup (a database read) goes to a worker thread, and anonymous reads skip it.
"""

from __future__ import annotations

from typing import Annotated

import anyio
from fastapi import Depends, Header, Request

from lorahive.hub.errors import AuthenticationError, InvalidRequestError, PayloadTooLargeError
from lorahive.registry.auth import ANONYMOUS, Principal
from lorahive.registry.service import RegistryService


async def get_service(request: Request) -> RegistryService:
    return request.app.state.service


async def get_principal(
    service: Annotated[RegistryService, Depends(get_service)],
    authorization: Annotated[str | None, Header()] = None,
) -> Principal:
    """Anonymous without a header; 401 for a malformed header or a bad token."""
    secret = bearer_secret(authorization)
    if secret is None:
        return ANONYMOUS
    return await anyio.to_thread.run_sync(service.authenticate, secret)


def bearer_secret(authorization: str | None) -> str | None:
    """The secret of an ``Authorization: Bearer`` header, ``None`` without a header; 401 for
    any other form (the REST API's rule; the Hugging Face door is lenient, see
    ``http.bearer_token``)."""
    if not authorization:
        return None
    scheme, _, secret = authorization.partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        raise AuthenticationError("use the header 'Authorization: Bearer <token>'")
    return secret.strip()


async def limit_json_body(request: Request) -> None:
    """Refuse oversized JSON bodies before they are read."""
    n = request.headers.get("content-length")
    limit = request.app.state.service.settings.max_manifest_bytes
    if n is not None and n.isdigit() and int(n) > limit:
        raise PayloadTooLargeError(f"request body over {limit} bytes")
    if n is not None and not n.isdigit():
        raise InvalidRequestError("invalid Content-Length")


Service = Annotated[RegistryService, Depends(get_service)]
Caller = Annotated[Principal, Depends(get_principal)]
