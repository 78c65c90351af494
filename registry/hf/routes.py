"""Hugging Face Hub-compatible routes, so unmodified ``huggingface_hub``/PEFT/transformers
clients pointed at lorahive with ``HF_ENDPOINT`` pull, search and push adapters.

Revisions: ``main`` is the ``latest`` alias; any version or alias name is a revision too; the
commit id of a version is a stable hash of its manifest (``hf_protocol.commit_sha``). A commit
to ``main`` publishes a new version. Errors carry the ``X-Error-Code`` headers the client maps to
``RepositoryNotFoundError``, ``RevisionNotFoundError`` and ``EntryNotFoundError``; a private
adapter answers ``RepoNotFound`` to anyone who may not see it. The routes stay thin: the
registry work happens in ``hf_backend``.
"""

from __future__ import annotations

import contextlib
import functools
import os
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlencode

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from lorahive.hub.errors import (
    AdapterNotFoundError,
    AuthenticationError,
    EntryNotFoundError,
    InvalidRequestError,
    LorahiveError,
    NamespaceNotFoundError,
    PayloadTooLargeError,
    VersionNotFoundError,
)
from lorahive.hub.protocol import FileEntry
from lorahive.registry.hf import protocol as proto
from lorahive.registry.hf.backend import HfBackend, Resolved, hf_backend
from lorahive.registry.hf.upload import apply_commit, inline_max_bytes, parse_commit, upload_mode
from lorahive.registry.http import file_response, request_body
from lorahive.registry.presign import SIGNED_URL_TTL
from lorahive.registry.service import PresignedUpload
from lorahive.registry.transfer import RangeNotSatisfiableError

router = APIRouter(tags=["huggingface"])
LFS_JSON = "application/vnd.git-lfs+json"


def _error(e: LorahiveError) -> JSONResponse:
    """A lorahive error in the shape the HF client turns into its own exception types."""
    if isinstance(e, AdapterNotFoundError | NamespaceNotFoundError):
        return proto.hf_error(404, proto.REPO_NOT_FOUND, str(e))
    if isinstance(e, VersionNotFoundError):
        return proto.hf_error(404, proto.REVISION_NOT_FOUND, str(e))
    if isinstance(e, EntryNotFoundError):
        return proto.hf_error(404, proto.ENTRY_NOT_FOUND, str(e))
    if isinstance(e, AuthenticationError):
        # this exact message makes the client report a bad token, not a missing repo
        r = proto.hf_error(401, None, "Invalid credentials in Authorization header")
        r.headers["X-Lorahive-Error"] = proto.header_safe(str(e))
        return r
    r = proto.hf_error(e.status, None, str(e))
    r.headers.update(getattr(e, "headers", None) or {})
    return r


def hf_errors(fn: Callable[..., Awaitable[Response]]) -> Callable[..., Awaitable[Response]]:
    """Answer lorahive errors raised by a route in the Hub's error format."""

    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Response:
        try:
            return await fn(*args, **kwargs)
        except LorahiveError as e:
            return _error(e)

    return wrapper


# ---------------------------------------------------------------------------- read side


@router.get("/api/whoami-v2")
@hf_errors
async def whoami(be: HfBackend = Depends(hf_backend)) -> Response:
    me = await run_in_threadpool(be.whoami)
    if me.user is None:
        return proto.hf_error(401, None, "Invalid credentials in Authorization header")
    role = "write" if me.scope in ("write", "admin") else "read"
    return JSONResponse({
        "type": "user",
        "id": me.user,
        "name": me.user,
        "fullname": me.user,
        "isPro": False,
        "orgs": [{"type": "org", "name": ns, "fullname": ns} for ns in me.namespaces
                 if ns != me.user],
        "auth": {"type": "access_token",
                 "accessToken": {"displayName": "lorahive", "role": role}},
        "lorahive": {"scope": me.scope, "is_admin": me.is_admin, "namespaces": me.namespaces},
    })


