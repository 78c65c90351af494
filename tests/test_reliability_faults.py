"""Faults: SIGKILL of the server during publishes of large adapters (nothing lost, nothing
half-visible, no orphan temp files after the next start-up, integrity check passes); client
pulls that resume, notice corrupted cache files and fail cleanly on a full disk; the server
on a full disk; PostgreSQL going away and coming back."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from lorahive.hub.cache import PullCache
from lorahive.hub.client import HttpRegistry
from lorahive.hub.errors import LorahiveError
from tests.malicious.corpus import WEIGHTS, read_dir
from tests.malicious.harness import API, Harness, open_harness
from tests.registry_helpers import (
    PG_BIN,
    Server,
    _as_postgres,
    cli_env,
    free_port,
    pg_cluster,
    pg_unavailable_reason,
    run_cli,
)

KILLS = int(os.environ.get("LORAHIVE_FAULT_KILLS", "3"))
ROOT = Path(__file__).resolve().parent.parent
# `lorahive serve` itself (start-up cleanup, migrations, admin bootstrap, uvicorn), launched
# without the rest of the CLI so a restart does not import torch
SERVE = ("import sys; from lorahive.cli.commands.registry_admin import serve; "
         "serve('127.0.0.1', int(sys.argv[1]), 1, 'warning')")


def start_server(home: Path, timeout: float = 60.0) -> Server:
    """Start the registry's serve command on a free loopback port; wait for /healthz."""
    import httpx

    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = home / f"serve-{port}.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen([sys.executable, "-c", SERVE, str(port)], env=cli_env(home),
                                stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT)
    server = Server(home, port, proc, log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {log.read_text()[-3000:]}")
        try:
            if httpx.get(server.url + "/healthz", timeout=1).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    server.stop()
    raise RuntimeError(f"server did not start: {log.read_text()[-3000:]}")
BIG = 24 * 1024**2  # bytes of the large file each publish carries


def _big_adapter(src: Path, dest: Path, seed: int) -> Path:
    """The tiny adapter plus a large extra file whose content differs per seed."""
    dest.mkdir(parents=True, exist_ok=True)
    for name, body in read_dir(src).items():
        (dest / name).write_bytes(body)
    rng = random.Random(seed)
    (dest / "training_state.safetensors.data").write_bytes(rng.randbytes(BIG))
    return dest


def _size(p: Path) -> int:
    try:
        return p.stat().st_size
    except FileNotFoundError:
        return 0


def _orphans(home: Path) -> list[Path]:
    return [*home.glob(".lorahive-tmp*"), *(home / "blobs" / ".staging").glob("*")]


def test_sigkill_during_large_publishes_loses_nothing(lora_dir, tmp_path):
    rng = random.Random(int(os.environ.get("LORAHIVE_FAULT_SEED", "20261123")))
    home = tmp_path / "srv"
    server = start_server(home)
    admin = server.admin_token
    with HttpRegistry(server.url, admin) as reg:
        tok = reg.create_token("w", "write", user="crash").token
    acked: dict[str, str] = {}  # version -> sha256 of the large file, acknowledged by 201
    t0 = time.perf_counter()
    d = _big_adapter(lora_dir, tmp_path / "a0", 0)
    with HttpRegistry(server.url, tok, cache=PullCache(tmp_path / "c")) as reg:
        acked[reg.publish(d, "crash/big").version] = hashlib.sha256(
            (d / "training_state.safetensors.data").read_bytes()).hexdigest()
    one = time.perf_counter() - t0
    stats = {"kills": 0, "mid_upload_kills": 0, "staging_orphans": 0, "validate_orphans": 0,
             "acked": 1,
             "failed_publishes": 0, "publish_s": round(one, 2)}
    try:
        for i in range(1, KILLS + 1):
            d = _big_adapter(lora_dir, tmp_path / f"a{i}", i)
            result: dict = {}

            def publish(d: Path = d, result: dict = result, url: str = server.url) -> None:
                try:
                    with HttpRegistry(url, tok, cache=PullCache(tmp_path / "c")) as r:
                        result["v"] = r.publish(d, "crash/big").version
                except LorahiveError as e:
                    result["e"] = e

            th = threading.Thread(target=publish)
            th.start()
            stage = home / "blobs" / ".staging"
            if i % 2:  # odd kills land mid-upload: while the big file is partly staged
                deadline = time.monotonic() + max(60.0, one * 10)
                partial = []
                while not partial and time.monotonic() < deadline and th.is_alive():
                    partial = [p for p in stage.glob("*") if _size(p) >= 1024**2]
                    time.sleep(0.002)
                assert partial, "the upload of the big file was never seen in progress"
            else:  # even kills: anywhere in the publish
                time.sleep(rng.uniform(0.0, one * 1.2))
            os.kill(server.proc.pid, signal.SIGKILL)
            server.proc.wait(timeout=10)
            th.join(timeout=60)
            assert not th.is_alive()
            if i % 2:  # the kill landed mid-upload: a partial staging file was left behind
                left = [_size(p) for p in stage.glob("*")]
                assert any(0 < n < BIG for n in left), left
                assert "v" not in result, "a publish killed mid-upload was acknowledged"
                stats["mid_upload_kills"] += 1
            stats["kills"] += 1
            if "v" in result:
                acked[result["v"]] = hashlib.sha256(
                    (d / "training_state.safetensors.data").read_bytes()).hexdigest()
                stats["acked"] += 1
            else:
                stats["failed_publishes"] += 1
                assert isinstance(result["e"], LorahiveError)
            left = _orphans(home)
            stats["staging_orphans"] += sum(1 for p in left if p.parent.name == ".staging")
            stats["validate_orphans"] += sum(1 for p in left if p.parent == home)
            server = start_server(home)
            assert _orphans(home) == [], "start-up left orphan temp files"
            with HttpRegistry(server.url, tok, cache=PullCache(tmp_path / f"c{i}")) as r:
                present = {v.version: v for v in r.versions("crash/big")}
            assert set(acked) <= set(present), "an acknowledged version was lost"
            nums = sorted(int(v) for v in present)
            assert len(nums) == len(set(nums))
    finally:
        server.stop()
    # every present version is whole: pull each from a fresh cache and compare
    server = start_server(home)
    try:
        with HttpRegistry(server.url, tok, cache=PullCache(tmp_path / "verify")) as r:
            for v in r.versions("crash/big"):
                snap = r.pull(f"crash/big@{v.version}")
                for f in v.files:
                    assert hashlib.sha256((snap / f.path).read_bytes()).hexdigest() == f.sha256
                if v.version in acked:
                    big = (snap / "training_state.safetensors.data").read_bytes()
                    assert hashlib.sha256(big).hexdigest() == acked[v.version]
            stats["versions_present"] = len(r.versions("crash/big"))
    finally:
        server.stop()
    assert stats["mid_upload_kills"] == (KILLS + 1) // 2
    cp = run_cli(home, "fsck", "--json")
    rep = json.loads(cp.stdout)
    assert rep["ok"] and rep["problems"] == [] and rep["orphan_temps"] == 0, rep
    stats["fsck_blobs_hashed"] = rep["blobs_checked"]
    stats["fsck_bytes_hashed"] = rep["bytes_hashed"]
    # the check can fail: a flipped byte and a missing blob are both reported
    sha = next(iter(acked.values()))
    blob = home / "blobs" / sha[:2] / sha[2:4] / sha
    data = bytearray(blob.read_bytes())
    data[12345] ^= 0xFF
    os.chmod(blob, 0o644)
    blob.write_bytes(bytes(data))
    from lorahive.registry.integrity import check
    from lorahive.registry.service import RegistryService
    from lorahive.registry.settings import Settings

    svc = RegistryService(Settings(home=home, database_url="", storage_url=""))
    try:
        rep2 = check(svc)
        assert not rep2.ok and any("hashes to" in p for p in rep2.problems)
        blob.unlink()
        rep2 = check(svc, hashes=False)
        assert not rep2.ok and any("is missing" in p for p in rep2.problems)
    finally:
        svc.close()
    print(f"\nfault injection: {json.dumps(stats)}")


# -- client side -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hx(tmp_path_factory):
    yield from open_harness(tmp_path_factory.mktemp("fault-home"))


@pytest.fixture(scope="module")
def published(hx: Harness, lora_dir, tmp_path_factory):
    d = _big_adapter(lora_dir, tmp_path_factory.mktemp("pub") / "a", 99)
    tok = hx.user_token("pull")
    reg = _client(hx, tok, tmp_path_factory.mktemp("pubcache"))
    reg.publish(d, "pull/big")
    return d, tok


def _client(hx: Harness, tok: str | None, cache: Path) -> HttpRegistry:
    reg = HttpRegistry("http://testserver", None, cache=PullCache(cache))
    reg.http = hx.client
    hx.client.headers.pop("Authorization", None)
    if tok:
        hx.client.headers["Authorization"] = f"Bearer {tok}"
    return reg


def test_interrupted_pull_resumes_with_range(hx: Harness, published, tmp_path, monkeypatch):
    d, tok = published
    reg = _client(hx, tok, tmp_path / "cache")
    real = HttpRegistry._fetch
    offsets: list[tuple[str, int]] = []
    dropped: list[bool] = []

    def broken(self, info, f, offset):
        offsets.append((f.path, offset))
        n = 0
        for chunk in real(self, info, f, offset):
            yield chunk
            n += len(chunk)
            if f.size > BIG // 2 and n >= 5 * 1024**2 and not dropped:
                dropped.append(True)
                raise LorahiveError("connection dropped (injected)")

    monkeypatch.setattr(HttpRegistry, "_fetch", broken)
    reg.cache.workers = 1
    with pytest.raises(LorahiveError, match="injected"):
        reg.pull("pull/big")
    parts = list((tmp_path / "cache" / "partial").glob("*.part"))
    assert len(parts) == 1 and parts[0].stat().st_size >= 5 * 1024**2
    assert not (tmp_path / "cache" / "snapshots").exists()  # nothing half-visible
    offsets.clear()
    snap = reg.pull("pull/big")
    resumed = [o for p, o in offsets if p == "training_state.safetensors.data"]
    assert resumed and resumed[0] >= 5 * 1024**2, offsets  # continued where it stopped
    for name in read_dir(d):
        assert (snap / name).read_bytes() == (d / name).read_bytes()


def test_corrupted_cache_file_is_detected_and_refetched(hx: Harness, published, tmp_path):
    d, tok = published
    reg = _client(hx, tok, tmp_path / "cache")
    snap = reg.pull("pull/big")
    target = snap / WEIGHTS
    blob = tmp_path / "cache" / "blobs" / hashlib.sha256(target.read_bytes()).hexdigest()
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0x01  # same size, different content
    os.chmod(blob, 0o644)
    blob.write_bytes(bytes(data))
    assert (snap / WEIGHTS).read_bytes() != (d / WEIGHTS).read_bytes()
    snap = reg.pull("pull/big")
    assert (snap / WEIGHTS).read_bytes() == (d / WEIGHTS).read_bytes()
    out = reg.pull("pull/big", to=tmp_path / "out")
    assert (out / WEIGHTS).read_bytes() == (d / WEIGHTS).read_bytes()


def test_disk_full_during_a_pull_is_a_clear_error_and_leaves_no_partial_file(
        hx: Harness, published, tmp_path, monkeypatch):
    """ENOSPC is simulated by a file object whose writes fail once 3 MiB were written
    (no privileges are needed, unlike a tiny tmpfs)."""
    import lorahive.hub.cache as cache_mod

    d, tok = published
    reg = _client(hx, tok, tmp_path / "cache")
    real_open = open

    class Full:
        def __init__(self, fh):
            self.fh, self.n = fh, 0

        def write(self, b):
            self.n += len(b)
            if self.n > 3 * 1024**2:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.fh.write(b)

        def __getattr__(self, k):
            return getattr(self.fh, k)

        def __enter__(self):
            return self

        def __exit__(self, *a):
            return self.fh.__exit__(*a)

    def full_open(path, mode="r", *a, **kw):
        fh = real_open(path, mode, *a, **kw)
        return Full(fh) if str(path).endswith(".part") else fh

    monkeypatch.setattr(cache_mod, "open", full_open, raising=False)
    with pytest.raises(LorahiveError) as ei:
        reg.pull("pull/big", to=tmp_path / "dest")
    msg = str(ei.value)
    assert "no space left" in msg and "\n" not in msg
    cache = tmp_path / "cache"
    assert not list((cache / "partial").glob("*")), "a partial file was left behind"
    assert not (cache / "snapshots").exists() and not (tmp_path / "dest").exists()
    big_sha = hashlib.sha256((d / "training_state.safetensors.data").read_bytes()).hexdigest()
    assert not (cache / "blobs" / big_sha).exists()
    monkeypatch.undo()
    assert (reg.pull("pull/big") / WEIGHTS).read_bytes() == (d / WEIGHTS).read_bytes()


def test_disk_full_on_the_server_is_507_and_stores_nothing(hx: Harness, monkeypatch):
    from lorahive.registry import blobs

    tok = hx.user_token("full")
    before = hx.trace()
    real = blobs.Staged.write

    def write(self, chunk):
        if self.size + len(chunk) > 1024**2:  # the disk fills up after 1 MiB
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, chunk)

    monkeypatch.setattr(blobs.Staged, "write", write)
    body = os.urandom(3 * 1024**2)
    r = hx.client.put(f"{API}/blobs/{hashlib.sha256(body).hexdigest()}", content=body,
                      headers=hx.headers(tok))
    assert r.status_code == 507 and r.json()["error"]["code"] == "insufficient_storage"
    assert hx.trace() == before


