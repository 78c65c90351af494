"""Adapter references: ``namespace/name``, ``namespace/name@version``, ``namespace/name:alias``.

Parsed in one place so the CLI, the SDK and the server agree on what a name may contain:
names and versions become URL path segments and cache directory names, so they are kept to a
safe alphabet (no ``/``, ``..``, spaces or control characters).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from lorahive.hub.errors import InvalidReferenceError

NAME_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,62}[A-Za-z0-9_])?$")
VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")
DEFAULT_ALIAS = "latest"


def check_name(value: str, what: str = "name") -> str:
    """Return ``value`` if it is a valid namespace/adapter/alias name, else raise."""
    if not NAME_RE.fullmatch(value or "") or ".." in value:
        raise InvalidReferenceError(
            f"invalid {what} {value!r}: use letters, digits, '.', '_' or '-' (1-64 characters, "
            "starting and ending with a letter or digit)"
        )
    return value


def check_version(value: str) -> str:
    if not VERSION_RE.fullmatch(value or "") or ".." in value:
        raise InvalidReferenceError(
            f"invalid version {value!r}: use letters, digits, '.', '_', '+' or '-' (1-64 characters)"
        )
    return value


@dataclass(frozen=True)
class Ref:
    """A parsed reference; at most one of ``version`` and ``alias`` is set."""

    namespace: str
    name: str
    version: str | None = None
    alias: str | None = None

    @property
    def repo(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def revision(self) -> str:
        """What to resolve: the version, the alias, or ``latest``."""
        return self.version or self.alias or DEFAULT_ALIAS

    def __str__(self) -> str:
        if self.version:
            return f"{self.repo}@{self.version}"
        if self.alias:
            return f"{self.repo}:{self.alias}"
        return self.repo


def parse_ref(text: str) -> Ref:
    """Parse ``ns/name[@version|:alias]``; raise InvalidReferenceError with the expected form."""
    if not isinstance(text, str) or not text:
        raise InvalidReferenceError("empty reference; expected namespace/name[@version|:alias]")
    version = alias = None
    body = text
    if "@" in body:
        body, version = body.split("@", 1)
        check_version(version)
    elif ":" in body:
        body, alias = body.split(":", 1)
        check_name(alias, "alias")
    parts = body.split("/")
    if len(parts) != 2:
        raise InvalidReferenceError(
            f"invalid reference {text!r}: expected namespace/name[@version|:alias]"
        )
    ns, name = parts
    return Ref(check_name(ns, "namespace"), check_name(name, "adapter name"), version, alias)
