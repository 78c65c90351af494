"""An in-process registry app for hostile-input tests, with a "trace" of everything a request
could leave behind (blobs, staging/temp files, database rows)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from fastapi.testclient import TestClient

from lorahive.registry.app import create_app
from lorahive.registry.service import RegistryService, counts
from lorahive.registry.settings import Settings

API = "/api/v1"


@dataclass(frozen=True)
class Trace:
    """What exists on disk and in the database."""

    blobs: frozenset[str]
    temps: tuple[str, ...]
    rows: tuple[tuple[str, float], ...]


@dataclass
class Harness:
    home: Path
    service: RegistryService
    client: TestClient
    admin: str

    def headers(self, token: str | None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"} if token else {}

    def user_token(self, user: str, scope: str = "write") -> str:
        r = self.client.post(f"{API}/tokens", headers=self.headers(self.admin),
                             json={"name": f"{user}-{scope}", "scope": scope, "user": user})
        assert r.status_code == 201, r.text
        return r.json()["token"]

    def trace(self) -> Trace:
        root = self.home / "blobs"
        blobs = frozenset(p.name for p in root.glob("??/??/*"))
        temps = tuple(sorted(str(p.relative_to(self.home)) for p in self.home.rglob("*")
                             if p.name.startswith(".lorahive-tmp")
                             or (p.parent.name in (".staging", "staging") and p.is_file())))
        return Trace(blobs, temps, tuple(sorted(counts(self.service).items())))

    def put_blob(self, body: bytes, token: str, sha: str | None = None,
                 length: int | None = None) -> int:
        sha = sha or hashlib.sha256(body).hexdigest()
        h = {**self.headers(token), "Content-Length": str(len(body) if length is None else length)}
        return self.client.put(f"{API}/blobs/{sha}", content=body, headers=h).status_code

    def commit(self, repo: str, files: dict[str, bytes], token: str,
               version: str | None = None, upload: bool = True) -> tuple[int, dict]:
        """Upload each body as a blob (as a client would), then commit the manifest."""
        entries = []
        for path, body in files.items():
            sha = hashlib.sha256(body).hexdigest()
            if upload:
                self.put_blob(body, token, sha)
            entries.append({"path": path, "sha256": sha, "size": len(body)})
        r = self.client.post(f"{API}/adapters/{repo}/versions", headers=self.headers(token),
                             json={"version": version, "files": entries})
        return r.status_code, r.json() if r.content else {}


def open_harness(home: Path, **settings: object) -> Iterator[Harness]:
    """Start the app in-process on a fresh home (SQLite unless ``database_url`` is given;
    a generator for pytest fixtures)."""
    base: dict[str, object] = {"database_url": "", "storage_url": ""}
    st = Settings(home=home, **{**base, **settings})  # type: ignore[arg-type]
    service = RegistryService(st)
    admin = service.bootstrap_admin()
    assert admin is not None
    app = create_app(st, service)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield Harness(home, service, client, admin)
