"""What the Hub-compatible routes need from the registry, for one caller: revisions mapped to
versions, model-info and search results in the Hub's JSON shapes, and a commit's file list
handed to the service as a new version. Every rule (visibility, scopes, validation,
immutability, uploads, downloads and their counting) stays in ``RegistryService``; this layer
only translates, and never touches tables, sessions or blobs.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request

from lorahive.hub.errors import (
    AdapterNotFoundError,
    EntryNotFoundError,
    InvalidRequestError,
    LorahiveError,
    VersionNotFoundError,
)
from lorahive.hub.modelcard import card_tags, parse_card
from lorahive.hub.protocol import AdapterInfo, FileEntry, VersionInfo, WhoAmI
from lorahive.hub.refs import DEFAULT_ALIAS, Ref, check_version, parse_ref
from lorahive.registry.auth import Principal
from lorahive.registry.card import CARD, CARD_MAX, IMPLIED_TAGS, is_name
from lorahive.registry.hf import protocol as proto
from lorahive.registry.http import bearer_token
from lorahive.registry.service import PresignedUpload, PublishOptions, RegistryService
from lorahive.registry.transfer import Download, StoredBlob

_COMMIT = re.compile(proto.COMMIT_RE)
# (repo, commit id) -> version: lets a commit-pinned request (every file of a snapshot_download)
# resolve one version instead of hashing all of them. Per process, bounded.
_COMMITS: dict[tuple[str, str], str] = {}
_COMMITS_MAX = 100_000
_GIT_OID_MAX = 64 * 1024 * 1024  # regular files the client compares by git-sha1


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
        me.namespaces = self.service.namespaces_of(self.p)
        return me

    def require_write(self, repo: str) -> str:
        """The caller's user name if it may publish to ``repo``'s namespace, else raise."""
        self.service.require_namespace(self.p, _split(repo).namespace, "write")
        return self.p.user or ""

    def presign_upload(self, repo: str, oid: str, size: int) -> PresignedUpload:
        """A signed URL's grant to upload one LFS object to ``repo``."""
        return self.service.presign_upload(self.p, _split(repo).repo, oid, size)

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
            if is_name(rev):
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
        if r.version is not None and any(f.path == CARD for f in r.files):
            data = self.service.read_file(self.p, r.version.ref, CARD, CARD_MAX)
            front = parse_card(data.decode("utf-8", "replace")) if data else {}
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
                if f not in IMPLIED_TAGS and is_name(f):
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

    # -- files -----------------------------------------------------------------------------
    def download(self, r: Resolved, path: str, range: str | None, head: bool) -> Download:
        """A file of a resolved revision, through the service's one download step."""
        if r.version is None:
            raise EntryNotFoundError(f"{path} does not exist in {r.repo} (no version yet)")
        return self.service.download(self.p, r.version.ref, path, range=range, head=head,
                                     redirect=True)

    def blob_size(self, sha: str) -> int | None:
        return self.service.blob_size(self.p, sha) if _is_sha256(sha) else None

    def git_oid(self, r: Resolved, f: FileEntry) -> str:
        """git-sha1 of a file's content: what the client compares ``regular`` files by."""
        data = None if r.version is None else self.service.read_file(
            self.p, r.version.ref, f.path, _GIT_OID_MAX)
        return "" if data is None else proto.git_blob_sha1(data)

    async def ingest_presigned(self, chunks: AsyncIterator[bytes], repo: str, oid: str,
                               size: int, grant: PresignedUpload) -> StoredBlob:
        """Store an LFS upload sent to a signed URL (the grant is its authorisation)."""
        return await self.service.ingest_presigned(chunks, _split(repo).repo, oid, size, grant)

    def ingest(self, chunks: Iterable[bytes]) -> tuple[str, int]:
        """Store an inline file of a commit under its own sha256."""
        stored = self.service.ingest(self.p, chunks)
        return stored.sha256, stored.size

    # -- writes ----------------------------------------------------------------------------
    def create_repo(self, repo: str, private: bool) -> bool:
        """An adapter with no version yet; ``False`` when it exists."""
        return self.service.create_adapter(self.p, _split(repo).repo, private)

    def publish_files(self, head: Resolved, files: list[FileEntry], summary: str,
                      description: str) -> Resolved:
        """A commit's file list becomes the next version (task and tags come from the
        README's front matter when it has them). Git semantics: a commit that changes
        nothing leaves the head as it is; one that returns to an older version's files is a
        new version all the same (``main`` must show what was committed)."""
        if head.version is not None and _by_path(files) == _by_path(head.files):
            return head
        r = _split(head.repo)
        v = self.service.commit(self.p, r.repo, files, None,
                                PublishOptions(from_card=True, allow_duplicate=True))
        return self._resolved(self.service.adapter(self.p, r), v)


def _by_path(files: Sequence[FileEntry]) -> dict[str, tuple[str, int]]:
    return {f.path: (f.sha256, f.size) for f in files}


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


def _is_sha256(s: str) -> bool:
    return len(s) == 64 and all(c in "0123456789abcdef" for c in s)


def _iso(t: Any) -> str | None:
    if t is None:
        return None
    s = t.isoformat()
    if s.endswith("+00:00"):
        return s[:-6] + "Z"
    return s if t.tzinfo else s + "Z"


async def hf_backend(request: Request) -> HfBackend:
    """Dependency: the app's registry service and the caller's bearer token."""
    return HfBackend(request.app.state.service, bearer_token(request))

