"""What the Hub-compatible routes need from the registry, for one caller: revisions mapped to
versions, model-info and search results in the Hub's JSON shapes, blob access, and publishing a
commit's file list as a new version. Every rule (visibility, scopes, validation, immutability)
stays in ``RegistryService``; this layer only translates.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from sqlmodel import select
from starlette.concurrency import run_in_threadpool

from lorahive.hub.errors import (
    AdapterNotFoundError,
    InvalidRequestError,
    LorahiveError,
    VersionNotFoundError,
)
from lorahive.hub.modelcard import card_tags, parse_card
from lorahive.hub.protocol import AdapterInfo, FileEntry, VersionInfo, WhoAmI
from lorahive.hub.refs import DEFAULT_ALIAS, Ref, check_name, check_version, parse_ref
from lorahive.registry.auth import Principal
from lorahive.registry.db import session_scope
from lorahive.registry.hf import protocol as proto
from lorahive.registry.hf.upload import signing_key
from lorahive.registry.service import PublishOptions, RegistryService
from lorahive.registry.tables import AdapterRow, Namespace

_COMMIT = re.compile(proto.COMMIT_RE)
# (repo, commit id) -> version: lets a commit-pinned request (every file of a snapshot_download)
# resolve one version instead of hashing all of them. Per process, bounded.
_COMMITS: dict[tuple[str, str], str] = {}
_COMMITS_MAX = 100_000
_CARD_MAX = 1024 * 1024
_WRITE_CHUNK = 1024 * 1024
_IMPLIED = {"peft", "lora", "safetensors"}


@dataclass
class Resolved:
    """A revision of a repo: a version, or the empty first commit of a repo with none yet."""

    repo: str
    commit: str
    adapter: AdapterInfo
    version: VersionInfo | None = None
    files: list[FileEntry] = field(default_factory=list)

    @property
    def ref(self) -> str | None:
        return f"{self.repo}@{self.version.version}" if self.version else None


def _split(repo: str) -> Ref:
    try:
        r = parse_ref(repo)
    except LorahiveError:
        raise AdapterNotFoundError(f"{repo} is not a lorahive adapter name") from None
    if r.version or r.alias:
        raise AdapterNotFoundError(f"{repo} is not a lorahive adapter name")
    return r


class HfBackend:
    """The registry as seen by one caller of the Hub-compatible API."""

    def __init__(self, service: RegistryService, secret: str | None):
        self.service = service
        self._secret = secret
        self._principal: Principal | None = None
        self.store = service.store
        self.max_file_bytes = service.settings.max_upload_bytes
        self.max_files = service.settings.max_files

    @property
    def p(self) -> Principal:
        """The caller, authenticated on first use so a bad token is answered inside the
        route, in the Hub's error format."""
        if self._principal is None:
            self._principal = self.service.authenticate(self._secret)
        return self._principal

    # -- identity --------------------------------------------------------------------------
    def whoami(self) -> WhoAmI:
        me = self.service.whoami(self.p)
        if me.user and not me.namespaces:
            with session_scope(self.service.engine) as s:
                owned = s.exec(select(Namespace.name).where(
                    Namespace.owner_id == self.p.user_id)).all()
            me.namespaces = sorted(owned)
        return me

    def require_write(self, repo: str) -> str:
        """The caller's user name if it may publish to ``repo``'s namespace, else raise."""
        r = _split(repo)
        with session_scope(self.service.engine) as s:
            ns = self.service._namespace(s, r.namespace)
            self.p.require(ns, "write")
        return self.p.user or ""

    def signing_key(self) -> bytes:
        return signing_key(self.service.settings.home)

    # -- revisions -------------------------------------------------------------------------
    def resolve_revision(self, repo: str, rev: str) -> Resolved:
        """``main`` -> ``latest``; a 40-hex commit id; a version; an alias."""
        r = _split(repo)
        adapter = self.service.adapter(self.p, r)
        if rev == proto.MAIN:
            rev = DEFAULT_ALIAS
        if _COMMIT.match(rev):
            known = _COMMITS.get((repo, rev))
            if known is not None:  # versions are immutable; re-checked in case one was deleted
                with contextlib.suppress(VersionNotFoundError):
                    v = self.service.resolve(self.p, Ref(r.namespace, r.name, version=known))
                    if proto.commit_sha(repo, v.version, v.files) == rev:
                        return self._resolved(adapter, v)
            for v in self.service.versions(self.p, r):
                if proto.commit_sha(repo, v.version, v.files) == rev:
                    return self._resolved(adapter, v)
            if rev == proto.commit_sha(repo, None, []) and adapter.latest_version is None:
                return Resolved(repo, rev, adapter)
        try:
            if _is_version(rev):
                try:
                    return self._resolved(adapter, self.service.resolve(self.p, Ref(r.namespace, r.name, version=rev)))
                except VersionNotFoundError:
                    pass
            if _is_name(rev):
                return self._resolved(adapter, self.service.resolve(self.p, Ref(r.namespace, r.name, alias=rev)))
        except VersionNotFoundError:
            if rev == DEFAULT_ALIAS and adapter.latest_version is None:
                return Resolved(repo, proto.commit_sha(repo, None, []), adapter)
        raise VersionNotFoundError(
            f"{repo} has no revision {rev!r}: use main, a version, an alias or a commit id "
            f"(list them with `lorahive versions {repo}`)")

    def _resolved(self, adapter: AdapterInfo, v: VersionInfo) -> Resolved:
        commit = proto.commit_sha(adapter.repo, v.version, v.files)
        if len(_COMMITS) >= _COMMITS_MAX:
            _COMMITS.clear()
        _COMMITS[(adapter.repo, commit)] = v.version
        return Resolved(adapter.repo, commit, adapter, v, list(v.files))

    def writable_revision(self, repo: str, rev: str) -> Resolved:
        """The head a commit applies to: ``main`` (or ``latest``) only, since each commit
        becomes the next version and moves ``latest``."""
        if rev not in (proto.MAIN, DEFAULT_ALIAS):
            raise InvalidRequestError(
                f"commits go to main (each one becomes the next version of {repo}); "
                f"got revision {rev!r}")
        self.require_write(repo)
        return self.resolve_revision(repo, proto.MAIN)

    def refs(self, repo: str) -> dict[str, Any]:
        r = _split(repo)
        adapter = self.service.adapter(self.p, r)
        versions = self.service.versions(self.p, r)
        by_version = {v.version: proto.commit_sha(repo, v.version, v.files) for v in versions}
        head = self.resolve_revision(repo, proto.MAIN).commit
        tags = [{"name": v, "ref": f"refs/tags/{v}", "targetCommit": c} for v, c in by_version.items()]
        tags += [{"name": a, "ref": f"refs/tags/{a}", "targetCommit": by_version[v]}
                 for a, v in sorted(adapter.aliases.items())
                 if a != DEFAULT_ALIAS and a not in by_version and v in by_version]
        return {"branches": [{"name": "main", "ref": "refs/heads/main", "targetCommit": head}],
                "converts": [], "tags": tags, "pullRequests": []}

    def commits(self, repo: str, rev: str) -> list[dict[str, Any]]:
        """History of a revision, newest first: the versions up to the one it resolves to."""
        head = self.resolve_revision(repo, rev)
        if head.version is None:
            return []
        out: list[dict[str, Any]] = []
        for v in self.service.versions(self.p, _split(repo)):  # newest first
            if not out and v.version != head.version.version:
                continue  # newer than the revision asked for
            title = f"lorahive version {v.version}"
            out.append({"id": proto.commit_sha(repo, v.version, v.files), "title": title,
                        "message": "", "authors": [{"user": head.adapter.namespace}],
                        "date": _iso(v.created_at)})
        return out

    def paths_info(self, repo: str, rev: str, paths: list[str]) -> list[dict[str, Any]]:
        """Entries (files or folders) for the given paths that exist at the revision."""
        r = self.resolve_revision(repo, rev)
        by_path = {f.path: f for f in r.files}
        out = []
        for p in dict.fromkeys(x.strip("/") for x in paths):
            if p in by_path:
                out.append(proto.file_entry_json(by_path[p]))
            elif p and any(f.path.startswith(p + "/") for f in r.files):
                parent = p.rsplit("/", 1)[0] if "/" in p else ""
                out += [e for e in proto.tree_entries(r.files, parent) if e["path"] == p]
        return out

    # -- JSON shapes ---------------------------------------------------------------------
    def card_data(self, r: Resolved) -> dict[str, Any]:
        """The version's README front matter, or the card lorahive would generate."""
        readme = next((f for f in r.files if f.path == "README.md"), None)
        if readme is not None and readme.size <= _CARD_MAX:
            text = b"".join(self.store.open_range(readme.sha256)).decode("utf-8", "replace")
            front = parse_card(text)
            if front:
                return front
        a = r.adapter
        out: dict[str, Any] = {"library_name": "peft", "tags": self.tags(a)}
        if a.base_model:
            out["base_model"] = a.base_model
            out["base_model_relation"] = "adapter"
        return out

    def tags(self, a: AdapterInfo, card: dict[str, Any] | None = None) -> list[str]:
        tags = card_tags(a.base_model, a.peft_type or "LORA", list(a.tags))
        if a.base_model:
            tags.append(f"base_model:{a.base_model}")
        tags.append("safetensors")
        for t in (card or {}).get("tags") or []:
            if isinstance(t, str) and t not in tags:
                tags.append(t)
        return list(dict.fromkeys(tags))

    def model_summary(self, a: AdapterInfo, full: bool = False) -> dict[str, Any]:
        """One search result (``list_models``)."""
        out: dict[str, Any] = {
            "_id": a.repo, "id": a.repo, "modelId": a.repo, "author": a.namespace,
            "private": a.private, "gated": False, "disabled": False,
            "downloads": a.downloads, "likes": 0, "library_name": "peft",
            "tags": self.tags(a), "createdAt": _iso(a.created_at),
            "lastModified": _iso(a.updated_at),
        }
        if a.task:
            out["pipeline_tag"] = a.task
        if full:
            out["cardData"] = {"library_name": "peft", "tags": out["tags"],
                               **({"base_model": a.base_model, "base_model_relation": "adapter"}
                                  if a.base_model else {})}
        return out

    def model_info_json(self, r: Resolved, card: dict[str, Any], blobs: bool) -> dict[str, Any]:
        a = r.adapter
        out = self.model_summary(a)
        out.update({
            "sha": r.commit,
            "tags": self.tags(a, card),
            "cardData": card,
            "siblings": [_sibling(f, blobs) for f in r.files],
            "spaces": [],
            "lastModified": _iso(r.version.created_at if r.version else a.updated_at),
        })
        if a.base_model:
            out["baseModels"] = {"relation": "adapter", "models": [{"id": a.base_model}]}
        if r.version:
            out["usedStorage"] = r.version.size
            out["lorahive"] = {"version": r.version.version, "aliases": r.version.aliases,
                               "description": a.description, "task": a.task}
        return out

    # -- search ----------------------------------------------------------------------------
    def search_models(self, search: str | None, author: str | None, filters: Sequence[str],
                      pipeline_tag: str | None, sort: str | None, cursor: int, limit: int
                      ) -> tuple[list[AdapterInfo], int | None]:
        """Hub search semantics over the registry's search: every ``filter`` must be one of
        the result's tags. Tags lorahive derives (``peft``, ``lora``,
        ``base_model:adapter:X``) map onto registry columns; the rest are adapter tags. The
        cursor is the registry offset, so post-filtering never skips or repeats a result."""
        base_model = None
        registry_tags: list[str] = []
        for f in filters:
            for prefix in ("base_model:adapter:", "base_model:"):
                if f.startswith(prefix):
                    base_model = f[len(prefix):]
                    break
            else:
                if f not in _IMPLIED and _is_name(f):
                    registry_tags.append(f)
        order = {"lastModified": "updated", "last_modified": "updated", "createdAt": "created",
                 "created_at": "created", "downloads": "downloads", "id": "name",
                 "modelId": "name"}.get(sort or "", "downloads" if sort else "updated")
        out: list[AdapterInfo] = []
        offset = cursor
        while True:
            page = self.service.search(
                self.p, search, task=pipeline_tag, base_model=base_model, tags=registry_tags,
                namespace=author, sort=order, offset=offset, limit=min(200, max(limit, 20)))
            for a in page.items:
                offset += 1
                if all(f in set(self.tags(a)) for f in filters):
                    out.append(a)
                    if len(out) == limit:
                        return out, (offset if offset < page.total else None)
            if not page.items or offset >= page.total:
                return out, None

    # -- blobs -----------------------------------------------------------------------------
    def open_blob(self, sha: str, start: int, end: int) -> Iterator[bytes]:
        return self.store.open_range(sha, start, end)

    def blob_size(self, sha: str) -> int | None:
        return self.store.size(sha)

    def has_blob(self, sha: str, size: int) -> bool:
        return len(sha) == 64 and self.store.size(sha) == size

    def git_oid(self, f: FileEntry) -> str:
        """git-sha1 of a file's content: what the client compares ``regular`` files by."""
        if f.size > 64 * 1024 * 1024:
            return ""
        return proto.git_blob_sha1(b"".join(self.store.open_range(f.sha256)))

    def count_download(self, r: Resolved, path: str) -> None:
        if r.version is not None and path == "adapter_model.safetensors":
            self.service.record_download(self.p, Ref(r.adapter.namespace, r.adapter.name,
                                                     version=r.version.version))

    async def ingest_stream(self, chunks: AsyncIterator[bytes], sha: str, size: int) -> None:
        """Store an LFS upload, hashed and sized before it becomes visible."""
        if self.store.size(sha) == size:
            async for _ in chunks:
                pass
            return
        with self.store.staging(self.max_file_bytes) as staged:
            buf = bytearray()
            async for chunk in chunks:
                buf += chunk
                if len(buf) >= _WRITE_CHUNK:  # one thread hop per MiB, not per socket read
                    await run_in_threadpool(staged.write, bytes(buf))
                    buf.clear()
            if buf:
                await run_in_threadpool(staged.write, bytes(buf))
            await run_in_threadpool(staged.verify, sha, size)
            await run_in_threadpool(self.store.commit, staged, sha)

    # -- writes ----------------------------------------------------------------------------
    def create_repo(self, repo: str, private: bool) -> bool:
        """An adapter with no version yet (the Hub creates repos before the first commit);
        ``False`` when it exists. Rules as for publish: write scope on the namespace."""
        r = _split(repo)
        check_name(r.name, "adapter name")
        with session_scope(self.service.engine, write=True) as s:
            ns = self.service._namespace(s, r.namespace)
            self.p.require(ns, "write")
            row = s.exec(select(AdapterRow).where(AdapterRow.namespace_id == ns.id,
                                                  AdapterRow.name == r.name)).first()
            if row is not None:
                return False
            s.add(AdapterRow(namespace_id=ns.id, name=r.name, private=private))  # type: ignore[arg-type]
        return True

    def publish_files(self, repo: str, files: list[FileEntry], summary: str,
                      description: str) -> Resolved:
        """A commit's file list becomes the next version (task, tags and description come
        from the README's front matter when it has them)."""
        r = _split(repo)
        opts = PublishOptions()
        readme = next((f for f in files if f.path == "README.md"), None)
        if readme is not None and readme.size <= _CARD_MAX:
            text = b"".join(self.store.open_range(readme.sha256)).decode("utf-8", "replace")
            opts = _options_from_card(parse_card(text))
        v = self.service.commit(self.p, r.repo, files, None, opts)
        adapter = self.service.adapter(self.p, r)
        return self._resolved(adapter, v)