@router.get("/api/models")
@hf_errors
async def list_models(
    request: Request,
    search: str | None = None,
    author: str | None = None,
    filter: list[str] = Query(default=[]),
    pipeline_tag: str | None = None,
    sort: str | None = None,
    limit: int | None = Query(default=None, ge=1, le=1000),
    cursor: int = Query(default=0, ge=0),
    full: bool = False,
    cardData: bool = False,
    be: HfBackend = Depends(hf_backend),
) -> Response:
    page = limit or 100
    items, next_cursor = await run_in_threadpool(
        be.search_models, search, author, filter, pipeline_tag, sort, cursor, page)
    body = [be.model_summary(a, full=full or cardData) for a in items]
    headers = {}
    if next_cursor is not None:
        params = [(k, v) for k, v in request.query_params.multi_items() if k != "cursor"]
        params.append(("cursor", str(next_cursor)))
        headers["Link"] = f'<{_base(request)}/api/models?{urlencode(params)}>; rel="next"'
    return JSONResponse(body, headers=headers)


@router.get("/api/models/{ns}/{name}")
@hf_errors
async def model_info(ns: str, name: str, blobs: bool = False,
                     be: HfBackend = Depends(hf_backend)) -> Response:
    return await _model_info(be, f"{ns}/{name}", proto.MAIN, blobs)


@router.get("/api/models/{ns}/{name}/revision/{rev:path}")
@hf_errors
async def model_info_at(ns: str, name: str, rev: str, blobs: bool = False,
                        be: HfBackend = Depends(hf_backend)) -> Response:
    return await _model_info(be, f"{ns}/{name}", rev, blobs)


async def _model_info(be: HfBackend, repo: str, rev: str, blobs: bool) -> Response:
    r = await run_in_threadpool(be.resolve_revision, repo, rev)
    card = await run_in_threadpool(be.card_data, r)
    return JSONResponse(be.model_info_json(r, card, blobs))


@router.get("/api/models/{ns}/{name}/tree/{rev}")
@router.get("/api/models/{ns}/{name}/tree/{rev}/{path:path}")
@hf_errors
async def tree(
    request: Request, ns: str, name: str, rev: str, path: str = "",
    recursive: str = "false", cursor: int = Query(default=0, ge=0),
    limit: int = Query(default=proto.TREE_PAGE, ge=1, le=proto.TREE_PAGE),
    be: HfBackend = Depends(hf_backend),
) -> Response:
    r = await run_in_threadpool(be.resolve_revision, f"{ns}/{name}", rev)
    try:
        entries = proto.tree_entries(r.files, path, recursive.lower() in ("1", "true"))
    except proto.TreeError:
        return proto.hf_error(404, proto.ENTRY_NOT_FOUND,
                              f"{path!r} is not a folder in {r.repo} at {rev}", r.commit)
    page = entries[cursor:cursor + limit]
    headers = {"X-Repo-Commit": r.commit}
    link = proto.next_link(f"{_base(request)}{quote(request.url.path)}",
                           dict(request.query_params), cursor, len(entries), limit)
    if link:
        headers["Link"] = link
    return JSONResponse(page, headers=headers)


@router.get("/api/models/{ns}/{name}/refs")
@hf_errors
async def refs(ns: str, name: str, be: HfBackend = Depends(hf_backend)) -> Response:
    return JSONResponse(await run_in_threadpool(be.refs, f"{ns}/{name}"))


@router.get("/api/models/{ns}/{name}/commits/{rev}")
@hf_errors
async def commits(ns: str, name: str, rev: str, be: HfBackend = Depends(hf_backend)) -> Response:
    return JSONResponse(await run_in_threadpool(be.commits, f"{ns}/{name}", rev))


@router.post("/api/models/{ns}/{name}/paths-info/{rev}")
@hf_errors
async def paths_info(request: Request, ns: str, name: str, rev: str,
                     be: HfBackend = Depends(hf_backend)) -> Response:
    """Form-encoded ``paths`` (repeatable), as ``HfApi.get_paths_info`` sends them."""
    body = (await request.body()).decode("utf-8", "replace")
    paths = parse_qs(body).get("paths", [])
    if len(paths) > 1000:
        raise InvalidRequestError("at most 1000 paths per request")
    return JSONResponse(await run_in_threadpool(be.paths_info, f"{ns}/{name}", rev, paths))


