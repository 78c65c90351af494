"""Recovery after a crash: temp files a killed writer left behind.

A publish killed mid-way can leave a staging file (``<blobs>/.staging/.lorahive-tmp-*``, or
``<home>/staging`` for S3) and a validation directory (``<home>/.lorahive-tmp-validate-*``).
None of them is ever visible to readers; this module deletes them. ``lorahive serve`` calls
``remove_orphans(..., min_age=0)`` once before its workers start (nothing can be in flight
then); ``gc`` calls it with its grace period so a concurrent upload's staging file survives.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Iterator
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from lorahive.hub.atomic import TEMP_PREFIX, remove_paths

log = logging.getLogger("lorahive.registry")


def orphan_paths(home: Path, stage_dir: Path | None) -> Iterator[Path]:
    """Temp files/dirs of interrupted writers: the staging area and the home's top level."""
    for root in (stage_dir, home):
        if root is not None and root.is_dir():
            yield from root.glob(f"{TEMP_PREFIX}*")


def remove_orphans(home: Path, stage_dir: Path | None, min_age: float = 0.0) -> int:
    """Delete orphan temps last modified more than ``min_age`` seconds ago; how many."""
    return remove_paths(orphan_paths(home, stage_dir), min_age)


def startup_cleanup(service: object) -> int:
    """Remove every orphan of a previous run (call before any worker accepts requests)."""
    home = service.settings.home  # type: ignore[attr-defined]
    stage = getattr(service.store, "stage_dir", None)  # type: ignore[attr-defined]
    return remove_orphans(Path(home), Path(stage) if stage else None, 0.0)


def install_handlers(app: FastAPI) -> None:
    """Map infrastructure failures to JSON errors instead of 500s: a full disk is ``507``,
    a lost database connection (any driver-level disconnect) is ``503``."""

    @app.exception_handler(OSError)
    async def _os_error(_: Request, e: OSError) -> JSONResponse:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            log.error("disk full: %s", e)
            return JSONResponse({"error": {"code": "insufficient_storage",
                                           "message": "the registry's disk is full; nothing "
                                                      "was stored, retry later"}},
                                status_code=507)
        raise e

    @app.exception_handler(DBAPIError)
    async def _db_error(_: Request, e: DBAPIError) -> JSONResponse:
        if not e.connection_invalidated and not isinstance(e, InterfaceError | OperationalError):
            raise e
        log.error("database connection lost: %s", e)
        return JSONResponse({"error": {"code": "service_unavailable",
                                       "message": "the database is unavailable; retry later"}},
                            status_code=503, headers={"Retry-After": "5"})
