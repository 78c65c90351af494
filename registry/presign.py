"""Presigned upload URLs: a caller with write access to a namespace asks for one, and whoever
holds it may upload that one object (sha256 and size fixed, bound to the repo and the user)
without credentials until it expires — as a client PUTs to a presigned S3 URL. The Hub's LFS
batch API hands these out; the service checks them before its ingest.

The key is ``LORAHIVE_HF_SIGNING_KEY``, or a random key created once in the data directory
(``hf-signing-key``), so every worker of one deployment accepts the URLs any of them issued.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
import time
from pathlib import Path

SIGNED_URL_TTL = 3600


def signing_key(home: Path) -> bytes:
    env = os.environ.get("LORAHIVE_HF_SIGNING_KEY")
    if env:
        return env.encode()
    path = home / "hf-signing-key"
    with contextlib.suppress(FileExistsError):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32))
    for _ in range(50):  # another worker may be writing it right now
        key = path.read_text().strip()
        if key:
            return key.encode()
        time.sleep(0.02)
    raise RuntimeError(f"{path} is empty; delete it and restart")


def sign_upload(key: bytes, repo: str, oid: str, size: int, user: str, expires: int) -> str:
    msg = f"{repo}\n{oid}\n{size}\n{user}\n{expires}".encode()
    return hmac.new(key, msg, hashlib.sha256).hexdigest()


def check_upload_sig(key: bytes, repo: str, oid: str, size: int, user: str, expires: int,
                     sig: str) -> bool:
    if expires < time.time():
        return False
    # bytes: compare_digest raises TypeError on non-ASCII str (a hostile sig was a 500)
    return hmac.compare_digest(sign_upload(key, repo, oid, size, user, expires).encode(),
                               sig.encode("utf-8", "surrogatepass"))