@router.get("/{ns}/{name}/resolve/{rev}/{path:path}")
@router.head("/{ns}/{name}/resolve/{rev}/{path:path}")
@hf_errors
async def resolve_file(request: Request, ns: str, name: str, rev: str, path: str,
                       be: HfBackend = Depends(hf_backend)) -> Response:
    r = await run_in_threadpool(be.resolve_revision, f"{ns}/{name}", rev)
    headers = {"X-Repo-Commit": r.commit, "Content-Disposition":
               f"attachment; filename*=UTF-8''{quote(path.rsplit('/', 1)[-1])}"}
    try:
        dl = await run_in_threadpool(be.download, r, path, request.headers.get("range"),
                                     request.method == "HEAD")
    except EntryNotFoundError:
        return proto.hf_error(404, proto.ENTRY_NOT_FOUND,
                              f"{path} does not exist in {r.repo} at {rev}", r.commit)
    except RangeNotSatisfiableError as e:
        return Response(status_code=416, headers={**headers, **e.headers})
    return file_response(dl, headers)


# --------------------------------------------------------------------------- write side


@router.post("/api/validate-yaml")
async def validate_yaml(request: Request) -> Response:
    """The client asks before committing a README; a card lorahive cannot parse is reported
    as a warning, since publishing regenerates nothing the user supplied."""
    from lorahive.hub.modelcard import parse_card

    try:
        content = str((await _json_object(request)).get("content", ""))
    except InvalidRequestError:
        return JSONResponse({"errors": [{"message": "body must be JSON"}]}, status_code=400)
    warnings = []
    if content.startswith("---") and not parse_card(content):
        warnings.append({"message": "the YAML front matter could not be parsed"})
    return JSONResponse({"errors": [], "warnings": warnings})


@router.post("/api/repos/create")
@hf_errors
async def create_repo(request: Request, be: HfBackend = Depends(hf_backend)) -> Response:
    try:
        body = await request.json()
    except ValueError:
        raise InvalidRequestError("body must be JSON: {name, organization, visibility}") from None
    if body.get("type", "model") not in ("model", None):
        raise InvalidRequestError("lorahive hosts adapters as model repos only")
    name = str(body.get("name") or "")
    ns = body.get("organization") or (await run_in_threadpool(be.whoami)).user
    if not ns:
        raise AuthenticationError("creating a repo needs a token with write scope")
    private = body.get("visibility") == "private" or body.get("private") is True
    repo = f"{ns}/{name}"
    created = await run_in_threadpool(be.create_repo, repo, private)
    url = f"{_base(request)}/{repo}"
    if not created:
        return JSONResponse({"error": f"You already created this model repo: {repo}",
                             "url": url}, status_code=409)
    return JSONResponse({"url": url, "name": repo, "id": repo})


@router.post("/api/models/{ns}/{name}/preupload/{rev}")
@hf_errors
async def preupload(request: Request, ns: str, name: str, rev: str,
                    be: HfBackend = Depends(hf_backend)) -> Response:
    repo = f"{ns}/{name}"
    body = await _json_object(request)
    files = body.get("files")
    if not isinstance(files, list):
        raise InvalidRequestError("expected {files: [{path, size, sample}]}")
    r = await run_in_threadpool(be.writable_revision, repo, rev)
    current = {f.path: f for f in r.files}
    limit = inline_max_bytes()
    out = []
    for f in files:
        if not isinstance(f, dict):
            raise InvalidRequestError("expected {files: [{path, size, sample}]}")
        path, size = str(f.get("path", "")), _int(f.get("size", 0), "size")
        mode = upload_mode(size, limit)
        old = current.get(path)
        oid = None
        if old is not None and old.size == size:
            oid = old.sha256 if mode == "lfs" else await run_in_threadpool(be.git_oid, r, old)
        out.append({"path": path, "uploadMode": mode, "shouldIgnore": False, "oid": oid})
    return JSONResponse({"files": out, "commitOid": r.commit})