# -- PostgreSQL loss -------------------------------------------------------------------------
def _pg_ctl(cluster, *args: str) -> None:
    data = cluster.root / "data"
    opts = (f"-p {cluster.port} -k {cluster.root} -c listen_addresses='' -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
    subprocess.run(_as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(data), "-o", opts, "-w",
                                 "-l", str(cluster.root / "pg.log"), *args]),
                   check=True, capture_output=True, timeout=60)


def test_postgres_loss_is_503_and_recovers(tmp_path, lora_dir):
    reason = pg_unavailable_reason()
    if reason:
        pytest.skip(reason)
    with pg_cluster() as cluster:
        url = cluster.url(cluster.create_db())
        gen = open_harness(tmp_path / "pg-home", database_url=url)
        h = next(gen)
        try:
            good = read_dir(lora_dir)
            tok = h.user_token("pgns")
            assert h.commit("pgns/a", good, tok)[0] == 201
            assert h.client.get(f"{API}/adapters/pgns/a").status_code == 200
            _pg_ctl(cluster, "-m", "fast", "stop")  # the test cluster runs without fsync
            seen = []
            for method, url_, kw in (
                    ("GET", f"{API}/adapters/pgns/a", {}),
                    ("GET", f"{API}/adapters", {"params": {"q": "a"}}),
                    ("GET", f"{API}/whoami", {"headers": h.headers(tok)}),
                    ("GET", "/healthz", {}),
                    ("GET", "/api/models/pgns/a", {}),
                    ("POST", f"{API}/adapters/pgns/a/versions",
                     {"headers": h.headers(tok), "json": {"files": []}})):
                r = h.client.request(method, url_, **kw)
                seen.append((url_, r.status_code))
                assert r.status_code == 503, (url_, r.status_code, r.text[:300])
                if url_ != "/api/models/pgns/a":
                    assert r.json()["error"]["code"] == "service_unavailable"
            _pg_ctl(cluster, "start")
            deadline = time.monotonic() + 20
            while h.client.get("/healthz").status_code != 200:
                assert time.monotonic() < deadline
                time.sleep(0.2)
            assert h.client.get(f"{API}/adapters/pgns/a").status_code == 200
            assert h.commit("pgns/b", good, tok)[0] == 201  # writes work again
        finally:
            gen.close()
            shutil.rmtree(tmp_path / "pg-home", ignore_errors=True)


def test_gc_removes_old_orphans_but_not_an_upload_in_flight(hx: Harness):
    """``gc`` deletes temp files older than its grace period (a killed writer's) and keeps a
    younger one, which may be an upload in flight on another worker."""
    stage = hx.home / "blobs" / ".staging"
    stage.mkdir(parents=True, exist_ok=True)
    old, young = stage / ".lorahive-tmp-old", stage / ".lorahive-tmp-young"
    old_dir = hx.home / ".lorahive-tmp-validate-old"
    for p in (old, young):
        p.write_bytes(b"partial")
    old_dir.mkdir()
    (old_dir / "adapter_model.safetensors").symlink_to("/etc/hostname")
    past = time.time() - 7200
    for p in (old, old_dir):
        os.utime(p, (past, past), follow_symlinks=False)
    r = hx.client.post(f"{API}/gc", params={"grace_seconds": 3600}, headers=hx.headers(hx.admin))
    assert r.status_code == 200, r.text
    assert not old.exists() and not old_dir.exists() and young.exists()
    young.unlink()
