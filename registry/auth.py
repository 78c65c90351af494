"""API tokens and who may do what.

A token is ``lh_`` + 32 random bytes (urlsafe); only its sha256 is stored, and a token is
found by looking that digest up (an indexed SQL equality). The lookup is not constant-time and
need not be: its timing can at most reveal how much of the *digest* of a guess matches a stored
digest, and choosing guesses whose sha256 starts a certain way gets no nearer to a 256-bit
secret (that would take a preimage). No secret is ever compared byte by byte. Scopes are
ordered ``read < write < admin``; a token may be restricted to some namespaces. A user may act
on namespaces they own; site admins on all.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import secrets
from dataclasses import dataclass, field
from typing import NamedTuple

from sqlalchemy import Connection, Select, bindparam
from sqlmodel import Session, col, select

from lorahive.hub.errors import AuthenticationError, PermissionDeniedError
from lorahive.registry.tables import Namespace, Token, User, utcnow

TOKEN_PREFIX = "lh_"
SCOPES = ("read", "write", "admin")


def new_secret() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def scope_rank(scope: str) -> int:
    return SCOPES.index(scope) if scope in SCOPES else -1


class NamespaceView(NamedTuple):
    """What a permission check reads of a namespace, for a query that selects only those
    columns instead of loading the row."""

    name: str
    owner_id: int


@dataclass(frozen=True)
class Principal:
    """The caller: anonymous (``user_id is None``) or a user acting through one token."""

    user_id: int | None = None
    user: str | None = None
    is_admin: bool = False
    scope: str | None = None
    namespaces: tuple[str, ...] = field(default_factory=tuple)
    token_id: int | None = None

    @property
    def anonymous(self) -> bool:
        return self.user_id is None

    def has_scope(self, level: str) -> bool:
        return self.scope is not None and scope_rank(self.scope) >= scope_rank(level)

    def can(self, ns: Namespace | NamespaceView, level: str) -> bool:
        """May this caller act at ``level`` on namespace ``ns``?"""
        if self.anonymous or not self.has_scope(level):
            return False
        if self.namespaces and ns.name not in self.namespaces:
            return False
        return self.is_admin or ns.owner_id == self.user_id

    def require(self, ns: Namespace, level: str) -> None:
        if self.anonymous:
            raise AuthenticationError(
                f"{level} access to namespace {ns.name!r} needs a token: run `lorahive login` "
                "or set LORAHIVE_TOKEN"
            )
        if not self.can(ns, level):
            raise PermissionDeniedError(
                f"this token has no {level} access to namespace {ns.name!r}; ask its owner "
                f"for a token with scope {level!r} on it"
            )

    def require_admin(self, what: str) -> None:
        if self.anonymous:
            raise AuthenticationError(f"{what} needs an admin token")
        if not (self.is_admin and self.has_scope("admin")):
            raise PermissionDeniedError(f"{what} needs a site admin's token with scope 'admin'")


ANONYMOUS = Principal()


def authenticate(conn: Connection | Session, secret: str | None) -> Principal:
    """The principal for a bearer secret (anonymous when none); 401 for unknown/expired/revoked.
    One prebuilt statement (the token with its user): every authenticated request runs it."""
    if not secret:
        return ANONYMOUS
    row = conn.execute(_token_statement(), {"h": hash_token(secret)}).first()
    if row is None:
        raise AuthenticationError(
            "unknown token: check the token passed, LORAHIVE_TOKEN, or the login saved by "
            "`lorahive login` (run it again to replace it)")
    tid, revoked, expires_at, scope, namespaces, uid, user, is_admin = row
    _check_live(revoked, expires_at, uid)
    return Principal(uid, user, is_admin, scope, tuple(namespaces), tid)


@functools.cache
def _token_statement() -> Select:
    return (select(Token.id, Token.revoked, Token.expires_at, Token.scope, Token.namespaces,
                   User.id, User.name, User.is_admin)
            .outerjoin(User, col(User.id) == Token.user_id)
            .where(Token.token_hash == bindparam("h")))


def _check_live(revoked: bool, expires_at: dt.datetime | None, user_id: int | None) -> None:
    if revoked:
        raise AuthenticationError("this token was revoked; create a new one")
    if expires_at is not None and _aware(expires_at) <= utcnow():
        raise AuthenticationError("this token has expired; create a new one")
    if user_id is None:
        raise AuthenticationError("the token's user no longer exists")


def token_principal(session: Session, row: Token) -> Principal:
    """The principal acting through token ``row``; 401 when it is revoked or expired, or its
    user is gone (checked on every request, so revocation takes effect at once)."""
    user = session.get(User, row.user_id)
    _check_live(row.revoked, row.expires_at, user.id if user else None)
    assert user is not None
    return Principal(user.id, user.name, user.is_admin, row.scope, tuple(row.namespaces), row.id)


def _aware(t: dt.datetime) -> dt.datetime:
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)