@router.post("/{ns}/{repo_git}/info/lfs/objects/batch")
@hf_errors
async def lfs_batch(request: Request, ns: str, repo_git: str,
                    be: HfBackend = Depends(hf_backend)) -> Response:
    if not repo_git.endswith(".git"):
        return proto.hf_error(404, None, "not found")
    repo = f"{ns}/{repo_git[:-4]}"
    body = await _json_object(request)
    if body.get("operation") != "upload":
        raise InvalidRequestError("lorahive's LFS endpoint takes uploads only; download with "
                                  "/resolve")
    await run_in_threadpool(be.require_write, repo)
    base = _base(request)
    objects = []
    for obj in body.get("objects") or []:
        if not isinstance(obj, dict):
            raise InvalidRequestError("expected {objects: [{oid, size}]}")
        oid, size = str(obj.get("oid", "")), _int(obj.get("size", -1), "size")
        if not _is_sha256(oid) or size < 0:
            objects.append({"oid": oid, "size": max(size, 0),
                            "error": {"code": 422, "message": "oid must be a sha256"}})
            continue
        if size > be.max_file_bytes:
            objects.append({"oid": oid, "size": size, "error": {
                "code": 413, "message": f"over the limit of {be.max_file_bytes} bytes per file"}})
            continue
        entry: dict[str, Any] = {"oid": oid, "size": size, "authenticated": True}
        if await run_in_threadpool(be.blob_size, oid) != size:
            g = await run_in_threadpool(be.presign_upload, repo, oid, size)
            href = (f"{base}/api/lorahive-lfs/{repo}/{oid}?size={size}&user={quote(g.user)}"
                    f"&expires={g.expires}&sig={g.signature}")
            entry["actions"] = {
                "upload": {"href": href, "expires_in": SIGNED_URL_TTL},
                "verify": {"href": f"{base}/{repo}.git/info/lfs/objects/verify",
                           "expires_in": SIGNED_URL_TTL},
            }
        objects.append(entry)
    return JSONResponse({"transfer": "basic", "objects": objects, "hash_algo": "sha256"},
                        media_type=LFS_JSON)


