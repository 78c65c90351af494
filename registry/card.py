"""Model cards of published versions.

Every version carries a ``README.md`` with the Hub's adapter front matter, so HF clients and the
Hub's own filters (``library_name: peft``, ``base_model:adapter:<id>``) see a lorahive adapter as
they see one pushed by PEFT. A card the publisher supplied is kept as is; a card in a commit
can also carry the adapter's task and tags (what the Hub's ``upload_file`` of a README means).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lorahive.hub.errors import LorahiveError
from lorahive.hub.manifest import CARD_NAME
from lorahive.hub.modelcard import render_card
from lorahive.hub.refs import check_name

CARD = CARD_NAME
CARD_MAX = 1024 * 1024  # front matter is read from cards up to this size
IMPLIED_TAGS = {"peft", "lora", "safetensors"}  # derived by lorahive, never stored as tags


def card_text(repo: str, *, summary: dict[str, Any], task: str | None = None,
              description: str | None = None, tags: Sequence[str] = (),
              metrics: dict[str, Any] | None = None,
              lineage: dict[str, Any] | None = None) -> bytes:
    """The generated card; it depends only on its inputs, so re-publishing identical content
    yields an identical file."""
    return render_card(repo, summary.get("base_model"), summary.get("peft_type") or "LORA",
                       task=task, description=description, tags=list(tags),
                       metrics=metrics or None, lineage=lineage, summary=summary).encode()


def options_from_card(front: dict[str, Any]) -> tuple[str | None, list[str]]:
    """``(task, tags)`` named by a card's front matter (derived tags are left out)."""
    tags = [t for t in front.get("tags") or [] if isinstance(t, str) and is_name(t)
            and t not in IMPLIED_TAGS]
    task = front.get("lorahive_task") or front.get("pipeline_tag")
    return (str(task) if isinstance(task, str) else None), tags


def is_name(s: str) -> bool:
    try:
        check_name(s)
        return True
    except LorahiveError:
        return False


def redact_parents(text: str, hidden: Sequence[dict[str, Any]]) -> str:
    """``text`` (a card) with the given parents not named: each one's reference (with and
    without its version) reads "a private adapter" and its sha256 is dropped."""
    for p in hidden:
        if not isinstance(p, dict) or not p.get("ref"):
            continue
        ref = str(p["ref"])
        for s in (ref, ref.split("@", 1)[0]):
            text = text.replace(s, "a private adapter")
        if p.get("sha256"):
            text = text.replace(str(p["sha256"]), "")
    return text
