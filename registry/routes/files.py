"""Blob upload (phase one of a publish) and file download with Range and ETag."""

from __future__ import annotations

import re

import anyio
from fastapi import APIRouter, Depends, Header, Request, Response, status
from fastapi.responses import StreamingResponse
from starlette.requests import ClientDisconnect

from lorahive.hub.errors import (
    IntegrityError,
    InvalidRequestError,
    LorahiveError,
    PayloadTooLargeError,
)
from lorahive.hub.manifest import WEIGHTS_NAME, check_filename
from lorahive.registry.blobs import check_sha256
from lorahive.registry.deps import Caller, Service, limit_json_body
from lorahive.registry.routes.adapters import _ref
from lorahive.registry.schemas import BlobPutResponse, MissingBlobsRequest, MissingBlobsResponse

router = APIRouter(tags=["files"])
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


class RangeNotSatisfiableError(LorahiveError):
    code = "range_not_satisfiable"
    status = 416


@router.post("/blobs/missing", response_model=MissingBlobsResponse,
             dependencies=[Depends(limit_json_body)])
def missing_blobs(body: MissingBlobsRequest, svc: Service, caller: Caller) -> MissingBlobsResponse:
    """Which of these blobs the server lacks (the client uploads only those)."""
    svc.require_uploader(caller)
    return MissingBlobsResponse(missing=svc.missing_blobs(check_sha256(s) for s in body.sha256))


@router.head("/blobs/{sha}")
def head_blob(sha: str, svc: Service, caller: Caller) -> Response:
    svc.require_uploader(caller)
    size = svc.store.size(check_sha256(sha))
    if size is None:
        return Response(status_code=404)
    return Response(headers={"Content-Length": str(size), "ETag": f'"{sha}"'})


@router.put("/blobs/{sha}", response_model=BlobPutResponse)
async def put_blob(sha: str, request: Request, svc: Service, caller: Caller,
                   response: Response) -> BlobPutResponse:
    """Stream a blob to staging, hashing as it arrives; it becomes visible only if its
    sha256 and length match."""
    check_sha256(sha)
    svc.require_uploader(caller)
    length = request.headers.get("content-length")
    if length is None or not length.isdigit():
        raise InvalidRequestError("PUT /blobs needs a Content-Length header")
    size = int(length)
    limit = svc.settings.max_upload_bytes
    if size > limit:
        raise PayloadTooLargeError(f"{size} bytes exceeds the limit of {limit} per file")
    if await anyio.to_thread.run_sync(svc.store.exists, sha):
        return BlobPutResponse(sha256=sha, size=size, existed=True)
    metrics = request.app.state.metrics
    with svc.store.staging(limit) as staged:
        try:
            async for chunk in request.stream():
                staged.write(chunk)
        except ClientDisconnect:
            raise IntegrityError(f"upload of {sha} was interrupted; nothing stored") from None
        await anyio.to_thread.run_sync(staged.verify, sha, size)
        await anyio.to_thread.run_sync(svc.store.commit, staged, sha)
    metrics.add_bytes("upload", size)
    response.status_code = status.HTTP_201_CREATED
    return BlobPutResponse(sha256=sha, size=size, existed=False)


def _parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """``(start, end)`` inclusive for one ``bytes=`` range; ``None`` means the whole file."""
    if not header:
        return None
    m = _RANGE.fullmatch(header.strip())
    if not m or (m.group(1) == "" and m.group(2) == ""):
        raise RangeNotSatisfiableError(f"unsupported Range {header!r}; use bytes=START-[END]")
    a, b = m.group(1), m.group(2)
    if a == "":
        n = int(b)
        start, end = max(0, size - n), size - 1
    else:
        start = int(a)
        end = min(int(b), size - 1) if b else size - 1
    if start >= size or start > end:
        raise RangeNotSatisfiableError(f"range {header!r} is outside the file ({size} bytes)")
    return start, end


_FILE = "/adapters/{ns}/{name}/versions/{version}/files/{path:path}"


@router.head(_FILE, operation_id="head_file", include_in_schema=True)
@router.get(_FILE, operation_id="download_file")
def download(ns: str, name: str, version: str, path: str, request: Request, svc: Service,
             caller: Caller, range: str | None = Header(default=None),
             if_none_match: str | None = Header(default=None)) -> Response:
    """Stream one file of a version; ``ETag`` is its sha256, ``Range`` resumes."""
    check_filename(path)
    ref = _ref(ns, name, version=version)
    entry = svc.file_entry(caller, ref, path)
    etag = f'"{entry.sha256}"'
    headers = {"ETag": etag, "Accept-Ranges": "bytes", "X-Lorahive-Sha256": entry.sha256,
               "Cache-Control": "private, max-age=31536000, immutable"}
    if if_none_match == etag:
        return Response(status_code=304, headers=headers)
    try:
        rng = _parse_range(range, entry.size)
    except RangeNotSatisfiableError:
        if entry.size == 0:
            rng = None
        else:
            raise
    start, end = rng if rng else (0, entry.size - 1)
    headers["Content-Length"] = str(max(0, end - start + 1))
    code = 200
    if rng:
        code = 206
        headers["Content-Range"] = f"bytes {start}-{end}/{entry.size}"
    if request.method == "HEAD":
        return Response(status_code=code, headers=headers)
    if start == 0 and path == WEIGHTS_NAME:
        svc.record_download(caller, ref)
    request.app.state.metrics.add_bytes("download", end - start + 1)
    body = svc.store.open_range(entry.sha256, start, end) if entry.size else iter([b""])
    return StreamingResponse(body, status_code=code, headers=headers,
                             media_type="application/octet-stream")