@router.put("/api/lorahive-lfs/{ns}/{name}/{oid}")
@hf_errors
async def lfs_upload(request: Request, ns: str, name: str, oid: str, size: int, user: str,
                     expires: int, sig: str, be: HfBackend = Depends(hf_backend)) -> Response:
    """The signed URL the batch call hands out: the client PUTs here without credentials
    (as it would to S3), so the signature is the authorisation."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) != size:
        raise InvalidRequestError(f"Content-Length {declared} does not match the declared size {size}")
    await be.ingest_presigned(request_body(request), f"{ns}/{name}", oid, size,
                              PresignedUpload(user, expires, sig))
    return Response(status_code=200, headers={"ETag": f'"{oid}"'})


@router.post("/{ns}/{repo_git}/info/lfs/objects/verify")
@hf_errors
async def lfs_verify(request: Request, ns: str, repo_git: str,
                     be: HfBackend = Depends(hf_backend)) -> Response:
    repo = f"{ns}/{repo_git.removesuffix('.git')}"
    await run_in_threadpool(be.require_write, repo)
    body = await _json_object(request)
    oid, size = str(body.get("oid", "")), _int(body.get("size", -1), "size")
    if await run_in_threadpool(be.blob_size, oid) != size:
        return proto.hf_error(404, None, f"object {oid} ({size} bytes) was not uploaded")
    return JSONResponse({"oid": oid, "size": size}, media_type=LFS_JSON)


@router.post("/api/models/{ns}/{name}/commit/{rev}")
@hf_errors
async def commit(request: Request, ns: str, name: str, rev: str,
                 be: HfBackend = Depends(hf_backend)) -> Response:
    repo = f"{ns}/{name}"
    if request.query_params.get("create_pr") in ("1", "true", "True"):
        raise InvalidRequestError("lorahive has no pull requests; commit to main to publish a "
                                  "new version")
    await run_in_threadpool(be.require_write, repo)
    cap = int(be.max_file_bytes * 1.4) + 16 * 1024 * 1024
    with _spooled_body(be.service.settings.home) as body_path:
        await _save_body(request, body_path, cap)
        info = await run_in_threadpool(_do_commit, be, repo, rev, body_path)
    base = _base(request)
    return JSONResponse({
        "success": True,
        "commitOid": info.commit,
        "commitUrl": f"{base}/{repo}/commit/{info.commit}",
        "hookOutput": "",
        "pullRequestUrl": None,
        "lorahive": {"version": info.version.version if info.version else None, "ref": info.ref},
    })


def _do_commit(be: HfBackend, repo: str, rev: str, body_path: Path) -> Resolved:
    r = be.writable_revision(repo, rev)
    c = parse_commit(body_path, be.ingest)
    if c.parent and c.parent != r.commit:
        raise _Conflict(f"parentCommit {c.parent} is not the head of {rev} ({r.commit}); "
                        "pull and retry")
    lfs_entries = {}
    for path, (oid, size) in c.lfs.items():
        stored = be.blob_size(oid)
        if stored is None or (size is not None and stored != size):
            raise EntryNotFoundError(f"LFS object {oid} for {path} was never uploaded; upload "
                                     "it through the LFS batch endpoint first")
        lfs_entries[path] = FileEntry(path=path, sha256=oid, size=stored)
    files = apply_commit(list(r.files), c, lfs_entries, be.max_files)
    return be.publish_files(r, files, c.summary, c.description)


class _Conflict(LorahiveError):
    code = "conflict"
    status = 412


@router.get("/api/models/{ns}/{name}/xet-write-token/{rev}")
@router.post("/api/models/{ns}/{name}/xet-write-token/{rev}")
@router.get("/api/models/{ns}/{name}/xet-read-token/{rev}")
@router.post("/api/models/{ns}/{name}/xet-read-token/{rev}")
async def xet_token(ns: str, name: str, rev: str) -> Response:
    """lorahive has no Xet storage; say what to do instead of a bare 404."""
    return proto.hf_error(
        501, None,
        "lorahive does not implement Xet storage: files up to LORAHIVE_HF_INLINE_MAX_BYTES are "
        "accepted inline; for larger files set HF_HUB_DISABLE_XET=1 on the client",
    )


# ------------------------------------------------------------------------------ helpers


async def _json_object(request: Request) -> dict[str, Any]:
    """The body as a JSON object, or a 400 (a bad body was a 500)."""
    try:
        body = await request.json()
    except ValueError:
        raise InvalidRequestError("the body must be a JSON object") from None
    if not isinstance(body, dict):
        raise InvalidRequestError("the body must be a JSON object")
    return body


def _int(value: Any, what: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise InvalidRequestError(f"{what} must be an integer") from None


def _base(request: Request) -> str:
    return str(request.base_url).rstrip("/")


def _is_sha256(s: str) -> bool:
    return len(s) == 64 and all(c in "0123456789abcdef" for c in s)


@contextlib.contextmanager
def _spooled_body(directory: Path) -> Iterator[Path]:
    """A temp file for a commit body, on the data disk rather than a small /tmp."""
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".lorahive-tmp-hf-commit-", dir=directory)
    os.close(fd)
    try:
        yield Path(tmp)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


async def _save_body(request: Request, dest: Path, cap: int) -> None:
    n = 0
    with open(dest, "wb") as fh:
        async for chunk in request.stream():
            n += len(chunk)
            if n > cap:
                raise PayloadTooLargeError(f"commit body over {cap} bytes; upload big files "
                                           "through LFS (HF_HUB_DISABLE_XET=1)")
            fh.write(chunk)
