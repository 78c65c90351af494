"""The registry interface shared by the in-process registry and the HTTP client.

Both implementations return these types and raise the same ``hub.errors`` classes, so code
(and the contract tests) written against ``Registry`` runs unchanged on either. The types are
pydantic models because the REST app serialises them as its response schemas.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, Field

Scope = Literal["read", "write", "admin"]
SortKey = Literal["updated", "created", "downloads", "name"]

# Progress callback: (bytes advanced, total bytes or 0 when unchanged, label). A call with
# advance 0 and a total announces the size of the work; later calls advance it.
ProgressFn = Callable[[int, int, str], None]


class FileEntry(BaseModel):
    path: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=0)


class AdapterInfo(BaseModel):
    namespace: str
    name: str
    description: str = ""
    task: str | None = None
    base_model: str | None = None
    peft_type: str | None = None
    tags: list[str] = []
    private: bool = False
    downloads: int = 0
    created_at: dt.datetime
    updated_at: dt.datetime
    latest_version: str | None = None
    aliases: dict[str, str] = {}

    @property
    def repo(self) -> str:
        return f"{self.namespace}/{self.name}"


class VersionInfo(BaseModel):
    namespace: str
    name: str
    version: str
    created_at: dt.datetime
    files: list[FileEntry]
    size: int
    sha256: str  # of adapter_model.safetensors: what lineage records as a parent's hash
    peft_type: str | None = None
    base_model: str | None = None
    rank: int | None = None
    lora_alpha: float | None = None
    target_modules: list[str] = []
    num_parameters: int = 0
    summary: dict[str, Any] = {}
    stats: list[dict[str, Any]] = []
    metrics: dict[str, Any] = {}
    metadata: dict[str, Any] = {}
    lineage: dict[str, Any] | None = None
    downloads: int = 0
    aliases: list[str] = []
    private: bool = False  # the adapter's visibility
    # set in a publish's answer only: the files equal this existing version, nothing was created
    unchanged: bool = False

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}@{self.version}"


class SearchPage(BaseModel):
    total: int
    offset: int
    limit: int
    items: list[AdapterInfo]


class TokenInfo(BaseModel):
    id: int
    user: str
    name: str
    scope: Scope
    namespaces: list[str] = []  # empty: every namespace the user owns
    created_at: dt.datetime
    expires_at: dt.datetime | None = None
    revoked: bool = False


class NewToken(BaseModel):
    """A freshly created token: ``secret`` is shown once and never stored in clear."""

    token: str
    info: TokenInfo


class NamespaceInfo(BaseModel):
    name: str
    owner: str
    created_at: dt.datetime


class WhoAmI(BaseModel):
    user: str | None
    is_admin: bool = False
    scope: Scope | None = None
    namespaces: list[str] = []


class GcReport(BaseModel):
    blobs_removed: int
    bytes_removed: int
    blobs_kept: int  # referenced, or younger than the grace period
    unreferenced_kept: int = 0  # of those: referenced by no version, kept for the grace period
    grace_seconds: float = 0.0


class PublishPlan(BaseModel):
    """The registry's answer before a publish uploads anything: the blobs it lacks, or the
    existing version whose files are the same (then there is nothing to upload)."""

    missing: list[str] = []
    unchanged: VersionInfo | None = None


@runtime_checkable
class Registry(Protocol):
    """What a registry does, wherever it runs."""

    def whoami(self) -> WhoAmI: ...

    def publish(
        self,
        path: str | Path | Any,  # a PEFT directory or an in-memory hub.Adapter
        name: str,
        version: str | None = None,
        *,
        task: str | None = None,
        tags: Sequence[str] = (),
        private: bool | None = None,
        description: str | None = None,
        metrics: dict[str, Any] | None = None,
        progress: ProgressFn | None = None,
        allow_duplicate: bool = False,
    ) -> VersionInfo: ...

    def resolve(self, ref: str) -> VersionInfo: ...

    def adapter(self, ref: str) -> AdapterInfo: ...

    def versions(self, ref: str) -> list[VersionInfo]: ...

    def search(
        self,
        text: str | None = None,
        *,
        task: str | None = None,
        base_model: str | None = None,
        tags: Sequence[str] = (),
        peft_type: str | None = None,
        namespace: str | None = None,
        sort: SortKey = "updated",
        offset: int = 0,
        limit: int = 20,
    ) -> SearchPage: ...

    def pull(
        self, ref: str, to: str | Path | None = None, progress: ProgressFn | None = None,
        force: bool = False,
    ) -> Path: ...

    def set_alias(self, ref: str, alias: str) -> VersionInfo: ...

    def remove_alias(self, repo: str, alias: str) -> None: ...

    def delete(self, ref: str) -> None: ...

    def gc(self, grace_seconds: float = 3600.0) -> GcReport: ...

    def create_namespace(self, name: str) -> NamespaceInfo: ...

    def create_token(
        self,
        name: str,
        scope: Scope = "read",
        namespaces: Sequence[str] = (),
        user: str | None = None,
        expires_in_days: float | None = None,
    ) -> NewToken: ...

    def list_tokens(self) -> list[TokenInfo]: ...

    def revoke_token(self, token_id: int) -> None: ...


class DirectoryPublisher:
    """``publish`` for registries that store a directory's files: an in-memory ``hub.Adapter``
    is written to a temporary PEFT directory first; subclasses implement ``_publish_dir``."""

    def publish(self, path: str | Path | Any, name: str, version: str | None = None, *,
                task: str | None = None, tags: Sequence[str] = (), private: bool | None = None,
                description: str | None = None, metrics: dict[str, Any] | None = None,
                progress: ProgressFn | None = None, allow_duplicate: bool = False
                ) -> VersionInfo:
        """Publish a PEFT adapter directory, or an in-memory ``hub.Adapter``, as a version.

        ``private=None`` lets the registry decide: new adapters are public unless made from
        an adapter the public cannot see. Files identical to an existing version create
        nothing (the answer is that version, with ``unchanged`` set) unless
        ``allow_duplicate``. Everything the registry would refuse that can be checked before
        uploading is refused before the first byte. Interrupted (``KeyboardInterrupt``), it
        raises ``PublishInterrupted`` saying what it left behind."""
        from lorahive.hub.manifest import publish_source

        with publish_source(path) as directory:
            return self._publish_dir(directory, name, version, task=task, tags=tags,
                                     private=private, description=description,
                                     metrics=metrics, progress=progress,
                                     allow_duplicate=allow_duplicate)

    def _publish_dir(self, path: Path, name: str, version: str | None = None, *,
                     task: str | None = None, tags: Sequence[str] = (),
                     private: bool | None = None, description: str | None = None,
                     metrics: dict[str, Any] | None = None,
                     progress: ProgressFn | None = None,
                     allow_duplicate: bool = False) -> VersionInfo:
        raise NotImplementedError
