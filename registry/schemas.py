"""Request bodies of the REST API (responses reuse ``lorahive.hub.protocol``'s models)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from lorahive.hub.protocol import FileEntry, Scope


class CommitRequest(BaseModel):
    """Phase two of a publish: the manifest of already-uploaded blobs."""

    version: str | None = None
    files: list[FileEntry]
    task: str | None = None
    tags: list[str] = []
    private: bool | None = None
    description: str | None = Field(default=None, max_length=10_000)
    metrics: dict[str, Any] = {}
    allow_duplicate: bool = False


class PreflightRequest(BaseModel):
    """Before uploading: the manifest a publish is about to commit."""

    version: str | None = None
    files: list[FileEntry]
    allow_duplicate: bool = False


class MissingBlobsRequest(BaseModel):
    sha256: list[str] = Field(max_length=10_000)


class MissingBlobsResponse(BaseModel):
    missing: list[str]


class BlobPutResponse(BaseModel):
    sha256: str
    size: int
    existed: bool


class AliasRequest(BaseModel):
    version: str


class NamespaceCreateRequest(BaseModel):
    name: str


class TokenCreateRequest(BaseModel):
    name: str
    scope: Scope = "read"
    namespaces: list[str] = []
    user: str | None = None
    expires_in_days: float | None = None


class ErrorBody(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorBody
