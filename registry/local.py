"""``LocalRegistry``: the ``Registry`` interface in-process, on the embedded database and
blob store (what the CLI uses when no server URL is given).

It authenticates its token exactly as the server does; with no token it uses the admin token
that the first start bootstrapped into the data directory, so the local owner can do
everything with zero set-up.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from lorahive.hub.cache import PullCache
from lorahive.hub.protocol import (
    AdapterInfo,
    DirectoryPublisher,
    FileEntry,
    GcReport,
    NamespaceInfo,
    NewToken,
    ProgressFn,
    Scope,
    SearchPage,
    SortKey,
    TokenInfo,
    VersionInfo,
    WhoAmI,
)
from lorahive.hub.publishing import publish_directory
from lorahive.hub.refs import parse_ref
from lorahive.registry.auth import Principal
from lorahive.registry.service import PublishOptions, RegistryService
from lorahive.registry.settings import Settings


class LocalRegistry(DirectoryPublisher):
    """In-process registry; same behaviour and errors as ``hub.client.HttpRegistry``."""

    def __init__(self, settings: Settings | None = None, token: str | None = None,
                 service: RegistryService | None = None, cache: PullCache | None = None):
        self._owns_service = service is None
        self.service = service or RegistryService(settings)
        st = self.service.settings
        if token is None:
            self.service.bootstrap_admin()
            if st.admin_token_file.is_file():
                token = st.admin_token_file.read_text().strip()
        self.token = token
        self.cache = cache or PullCache(st.home / "cache")

    @property
    def principal(self) -> Principal:
        """Checked on every call, as the server does per request (revocation, expiry)."""
        return self.service.authenticate(self.token)

    def close(self) -> None:
        if self._owns_service:
            self.service.close()

    def whoami(self) -> WhoAmI:
        return self.service.whoami(self.principal)

    def _publish_dir(self, path: Path, name: str, version: str | None = None, *,
                     task: str | None = None, tags: Sequence[str] = (),
                     private: bool | None = None, description: str | None = None,
                     metrics: dict[str, Any] | None = None, progress: ProgressFn | None = None,
                     allow_duplicate: bool = False) -> VersionInfo:
        """Store the directory's files (deduplicated) and commit a version."""
        svc, caller = self.service, self.principal
        opts = PublishOptions(task=task, tags=list(tags), private=private,
                              description=description, metrics=dict(metrics or {}),
                              allow_duplicate=allow_duplicate)
        return publish_directory(
            path, name, progress=progress,
            preflight=lambda entries: svc.preflight(caller, name, entries, version,
                                                    allow_duplicate),
            upload=lambda e, chunks: svc.ingest(caller, chunks, e.sha256, e.size),
            commit=lambda entries: svc.commit(caller, name, entries, version, opts))

    def resolve(self, ref: str) -> VersionInfo:
        return self.service.resolve(self.principal, ref)

    def adapter(self, ref: str) -> AdapterInfo:
        return self.service.adapter(self.principal, ref)

    def versions(self, ref: str) -> list[VersionInfo]:
        return self.service.versions(self.principal, ref)

    def search(self, text: str | None = None, *, task: str | None = None,
               base_model: str | None = None, tags: Sequence[str] = (),
               peft_type: str | None = None, namespace: str | None = None,
               sort: SortKey = "updated", offset: int = 0, limit: int = 20) -> SearchPage:
        return self.service.search(self.principal, text, task=task, base_model=base_model,
                                   tags=tags, peft_type=peft_type, namespace=namespace,
                                   sort=sort, offset=offset, limit=limit)

    def pull(self, ref: str, to: str | Path | None = None,
             progress: ProgressFn | None = None, force: bool = False) -> Path:
        r = parse_ref(ref)
        if to is not None:
            self.cache.check_export(to, force)
        caller = self.principal
        info = self.service.resolve(caller, r)

        def fetch(f: FileEntry, offset: int) -> Iterator[bytes]:
            dl = self.service.download(caller, info.ref, f.path,
                                       range=f"bytes={offset}-" if offset else None)
            return dl.body or iter(())

        snap = self.cache.materialize(r, info, fetch, progress)
        return self.cache.export(info, to, force) if to is not None else snap

    def set_alias(self, ref: str, alias: str) -> VersionInfo:
        return self.service.set_alias(self.principal, ref, alias)

    def remove_alias(self, repo: str, alias: str) -> None:
        self.service.remove_alias(self.principal, repo, alias)

    def delete(self, ref: str) -> None:
        self.service.delete(self.principal, ref)

    def gc(self, grace_seconds: float = 3600.0) -> GcReport:
        return self.service.gc(self.principal, grace_seconds)

    def create_namespace(self, name: str) -> NamespaceInfo:
        return self.service.create_namespace(self.principal, name)

    def create_token(self, name: str, scope: Scope = "read", namespaces: Sequence[str] = (),
                     user: str | None = None, expires_in_days: float | None = None) -> NewToken:
        return self.service.create_token(self.principal, name, scope, namespaces, user,
                                         expires_in_days)

    def list_tokens(self) -> list[TokenInfo]:
        return self.service.list_tokens(self.principal)

    def revoke_token(self, token_id: int) -> None:
        self.service.revoke_token(self.principal, token_id)
