"""Every version carries a ``README.md`` model card with the Hub's adapter front matter, so HF
clients and the Hub's own filters (``library_name: peft``, ``base_model:adapter:<id>``) see a
lorahive adapter as they see one pushed by PEFT. A card the publisher supplied is kept as is."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from lorahive.hub.modelcard import render_card
from lorahive.hub.protocol import FileEntry
from lorahive.registry.blobs import BlobStore, ingest

CARD = "README.md"


def with_model_card(store: BlobStore, repo: str, files: Sequence[FileEntry], *,
                    summary: dict[str, Any], task: str | None = None,
                    description: str | None = None, tags: Sequence[str] = (),
                    metrics: dict[str, Any] | None = None,
                    lineage: dict[str, Any] | None = None) -> list[FileEntry]:
    """``files`` plus a generated card (stored as a blob) unless one is among them. The card
    depends only on its inputs, so re-publishing identical content yields identical files."""
    if any(f.path == CARD for f in files):
        return list(files)
    text = render_card(repo, summary.get("base_model"), summary.get("peft_type") or "LORA",
                       task=task, description=description, tags=list(tags),
                       metrics=metrics or None, lineage=lineage, summary=summary)
    data = text.encode()
    sha = hashlib.sha256(data).hexdigest()
    if store.size(sha) != len(data):
        ingest(store, [data], sha, len(data), max(len(data), 1))
    return sorted([*files, FileEntry(path=CARD, sha256=sha, size=len(data))],
                  key=lambda f: f.path)
