"""Integrity check of a registry (``lorahive fsck``): every file a version references has its
blob, with the recorded size and (unless skipped) the recorded sha256; every version has its
config and weights; aliases point at versions; orphan temp files and unreferenced blobs are
counted (the first are removed by the next start-up or ``gc``, the second by ``gc``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from sqlmodel import col, select

from lorahive.hub.manifest import CONFIG_NAME, WEIGHTS_NAME, sha256_of_chunks
from lorahive.registry.db import session_scope
from lorahive.registry.resilience import orphan_paths
from lorahive.registry.service import RegistryService
from lorahive.registry.tables import AdapterRow, AliasRow, FileRow, Namespace, VersionRow


@dataclass
class IntegrityReport:
    versions: int = 0
    files: int = 0
    blobs_checked: int = 0
    bytes_hashed: int = 0
    problems: list[str] = field(default_factory=list)
    orphan_temps: int = 0
    unreferenced_blobs: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


def check(service: RegistryService, hashes: bool = True) -> IntegrityReport:
    """Check the database against the blob store (read-only)."""
    rep = IntegrityReport()
    store = service.store
    with session_scope(service.engine) as s:
        rows = s.exec(select(FileRow, VersionRow.version, AdapterRow.name, Namespace.name)
                      .join(VersionRow, col(FileRow.version_id) == VersionRow.id)
                      .join(AdapterRow, col(VersionRow.adapter_id) == AdapterRow.id)
                      .join(Namespace, col(AdapterRow.namespace_id) == Namespace.id)).all()
        versions = s.exec(select(VersionRow.id, VersionRow.version, VersionRow.size)).all()
        aliases = s.exec(select(AliasRow)).all()
        version_ids = {v[0] for v in versions}
    rep.versions, rep.files = len(versions), len(rows)
    per_version: dict[int, list[FileRow]] = {}
    for f, *_ in rows:
        per_version.setdefault(f.version_id, []).append(f)
    checked: dict[str, str | None] = {}
    for f, version, name, ns in rows:
        where = f"{ns}/{name}@{version}:{f.path}"
        size = store.size(f.sha256)
        if size is None:
            rep.problems.append(f"{where}: blob {f.sha256} is missing")
            continue
        if size != f.size:
            rep.problems.append(f"{where}: blob has {size} bytes, the version says {f.size}")
            continue
        if hashes and f.sha256 not in checked:
            got = sha256_of_chunks(store.open_range(f.sha256))
            checked[f.sha256] = got
            rep.blobs_checked += 1
            rep.bytes_hashed += size
        if hashes and checked[f.sha256] != f.sha256:
            rep.problems.append(f"{where}: blob content hashes to {checked[f.sha256]}")
    for vid, version, size in versions:
        files = per_version.get(vid, [])
        paths = {f.path for f in files}
        for needed in (CONFIG_NAME, WEIGHTS_NAME):
            if needed not in paths:
                rep.problems.append(f"version id {vid} ({version}) has no {needed}")
        if files and sum(f.size for f in files) != size:
            rep.problems.append(f"version id {vid} ({version}): size {size} is not the sum of "
                                "its files")
    for a in aliases:
        if a.version_id not in version_ids:
            rep.problems.append(f"alias {a.name} of adapter {a.adapter_id} points at a missing "
                                "version")
    referenced = {f.sha256 for f, *_ in rows}
    rep.unreferenced_blobs = sum(1 for b in store.iter_blobs() if b.sha256 not in referenced)
    stage = getattr(store, "stage_dir", None)
    rep.orphan_temps = sum(1 for _ in orphan_paths(Path(service.settings.home),
                                                   Path(stage) if stage else None))
    return rep
