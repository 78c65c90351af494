"""The registry's behaviour, independent of transport: publish (commit), resolve, search,
aliases, delete, gc, namespaces and tokens.

Each method takes the calling ``Principal`` and opens its own transaction, so the in-process
registry and the REST app share every rule. A commit validates the adapter from the stored
blobs *before* its transaction and writes the version, its files, tags and the ``latest``
alias in one transaction: readers see a whole version or none.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import hashlib
import hmac
import json
import os
import secrets
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import anyio.to_thread
from sqlalchemy import Integer, Select, and_, bindparam, func, or_, update
from sqlalchemy.exc import IntegrityError as SqlIntegrityError
from sqlalchemy.orm import aliased
from sqlalchemy.sql.functions import aggregate_strings
from sqlmodel import Session, col, select

from lorahive.hub.errors import (
    AdapterNotFoundError,
    AuthenticationError,
    ConflictError,
    EntryNotFoundError,
    IntegrityError,
    InvalidReferenceError,
    InvalidRequestError,
    NamespaceNotFoundError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    VersionNotFoundError,
)
from lorahive.hub.lineage import SIDECAR, parent_edges
from lorahive.hub.manifest import CONFIG_NAME, WEIGHTS_NAME
from lorahive.hub.modelcard import parse_card
from lorahive.hub.protocol import (
    AdapterInfo,
    FileEntry,
    GcReport,
    NamespaceInfo,
    NewToken,
    PublishPlan,
    SearchPage,
    TokenInfo,
    VersionInfo,
    WhoAmI,
)
from lorahive.hub.publishing import check_plain_json, check_publishable
from lorahive.hub.refs import DEFAULT_ALIAS, Ref, check_name, check_version, parse_ref
from lorahive.registry import blobs as blobmod
from lorahive.registry.auth import (
    ANONYMOUS,
    SCOPES,
    NamespaceView,
    Principal,
    _aware,
    authenticate,
    hash_token,
    new_secret,
    scope_rank,
    token_principal,
)
from lorahive.registry.card import (
    CARD,
    CARD_MAX,
    card_text,
    options_from_card,
    redact_parents,
)
from lorahive.registry.db import ensure_schema, make_engine, read_connection, session_scope
from lorahive.registry.metrics import Metrics
from lorahive.registry.presign import SIGNED_URL_TTL, check_upload_sig, sign_upload, signing_key
from lorahive.registry.resilience import remove_orphans
from lorahive.registry.settings import Settings
from lorahive.registry.tables import (
    AdapterRow,
    AdapterTag,
    AliasRow,
    FileRow,
    LineageEdgeRow,
    Namespace,
    Token,
    User,
    VersionRow,
    WebSession,
    utcnow,
)
from lorahive.registry.transfer import (
    Download,
    StoredBlob,
    batched,
    blocking,
    not_modified,
    parse_range,
)
from lorahive.registry.validation import check_manifest, single_threaded_torch

SORTS = {
    "updated": (col(AdapterRow.updated_at).desc(),),
    "created": (col(AdapterRow.created_at).desc(),),
    "downloads": (col(AdapterRow.downloads).desc(), col(AdapterRow.updated_at).desc()),
    "name": (col(Namespace.name).asc(), col(AdapterRow.name).asc()),
}
MAX_PAGE = 200
MAX_OFFSET = 10**9
MAX_ID = 2**63 - 1
MAX_EXPIRY_DAYS = 36_500
MAX_GRACE_SECONDS = 10 * 365 * 86_400
FROZEN_CACHE = 4096  # versions whose immutable part a process keeps in memory


@dataclass
class PublishOptions:
    """Adapter-level metadata sent with a commit; ``None`` keeps what the adapter has."""

    task: str | None = None
    tags: list[str] = field(default_factory=list)
    private: bool | None = None
    description: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    # task and tags from the README.md front matter among the files, where not given
    from_card: bool = False
    allow_duplicate: bool = False  # publish files identical to an existing version anyway


@dataclass(frozen=True)
class PresignedUpload:
    """A grant to upload one object: who asked, until when, and the signature over both."""

    user: str
    expires: int
    signature: str


@dataclass
class _Validated:
    summary: dict[str, Any]
    stats: list[dict[str, Any]]
    lineage: dict[str, Any] | None
    metrics: dict[str, Any]
    extra: dict[str, Any]


class RegistryService:
    """Transport-free registry over one database engine and one blob store."""

    def __init__(self, settings: Settings | None = None, migrate: bool = True):
        self.settings = settings or Settings()
        self.settings.home.mkdir(parents=True, exist_ok=True)
        self.engine = make_engine(self.settings.database_url, self.settings.db_pool_size)
        if migrate:
            ensure_schema(self.engine)
        self.store = blobmod.open_store(self.settings.storage_url, self.settings.home,
                                        self.settings.s3_endpoint_url, self.settings.s3_region,
                                        self.settings.s3_public_endpoint_url)
        self.metrics = Metrics()  # this process's transfer counters (served on /metrics)
        self._frozen_cache: OrderedDict[tuple[int, dt.datetime], VersionInfo] = OrderedDict()
        self._frozen_lock = threading.Lock()
        self._signing_key: bytes | None = None

    def close(self) -> None:
        self.engine.dispose()

    # -- identity ------------------------------------------------------------------------
    def authenticate(self, secret: str | None) -> Principal:
        if not secret:
            return ANONYMOUS
        with read_connection(self.engine) as conn:
            return authenticate(conn, secret)

    def bootstrap_admin(self) -> str | None:
        """On an empty database: create user ``admin`` and an admin token, saved (0600) in
        the data directory for the local CLI. Returns the secret when one was created."""
        with session_scope(self.engine, write=True) as s:
            if s.exec(select(User.id)).first() is not None:
                return None
            user = User(name="admin", is_admin=True)
            s.add(user)
            s.flush()
            s.add(Namespace(name="admin", owner_id=user.id))
            secret = new_secret()
            s.add(Token(user_id=user.id, name="bootstrap", token_hash=hash_token(secret),
                        scope="admin"))
        path = self.settings.admin_token_file
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secret + "\n")
        return secret

    def whoami(self, p: Principal) -> WhoAmI:
        return WhoAmI(user=p.user, is_admin=p.is_admin, scope=p.scope,  # type: ignore[arg-type]
                      namespaces=list(p.namespaces))

    # -- lookups -------------------------------------------------------------------------
    def _namespace(self, s: Session, name: str) -> Namespace:
        ns = s.exec(select(Namespace).where(Namespace.name == name)).first()
        if ns is None:
            raise NamespaceNotFoundError(
                f"namespace {name!r} does not exist; create it with `lorahive namespace create {name}`"
            )
        return ns

    def _adapter(self, s: Session, p: Principal, ref: Ref, lock: bool = False
                 ) -> tuple[AdapterRow, Namespace]:
        """The adapter, or 404 when it is absent or private and invisible to ``p``."""
        q = (select(AdapterRow, Namespace).join(Namespace)
             .where(Namespace.name == ref.namespace, AdapterRow.name == ref.name))
        if lock:
            q = q.with_for_update(of=AdapterRow)  # type: ignore[arg-type]
        row = s.exec(q).first()
        if row is None or (row[0].private and not p.can(row[1], "read")):
            raise _adapter_not_found(ref)
        return row

    def _version(self, s: Session, a: AdapterRow, ref: Ref) -> VersionRow:
        if ref.version:
            v = s.exec(select(VersionRow).where(VersionRow.adapter_id == a.id,
                                                VersionRow.version == ref.version)).first()
        else:
            alias = ref.alias or DEFAULT_ALIAS
            v = s.exec(select(VersionRow).join(AliasRow, col(AliasRow.version_id) == VersionRow.id)
                       .where(AliasRow.adapter_id == a.id, AliasRow.name == alias)).first()
        if v is None:
            raise _version_not_found(ref)
        return v

    def _version_info(self, s: Session, p: Principal, ns: Namespace, a: AdapterRow,
                      v: VersionRow) -> VersionInfo:
        files = s.exec(select(FileRow).where(FileRow.version_id == v.id).order_by(FileRow.path)).all()
        aliases = s.exec(select(AliasRow.name).where(AliasRow.version_id == v.id)).all()
        return VersionInfo(
            namespace=ns.name, name=a.name, version=v.version, created_at=v.created_at,
            files=[FileEntry(path=f.path, sha256=f.sha256, size=f.size) for f in files],
            size=v.size, sha256=v.sha256, peft_type=v.peft_type, base_model=v.base_model,
            rank=v.rank, lora_alpha=v.lora_alpha, target_modules=list(v.target_modules),
            num_parameters=v.num_parameters, summary=dict(v.summary), stats=list(v.stats),
            metrics=dict(v.metrics), metadata=dict(v.meta),
            lineage=self._lineage_for(s, p, v.lineage),
            downloads=v.downloads, aliases=sorted(aliases), private=a.private,
        )

    def _lineage_for(self, s: Session, p: Principal, lineage: dict[str, Any] | None
                     ) -> dict[str, Any] | None:
        """``lineage`` as ``p`` may see it. A registry parent (``ns/name@version``) that ``p``
        cannot see (private to others, or not in this registry, which reads the same) is shown
        as ``{"ref": "private", "version": None, "sha256": None, "weight": w}``; local parents
        (directories) stay as recorded. Returns ``lineage`` itself when nothing is hidden."""
        parents = (lineage or {}).get("parents")
        if not isinstance(parents, list):
            return lineage
        seen: dict[tuple[str, str], bool] = {}
        out, hidden = [], False
        for par in parents:
            ref = _registry_parent(par)
            if ref is None:
                out.append(par)
                continue
            key = (ref.namespace, ref.name)
            if key not in seen:
                row = s.exec(select(AdapterRow, Namespace).join(Namespace).where(
                    Namespace.name == ref.namespace, AdapterRow.name == ref.name)).first()
                seen[key] = row is not None and (not row[0].private or p.can(row[1], "read"))
            if seen[key]:
                out.append(par)
            else:
                hidden = True
                weight = par.get("weight") if isinstance(par, dict) else None
                out.append({"ref": "private", "version": None, "sha256": None, "weight": weight})
        return {**lineage, "parents": out} if hidden and lineage else lineage

    def _adapter_infos(self, s: Session, rows: Sequence[Any]) -> list[AdapterInfo]:
        """Adapter summaries for ``(AdapterRow, Namespace)`` rows; their tags and aliases in
        one prebuilt statement each."""
        cols = [(a.id, ns.name, a.name, a.description, a.task, a.base_model, a.peft_type,
                 a.private, a.downloads, a.created_at, a.updated_at) for a, ns in rows]
        ids = [c[0] for c in cols]
        tags: dict[int, list[str]] = {}
        aliases: dict[int, dict[str, str]] = {}
        if ids:
            for aid, tag in s.execute(_TAGS_OF, {"ids": ids}):
                tags.setdefault(aid, []).append(tag)
            for aid, name, ver in s.execute(_ALIASES_OF, {"ids": ids}):
                aliases.setdefault(aid, {})[name] = ver
        return [_adapter_info(c, tags.get(c[0], []), aliases.get(c[0], {})) for c in cols]

    # -- reads ---------------------------------------------------------------------------
    def resolve(self, p: Principal, ref: str | Ref) -> VersionInfo:
        """A version by number or alias, in one prebuilt query (``_resolve_statement``): the
        adapter, its namespace, the version's mutable columns and its aliases come in one row;
        the immutable rest of the version (files, summary, stats, ...) is read once per
        process (``_frozen``). A session is opened only for what the row does not hold."""
        r = parse_ref(ref) if isinstance(ref, str) else ref
        params = {"ns": r.namespace, "name": r.name,
                  "key": r.version if r.version else (r.alias or DEFAULT_ALIAS)}
        with read_connection(self.engine) as conn:
            row = conn.execute(_resolve_statement(r.version is not None), params).first()
            if row is None:
                raise _adapter_not_found(r)
            ns_name, owner_id, name, private, vid, created, downloads, alias_names = row
            if private and not p.can(NamespaceView(ns_name, owner_id), "read"):
                raise _adapter_not_found(r)
            if vid is None:
                raise _version_not_found(r)
            frozen = self._frozen_hit(vid, created)
            lineage = frozen.lineage if frozen is not None else None
            if frozen is None or isinstance((lineage or {}).get("parents"), list):
                with Session(bind=conn, expire_on_commit=False) as s:
                    frozen = frozen or self._frozen(s, vid, created)
                    lineage = self._lineage_for(s, p, frozen.lineage)
        return frozen.model_copy(update={  # fresh top-level containers: callers may edit them
            "files": list(frozen.files), "target_modules": list(frozen.target_modules),
            "summary": dict(frozen.summary), "stats": list(frozen.stats),
            "metrics": dict(frozen.metrics), "metadata": dict(frozen.metadata),
            "namespace": ns_name, "name": name, "downloads": downloads,
            "aliases": sorted(alias_names.split(",")) if alias_names else [],
            "private": private, "lineage": lineage})

    def _frozen_hit(self, vid: int, created: dt.datetime) -> VersionInfo | None:
        key = (vid, created)
        with self._frozen_lock:
            hit = self._frozen_cache.get(key)
            if hit is not None:
                self._frozen_cache.move_to_end(key)
            return hit

    def _frozen(self, s: Session, vid: int, created: dt.datetime) -> VersionInfo:
        """What never changes in a version (every field but the adapter's names, downloads,
        aliases, visibility and how lineage shows to a caller), cached per process by row
        id and creation time (an id reused after a delete is another key)."""
        hit = self._frozen_hit(vid, created)
        if hit is not None:
            return hit
        key = (vid, created)
        v = s.get(VersionRow, vid)
        assert v is not None
        files = s.exec(select(FileRow).where(FileRow.version_id == vid)
                       .order_by(FileRow.path)).all()
        info = VersionInfo(
            namespace="", name="", version=v.version, created_at=v.created_at,
            files=[FileEntry(path=f.path, sha256=f.sha256, size=f.size) for f in files],
            size=v.size, sha256=v.sha256, peft_type=v.peft_type, base_model=v.base_model,
            rank=v.rank, lora_alpha=v.lora_alpha, target_modules=list(v.target_modules),
            num_parameters=v.num_parameters, summary=dict(v.summary), stats=list(v.stats),
            metrics=dict(v.metrics), metadata=dict(v.meta), lineage=v.lineage)
        with self._frozen_lock:
            self._frozen_cache[key] = info
            while len(self._frozen_cache) > FROZEN_CACHE:
                self._frozen_cache.popitem(last=False)
        return info

    def adapter(self, p: Principal, ref: str | Ref) -> AdapterInfo:
        r = parse_ref(ref) if isinstance(ref, str) else ref
        with session_scope(self.engine) as s:
            return self._adapter_infos(s, [self._adapter(s, p, r)])[0]

    def versions(self, p: Principal, ref: str | Ref) -> list[VersionInfo]:
        r = parse_ref(ref) if isinstance(ref, str) else ref
        with session_scope(self.engine) as s:
            a, ns = self._adapter(s, p, r)
            rows = s.exec(select(VersionRow).where(VersionRow.adapter_id == a.id)
                          .order_by(col(VersionRow.seq).desc())).all()
            return [self._version_info(s, p, ns, a, v) for v in rows]

    def search(self, p: Principal, text: str | None = None, *, task: str | None = None,
               base_model: str | None = None, tags: Sequence[str] = (),
               peft_type: str | None = None, namespace: str | None = None,
               sort: str = "updated", offset: int = 0, limit: int = 20) -> SearchPage:
        if sort not in SORTS:
            raise InvalidRequestError(f"unknown sort {sort!r}; use one of {sorted(SORTS)}")
        if not 0 <= offset <= MAX_OFFSET or not 1 <= limit <= MAX_PAGE:
            raise InvalidRequestError(f"offset must be 0..{MAX_OFFSET} and limit 1..{MAX_PAGE}")
        words = (text or "").lower().split()
        vis, vis_params = _visibility(p)
        page, count = _search_statements((len(words), bool(task), bool(base_model),
                                          bool(peft_type), bool(namespace), len(tags), sort, vis))
        params: dict[str, Any] = {
            **vis_params, "task": task, "base_model": base_model,
            "peft_type": peft_type.upper() if peft_type else None, "namespace": namespace,
            "offset": offset, "limit": limit,
            **{f"w{i}": f"%{_escape_like(w)}%" for i, w in enumerate(words)},
            **{f"t{i}": t for i, t in enumerate(tags)}}
        with read_connection(self.engine) as conn:
            rows = conn.execute(page, params).all()
            if rows:
                total = rows[0].total
            else:  # past the end: no row carries the count
                total = conn.execute(count, params).scalar_one() if offset else 0
        items = [_adapter_info(r, sorted(r.tags.split(SEP)) if r.tags else [],
                               dict(a.split(PAIR, 1) for a in r.aliases.split(SEP))
                               if r.aliases else {})
                 for r in rows]
        return SearchPage(total=total, offset=offset, limit=limit, items=items)

    def file_entry(self, p: Principal, ref: str | Ref, path: str) -> FileEntry:
        """A file of a visible version (what a download serves)."""
        r = parse_ref(ref) if isinstance(ref, str) else ref
        info = self.resolve(p, r)
        for f in info.files:
            if f.path == path:
                return f
        raise EntryNotFoundError(f"{info.ref} has no file {path!r}")

    def download(self, p: Principal, ref: str | Ref, path: str, *, range: str | None = None,
                 if_none_match: str | None = None, head: bool = False,
                 redirect: bool = False) -> Download:
        """The one download step of every door (REST, HF ``resolve``, the embedded registry's
        pull): visibility, the file, ``If-None-Match``, the Range policy of
        ``transfer.parse_range``, the redirect to object storage and the download count.

        ``redirect`` (HTTP doors): with a store that presigns URLs and ``redirect_downloads``
        on, the answer is a 302 to the object, decided only after the visibility check; the
        store then serves the bytes and the Range. Counting: the request that hands out the
        weights from byte 0, or the link to them, counts one download. A GET streamed from
        byte 0 counts; redirected, the GET or HEAD that receives the link counts (the
        Hugging Face client asks with HEAD and then fetches the object without coming back,
        as it does from the Hub), the object store's own GETs are never seen. A streamed
        HEAD, a resumed download (Range from byte > 0) and other files do not count."""
        r = parse_ref(ref) if isinstance(ref, str) else ref
        entry = self.file_entry(p, r, path)
        if not_modified(if_none_match, entry.sha256):
            return Download(entry, 304)
        span = parse_range(range, entry.size)
        start, end = span if span is not None else (0, entry.size - 1)
        counted = start == 0 and path == WEIGHTS_NAME
        url = self._download_url(entry) if redirect else None
        if url is not None:
            if counted:
                self._count_download(p, r)
            self.metrics.add_redirect()
            return Download(entry, 302, start, end, location=url)
        dl = Download(entry, 206 if span is not None else 200, start, end)
        if head:
            return dl
        if counted:
            self._count_download(p, r)
        dl.body = self.store.open_range(entry.sha256, start, end) if dl.length else iter(())
        self.metrics.add_bytes("download", dl.length)
        return dl

    def _download_url(self, entry: FileEntry) -> str | None:
        """A presigned URL of the file's blob, or ``None`` to stream it (redirects off, a
        store without URLs, or an empty file, which has nothing to fetch)."""
        if not self.settings.redirect_downloads or entry.size == 0:
            return None
        return self.store.download_url(entry.sha256, self.settings.redirect_ttl_seconds,
                                       entry.path.rsplit("/", 1)[-1])

    def read_file(self, p: Principal, ref: str | Ref, path: str, max_bytes: int) -> bytes | None:
        """A small file of a visible version, in memory (``None`` when it is over
        ``max_bytes``); not a download (nothing is counted)."""
        entry = self.file_entry(p, ref, path)
        if entry.size > max_bytes:
            return None
        return b"".join(self.store.open_range(entry.sha256))

    def _count_download(self, p: Principal, r: Ref) -> None:
        with session_scope(self.engine, write=True) as s:
            a, _ = self._adapter(s, p, r)
            v = self._version(s, a, r)
            s.exec(update(AdapterRow).where(col(AdapterRow.id) == a.id)  # type: ignore[call-overload]
                   .values(downloads=AdapterRow.downloads + 1))
            s.exec(update(VersionRow).where(col(VersionRow.id) == v.id)  # type: ignore[call-overload]
                   .values(downloads=VersionRow.downloads + 1))

    # -- blobs -------------------------------------------------------------------------------
    def require_uploader(self, p: Principal) -> None:
        """Blob uploads need a token with write scope (blobs are unreadable until committed)."""
        if p.anonymous:
            raise AuthenticationError("uploads need a token with write scope; run `lorahive login`")
        if not p.has_scope("write"):
            raise PermissionDeniedError("uploads need a token with write scope")

    def missing_blobs(self, p: Principal, shas: Iterable[str]) -> list[str]:
        """Which of these blobs the store lacks (an uploader's question)."""
        self.require_uploader(p)
        return [s for s in dict.fromkeys(shas) if not self.store.exists(blobmod.check_sha256(s))]

    def blob_size(self, p: Principal, sha: str) -> int | None:
        """The stored size of a blob, ``None`` when absent (an uploader's question)."""
        self.require_uploader(p)
        return self.store.size(blobmod.check_sha256(sha))

    def ingest(self, p: Principal, chunks: Iterable[bytes], sha: str | None = None,
               size: int | None = None) -> StoredBlob:
        """The one streaming ingest of every door (REST blob PUT, HF LFS PUT and inline commit
        files, the embedded registry's publish): bytes are staged on the data disk while
        hashed and counted, and become visible under their sha256 only once hash and declared
        size match. ``sha=None`` stores the content under whatever it hashes to."""
        self.require_uploader(p)
        return self._ingest(chunks, sha, size)

    async def ingest_stream(self, p: Principal, chunks: AsyncIterator[bytes],
                            sha: str | None = None, size: int | None = None) -> StoredBlob:
        """``ingest`` for a request body read on the event loop: staging, hashing and disk
        writes run in a worker thread, fed 1 MiB at a time."""
        return await anyio.to_thread.run_sync(self.ingest, p, blocking(batched(chunks)), sha,
                                              size)

    def presign_upload(self, p: Principal, repo: str, sha: str, size: int) -> PresignedUpload:
        """A signed grant to upload one object to ``repo`` without credentials (write access
        to its namespace needed now, valid ``SIGNED_URL_TTL`` seconds)."""
        self.require_namespace(p, parse_ref(repo).namespace, "write")
        blobmod.check_sha256(sha)
        expires = int(time.time()) + SIGNED_URL_TTL
        user = p.user or ""
        return PresignedUpload(user, expires,
                               sign_upload(self._key(), repo, sha, size, user, expires))

    async def ingest_presigned(self, chunks: AsyncIterator[bytes], repo: str, sha: str,
                               size: int, grant: PresignedUpload) -> StoredBlob:
        """``ingest_stream`` authorised by a grant from ``presign_upload`` instead of a token."""
        if not check_upload_sig(self._key(), repo, sha, size, grant.user, grant.expires,
                                grant.signature):
            raise PermissionDeniedError(
                "upload URL is invalid or expired; ask the batch endpoint for a new one")
        return await anyio.to_thread.run_sync(self._ingest, blocking(batched(chunks)), sha,
                                              size)

    def _key(self) -> bytes:
        if self._signing_key is None:
            self._signing_key = signing_key(self.settings.home)
        return self._signing_key

    def _ingest(self, chunks: Iterable[bytes], sha: str | None, size: int | None) -> StoredBlob:
        got, n, existed = blobmod.ingest(self.store, chunks, sha, size,
                                         self.settings.max_upload_bytes)
        if not existed:
            self.metrics.add_bytes("upload", n)
        return StoredBlob(got, n, existed)

    # -- publish -------------------------------------------------------------------------
    @contextlib.contextmanager
    def _staged(self, files: Sequence[FileEntry], names: Sequence[str]) -> Iterator[Path]:
        """The named files of a version in a temporary directory (links to local blobs,
        copies from object storage) for code that reads an adapter by path."""
        by_path = {f.path: f for f in files}
        tmp = Path(tempfile.mkdtemp(prefix=".lorahive-tmp-stage-", dir=self.settings.home))
        try:
            for name in names:
                if name in by_path:
                    sha = by_path[name].sha256
                    src = self.store.local_path(sha)
                    if src is not None:
                        os.symlink(src, tmp / name)
                    else:
                        blobmod.copy_blob(self.store, sha, tmp / name)
            yield tmp
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _validate(self, files: Sequence[FileEntry]) -> _Validated:
        """The stored blobs as the manifest declares them, then the adapter checked with
        ``hub.publishing.check_publishable`` (what clients check before uploading) and its
        statistics."""
        for f in files:
            got = self.store.size(f.sha256)
            if got is None:
                raise EntryNotFoundError(
                    f"blob {f.sha256} for {f.path} was not uploaded; upload it before committing"
                )
            if got != f.size:
                raise IntegrityError(f"{f.path}: declared {f.size} bytes but the blob has {got}")
        with self._staged(files, (CONFIG_NAME, WEIGHTS_NAME, SIDECAR)) as tmp:
            ok = check_publishable(tmp)
            with single_threaded_torch():
                stats = [_stat_dict(st) for st in ok.adapter.stats()] if ok.adapter.is_lora else []
        return _Validated(ok.summary, stats, ok.lineage, ok.metrics, ok.extra)

    def _target(self, repo: str, version: str | None, files: Sequence[FileEntry]) -> Ref:
        """``repo`` as a publish target, with the checks that need no database."""
        r = parse_ref(repo)
        if r.version or r.alias:
            raise InvalidReferenceError("publish to namespace/name; pass the version separately")
        if version is not None:
            check_version(version)
        st = self.settings
        check_manifest(files, st.max_files, st.max_upload_bytes, st.max_filename_length)
        return r

    def _same_content(self, s: Session, r: Ref, a: AdapterRow | None, digest: str,
                      version: str | None, allow_duplicate: bool) -> VersionRow | None:
        """The existing version whose files are ``digest``'s, if the publish is to answer it
        instead of creating one; raises when ``version`` exists with other files."""
        if a is None:
            return None
        if version is not None:
            old = s.exec(select(VersionRow).where(VersionRow.adapter_id == a.id,
                                                  VersionRow.version == version)).first()
            if old is not None:
                if old.content_sha256 == digest:
                    return old
                raise ConflictError(
                    f"{r.repo}@{version} exists with different content; versions are "
                    "immutable: publish a new version (omit the version for the next number)")
        if allow_duplicate:
            return None
        return s.exec(select(VersionRow).where(VersionRow.adapter_id == a.id,
                                               VersionRow.content_sha256 == digest)
                      .order_by(col(VersionRow.seq).desc())).first()

    def preflight(self, p: Principal, repo: str, files: Sequence[FileEntry],
                  version: str | None = None, allow_duplicate: bool = False) -> PublishPlan:
        """What a publish of ``files`` needs, decided before it uploads anything: refused as
        the commit would refuse it (manifest, namespace, access, ``version`` taken by other
        files); else the blobs the store lacks, or the version that already has these files
        (then nothing needs uploading)."""
        r = self._target(repo, version, files)
        digest = content_digest(files)
        with session_scope(self.engine) as s:
            ns = self._namespace(s, r.namespace)
            p.require(ns, "write")
            a = self._adapter_row(s, ns, r.name)
            old = self._same_content(s, r, a, digest, version, allow_duplicate)
            if old is not None and a is not None:
                info = self._version_info(s, p, ns, a, old)
                return PublishPlan(unchanged=info.model_copy(update={"unchanged": True}))
        return PublishPlan(missing=self.missing_blobs(p, (f.sha256 for f in files)))

    def commit(self, p: Principal, repo: str, files: Sequence[FileEntry],
               version: str | None = None, options: PublishOptions | None = None) -> VersionInfo:
        """Create version ``version`` (or the next number) of ``repo`` from uploaded blobs, or
        answer the existing version with the same files (``unchanged``; explicit adapter
        settings such as ``private`` still apply) unless ``allow_duplicate``."""
        opts = options or PublishOptions()
        if opts.from_card:
            task, card_tags = options_from_card(self._card_front(files))
            opts = replace(opts, task=opts.task or task, tags=[*opts.tags, *card_tags],
                           from_card=False)
        check_plain_json(opts.metrics, "metrics")
        tags = sorted({check_name(t, "tag") for t in opts.tags})
        if opts.task is not None and len(opts.task) > 128:
            raise InvalidRequestError("task must be at most 128 characters")
        r = self._target(repo, version, files)
        digest = content_digest(files)
        with session_scope(self.engine) as s:
            ns = self._namespace(s, r.namespace)  # 404 before 401/403 would leak nothing new
            p.require(ns, "write")
            unchanged = self._same_content(s, r, self._adapter_row(s, ns, r.name), digest,
                                           version, opts.allow_duplicate) is not None
        if unchanged:  # no validation needed: the files are a version already
            return self._commit_tx(p, r, files, digest, version, opts, tags, None)
        checked = self._validate(files)
        with session_scope(self.engine) as s:
            public = self._lineage_for(s, ANONYMOUS, checked.lineage)
        if public is not checked.lineage:  # a parent the public may not see
            if opts.private is None:
                opts = replace(opts, private=True)  # its weights carry that parent
            files = self._with_public_sidecar(files, public)
            files = self._with_public_card(files, checked.lineage, public)
        if not any(f.path == CARD for f in files):
            card = card_text(r.repo, summary=checked.summary, task=opts.task,
                             description=opts.description, tags=tags, lineage=public,
                             metrics={**checked.metrics, **(opts.metrics or {})})
            stored = self._ingest([card], None, len(card))
            files = sorted([*files, FileEntry(path=CARD, sha256=stored.sha256, size=stored.size)],
                           key=lambda f: f.path)
        for attempt in range(3):
            try:
                return self._commit_tx(p, r, files, digest, version, opts, tags, checked)
            except SqlIntegrityError:
                if attempt == 2:
                    raise ConflictError(
                        f"{r.repo}: a concurrent publish won the race; retry") from None
        raise AssertionError("unreachable")

    def _with_public_sidecar(self, files: Sequence[FileEntry], lineage: dict[str, Any] | None
                             ) -> list[FileEntry]:
        """``files`` with ``lorahive.json`` rewritten to carry ``lineage`` (its public form):
        a stored file is served to everyone who can read the version, whoever they are, so it
        never names what they may not see (the full lineage stays in the database, shown per
        caller)."""
        side = next(f for f in files if f.path == SIDECAR)
        data = json.loads(b"".join(self.store.open_range(side.sha256)))
        data["lineage"] = lineage
        body = json.dumps(data, indent=2, sort_keys=True).encode()
        stored = self._ingest([body], None, len(body))
        return [FileEntry(path=SIDECAR, sha256=stored.sha256, size=stored.size)
                if f.path == SIDECAR else f for f in files]

    def _with_public_card(self, files: Sequence[FileEntry], lineage: dict[str, Any] | None,
                          public: dict[str, Any] | None) -> list[FileEntry]:
        """``files`` with a supplied README.md that names parents the public may not see
        rewritten not to name them (as ``_with_public_sidecar`` does for the lineage): a
        composed adapter's card lists its candidates."""
        card = next((f for f in files if f.path == CARD), None)
        if card is None or card.size > CARD_MAX or self.store.size(card.sha256) != card.size:
            return list(files)
        hidden = [p for p, q in zip((lineage or {}).get("parents") or [],
                                    (public or {}).get("parents") or [], strict=False)
                  if isinstance(q, dict) and q.get("ref") == "private" and p != q]
        text = b"".join(self.store.open_range(card.sha256)).decode("utf-8", "replace")
        body = redact_parents(text, hidden).encode()
        if body == text.encode():
            return list(files)
        stored = self._ingest([body], None, len(body))
        return [FileEntry(path=CARD, sha256=stored.sha256, size=stored.size)
                if f.path == CARD else f for f in files]

    def _card_front(self, files: Sequence[FileEntry]) -> dict[str, Any]:
        """The front matter of the README.md among ``files`` (uploaded, not yet committed)."""
        card = next((f for f in files if f.path == CARD), None)
        if card is None or card.size > CARD_MAX or self.store.size(card.sha256) != card.size:
            return {}
        return parse_card(b"".join(self.store.open_range(card.sha256)).decode("utf-8", "replace"))

    @staticmethod
    def _adapter_row(s: Session, ns: Namespace, name: str, lock: bool = False
                     ) -> AdapterRow | None:
        q = select(AdapterRow).where(AdapterRow.namespace_id == ns.id, AdapterRow.name == name)
        return s.exec(q.with_for_update() if lock else q).first()

    def _commit_tx(self, p: Principal, r: Ref, files: Sequence[FileEntry], digest: str,
                   version: str | None, opts: PublishOptions, tags: list[str],
                   checked: _Validated | None) -> VersionInfo:
        """One transaction: the new version, its files and ``latest``, or (``checked`` None,
        or a version with these files committed meanwhile) the existing version."""
        now = utcnow()
        with session_scope(self.engine, write=True) as s:
            ns = self._namespace(s, r.namespace)
            p.require(ns, "write")
            a = self._adapter_row(s, ns, r.name, lock=True)
            old = self._same_content(s, r, a, digest, version, opts.allow_duplicate)
            if old is not None and a is not None:
                if _apply_settings(s, a, opts, tags):
                    a.updated_at = now
                    s.add(a)
                    s.flush()
                info = self._version_info(s, p, ns, a, old)
                return info.model_copy(update={"unchanged": True})
            if checked is None:
                raise ConflictError(f"{r.repo}: the version with these files was deleted "
                                    "meanwhile; publish again")
            if a is None:
                a = AdapterRow(namespace_id=ns.id, name=r.name, private=bool(opts.private),  # type: ignore[arg-type]
                               created_at=now)
                s.add(a)
                s.flush()
            existing = set(s.exec(select(VersionRow.version)
                                  .where(VersionRow.adapter_id == a.id)).all())
            # auto numbers never reuse a number, even one whose version was deleted
            if version is None:
                n = a.next_seq
                while str(n) in existing:
                    n += 1
                version = str(n)
            if version.isdigit():
                a.next_seq = max(a.next_seq, int(version) + 1)
            seq = (s.exec(select(func.max(VersionRow.seq))
                          .where(VersionRow.adapter_id == a.id)).one() or 0) + 1
            summary = checked.summary
            weights = next(f for f in files if f.path == WEIGHTS_NAME)
            metrics = {**checked.metrics, **(opts.metrics or {})}
            v = VersionRow(
                adapter_id=a.id, version=version, seq=seq, created_at=now,  # type: ignore[arg-type]
                size=sum(f.size for f in files), sha256=weights.sha256, content_sha256=digest,
                peft_type=summary.get("peft_type"), base_model=summary.get("base_model"),
                rank=summary.get("rank"), lora_alpha=summary.get("lora_alpha"),
                num_parameters=int(summary.get("num_parameters") or 0),
                target_modules=list(summary.get("target_modules") or []), summary=summary,
                stats=checked.stats, metrics=metrics, meta=checked.extra, lineage=checked.lineage,
            )
            s.add(v)
            s.flush()
            for f in files:
                s.add(FileRow(version_id=v.id, path=f.path, sha256=f.sha256, size=f.size))  # type: ignore[arg-type]
            for repo, pv, w in parent_edges(checked.lineage):
                s.add(LineageEdgeRow(version_id=v.id, parent_repo=repo, parent_version=pv,  # type: ignore[arg-type]
                                     weight=w))
            latest = s.get(AliasRow, (a.id, DEFAULT_ALIAS))
            if latest is None:
                s.add(AliasRow(adapter_id=a.id, name=DEFAULT_ALIAS, version_id=v.id))  # type: ignore[arg-type]
            else:
                latest.version_id = v.id  # type: ignore[assignment]
            a.peft_type = summary.get("peft_type")
            a.base_model = summary.get("base_model")
            _apply_settings(s, a, opts, tags)
            a.updated_at = now
            s.add(a)
            s.flush()
            return self._version_info(s, p, ns, a, v)

    # -- aliases and deletion ------------------------------------------------------------
    def set_alias(self, p: Principal, ref: str, alias: str) -> VersionInfo:
        r = parse_ref(ref)
        check_name(alias, "alias")
        with session_scope(self.engine, write=True) as s:
            a, ns = self._adapter(s, p, r, lock=True)
            p.require(ns, "write")
            v = self._version(s, a, r)
            row = s.get(AliasRow, (a.id, alias))
            if row is None:
                s.add(AliasRow(adapter_id=a.id, name=alias, version_id=v.id))  # type: ignore[arg-type]
            else:
                row.version_id = v.id  # type: ignore[assignment]
                s.add(row)
            s.flush()
            return self._version_info(s, p, ns, a, v)

    def remove_alias(self, p: Principal, repo: str, alias: str) -> None:
        r = parse_ref(repo)
        check_name(alias, "alias")
        with session_scope(self.engine, write=True) as s:
            a, ns = self._adapter(s, p, r, lock=True)
            p.require(ns, "write")
            row = s.get(AliasRow, (a.id, alias))
            if row is None:
                raise _version_not_found(Ref(r.namespace, r.name, alias=alias))
            if alias == DEFAULT_ALIAS:
                raise InvalidRequestError("'latest' moves by itself and cannot be removed")
            s.delete(row)

    def delete(self, p: Principal, ref: str) -> None:
        """``ns/name@version`` deletes one version (write scope); ``ns/name`` the whole
        adapter (admin scope). Blobs stay until ``gc``."""
        r = parse_ref(ref)
        if r.alias:
            raise InvalidReferenceError(
                "delete takes ns/name@version (one version) or ns/name (the whole adapter)")
        with session_scope(self.engine, write=True) as s:
            a, ns = self._adapter(s, p, r, lock=True)
            if r.version:
                p.require(ns, "write")
                v = self._version(s, a, r)
                self._delete_versions(s, [v])
                rest = s.exec(select(VersionRow).where(VersionRow.adapter_id == a.id)
                              .order_by(col(VersionRow.seq).desc())).first()
                if rest is not None and s.get(AliasRow, (a.id, DEFAULT_ALIAS)) is None:
                    s.add(AliasRow(adapter_id=a.id, name=DEFAULT_ALIAS, version_id=rest.id))  # type: ignore[arg-type]
                a.updated_at = utcnow()
                s.add(a)
                return
            p.require(ns, "admin")
            self._delete_versions(s, list(s.exec(select(VersionRow)
                                                 .where(VersionRow.adapter_id == a.id)).all()))
            for t in s.exec(select(AdapterTag).where(AdapterTag.adapter_id == a.id)).all():
                s.delete(t)
            s.flush()
            s.delete(a)

    def _delete_versions(self, s: Session, versions: Sequence[VersionRow]) -> None:
        ids = [v.id for v in versions]
        if not ids:
            return
        for al in s.exec(select(AliasRow).where(col(AliasRow.version_id).in_(ids))).all():
            s.delete(al)
        for f in s.exec(select(FileRow).where(col(FileRow.version_id).in_(ids))).all():
            s.delete(f)
        for e in s.exec(select(LineageEdgeRow)
                        .where(col(LineageEdgeRow.version_id).in_(ids))).all():
            s.delete(e)
        s.flush()
        for v in versions:
            s.delete(v)
        s.flush()

    def gc(self, p: Principal, grace_seconds: float | None = None) -> GcReport:
        """Delete blobs no version references, older than the grace period (uploads of a
        publish in progress are younger and stay)."""
        p.require_admin("garbage collection")
        grace = self.settings.gc_grace_seconds if grace_seconds is None else grace_seconds
        if not 0 <= grace <= MAX_GRACE_SECONDS:
            raise InvalidRequestError(f"grace must be 0..{MAX_GRACE_SECONDS} seconds")
        cutoff = utcnow() - dt.timedelta(seconds=grace)
        with session_scope(self.engine) as s:
            referenced = set(s.exec(select(FileRow.sha256).distinct()).all())
        removed = freed = kept = young = 0
        for b in list(self.store.iter_blobs()):
            if b.sha256 in referenced or b.modified > cutoff:
                kept += 1
                young += b.sha256 not in referenced
                continue
            self.store.delete(b.sha256)
            removed += 1
            freed += b.size
        # temps of killed writers; younger ones may belong to an upload in flight
        stage = getattr(self.store, "stage_dir", None)
        remove_orphans(self.settings.home, Path(stage) if stage else None, grace)
        return GcReport(blobs_removed=removed, bytes_removed=freed, blobs_kept=kept,
                        unreferenced_kept=young, grace_seconds=grace)

    # -- namespaces, users, tokens -------------------------------------------------------
    def require_namespace(self, p: Principal, namespace: str, level: str = "write") -> None:
        """Raise unless ``p`` may act at ``level`` on ``namespace`` (404 when it is absent)."""
        with session_scope(self.engine) as s:
            p.require(self._namespace(s, namespace), level)

    def namespaces_of(self, p: Principal) -> list[str]:
        """The namespaces the caller acts on: the token's restriction, else those its user
        owns."""
        if p.anonymous:
            return []
        if p.namespaces:
            return sorted(p.namespaces)
        with session_scope(self.engine) as s:
            return sorted(s.exec(select(Namespace.name).where(
                Namespace.owner_id == p.user_id)).all())

    def create_adapter(self, p: Principal, repo: str, private: bool = False) -> bool:
        """An adapter with no version yet (the Hub creates repos before their first commit);
        ``False`` when it exists already. Needs write access to the namespace, as a publish."""
        r = parse_ref(repo)
        if r.version or r.alias:
            raise InvalidReferenceError("create an adapter as namespace/name")
        with session_scope(self.engine, write=True) as s:
            ns = self._namespace(s, r.namespace)
            p.require(ns, "write")
            row = s.exec(select(AdapterRow).where(AdapterRow.namespace_id == ns.id,
                                                  AdapterRow.name == r.name)).first()
            if row is not None:
                return False
            s.add(AdapterRow(namespace_id=ns.id, name=r.name, private=private))  # type: ignore[arg-type]
        return True

    def create_namespace(self, p: Principal, name: str) -> NamespaceInfo:
        check_name(name, "namespace")
        if p.anonymous:
            raise AuthenticationError("creating a namespace needs a token; run `lorahive login`")
        if not p.has_scope("write") or p.namespaces:
            raise PermissionDeniedError(
                "creating a namespace needs an unrestricted token with write scope")
        try:
            with session_scope(self.engine, write=True) as s:
                if s.exec(select(Namespace).where(Namespace.name == name)).first() is not None:
                    raise ConflictError(f"namespace {name!r} exists already")
                ns = Namespace(name=name, owner_id=p.user_id)  # type: ignore[arg-type]
                s.add(ns)
                s.flush()
                return NamespaceInfo(name=ns.name, owner=p.user or "", created_at=ns.created_at)
        except SqlIntegrityError:
            raise ConflictError(f"namespace {name!r} exists already") from None

    def create_token(self, p: Principal, name: str, scope: str = "read",
                     namespaces: Sequence[str] = (), user: str | None = None,
                     expires_in_days: float | None = None) -> NewToken:
        """A token for the caller (never above the caller's own scope or namespaces), or, for
        a site admin, for ``user`` (created with a namespace of the same name if new)."""
        if scope not in SCOPES:
            raise InvalidRequestError(f"unknown scope {scope!r}; use one of {list(SCOPES)}")
        if not name or len(name) > 128:
            raise InvalidRequestError("token name must be 1-128 characters")
        if p.anonymous:
            raise AuthenticationError("creating a token needs a token; run `lorahive login`")
        for n in namespaces:
            check_name(n, "namespace")
        if expires_in_days is not None and not 0 < expires_in_days <= MAX_EXPIRY_DAYS:
            raise InvalidRequestError(f"expires_in_days must be in (0, {MAX_EXPIRY_DAYS}]")
        expires = (utcnow() + dt.timedelta(days=expires_in_days)) if expires_in_days else None
        other = user is not None and user != p.user
        if other:
            p.require_admin("creating a token for another user")
        elif scope_rank(scope) > scope_rank(p.scope or "") or (
                p.namespaces and not set(namespaces or ["*"]) <= set(p.namespaces)):
            raise PermissionDeniedError(
                "a token cannot grant more than the token that creates it (scope or namespaces)")
        secret = new_secret()
        with session_scope(self.engine, write=True) as s:
            if other:
                check_name(user or "", "user")
                u = s.exec(select(User).where(User.name == user)).first()
                if u is None:
                    u = User(name=user or "")
                    s.add(u)
                    s.flush()
                    if s.exec(select(Namespace).where(Namespace.name == u.name)).first() is None:
                        s.add(Namespace(name=u.name, owner_id=u.id))  # type: ignore[arg-type]
            else:
                u = s.get(User, p.user_id)
            assert u is not None
            t = Token(user_id=u.id, name=name, token_hash=hash_token(secret), scope=scope,  # type: ignore[arg-type]
                      namespaces=list(namespaces), expires_at=expires)
            s.add(t)
            s.flush()
            return NewToken(token=secret, info=_token_info(t, u.name))

    def list_tokens(self, p: Principal) -> list[TokenInfo]:
        if p.anonymous:
            raise AuthenticationError("listing tokens needs a token")
        with session_scope(self.engine) as s:
            q = select(Token, User.name).join(User, col(Token.user_id) == User.id)
            if not (p.is_admin and p.has_scope("admin")):
                q = q.where(Token.user_id == p.user_id)
            return [_token_info(t, n) for t, n in s.exec(q.order_by(Token.id)).all()]

    def revoke_token(self, p: Principal, token_id: int) -> None:
        if p.anonymous:
            raise AuthenticationError("revoking a token needs a token")
        if not 0 < token_id <= MAX_ID:
            raise NotFoundError(f"no token with id {token_id}; see `lorahive token list`")
        with session_scope(self.engine, write=True) as s:
            t = s.get(Token, token_id)
            if t is None or (t.user_id != p.user_id and not (p.is_admin and p.has_scope("admin"))):
                raise NotFoundError(f"no token with id {token_id}; see `lorahive token list`")
            t.revoked = True
            s.add(t)

    # ======================================================================================
    # Reads and sign-in sessions for the web pages (``registry/web``). The pages are a door
    # onto this service like the REST routes: every visibility rule below is the one above.
    # ======================================================================================
    def facets(self, p: Principal, limit: int = 50) -> dict[str, list[tuple[str, int]]]:
        """The most common tasks, base models, tags and namespaces among the adapters ``p``
        sees, with counts (the search page's filters); nothing private leaks into them."""
        visible = _visible_to(p)

        def top(column: Any, *joins: Any) -> list[tuple[str, int]]:
            n = func.count().label("n")
            q = select(column, n).select_from(AdapterRow).join(Namespace)
            for j in joins:
                q = q.join(*j)
            q = q.where(column.is_not(None))
            if visible is not None:
                q = q.where(visible)
            q = q.group_by(column).order_by(n.desc(), column.asc()).limit(limit)
            return [(str(v), int(c)) for v, c in s.exec(q).all()]

        with session_scope(self.engine) as s:
            return {
                "task": top(col(AdapterRow.task)),
                "base_model": top(col(AdapterRow.base_model)),
                "tag": top(col(AdapterTag.tag),
                           (AdapterTag, col(AdapterTag.adapter_id) == AdapterRow.id)),
                "namespace": top(col(Namespace.name)),
            }

    def version_list(self, p: Principal, ref: str | Ref) -> list[VersionBrief]:
        """Every version of an adapter, newest first, without files or statistics (what a
        version switcher shows; two queries whatever the number of versions)."""
        r = parse_ref(ref) if isinstance(ref, str) else ref
        with session_scope(self.engine) as s:
            a, _ = self._adapter(s, p, r)
            return self._version_briefs(s, a)

    def _version_briefs(self, s: Session, a: AdapterRow) -> list[VersionBrief]:
        aliases: dict[int, list[str]] = {}
        for al in s.exec(select(AliasRow).where(AliasRow.adapter_id == a.id)
                         .order_by(AliasRow.name)).all():
            aliases.setdefault(al.version_id, []).append(al.name)
        rows = s.exec(select(VersionRow.id, VersionRow.version, VersionRow.created_at,
                             VersionRow.size, VersionRow.downloads, VersionRow.rank)
                      .where(VersionRow.adapter_id == a.id)
                      .order_by(col(VersionRow.seq).desc())).all()
        return [VersionBrief(version=v, created_at=c, size=sz, downloads=d, rank=rk,
                             aliases=aliases.get(i, [])) for i, v, c, sz, d, rk in rows]

    def adapter_view(self, p: Principal, ref: str | Ref, file: str | None = None,
                     max_bytes: int = 0) -> AdapterView:
        """What an adapter's page shows, read in one transaction: the adapter, the version
        ``ref`` names, the list of its versions and, optionally, the first ``max_bytes`` of
        one of that version's files (its model card)."""
        r = parse_ref(ref) if isinstance(ref, str) else ref
        with session_scope(self.engine) as s:
            a, ns = self._adapter(s, p, r)
            view = AdapterView(self._adapter_infos(s, [(a, ns)])[0],
                               self._version_info(s, p, ns, a, self._version(s, a, r)),
                               self._version_briefs(s, a))
        entry = next((f for f in view.version.files if f.path == file), None)
        if entry is not None and max_bytes > 0:
            end = min(entry.size, max_bytes) - 1
            view.file = b"".join(self.store.open_range(entry.sha256, 0, end)) if end >= 0 else b""
        return view

    def owned_namespaces(self, p: Principal) -> list[str]:
        """Namespaces the signed-in user owns (all of them for a site admin)."""
        if p.anonymous:
            return []
        with session_scope(self.engine) as s:
            q = select(Namespace.name).order_by(Namespace.name)
            if not p.is_admin:
                q = q.where(Namespace.owner_id == p.user_id)
            names = list(s.exec(q).all())
        return [n for n in names if not p.namespaces or n in p.namespaces]

    def lineage_parents(self, info: VersionInfo) -> list[LineageEdge]:
        """The parents of a version as edges of the lineage graph. ``info`` comes from the
        service for the caller, so a parent the caller may not see is already ``private``
        (``_lineage_for``) and becomes an edge that names nothing, not even its sha256."""
        out: list[LineageEdge] = []
        parents = (info.lineage or {}).get("parents") or []
        for raw in parents if isinstance(parents, list) else []:
            if not isinstance(raw, dict) or raw.get("ref") == "private":
                weight = raw.get("weight") if isinstance(raw, dict) else None
                out.append(LineageEdge(None, None, None, _weight(weight), hidden=True))
                continue
            weight = _weight(raw.get("weight"))
            r = _registry_parent(raw)
            if r is None:  # a local directory when it was made: named as recorded, no link
                out.append(LineageEdge(None, None, None, weight, local=str(raw.get("ref") or "")))
                continue
            version = r.version or str(raw["version"])
            out.append(LineageEdge(r.namespace, r.name, version, weight, sha256=raw.get("sha256")))
        return out

    def lineage_children(self, p: Principal, ref: str | Ref, limit: int = 200
                         ) -> list[LineageEdge]:
        """Versions ``p`` may see whose lineage names this adapter as a parent (what was fused,
        merged or composed from it), newest first, with the method and the parent's weight:
        one indexed lookup in ``lineage_edges``."""
        r = parse_ref(ref) if isinstance(ref, str) else ref
        with session_scope(self.engine) as s:
            self._adapter(s, p, Ref(r.namespace, r.name))
            q = (select(VersionRow.version, VersionRow.lineage, AdapterRow.name, Namespace.name,
                        LineageEdgeRow.weight, LineageEdgeRow.parent_version)
                 .join(VersionRow, col(LineageEdgeRow.version_id) == VersionRow.id)
                 .join(AdapterRow, col(VersionRow.adapter_id) == AdapterRow.id)
                 .join(Namespace, col(AdapterRow.namespace_id) == Namespace.id)
                 .where(LineageEdgeRow.parent_repo == r.repo))
            visible = _visible_to(p)
            if visible is not None:
                q = q.where(visible)
            rows = s.exec(q.order_by(col(VersionRow.created_at).desc(),
                                     col(VersionRow.id).desc()).limit(limit)).all()
        return [LineageEdge(ns, name, version, weight,
                            method=str((lineage or {}).get("method") or ""),
                            parent_version=pv)
                for version, lineage, name, ns, weight, pv in rows]

    def subspace_overlap(self, p: Principal, a: str | Ref, b: str | Ref
                         ) -> dict[str, tuple[float, float]]:
        """Per module both adapters adapt (same shape): how much the output and the input
        subspaces of their deltas overlap (``hub.lowrank.subspace_similarity``, 0..1).

        Stored statistics keep singular values only, so the weights are loaded here, up to
        ``settings.web_overlap_max_bytes`` for both."""
        from lorahive.hub.lowrank import singular_subspaces, subspace_similarity

        infos = [self.resolve(p, a), self.resolve(p, b)]
        total = sum(f.size for i in infos for f in i.files if f.path == WEIGHTS_NAME)
        limit = self.settings.web_overlap_max_bytes
        if total > limit:
            raise PayloadTooLargeError(
                f"the two adapters' weights are {total} bytes, over the {limit} this server "
                "compares (web_overlap_max_bytes)")
        ad = [self._load_version(i) for i in infos]
        if not (ad[0].is_lora and ad[1].is_lora):
            return {}
        out: dict[str, tuple[float, float]] = {}
        with single_threaded_torch():
            for name in sorted(set(ad[0].modules) & set(ad[1].modules)):
                ma, mb = ad[0].modules[name], ad[1].modules[name]
                if (ma.out_features, ma.in_features) != (mb.out_features, mb.in_features):
                    continue
                ua, va = singular_subspaces(ma.B, ma.A)
                ub, vb = singular_subspaces(mb.B, mb.A)
                out[name] = (subspace_similarity(ua, ub), subspace_similarity(va, vb))
        return out

    def _load_version(self, info: VersionInfo) -> Any:
        """The adapter of a (visible, already resolved) version, loaded with ``hub``."""
        from lorahive.hub.peft_format import load_peft

        with self._staged(info.files, (CONFIG_NAME, WEIGHTS_NAME)) as tmp:
            return load_peft(tmp)

    def start_web_session(self, secret: str) -> tuple[str, str, Principal]:
        """Sign a browser in with an API token: ``(session secret, CSRF token, principal)``.
        The session acts through that token and ends when it is revoked or expires, at sign
        out, or after ``settings.web_session_hours``."""
        p = self.authenticate(secret)
        if p.anonymous or p.token_id is None:
            raise AuthenticationError("sign in with an API token")
        sid, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        now = utcnow()
        expires = now + dt.timedelta(hours=self.settings.web_session_hours)
        with session_scope(self.engine, write=True) as s:
            tok = s.get(Token, p.token_id)
            if tok is not None and tok.expires_at is not None:
                expires = min(expires, _aware(tok.expires_at))
            for old in s.exec(select(WebSession).where(WebSession.expires_at <= now)
                              .limit(100)).all():
                s.delete(old)
            s.add(WebSession(session_hash=hash_token(sid), token_id=p.token_id, csrf=csrf,
                             created_at=now, expires_at=expires))
        return sid, csrf, p

    def web_session(self, sid: str) -> tuple[Principal, str] | None:
        """``(principal, CSRF token)`` of a live session, else ``None`` (unknown, expired, or
        its token revoked or expired)."""
        if not sid or len(sid) > 128:
            return None
        with session_scope(self.engine) as s:
            row = s.exec(select(WebSession, Token)
                         .join(Token, col(WebSession.token_id) == Token.id)
                         .where(WebSession.session_hash == hash_token(sid))).first()
            if row is None or _aware(row[0].expires_at) <= utcnow():
                return None
            try:
                return token_principal(s, row[1]), row[0].csrf
            except AuthenticationError:
                return None

    def end_web_session(self, sid: str) -> None:
        with session_scope(self.engine, write=True) as s:
            for row in s.exec(select(WebSession)
                              .where(WebSession.session_hash == hash_token(sid))).all():
                s.delete(row)


def _visible_to(p: Principal) -> Any:
    """The SQL condition on (AdapterRow, Namespace) for adapters ``p`` may read, its values
    bound; ``None`` for an unrestricted site admin, who sees everything."""
    vis, params = _visibility(p)
    cond = _visibility_condition(vis)
    return cond.params(params) if cond is not None and params else cond


def _adapter_not_found(ref: Ref) -> AdapterNotFoundError:
    return AdapterNotFoundError(
        f"adapter {ref.repo} not found (or private); check the name with `lorahive search`")


def _version_not_found(ref: Ref) -> VersionNotFoundError:
    what = f"version {ref.version}" if ref.version else f"alias {ref.alias or DEFAULT_ALIAS!r}"
    return VersionNotFoundError(
        f"{ref.repo} has no {what}; list versions with `lorahive versions {ref.repo}`")


def content_digest(files: Sequence[FileEntry]) -> str:
    """What makes two publishes "the same files": sha256 over the sorted (path, sha256, size)
    of the files the publisher sent (before the registry adds a card or rewrites lineage)."""
    rows = sorted([f.path, f.sha256, f.size] for f in files)
    return hashlib.sha256(json.dumps(rows, separators=(",", ":")).encode()).hexdigest()


def _apply_settings(s: Session, a: AdapterRow, opts: PublishOptions, tags: list[str]) -> bool:
    """Adapter-level settings a publish gives explicitly; whether anything changed."""
    changed = False
    for attr, value in (("task", None if opts.task is None else (opts.task or None)),
                        ("description", opts.description), ("private", opts.private)):
        if value is not None and getattr(a, attr) != value:
            setattr(a, attr, value)
            changed = True
    if opts.task == "" and a.task is not None:
        a.task = None
        changed = True
    if tags:
        have = set(s.exec(select(AdapterTag.tag).where(AdapterTag.adapter_id == a.id)).all())
        for t in tags:
            if t not in have:
                s.add(AdapterTag(adapter_id=a.id, tag=t))  # type: ignore[arg-type]
                changed = True
    return changed


def _weight(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) else None


_ADAPTER_COLUMNS = (AdapterRow.id, Namespace.name.label("ns_name"), AdapterRow.name,  # type: ignore[attr-defined]
                    AdapterRow.description, AdapterRow.task, AdapterRow.base_model,
                    AdapterRow.peft_type, AdapterRow.private, AdapterRow.downloads,
                    AdapterRow.created_at, AdapterRow.updated_at)
_TAGS_OF = (select(AdapterTag.adapter_id, AdapterTag.tag)
            .where(col(AdapterTag.adapter_id).in_(bindparam("ids", expanding=True)))
            .order_by(AdapterTag.tag))
_ALIASES_OF = (select(AliasRow.adapter_id, AliasRow.name, VersionRow.version)
               .join(VersionRow, col(AliasRow.version_id) == VersionRow.id)
               .where(col(AliasRow.adapter_id).in_(bindparam("ids", expanding=True))))


SEP, PAIR = "\x1f", "\x1e"  # between aggregated values; between an alias and its version
_TAGS_AGG = (select(aggregate_strings(AdapterTag.tag, SEP))
             .where(AdapterTag.adapter_id == AdapterRow.id)
             .correlate(AdapterRow).scalar_subquery().label("tags"))
_ALIASES_AGG = (select(aggregate_strings(AliasRow.name + PAIR + VersionRow.version, SEP))
                .join(VersionRow, col(AliasRow.version_id) == VersionRow.id)
                .where(AliasRow.adapter_id == AdapterRow.id)
                .correlate(AdapterRow).scalar_subquery().label("aliases"))


def _adapter_info(row: Sequence[Any], tags: list[str], aliases: dict[str, str]
                  ) -> AdapterInfo:
    """An adapter summary from a row of ``_ADAPTER_COLUMNS`` (its first 11 values)."""
    (_, ns_name, name, description, task, base_model, peft_type, private, downloads,
     created_at, updated_at) = row[:11]
    return AdapterInfo(
        namespace=ns_name, name=name, description=description, task=task,
        base_model=base_model, peft_type=peft_type, tags=tags, private=private,
        downloads=downloads, created_at=created_at, updated_at=updated_at,
        aliases=aliases, latest_version=aliases.get(DEFAULT_ALIAS))


def _visibility(p: Principal) -> tuple[tuple[str, bool], dict[str, Any]]:
    """The shape of ``_visible_to(p)`` and its bind parameters (``uid``, ``vns``), so a
    search statement built once per shape serves every caller of that shape."""
    if p.is_admin and p.has_scope("read") and not p.namespaces:
        return ("all", False), {}
    if p.anonymous or not p.has_scope("read"):
        return ("public", False), {}
    params: dict[str, Any] = {"uid": p.user_id, "vns": list(p.namespaces)}
    return ("admin" if p.is_admin else "owner", bool(p.namespaces)), params


def _visibility_condition(vis: tuple[str, bool]) -> Any:
    kind, limited = vis
    if kind == "all":
        return None
    public = AdapterRow.private == False  # noqa: E712
    if kind == "public":
        return public
    owned: Any = (col(Namespace.id).is_not(None) if kind == "admin"
                  else Namespace.owner_id == bindparam("uid"))
    if limited:
        owned = owned & col(Namespace.name).in_(bindparam("vns", expanding=True))
    return or_(public, owned)


@functools.lru_cache(maxsize=512)
def _search_statements(shape: tuple) -> tuple[Select, Select]:
    """The page and count statements of one search shape (how many words and tags, which
    filters, the sort, the caller's visibility), built once with bind parameters: building
    them per request cost more than SQLite takes to run them."""
    n_words, task, base_model, peft_type, namespace, n_tags, sort, vis = shape
    q = select(*_ADAPTER_COLUMNS).select_from(AdapterRow).join(Namespace)
    visible = _visibility_condition(vis)
    if visible is not None:
        q = q.where(visible)
    for i in range(n_words):
        q = q.where(or_(*(func.lower(c).like(bindparam(f"w{i}"), escape="\\") for c in (
            AdapterRow.name, AdapterRow.description, AdapterRow.task, Namespace.name,
            AdapterRow.base_model))))
    if task:
        q = q.where(AdapterRow.task == bindparam("task"))
    if base_model:
        q = q.where(AdapterRow.base_model == bindparam("base_model"))
    if peft_type:
        q = q.where(AdapterRow.peft_type == bindparam("peft_type"))
    if namespace:
        q = q.where(Namespace.name == bindparam("namespace"))
    for i in range(n_tags):
        q = q.where(col(AdapterRow.id).in_(select(AdapterTag.adapter_id)
                                            .where(AdapterTag.tag == bindparam(f"t{i}"))))
    count = select(func.count()).select_from(q.subquery())
    # the total rides on every row as an uncorrelated subquery, which SQL runs once: a
    # window count would make SQLite materialise and sort every match before the limit
    # (55 ms against 2 ms for the count at 10,000 adapters)
    # the page's ids first, then their columns and aggregates: computed for the page's rows
    # only, not for every row a deep offset skips
    order = (*SORTS[sort], col(AdapterRow.id).asc())
    ids = (q.with_only_columns(AdapterRow.id).order_by(*order)
           .offset(bindparam("offset", type_=Integer)).limit(bindparam("limit", type_=Integer))
           .subquery())
    page = (select(*_ADAPTER_COLUMNS, _TAGS_AGG, _ALIASES_AGG,
                   count.scalar_subquery().label("total"))
            .select_from(AdapterRow).join(Namespace).join(ids, ids.c.id == AdapterRow.id)
            .order_by(*order))
    return page, count


@functools.cache
def _resolve_statement(by_version: bool) -> Select:
    """The one statement of a resolve, built once per process with bind parameters ``ns``,
    ``name`` and ``key`` (the version, or the alias): building it per request cost ten times
    what SQLite takes to run it."""
    named = aliased(AliasRow)  # the version's aliases, apart from the one joined below
    aliases = (select(aggregate_strings(named.name, ","))
               .where(named.version_id == VersionRow.id)
               .correlate(VersionRow).scalar_subquery())
    q = (select(Namespace.name, Namespace.owner_id, AdapterRow.name, AdapterRow.private,
                VersionRow.id, VersionRow.created_at, VersionRow.downloads, aliases)
         .select_from(AdapterRow).join(Namespace)
         .where(Namespace.name == bindparam("ns"), AdapterRow.name == bindparam("name")))
    if by_version:
        return q.outerjoin(VersionRow, and_(col(VersionRow.adapter_id) == AdapterRow.id,
                                            VersionRow.version == bindparam("key")))
    return (q.outerjoin(AliasRow, and_(col(AliasRow.adapter_id) == AdapterRow.id,
                                       AliasRow.name == bindparam("key")))
            .outerjoin(VersionRow, col(VersionRow.id) == AliasRow.version_id))


def _registry_parent(parent: Any) -> Ref | None:
    """The registry reference a lineage parent names (``ns/name@version``), or ``None`` for a
    local directory."""
    text = parent.get("ref") if isinstance(parent, dict) else parent
    if not isinstance(text, str):
        return None
    try:
        r = parse_ref(text)
    except InvalidReferenceError:
        return None
    has_version = r.version is not None or (isinstance(parent, dict) and parent.get("version"))
    return r if has_version else None


def _token_info(t: Token, user: str) -> TokenInfo:
    return TokenInfo(id=t.id, user=user, name=t.name, scope=t.scope,  # type: ignore[arg-type]
                     namespaces=list(t.namespaces), created_at=t.created_at,
                     expires_at=t.expires_at, revoked=t.revoked)


def _stat_dict(st: Any) -> dict[str, Any]:
    d = st.as_dict()
    d["singular_values"] = [round(x, 6) for x in d["singular_values"][:64]]
    return d


def _escape_like(s: str) -> str:
    return s.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def metrics_text(service: RegistryService, secret: str | None) -> str:
    """``/metrics`` for a site admin's token (scope ``admin``) or the configured scrape token
    (``LORAHIVE_METRICS_TOKEN``): its database counts include private adapters."""
    want = service.settings.metrics_token
    if not (want and secret and hmac.compare_digest(secret.encode(), want.encode())):
        service.authenticate(secret).require_admin("reading /metrics")
    return service.metrics.render(counts(service))


def counts(service: RegistryService) -> dict[str, float]:
    """Gauges for /metrics: adapters, versions and files in the database."""
    with session_scope(service.engine) as s:
        return {
            "adapters": s.exec(select(func.count()).select_from(AdapterRow)).one(),
            "versions": s.exec(select(func.count()).select_from(VersionRow)).one(),
            "files": s.exec(select(func.count()).select_from(FileRow)).one(),
        }


# -- for the web pages' block of RegistryService ---------------------------------------------
@dataclass
class VersionBrief:
    """One line of an adapter's version list."""

    version: str
    created_at: dt.datetime
    size: int
    downloads: int
    rank: int | None
    aliases: list[str]


@dataclass
class AdapterView:
    """An adapter with one version, its version list and optionally one file's head."""

    adapter: AdapterInfo
    version: VersionInfo
    versions: list[VersionBrief]
    file: bytes | None = None


@dataclass
class LineageEdge:
    """One end of a lineage edge as a caller may see it: an adapter version in the registry,
    a parent hidden from this caller (no name), or a local directory (``local``)."""

    namespace: str | None
    name: str | None
    version: str | None
    weight: float | None
    hidden: bool = False
    local: str | None = None
    sha256: str | None = None
    method: str | None = None
    parent_version: str | None = None

    @property
    def repo(self) -> str | None:
        return f"{self.namespace}/{self.name}" if self.namespace and self.name else None
