"""Identity, namespaces, tokens and maintenance (gc)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, status

from lorahive.hub.protocol import GcReport, NamespaceInfo, NewToken, TokenInfo, WhoAmI
from lorahive.registry.deps import Caller, Service, limit_json_body
from lorahive.registry.schemas import NamespaceCreateRequest, TokenCreateRequest

router = APIRouter(tags=["accounts"], dependencies=[Depends(limit_json_body)])


@router.get("/whoami", response_model=WhoAmI)
def whoami(svc: Service, caller: Caller) -> WhoAmI:
    return svc.whoami(caller)


@router.post("/namespaces", response_model=NamespaceInfo, status_code=status.HTTP_201_CREATED)
def create_namespace(body: NamespaceCreateRequest, svc: Service, caller: Caller) -> NamespaceInfo:
    return svc.create_namespace(caller, body.name)


@router.post("/tokens", response_model=NewToken, status_code=status.HTTP_201_CREATED)
def create_token(body: TokenCreateRequest, svc: Service, caller: Caller) -> NewToken:
    """Create a token; the secret is in this response only."""
    return svc.create_token(caller, body.name, body.scope, body.namespaces, body.user,
                            body.expires_in_days)


@router.get("/tokens", response_model=list[TokenInfo])
def list_tokens(svc: Service, caller: Caller) -> list[TokenInfo]:
    return svc.list_tokens(caller)


@router.delete("/tokens/{token_id}", status_code=status.HTTP_204_NO_CONTENT)
def revoke_token(token_id: int, svc: Service, caller: Caller) -> None:
    svc.revoke_token(caller, token_id)


@router.post("/gc", response_model=GcReport)
def gc(svc: Service, caller: Caller, grace_seconds: float | None = None) -> GcReport:
    """Delete unreferenced blobs older than the grace period (site admin)."""
    return svc.gc(caller, grace_seconds)
