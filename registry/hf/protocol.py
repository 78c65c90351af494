"""Pure pieces of the Hugging Face Hub wire format, kept apart from the router so they are
testable without a server: commit ids, git object ids, tree listings, pagination links and the
error headers ``huggingface_hub`` maps onto its own exception types.

Every lorahive file is presented as a Git LFS file: its ``lfs.oid`` and the ``ETag`` of
``/resolve`` are the sha256 the blob store is keyed by, and its git ``oid`` is the git-sha1 of
the LFS pointer, which follows from ``(sha256, size)`` without reading the file.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from urllib.parse import urlencode

from fastapi.responses import JSONResponse

from lorahive.hub.protocol import FileEntry

MAIN = "main"
COMMIT_RE = r"^[0-9a-f]{40}$"
TREE_PAGE = 1000

# HF's X-Error-Code values; the client turns each into its own exception class.
REPO_NOT_FOUND = "RepoNotFound"
REVISION_NOT_FOUND = "RevisionNotFound"
ENTRY_NOT_FOUND = "EntryNotFound"


def commit_sha(repo: str, version: str | None, files: Sequence[FileEntry]) -> str:
    """A stable 40-hex commit id for one version: sha1 of its canonical manifest.

    It includes the repo and version name so two versions with the same files still get
    distinct commits (a commit id must resolve to exactly one version).
    """
    manifest = {
        "repo": repo,
        "version": version,
        "files": sorted([f.path, f.sha256, f.size] for f in files),
    }
    data = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha1(data, usedforsecurity=False).hexdigest()


def git_blob_sha1(data: bytes) -> str:
    """``git hash-object`` of ``data`` (what the client compares regular files by)."""
    h = hashlib.sha1(f"blob {len(data)}\0".encode(), usedforsecurity=False)
    h.update(data)
    return h.hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def file_entry_json(f: FileEntry) -> dict:
    """One ``type: file`` entry of a tree listing (also used for ``siblings`` with blobs)."""
    pointer = lfs_pointer(f.sha256, f.size)
    return {
        "type": "file",
        "path": f.path,
        "size": f.size,
        "oid": git_blob_sha1(pointer),
        "lfs": {"oid": f.sha256, "size": f.size, "pointerSize": len(pointer)},
    }


def _dir_oid(files: Sequence[FileEntry], prefix: str) -> str:
    h = hashlib.sha1(usedforsecurity=False)
    for f in sorted(files, key=lambda f: f.path):
        if f.path.startswith(prefix):
            h.update(f"{f.path}\0{f.sha256}\n".encode())
    return h.hexdigest()


class TreeError(Exception):
    """The path does not exist in the version as a folder."""

    def __init__(self, path: str):
        super().__init__(path)
        self.path = path


def tree_entries(files: Sequence[FileEntry], path: str = "", recursive: bool = False) -> list[dict]:
    """Files and folders under ``path`` (one level, or all levels when ``recursive``), in
    path order, folders included as ``type: directory`` the way the Hub lists them."""
    path = path.strip("/")
    prefix = f"{path}/" if path else ""
    under = [f for f in files if f.path.startswith(prefix)]
    if path and not under:
        raise TreeError(path)
    out: dict[str, dict] = {}
    for f in under:
        rest = f.path[len(prefix):].split("/")
        # every folder between `path` and the file (only the first one when not recursive)
        for depth in range(1, len(rest)):
            if depth > 1 and not recursive:
                break
            d = prefix + "/".join(rest[:depth])
            if d not in out:
                out[d] = {"type": "directory", "path": d, "size": 0,
                          "oid": _dir_oid(files, d + "/")}
        if recursive or len(rest) == 1:
            out[f.path] = file_entry_json(f)
    return [out[k] for k in sorted(out)]


def next_link(url: str, params: dict[str, str], offset: int, total: int, limit: int) -> str | None:
    """The ``Link: <...>; rel="next"`` header for a page ending before ``total``, else None."""
    if offset + limit >= total:
        return None
    q = {k: v for k, v in params.items() if k != "cursor"}
    q["cursor"] = str(offset + limit)
    return f'<{url}?{urlencode(q, doseq=True)}>; rel="next"'


def hf_error(status: int, code: str | None, message: str, commit: str | None = None) -> JSONResponse:
    """An error the HF client understands: ``X-Error-Code``/``X-Error-Message`` headers plus a
    JSON ``{"error": ...}`` body; ``X-Repo-Commit`` on a missing entry lets it cache the miss."""
    headers = {"X-Error-Message": header_safe(message)}
    if code:
        headers["X-Error-Code"] = code
    if commit:
        headers["X-Repo-Commit"] = commit
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def header_safe(text: str) -> str:
    return text.encode("latin-1", "replace").decode("latin-1").replace("\n", " ")[:500]


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """``(start, end)`` inclusive for a single ``bytes=`` range, ``None`` for the whole file.

    Raises ``ValueError`` for a range that cannot be satisfied (answered with 416).
    """
    if not header:
        return None
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None  # unsupported forms: send the whole file, as RFC 9110 allows
    first, _, last = spec.strip().partition("-")
    if first == "":
        if not last.isdigit() or int(last) == 0:
            raise ValueError(header)
        n = min(int(last), size)
        return (size - n, size - 1)
    if not first.isdigit() or (last and not last.isdigit()):
        return None
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if start >= size or end < start:
        raise ValueError(header)
    return (start, end)
