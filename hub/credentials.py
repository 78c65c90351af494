"""Which registry server a client talks to, and with which token.

One rule for every client-side door (the CLI, the vLLM resolver plugin): an explicit URL, else
``LORAHIVE_URL``, else the server saved by ``lorahive login``; the token is the explicit one,
else ``LORAHIVE_TOKEN``, else the saved token when it was saved for that same server (a token
is never sent to a server it was not issued for).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from lorahive.hub.atomic import atomic_file


def lorahive_home() -> Path:
    return Path(os.environ.get("LORAHIVE_HOME") or Path.home() / ".lorahive").expanduser()


def credentials_file() -> Path:
    return lorahive_home() / "credentials.json"


def load_credentials() -> dict[str, str]:
    try:
        data = json.loads(credentials_file().read_text())
        return data if isinstance(data, dict) else {}
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def save_credentials(url: str, token: str) -> Path:
    path = credentials_file()
    with atomic_file(path, "w") as fh:
        os.fchmod(fh.fileno(), 0o600)
        json.dump({"url": url, "token": token}, fh)
    return path


def server_selection(url: str | None = None,
                     token: str | None = None) -> tuple[str | None, str | None]:
    """``(url, token)`` of the selected server; ``(None, token)`` when none is configured (the
    embedded registry then acts with the token given, if any, else its admin token)."""
    creds = load_credentials()
    url = url or os.environ.get("LORAHIVE_URL") or creds.get("url")
    if not url:
        return None, token
    if token is None:
        token = os.environ.get("LORAHIVE_TOKEN") or (
            creds.get("token") if creds.get("url", "").rstrip("/") == url.rstrip("/") else None)
    return url, token
