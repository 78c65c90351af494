"""Searches remembered by their inputs, so a rerun does not pay for the same search twice.

A search with its out-of-fold check is hundreds of forward passes (minutes on a CPU). The
reruns a user makes after reading its result change nothing it depends on: ``--write-anyway``
after the check refused the mix, ``--fine-tune`` after a gradient-free run, ``--eval`` to score
the mix, another ``--out`` or ``--publish``. Those runs find the search here and go straight to
writing. An entry is keyed by the search's own recipe (``session.search_key``: the
candidates' content hashes, the shots' hash, the base model, dtype, device, objective and every
search setting) and holds what the search found, not the adapter: pre-screening's scores and
the candidates it kept, the base model's score, the check's folds, and the kept point with
its trace. ``--fresh`` searches again and replaces the entry; a damaged or foreign entry is
ignored. Entries are small (a few KB) and live under the pull cache's root (``searches/``),
or ``LORAHIVE_SEARCHES``.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lorahive.compose.composer.folds import CrossValidation
from lorahive.compose.composer.search import SearchResult
from lorahive.hub.atomic import atomic_file

FORMAT = 1  # bumped when an entry's fields change meaning; other formats are not read


def searches_dir() -> Path:
    env = os.environ.get("LORAHIVE_SEARCHES")
    if env:
        return Path(env).expanduser()
    from lorahive.hub.cache import default_cache_dir

    return default_cache_dir() / "searches"


def files_fingerprint(path: str | os.PathLike[str]) -> list[list[Any]] | None:
    """Name, size and modification time of each file directly in ``path`` (a base model's
    directory): a model replaced in place gets a new key without hashing gigabytes."""
    p = Path(path)
    if not p.is_dir():
        return None
    return [[f.name, st.st_size, st.st_mtime_ns] for f in sorted(p.iterdir())
            if f.is_file() and (st := f.stat())]


@dataclass
class RememberedSearch:
    """What ``Composer.run`` computed before building the adapter."""

    kept: list[str]  # the candidates searched over, by reference (after pre-screening)
    prescreen: list[tuple[str, float]] | None
    zero_shot: float
    cross_validation: CrossValidation | None
    search: SearchResult
    saved: str = ""  # when the search ran (UTC, ISO 8601)

    def to_json(self) -> dict[str, Any]:
        """The entry as JSON-ready data (numpy values are converted by ``_plain``)."""
        return {"format": FORMAT, "saved": self.saved, "kept": self.kept,
                "prescreen": self.prescreen, "zero_shot": self.zero_shot,
                "cross_validation": (None if self.cross_validation is None
                                     else asdict(self.cross_validation)),
                "search": asdict(self.search)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> RememberedSearch:
        s = dict(d["search"])
        s["weights"] = np.asarray(s["weights"], dtype=np.float64)
        if s.get("recommendation") is not None:
            s["recommendation"] = np.asarray(s["recommendation"], dtype=np.float64)
        cv = d["cross_validation"]
        return cls(kept=list(d["kept"]),
                   prescreen=None if d["prescreen"] is None else
                   [(str(r), float(v)) for r, v in d["prescreen"]],
                   zero_shot=float(d["zero_shot"]),
                   cross_validation=None if cv is None else CrossValidation(**cv),
                   search=SearchResult(**s), saved=str(d.get("saved", "")))


def _plain(x: Any) -> Any:
    """numpy scalars and arrays as JSON numbers and lists."""
    if isinstance(x, np.ndarray | np.generic):
        return x.tolist()
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


class SearchMemo:
    """The remembered searches under one directory, one JSON file per search key."""

    def __init__(self, root: str | os.PathLike[str] | None = None):
        self.root = Path(root) if root is not None else searches_dir()

    def path(self, key: str) -> Path:
        return self.root / f"{key}.json"

    def load(self, key: str) -> RememberedSearch | None:
        """The search remembered under ``key``; ``None`` when there is none or it cannot be
        read (a damaged entry costs a new search, never a wrong result)."""
        try:
            d = json.loads(self.path(key).read_text())
            if d.get("format") != FORMAT:
                return None
            return RememberedSearch.from_json(d)
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def save(self, key: str, found: RememberedSearch) -> bool:
        """Remember ``found`` (written whole or not at all); ``False`` when the directory
        cannot be written, which only means the next run searches again."""
        found.saved = found.saved or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with atomic_file(self.path(key), "w") as fh:
                json.dump(found.to_json(), fh, default=_plain)
        except OSError:
            return False
        return True