def _options_from_card(front: dict[str, Any]) -> PublishOptions:
    tags = [t for t in front.get("tags") or [] if isinstance(t, str) and _is_name(t)
            and t not in _IMPLIED]
    task = front.get("lorahive_task") or front.get("pipeline_tag")
    return PublishOptions(task=str(task) if isinstance(task, str) else None, tags=tags)


def _sibling(f: FileEntry, blobs: bool) -> dict[str, Any]:
    if not blobs:
        return {"rfilename": f.path}
    e = proto.file_entry_json(f)
    return {"rfilename": f.path, "size": f.size, "blobId": e["oid"],
            "lfs": {"sha256": f.sha256, "size": f.size, "pointerSize": e["lfs"]["pointerSize"]}}


def _is_version(s: str) -> bool:
    try:
        check_version(s)
        return True
    except LorahiveError:
        return False


def _is_name(s: str) -> bool:
    try:
        check_name(s)
        return True
    except LorahiveError:
        return False


def _iso(t: Any) -> str | None:
    if t is None:
        return None
    s = t.isoformat()
    if s.endswith("+00:00"):
        return s[:-6] + "Z"
    return s if t.tzinfo else s + "Z"


def _bearer(request: Request) -> str | None:
    h = request.headers.get("authorization") or ""
    scheme, _, secret = h.partition(" ")
    return secret.strip() or None if scheme.lower() == "bearer" else None


async def hf_backend(request: Request) -> HfBackend:
    """Dependency: the app's registry service and the caller's bearer token."""
    return HfBackend(request.app.state.service, _bearer(request))

