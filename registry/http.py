"""HTTP shapes shared by the REST and Hugging Face doors: a planned download as a response,
and a request body as the chunks the service's ingest reads."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Sequence

from fastapi import Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel
from starlette.requests import ClientDisconnect

from lorahive.hub.errors import IntegrityError
from lorahive.registry.transfer import Download, not_modified


def bearer_token(request: Request) -> str | None:
    """The secret of an ``Authorization: Bearer`` header (``None`` without one); doors that
    answer in their own error format authenticate it inside the request."""
    scheme, _, secret = (request.headers.get("authorization") or "").partition(" ")
    return secret.strip() or None if scheme.lower() == "bearer" else None


def file_response(dl: Download, headers: dict[str, str] | None = None) -> Response:
    """A download as a response: ``ETag`` (the sha256), ``Accept-Ranges``, the length and,
    for a range, ``Content-Range``; no body for HEAD (``dl.body is None``) and 304.

    A redirect is a 302 to the presigned object with the file's identity in the Hub's
    headers (``X-Linked-Etag``, ``X-Linked-Size``): the client names and checks the file by
    them, since the object store's own ``ETag`` is not the sha256. The link expires, so the
    302 itself is never cached."""
    h = {"ETag": f'"{dl.entry.sha256}"', "Accept-Ranges": "bytes", **(headers or {})}
    if dl.status == 302 and dl.location:
        h.update({"Location": dl.location, "X-Linked-Etag": f'"{dl.entry.sha256}"',
                  "X-Linked-Size": str(dl.entry.size), "Cache-Control": "no-store"})
        return Response(status_code=302, headers=h)
    if dl.status == 304:
        return Response(status_code=304, headers=h)
    h["Content-Length"] = str(dl.length)
    if dl.content_range:
        h["Content-Range"] = dl.content_range
    if dl.body is None:
        return Response(status_code=dl.status, headers=h)
    return StreamingResponse(dl.body, status_code=dl.status, headers=h,
                             media_type="application/octet-stream")


async def request_body(request: Request) -> AsyncIterator[bytes]:
    """The request body as it arrives; a client that goes away mid-body is an integrity error
    (the upload is discarded), not a server error."""
    try:
        async for chunk in request.stream():
            yield chunk
    except ClientDisconnect:
        raise IntegrityError("the upload was interrupted; nothing was stored") from None


def revalidated_json(request: Request, value: BaseModel | Sequence[BaseModel]) -> Response:
    """Metadata as JSON with an ``ETag`` (a hash of the body), answered 304 with no body when
    the request's ``If-None-Match`` names it, so a fleet that polls a reference moves a few
    headers per poll instead of the document. ``Cache-Control: no-cache`` lets a cache keep
    the document only if it revalidates every use (aliases move); ``Vary: Authorization``
    because what a caller sees depends on its token. The body is serialized once here
    (FastAPI's response model would validate and serialize it again)."""
    return revalidated(request.headers.get("if-none-match"), value)


def revalidated(if_none_match: str | None, value: BaseModel | Sequence[BaseModel]) -> Response:
    """:func:`revalidated_json` given the ``If-None-Match`` header's value."""
    body = (value.model_dump_json() if isinstance(value, BaseModel)
            else "[" + ",".join(v.model_dump_json() for v in value) + "]").encode()
    tag = hashlib.blake2b(body, digest_size=16).hexdigest()
    headers = {"ETag": f'"{tag}"', "Cache-Control": "no-cache", "Vary": "Authorization"}
    if not_modified(if_none_match, tag):
        return Response(status_code=304, headers=headers)
    return Response(body, media_type="application/json", headers=headers)
