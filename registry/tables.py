"""SQL tables (SQLModel), kept apart from the API schemas in ``lorahive.hub.protocol``.

Every change here needs an Alembic revision in ``registry/migrations/versions``; the
start-up check compares the database against these tables' head revision.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import JSON, BigInteger, Column, UniqueConstraint
from sqlmodel import Field, SQLModel


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class User(SQLModel, table=True):
    __tablename__ = "users"
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(index=True, unique=True, max_length=64)
    is_admin: bool = False
    created_at: dt.datetime = Field(default_factory=utcnow)


class Namespace(SQLModel, table=True):
    __tablename__ = "namespaces"
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(index=True, unique=True, max_length=64)
    owner_id: int = Field(foreign_key="users.id", index=True)
    created_at: dt.datetime = Field(default_factory=utcnow)


class Token(SQLModel, table=True):
    """An API token; only the sha256 of its secret is stored."""

    __tablename__ = "tokens"
    id: int | None = Field(default=None, primary_key=True)
    user_id: int = Field(foreign_key="users.id", index=True)
    name: str = Field(max_length=128)
    token_hash: str = Field(index=True, unique=True, max_length=64)
    scope: str = Field(max_length=16)  # read | write | admin
    namespaces: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    created_at: dt.datetime = Field(default_factory=utcnow)
    expires_at: dt.datetime | None = None
    revoked: bool = False


class AdapterRow(SQLModel, table=True):
    __tablename__ = "adapters"
    __table_args__ = (UniqueConstraint("namespace_id", "name", name="uq_adapter_ns_name"),)
    id: int | None = Field(default=None, primary_key=True)
    namespace_id: int = Field(foreign_key="namespaces.id", index=True)
    name: str = Field(index=True, max_length=64)
    description: str = ""
    task: str | None = Field(default=None, index=True, max_length=128)
    base_model: str | None = Field(default=None, index=True, max_length=256)
    peft_type: str | None = Field(default=None, index=True, max_length=32)
    private: bool = False
    next_seq: int = 1
    downloads: int = 0
    created_at: dt.datetime = Field(default_factory=utcnow)
    updated_at: dt.datetime = Field(default_factory=utcnow, index=True)


class AdapterTag(SQLModel, table=True):
    __tablename__ = "adapter_tags"
    adapter_id: int = Field(foreign_key="adapters.id", primary_key=True)
    tag: str = Field(primary_key=True, index=True, max_length=64)


class VersionRow(SQLModel, table=True):
    """An immutable published version; only ``downloads`` ever changes."""

    __tablename__ = "versions"
    __table_args__ = (UniqueConstraint("adapter_id", "version", name="uq_version"),)
    id: int | None = Field(default=None, primary_key=True)
    adapter_id: int = Field(foreign_key="adapters.id", index=True)
    version: str = Field(max_length=64)
    seq: int
    created_at: dt.datetime = Field(default_factory=utcnow)
    size: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    sha256: str = Field(max_length=64)
    # sha256 over the files as the publisher sent them (see service.content_digest)
    content_sha256: str | None = Field(default=None, index=True, max_length=64)
    peft_type: str | None = None
    base_model: str | None = None
    rank: int | None = None
    lora_alpha: float | None = None
    num_parameters: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    target_modules: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    summary: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    stats: list[dict[str, Any]] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    metrics: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    meta: dict[str, Any] = Field(default_factory=dict, sa_column=Column("metadata", JSON, nullable=False))
    lineage: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    downloads: int = 0


class LineageEdgeRow(SQLModel, table=True):
    """One parent a version's lineage names by registry reference (``hub.lineage.
    parent_edges``), indexed by the parent so an adapter's children are found without
    reading every lineage."""

    __tablename__ = "lineage_edges"
    version_id: int = Field(foreign_key="versions.id", primary_key=True)
    parent_repo: str = Field(primary_key=True, index=True, max_length=129)
    parent_version: str | None = Field(default=None, max_length=64)
    weight: float | None = None


class FileRow(SQLModel, table=True):
    __tablename__ = "files"
    __table_args__ = (UniqueConstraint("version_id", "path", name="uq_file_path"),)
    id: int | None = Field(default=None, primary_key=True)
    version_id: int = Field(foreign_key="versions.id", index=True)
    path: str = Field(max_length=255)
    sha256: str = Field(index=True, max_length=64)
    size: int = Field(sa_column=Column(BigInteger, nullable=False))


class AliasRow(SQLModel, table=True):
    __tablename__ = "aliases"
    adapter_id: int = Field(foreign_key="adapters.id", primary_key=True)
    name: str = Field(primary_key=True, max_length=64)
    version_id: int = Field(foreign_key="versions.id", index=True)


class WebSession(SQLModel, table=True):
    """A browser's sign-in to the web pages, acting through one API token: only the sha256 of
    the cookie's secret is stored; revoking the token (or signing out) ends the session."""

    __tablename__ = "web_sessions"
    id: int | None = Field(default=None, primary_key=True)
    session_hash: str = Field(index=True, unique=True, max_length=64)
    token_id: int = Field(foreign_key="tokens.id", index=True)
    csrf: str = Field(max_length=64)
    created_at: dt.datetime = Field(default_factory=utcnow)
    expires_at: dt.datetime = Field(index=True)
