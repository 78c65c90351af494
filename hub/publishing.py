"""Publishing a directory: what a registry refuses, and the client's side of a publish.

The same checks run on the publisher's machine, before a byte is uploaded, and in the
registry's commit, on the stored blobs (``check_publishable``), so a publish the commit would
refuse leaves nothing behind. ``publish_directory`` drives a publish for both registries (in
process and over HTTP): validate, ask the registry what it lacks (``PublishPlan``), upload only
that, commit — and, when interrupted, say what it left.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lorahive.hub.errors import (
    InvalidAdapterError,
    InvalidRequestError,
    PublishInterrupted,
)
from lorahive.hub.lineage import SIDECAR, read_sidecar
from lorahive.hub.manifest import CONFIG_NAME, WEIGHTS_NAME, build_manifest, read_chunks
from lorahive.hub.protocol import FileEntry, ProgressFn, PublishPlan, VersionInfo


def check_plain_json(value: Any, what: str) -> None:
    """Metadata must be plain JSON: no NaN/Infinity (PostgreSQL's JSON refuses them)."""
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise InvalidRequestError(f"{what} is not plain JSON ({e}); use finite numbers") from None


@dataclass
class Publishable:
    """An adapter directory a registry accepts, with what it records about it."""

    adapter: Any
    summary: dict[str, Any]
    lineage: dict[str, Any] | None
    metrics: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)


def check_publishable(adapter_dir: str | Path) -> Publishable:
    """Load the adapter (safetensors only, config and tensors consistent, its config selecting
    the modules its weights adapt), and check that it declares the base model, and that
    ``lorahive.json`` holds plain JSON lineage and metrics."""
    from lorahive.hub.peft_format import load_peft  # torch: only when publishing

    adapter = load_peft(adapter_dir)  # also checks that target_modules select its weights
    summary = adapter.summary()
    if not summary.get("base_model"):
        raise InvalidAdapterError(
            f"{CONFIG_NAME} declares no base_model_name_or_path; set it to the base model's "
            "Hub id or path")
    side = read_sidecar(adapter_dir)
    lineage = side.get("lineage")
    if lineage is not None and not isinstance(lineage, dict):
        raise InvalidAdapterError(f"{SIDECAR}: 'lineage' must be an object")
    metrics = side.get("metrics") or {}
    if not isinstance(metrics, dict):
        raise InvalidAdapterError(f"{SIDECAR}: 'metrics' must be an object")
    extra = {k: v for k, v in side.items() if k not in ("lineage", "metrics")}
    for what, value in (("lineage", lineage), ("metrics", metrics), ("sidecar", extra)):
        check_plain_json(value, f"{SIDECAR}: {what}")
    return Publishable(adapter, summary, lineage, metrics, extra)


class _Cancelled(Exception):
    """Raised inside an upload's body when the publish was interrupted."""


def _body(path: Path, cancel: threading.Event, progress: ProgressFn | None,
          label: str) -> Iterator[bytes]:
    for chunk in read_chunks(path):
        if cancel.is_set():
            raise _Cancelled(label)
        if progress is not None:
            progress(len(chunk), 0, label)
        yield chunk


def publish_directory(path: Path, name: str, *,
                      preflight: Callable[[list[FileEntry]], PublishPlan],
                      upload: Callable[[FileEntry, Iterator[bytes]], None],
                      commit: Callable[[list[FileEntry]], VersionInfo],
                      workers: int = 1, progress: ProgressFn | None = None) -> VersionInfo:
    """Validate ``path``, ask the registry what it lacks, upload that (``workers`` at a time),
    then commit. ``upload(entry, chunks)`` streams one file; ``commit(entries)`` creates the
    version (or answers the existing one whose files are the same)."""
    entries, local = build_manifest(path)
    if WEIGHTS_NAME not in local:
        raise InvalidAdapterError(f"no {WEIGHTS_NAME} in {path}; is this a PEFT adapter?")
    stage, todo, done = "check", [], []
    cancel = threading.Event()
    try:
        check_publishable(path)  # nothing is uploaded for an adapter the commit would refuse
        plan = preflight(entries)
        missing = set(plan.missing)
        todo = list({e.sha256: e for e in entries if e.sha256 in missing}.values())
        stage = "upload"
        if progress is not None:
            progress(0, sum(e.size for e in todo), f"upload {name}")
        if todo:
            _upload_all(todo, local, upload, workers, cancel, progress, done)
        stage = "commit"
        return commit(entries)
    except KeyboardInterrupt:
        cancel.set()
        raise PublishInterrupted(name, stage, len(done), len(todo),
                                 sum(e.size for e in done)) from None


def _upload_all(todo: list[FileEntry], local: dict[str, Path],
                upload: Callable[[FileEntry, Iterator[bytes]], None], workers: int,
                cancel: threading.Event, progress: ProgressFn | None,
                done: list[FileEntry]) -> None:
    def one(e: FileEntry) -> None:
        upload(e, _body(local[e.path], cancel, progress, e.path))
        done.append(e)

    if workers <= 1 or len(todo) == 1:
        for e in todo:
            one(e)
        return
    pool = ThreadPoolExecutor(max_workers=min(workers, len(todo)))
    futures: list[Future[None]] = [pool.submit(one, e) for e in todo]
    try:
        for fut in futures:
            fut.result()
    except BaseException:
        cancel.set()  # running uploads stop at their next chunk; queued ones never start
        for fut in futures:
            fut.cancel()
        pool.shutdown(wait=True)
        raise
    pool.shutdown(wait=True)
