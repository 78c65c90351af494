"""``HttpRegistry``: the ``Registry`` interface over the REST API (the client SDK).

Errors the server reports come back as the same ``hub.errors`` classes the in-process
registry raises. Publishing validates the adapter locally and asks the server what it would
refuse first (nothing is uploaded for a publish the commit would refuse), uploads only the
blobs the server lacks, then commits the manifest. Pulling
goes through the local ``PullCache`` and falls back to it when the server is unreachable.
"""

from __future__ import annotations

import http.client
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote, urljoin, urlsplit

import httpx

from lorahive.hub.cache import PullCache
from lorahive.hub.errors import (
    IntegrityError,
    InvalidReferenceError,
    LorahiveError,
    OfflineError,
    error_from_code,
)
from lorahive.hub.protocol import (
    AdapterInfo,
    DirectoryPublisher,
    FileEntry,
    GcReport,
    NamespaceInfo,
    NewToken,
    ProgressFn,
    PublishPlan,
    Scope,
    SearchPage,
    SortKey,
    TokenInfo,
    VersionInfo,
    WhoAmI,
)
from lorahive.hub.publishing import publish_directory
from lorahive.hub.refs import Ref, parse_ref

API = "/api/v1"
CHUNK = 1024 * 1024


class HttpRegistry(DirectoryPublisher):
    """A registry server reached over HTTP(S)."""

    def __init__(self, url: str, token: str | None = None, cache: PullCache | None = None,
                 timeout: float = 120.0, upload_workers: int = 4):
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout
        headers = {"User-Agent": "lorahive-client/1"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.http = httpx.Client(base_url=self.url, headers=headers,
                                 timeout=httpx.Timeout(timeout, connect=10.0))
        self._own_http = self.http  # downloads take a faster path unless this is swapped
        self.cache = cache or PullCache()
        self.upload_workers = upload_workers

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> HttpRegistry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transport -----------------------------------------------------------------------
    def _request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            resp = self.http.request(method, API + path, **kw)
        except httpx.TransportError as e:
            raise OfflineError(f"cannot reach the registry at {self.url}: {e}") from None
        if resp.status_code >= 400:
            raise _error_of(resp)
        return resp

    def _json(self, method: str, path: str, **kw: Any) -> Any:
        return self._request(method, path, **kw).json()

    @staticmethod
    def _repo_path(ref: Ref) -> str:
        return f"/adapters/{ref.namespace}/{ref.name}"

    # -- interface -----------------------------------------------------------------------
    def whoami(self) -> WhoAmI:
        return WhoAmI.model_validate(self._json("GET", "/whoami"))

    def _publish_dir(self, path: Path, name: str, version: str | None = None, *,
                     task: str | None = None, tags: Sequence[str] = (),
                     private: bool | None = None, description: str | None = None,
                     metrics: dict[str, Any] | None = None, progress: ProgressFn | None = None,
                     allow_duplicate: bool = False) -> VersionInfo:
        repo = self._repo_path(parse_ref(name))

        def preflight(entries: list[FileEntry]) -> PublishPlan:
            body = {"version": version, "files": [e.model_dump() for e in entries],
                    "allow_duplicate": allow_duplicate}
            return PublishPlan.model_validate(self._json("POST", repo + "/preflight", json=body))

        def upload(entry: FileEntry, chunks: Iterator[bytes]) -> None:
            self._request("PUT", f"/blobs/{entry.sha256}", content=chunks,
                          headers={"Content-Length": str(entry.size),
                                   "Content-Type": "application/octet-stream"})

        def commit(entries: list[FileEntry]) -> VersionInfo:
            body = {"version": version, "files": [e.model_dump() for e in entries],
                    "task": task, "tags": list(tags), "private": private,
                    "description": description, "metrics": dict(metrics or {}),
                    "allow_duplicate": allow_duplicate}
            return VersionInfo.model_validate(self._json("POST", repo + "/versions", json=body))

        return publish_directory(path, name, preflight=preflight, upload=upload, commit=commit,
                                 workers=self.upload_workers, progress=progress)

    def _resolve(self, ref: Ref) -> VersionInfo:
        sub = f"/versions/{ref.version}" if ref.version else f"/aliases/{ref.revision}"
        return VersionInfo.model_validate(self._json("GET", self._repo_path(ref) + sub))

    def resolve(self, ref: str) -> VersionInfo:
        return self._resolve(parse_ref(ref))

    def adapter(self, ref: str) -> AdapterInfo:
        return AdapterInfo.model_validate(self._json("GET", self._repo_path(parse_ref(ref))))

    def versions(self, ref: str) -> list[VersionInfo]:
        data = self._json("GET", self._repo_path(parse_ref(ref)) + "/versions")
        return [VersionInfo.model_validate(v) for v in data]

    def search(self, text: str | None = None, *, task: str | None = None,
               base_model: str | None = None, tags: Sequence[str] = (),
               peft_type: str | None = None, namespace: str | None = None,
               sort: SortKey = "updated", offset: int = 0, limit: int = 20) -> SearchPage:
        params: list[tuple[str, str | int]] = [("sort", sort), ("offset", offset),
                                               ("limit", limit)]
        for key, val in (("q", text), ("task", task), ("base_model", base_model),
                         ("peft_type", peft_type), ("namespace", namespace)):
            if val:
                params.append((key, val))
        params += [("tag", t) for t in tags]
        return SearchPage.model_validate(self._json("GET", "/adapters", params=params))

    def pull(self, ref: str, to: str | Path | None = None,
             progress: ProgressFn | None = None, force: bool = False) -> Path:
        """Download a version into the cache (resuming, verified) and return its directory,
        or copy it to ``to`` (absent or empty; ``force`` replaces it). Offline, a version
        pulled before is served from the cache."""
        r = parse_ref(ref)
        if to is not None:
            self.cache.check_export(to, force)
        if os.environ.get("LORAHIVE_OFFLINE") == "1":
            snap = self.cache.offline_pull(r, "LORAHIVE_OFFLINE=1")
            return self._export_snapshot(r, to, force) if to is not None else snap
        try:
            info = self._resolve(r)
        except OfflineError as e:
            snap = self.cache.offline_pull(r, str(e))
            return self._export_snapshot(r, to, force) if to is not None else snap
        snap = self.pull_version(info, r, progress)
        return self.cache.export(info, to, force) if to is not None else snap

    def pull_version(self, info: VersionInfo, ref: Ref | None = None,
                     progress: ProgressFn | None = None) -> Path:
        """Cache the files of an already resolved version (each verified against its sha256)
        and return its snapshot directory; ``ref`` is what the cache remembers it was asked as."""
        return self.cache.materialize(ref or parse_ref(info.ref), info,
                                      lambda f, off: self._fetch(info, f, off), progress)

    def _export_snapshot(self, r: Ref, to: str | Path, force: bool) -> Path:
        info = self.cache.lookup(r)
        assert info is not None
        return self.cache.export(info, to, force)

    def _fetch(self, info: VersionInfo, f: FileEntry, offset: int) -> Iterator[bytes]:
        """Stream one file from ``offset`` on, following the server's redirect to object
        storage (a presigned URL: fetched without our token, its ``ETag`` ignored because the
        302's ``X-Linked-Etag`` names the content; the cache checks the sha256 either way).

        Bodies go through ``http.client`` reading into a reused 1 MiB buffer: on loopback it
        moves bytes 2-4x faster than httpx's streaming, which matters for GB-sized adapters.
        A caller-supplied ``self.http`` (a custom transport) is honoured instead.
        """
        if self.http is not self._own_http:
            yield from self._fetch_httpx(info, f, offset)
            return
        url = f"{self.url}{API}{_file_path(info, f)}"
        headers = {"Accept-Encoding": "identity", "User-Agent": "lorahive-client/1"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        if offset:
            headers["Range"] = f"bytes={offset}-"
        conn, resp = self._open(url, headers, f)
        try:
            if resp.status in _REDIRECTS:
                target = _redirect_target(f, url, resp.getheader("Location"),
                                          resp.getheader("X-Linked-Etag"))
                conn.close()
                if _origin(target) != _origin(url):
                    headers.pop("Authorization", None)  # a signed URL needs no token
                conn, resp = self._open(target, headers, f)
                if resp.status >= 400:
                    raise OfflineError(f"download of {f.path} from object storage failed: "
                                       f"HTTP {resp.status}")
                _check_download(f, offset, resp.status, None)
            else:
                _check_download(f, offset, resp.status, resp.getheader("ETag"))
            buf = bytearray(CHUNK)
            view = memoryview(buf)
            while True:
                try:
                    n = resp.readinto(view)
                except OSError as e:
                    raise OfflineError(
                        f"download of {f.path} from {self.url} broke off: {e}") from None
                if not n:
                    break
                yield bytes(view[:n])
        finally:
            conn.close()

    def _open(self, url: str, headers: dict[str, str], f: FileEntry
              ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        """GET ``url`` on a fresh connection; a 4xx/5xx from the registry becomes its error."""
        u = urlsplit(url)
        conn_cls = (http.client.HTTPSConnection if u.scheme == "https"
                    else http.client.HTTPConnection)
        conn = conn_cls(u.netloc, timeout=self.timeout)
        try:
            conn.request("GET", u.path + (f"?{u.query}" if u.query else ""), headers=headers)
            resp = conn.getresponse()
        except OSError as e:
            conn.close()
            raise OfflineError(f"download of {f.path} from {u.netloc} failed: {e}") from None
        if resp.status >= 400 and _origin(url) == _origin(self.url):
            body = resp.read()
            conn.close()
            raise _error_from(resp.status, body)
        return conn, resp

    def _fetch_httpx(self, info: VersionInfo, f: FileEntry, offset: int) -> Iterator[bytes]:
        url = f"{API}{_file_path(info, f)}"
        headers = {"Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        try:
            with self.http.stream("GET", url, headers=headers) as resp:
                if resp.status_code >= 400:
                    resp.read()
                    raise _error_of(resp)
                if resp.status_code in _REDIRECTS:
                    target = _redirect_target(f, str(resp.request.url),
                                              resp.headers.get("location"),
                                              resp.headers.get("x-linked-etag"))
                    yield from _fetch_signed(target, headers, f, offset, self.timeout)
                    return
                _check_download(f, offset, resp.status_code, resp.headers.get("etag"))
                yield from resp.iter_raw()
        except httpx.TransportError as e:
            raise OfflineError(f"download of {f.path} from {self.url} failed: {e}") from None

    def set_alias(self, ref: str, alias: str) -> VersionInfo:
        r = parse_ref(ref)
        version = r.version or self._resolve(r).version
        return VersionInfo.model_validate(self._json(
            "PUT", self._repo_path(r) + f"/aliases/{alias}", json={"version": version}))

    def remove_alias(self, repo: str, alias: str) -> None:
        self._request("DELETE", self._repo_path(parse_ref(repo)) + f"/aliases/{alias}")

    def delete(self, ref: str) -> None:
        r = parse_ref(ref)
        if r.alias:
            raise InvalidReferenceError(
                "delete takes ns/name@version (one version) or ns/name (the whole adapter)")
        sub = f"/versions/{r.version}" if r.version else ""
        self._request("DELETE", self._repo_path(r) + sub)

    def gc(self, grace_seconds: float = 3600.0) -> GcReport:
        return GcReport.model_validate(
            self._json("POST", "/gc", params={"grace_seconds": grace_seconds}))

    def create_namespace(self, name: str) -> NamespaceInfo:
        return NamespaceInfo.model_validate(self._json("POST", "/namespaces", json={"name": name}))

    def create_token(self, name: str, scope: Scope = "read", namespaces: Sequence[str] = (),
                     user: str | None = None, expires_in_days: float | None = None) -> NewToken:
        body = {"name": name, "scope": scope, "namespaces": list(namespaces), "user": user,
                "expires_in_days": expires_in_days}
        return NewToken.model_validate(self._json("POST", "/tokens", json=body))

    def list_tokens(self) -> list[TokenInfo]:
        return [TokenInfo.model_validate(t) for t in self._json("GET", "/tokens")]

    def revoke_token(self, token_id: int) -> None:
        self._request("DELETE", f"/tokens/{int(token_id)}")


_REDIRECTS = (301, 302, 303, 307, 308)


def _file_path(info: VersionInfo, f: FileEntry) -> str:
    return (f"/adapters/{info.namespace}/{info.name}/versions/{info.version}/files/"
            f"{quote(f.path, safe='/')}")


def _origin(url: str) -> tuple[str, str, int | None]:
    u = urlsplit(url)
    return u.scheme, (u.hostname or "").lower(), u.port or {"http": 80, "https": 443}.get(u.scheme)


def _redirect_target(f: FileEntry, url: str, location: str | None, linked: str | None) -> str:
    """Where a redirected download goes; the redirect must name the content asked for."""
    if not location:
        raise IntegrityError(f"{f.path}: the server redirected without a Location")
    tag = (linked or "").removeprefix("W/").strip('"')
    if tag and tag != f.sha256:
        raise IntegrityError(f"{f.path}: redirected to content {tag}, not {f.sha256}")
    return urljoin(url, location)


def _fetch_signed(url: str, headers: dict[str, str], f: FileEntry, offset: int,
                  timeout: float) -> Iterator[bytes]:
    """Stream a presigned object URL (no registry token goes to the object store)."""
    with httpx.Client(timeout=httpx.Timeout(timeout, connect=10.0)) as c, \
            c.stream("GET", url, headers=headers) as resp:
        if resp.status_code >= 400:
            raise OfflineError(f"download of {f.path} from object storage failed: "
                               f"HTTP {resp.status_code}")
        _check_download(f, offset, resp.status_code, None)
        yield from resp.iter_raw()


def _check_download(f: FileEntry, offset: int, status: int, etag: str | None) -> None:
    """A resumed download must be a 206, and the ETag (the sha256) the one asked for."""
    if offset and status != 206:
        raise IntegrityError(f"{f.path}: the server ignored the Range request")
    tag = (etag or "").strip('"')
    if tag and tag != f.sha256:
        raise IntegrityError(f"{f.path}: served content is {tag}, not {f.sha256}")


def _error_of(resp: httpx.Response) -> LorahiveError:
    """The ``hub.errors`` instance a server's error response stands for."""
    return _error_from(resp.status_code, resp.content)


def _error_from(status: int, body: bytes) -> LorahiveError:
    try:
        err = json.loads(body)["error"]
        e = error_from_code(str(err["code"]), str(err["message"]))
    except Exception:
        e = LorahiveError(f"HTTP {status} from the registry: {body[:200].decode(errors='replace')}")
    e.status = status
    return e
