"""Adapters, versions, aliases and the commit step of a publish."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response, status

from lorahive.hub.protocol import AdapterInfo, PublishPlan, SearchPage, SortKey, VersionInfo
from lorahive.hub.refs import Ref, check_name, check_version
from lorahive.registry.deps import Caller, Service, limit_json_body
from lorahive.registry.http import revalidated_json
from lorahive.registry.schemas import AliasRequest, CommitRequest, PreflightRequest
from lorahive.registry.service import PublishOptions

router = APIRouter(prefix="/adapters", tags=["adapters"])


def _ref(ns: str, name: str, version: str | None = None, alias: str | None = None) -> Ref:
    check_name(ns, "namespace")
    check_name(name, "adapter name")
    if version is not None:
        check_version(version)
    if alias is not None:
        check_name(alias, "alias")
    return Ref(ns, name, version, alias)


@router.get("", response_model=SearchPage)
def search(
    request: Request, svc: Service, caller: Caller,
    q: str | None = None, task: str | None = None, base_model: str | None = None,
    tag: Annotated[list[str], Query()] = [],  # noqa: B006  (FastAPI reads the default)
    peft_type: str | None = None, namespace: str | None = None,
    sort: SortKey = "updated",
    offset: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,  # a bigger one overflowed SQL
    limit: int = 20,
) -> Response:
    """Search adapters visible to the caller by text, task, base model, tags and PEFT type
    (``ETag``; 304 to a matching ``If-None-Match``)."""
    return revalidated_json(request, svc.search(
        caller, q, task=task, base_model=base_model, tags=tag, peft_type=peft_type,
        namespace=namespace, sort=sort, offset=offset, limit=limit))


@router.get("/{ns}/{name}", response_model=AdapterInfo)
def get_adapter(ns: str, name: str, request: Request, svc: Service, caller: Caller) -> Response:
    return revalidated_json(request, svc.adapter(caller, _ref(ns, name)))


@router.delete("/{ns}/{name}", status_code=status.HTTP_204_NO_CONTENT)
def delete_adapter(ns: str, name: str, svc: Service, caller: Caller) -> None:
    """Delete an adapter with all its versions (admin scope on the namespace)."""
    svc.delete(caller, str(_ref(ns, name)))


@router.get("/{ns}/{name}/versions", response_model=list[VersionInfo])
def list_versions(ns: str, name: str, request: Request, svc: Service, caller: Caller
                  ) -> Response:
    return revalidated_json(request, svc.versions(caller, _ref(ns, name)))


@router.post("/{ns}/{name}/preflight", response_model=PublishPlan,
             dependencies=[Depends(limit_json_body)])
def preflight(ns: str, name: str, body: PreflightRequest, svc: Service,
              caller: Caller) -> PublishPlan:
    """Before uploading: refused as the commit would be, or the blobs to upload, or the
    version that already has these files."""
    return svc.preflight(caller, str(_ref(ns, name)), body.files, body.version,
                         body.allow_duplicate)


@router.post("/{ns}/{name}/versions", response_model=VersionInfo,
             status_code=status.HTTP_201_CREATED, dependencies=[Depends(limit_json_body)])
def commit(ns: str, name: str, body: CommitRequest, svc: Service, caller: Caller,
           response: Response) -> VersionInfo:
    """Commit a version from uploaded blobs (phase two of a publish), in one transaction;
    200 with ``unchanged`` when a version already has these files."""
    opts = PublishOptions(task=body.task, tags=body.tags, private=body.private,
                          description=body.description, metrics=body.metrics,
                          allow_duplicate=body.allow_duplicate)
    info = svc.commit(caller, str(_ref(ns, name)), body.files, body.version, opts)
    response.status_code = status.HTTP_200_OK if info.unchanged else status.HTTP_201_CREATED
    return info


@router.get("/{ns}/{name}/versions/{version}", response_model=VersionInfo)
def get_version(ns: str, name: str, version: str, request: Request, svc: Service,
                caller: Caller) -> Response:
    return revalidated_json(request, svc.resolve(caller, _ref(ns, name, version=version)))


@router.delete("/{ns}/{name}/versions/{version}", status_code=status.HTTP_204_NO_CONTENT)
def delete_version(ns: str, name: str, version: str, svc: Service, caller: Caller) -> None:
    svc.delete(caller, str(_ref(ns, name, version=version)))


@router.get("/{ns}/{name}/aliases/{alias}", response_model=VersionInfo)
def get_alias(ns: str, name: str, alias: str, request: Request, svc: Service,
              caller: Caller) -> Response:
    """Resolve an alias (``ETag``; 304 to a matching ``If-None-Match``, the cheap poll of a
    server that follows ``prod``)."""
    return revalidated_json(request, svc.resolve(caller, _ref(ns, name, alias=alias)))


@router.put("/{ns}/{name}/aliases/{alias}", response_model=VersionInfo)
def set_alias(ns: str, name: str, alias: str, body: AliasRequest, svc: Service,
              caller: Caller) -> VersionInfo:
    return svc.set_alias(caller, str(_ref(ns, name, version=body.version)), alias)


@router.delete("/{ns}/{name}/aliases/{alias}", status_code=status.HTTP_204_NO_CONTENT)
def delete_alias(ns: str, name: str, alias: str, svc: Service, caller: Caller) -> None:
    svc.remove_alias(caller, str(_ref(ns, name)), alias)
