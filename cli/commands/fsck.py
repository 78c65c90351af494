"""``lorahive fsck``: check the local registry's database against its blob store."""

from __future__ import annotations

import dataclasses
from typing import Annotated

import typer

from lorahive.cli.output import console, print_json


def fsck(
    no_hashes: Annotated[bool, typer.Option("--no-hashes",
                                            help="Check sizes only (fast).")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Verify that every version's blobs exist with the recorded size and sha256 (the data
    directory in LORAHIVE_HOME, or LORAHIVE_DATABASE_URL / LORAHIVE_STORAGE_URL). Exits 1
    when a problem is found."""
    from lorahive.registry.integrity import check
    from lorahive.registry.service import RegistryService

    svc = RegistryService()
    try:
        rep = check(svc, hashes=not no_hashes)
    finally:
        svc.close()
    if json_out:
        print_json({**dataclasses.asdict(rep), "ok": rep.ok})
    else:
        for p in rep.problems:
            console.print(f"[red]problem[/]: {p}")
        console.print(f"{rep.versions} versions, {rep.files} files, {rep.blobs_checked} blobs "
                      f"hashed ({rep.bytes_hashed} bytes), {rep.unreferenced_blobs} unreferenced "
                      f"blobs, {rep.orphan_temps} orphan temp files: "
                      + ("ok" if rep.ok else f"{len(rep.problems)} problems"))
    if not rep.ok:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command()(fsck)
