"""Blob upload (phase one of a publish) and file download with Range and ETag."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Header, Request, Response, status

from lorahive.hub.errors import InvalidRequestError
from lorahive.hub.manifest import check_filename
from lorahive.registry.deps import Caller, Service, limit_json_body
from lorahive.registry.http import file_response, request_body
from lorahive.registry.routes.adapters import _ref
from lorahive.registry.schemas import BlobPutResponse, MissingBlobsRequest, MissingBlobsResponse

router = APIRouter(tags=["files"])


@router.post("/blobs/missing", response_model=MissingBlobsResponse,
             dependencies=[Depends(limit_json_body)])
def missing_blobs(body: MissingBlobsRequest, svc: Service, caller: Caller) -> MissingBlobsResponse:
    """Which of these blobs the server lacks (the client uploads only those)."""
    return MissingBlobsResponse(missing=svc.missing_blobs(caller, body.sha256))


@router.head("/blobs/{sha}")
def head_blob(sha: str, svc: Service, caller: Caller) -> Response:
    size = svc.blob_size(caller, sha)
    if size is None:
        return Response(status_code=404)
    return Response(headers={"Content-Length": str(size), "ETag": f'"{sha}"'})


@router.put("/blobs/{sha}", response_model=BlobPutResponse)
async def put_blob(sha: str, request: Request, svc: Service, caller: Caller, response: Response,
                   content_length: int | None = Header(default=None)) -> BlobPutResponse:
    """Stream a blob to staging, hashing as it arrives; it becomes visible only if its
    sha256 and length match."""
    if content_length is None:
        raise InvalidRequestError("PUT /blobs needs a Content-Length header")
    stored = await svc.ingest_stream(caller, request_body(request), sha, content_length)
    response.status_code = status.HTTP_200_OK if stored.existed else status.HTTP_201_CREATED
    return BlobPutResponse(sha256=stored.sha256, size=stored.size, existed=stored.existed)


_FILE = "/adapters/{ns}/{name}/versions/{version}/files/{path:path}"


@router.head(_FILE, operation_id="head_file", include_in_schema=True)
@router.get(_FILE, operation_id="download_file")
def download(ns: str, name: str, version: str, path: str, request: Request, svc: Service,
             caller: Caller, range: str | None = Header(default=None),
             if_none_match: str | None = Header(default=None)) -> Response:
    """Stream one file of a version, or with object storage answer 302 to a presigned URL of
    it (after the visibility check); ``ETag`` is its sha256, ``Range`` resumes."""
    dl = svc.download(caller, _ref(ns, name, version=version), check_filename(path), range=range,
                      if_none_match=if_none_match, head=request.method == "HEAD", redirect=True)
    return file_response(dl, {"X-Lorahive-Sha256": dl.entry.sha256,
                              "Cache-Control": "private, max-age=31536000, immutable"})
