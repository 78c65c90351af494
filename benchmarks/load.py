"""Load test: N concurrent clients mixing searches, metadata reads, pulls and publishes for a
fixed time against a real ``lorahive serve`` on 127.0.0.1, then a check that nothing was lost.

    python benchmarks/load.py                                  # 64 clients, 30 s, SQLite
    python benchmarks/load.py --db postgres --workers 4        # throwaway PostgreSQL cluster
    python benchmarks/load.py --clients 8 --duration 5 --json  # what the test runs

Each client is an asyncio task with its own httpx connection pool. Operations (weights):
search ``GET /adapters?q=`` (3), metadata ``GET .../aliases/latest`` (3), pull (2: config and
weights of a random version, each body checked against its sha256) and publish (1: a fresh
random adapter, two-phase upload, auto version) onto a handful of shared names, so publishes
of the same ``ns/name`` race. Afterwards: every acknowledged version is present, each
adapter's version numbers are exactly 1..n (no duplicate, no gap), and every version's blobs
are served with their recorded sha256. Any non-2xx, exception or mismatch is an error.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from benchmarks.postgres import free_port

ROOT = Path(__file__).resolve().parent.parent
API = "/api/v1"
NS = "load"
NAMES = [f"adapter-{i}" for i in range(4)]
OPS = {"search": 3, "metadata": 3, "pull": 2, "publish": 1}
SERVE = ("import sys; from cli.commands.registry_admin import serve; "
         "serve('127.0.0.1', int(sys.argv[1]), int(sys.argv[2]), 'warning')")


def make_adapter(rng: random.Random, r: int = 8, dim: int = 256, layers: int = 2) -> dict[str, bytes]:
    """A PEFT LoRA adapter (config + safetensors) with random float32 factors."""
    header: dict = {}
    data = bytearray()
    for layer in range(layers):
        for mod in ("q_proj", "v_proj"):
            for kind, shape in (("lora_A", [r, dim]), ("lora_B", [dim, r])):
                key = f"base_model.model.model.layers.{layer}.self_attn.{mod}.{kind}.weight"
                n = shape[0] * shape[1]
                body = struct.pack(f"<{n}f", *(rng.gauss(0, 0.02) for _ in range(n)))
                header[key] = {"dtype": "F32", "shape": shape,
                               "data_offsets": [len(data), len(data) + len(body)]}
                data += body
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    cfg = {"peft_type": "LORA", "r": r, "lora_alpha": 2 * r, "target_modules": ["q_proj", "v_proj"],
           "base_model_name_or_path": "lorahive-bench/base", "task_type": "CAUSAL_LM",
           "bias": "none", "lora_dropout": 0.0}
    return {"adapter_config.json": json.dumps(cfg).encode(),
            "adapter_model.safetensors": struct.pack("<Q", len(raw)) + raw + bytes(data)}


@dataclass
class Stats:
    lat: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    acked: list[tuple[str, str]] = field(default_factory=list)  # (name, version) with 201


async def publish(c: httpx.AsyncClient, name: str, files: dict[str, bytes]) -> str:
    entries = [{"path": p, "sha256": hashlib.sha256(b).hexdigest(), "size": len(b)}
               for p, b in files.items()]
    r = await c.post(f"{API}/blobs/missing", json={"sha256": [e["sha256"] for e in entries]})
    r.raise_for_status()
    missing = set(r.json()["missing"])
    for e in entries:
        if e["sha256"] in missing:
            r = await c.put(f"{API}/blobs/{e['sha256']}", content=files[e["path"]])
            r.raise_for_status()
    r = await c.post(f"{API}/adapters/{NS}/{name}/versions", json={"files": entries})
    r.raise_for_status()
    return r.json()["version"]


async def pull(c: httpx.AsyncClient, name: str, version: str) -> None:
    r = await c.get(f"{API}/adapters/{NS}/{name}/versions/{version}")
    r.raise_for_status()
    for f in r.json()["files"]:
        if f["path"] not in ("adapter_config.json", "adapter_model.safetensors"):
            continue
        body = await c.get(f"{API}/adapters/{NS}/{name}/versions/{version}/files/{f['path']}")
        body.raise_for_status()
        if hashlib.sha256(body.content).hexdigest() != f["sha256"]:
            raise AssertionError(f"{name}@{version}/{f['path']}: sha256 mismatch")


async def client(i: int, url: str, token: str, until: float, stats: Stats, seed: int) -> None:
    rng = random.Random(seed * 1000 + i)
    ops, weights = list(OPS), list(OPS.values())
    async with httpx.AsyncClient(base_url=url, timeout=60,
                                 headers={"Authorization": f"Bearer {token}"}) as c:
        while time.monotonic() < until:
            op = rng.choices(ops, weights)[0]
            name = rng.choice(NAMES)
            t0 = time.perf_counter()
            try:
                if op == "search":
                    r = await c.get(f"{API}/adapters", params={"q": rng.choice(["adapter", "load",
                                                                              "2", "zzz"])})
                    r.raise_for_status()
                elif op == "metadata":
                    r = await c.get(f"{API}/adapters/{NS}/{name}/aliases/latest")
                    r.raise_for_status()
                elif op == "pull":
                    known = [v for n, v in stats.acked if n == name] or ["1"]
                    await pull(c, name, rng.choice(known))
                else:
                    files = make_adapter(rng)
                    v = await publish(c, name, files)
                    stats.acked.append((name, v))
            except Exception as e:  # every failure is counted and shown
                stats.errors[op].append(f"{type(e).__name__}: {str(e)[:200]}")
                continue
            stats.lat[op].append(time.perf_counter() - t0)


async def verify(url: str, token: str, stats: Stats) -> dict:
    """Every acknowledged version present, numbers 1..n per adapter, blobs served intact."""
    problems: list[str] = []
    versions = 0
    async with httpx.AsyncClient(base_url=url, timeout=120,
                                 headers={"Authorization": f"Bearer {token}"}) as c:
        for name in NAMES:
            r = await c.get(f"{API}/adapters/{NS}/{name}/versions")
            r.raise_for_status()
            have = [v["version"] for v in r.json()]
            versions += len(have)
            nums = sorted(int(v) for v in have)
            if nums != list(range(1, len(nums) + 1)):
                problems.append(f"{name}: version numbers {nums} are not 1..{len(nums)}")
            missing = {v for n, v in stats.acked if n == name} - set(have)
            if missing:
                problems.append(f"{name}: acknowledged versions {sorted(missing)} are gone")
            for v in have:
                try:
                    await pull(c, name, v)
                except Exception as e:
                    problems.append(f"{name}@{v}: {e}")
    return {"versions": versions, "problems": problems}


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))] if s else float("nan")


# -- server ----------------------------------------------------------------------------------
@contextmanager
def serve(home: Path, workers: int, env: dict[str, str]) -> Iterator[str]:
    """``lorahive serve`` (its own function, without the rest of the CLI) on a loopback port."""
    port = free_port()
    full = {k: v for k, v in os.environ.items() if not k.startswith("LORAHIVE_")}
    full.update(LORAHIVE_HOME=str(home), **env)
    log = open(home / "serve.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-c", SERVE, str(port), str(workers)], cwd=ROOT,
                            env=full, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((home / "serve.log").read_text()[-2000:])
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        yield url
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # uvicorn's worker processes too
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()


@contextmanager
def database(kind: str) -> Iterator[dict[str, str]]:
    if kind == "sqlite":
        yield {}
        return
    sys.path.insert(0, str(ROOT))
    from benchmarks.postgres import pg_cluster

    with pg_cluster() as cluster:
        yield {"LORAHIVE_DATABASE_URL": cluster.url(cluster.create_db())}


def run(clients: int = 64, duration: float = 30.0, db: str = "sqlite", workers: int = 1,
        seed: int = 0, url: str | None = None, token: str | None = None) -> dict:
    """Run the load; returns the report (``errors`` and ``problems`` must both be empty)."""
    home = Path(tempfile.mkdtemp(prefix="lorahive-load-"))
    try:
        with database(db) as env, serve(home, workers, env) as url:
            admin = (home / "admin-token").read_text().strip()
            r = httpx.post(url + f"{API}/tokens", headers={"Authorization": f"Bearer {admin}"},
                           json={"name": "load", "scope": "write", "user": NS})
            r.raise_for_status()
            token = r.json()["token"]
            stats = Stats()

            async def main() -> dict:
                async with httpx.AsyncClient(base_url=url, timeout=120, headers={
                        "Authorization": f"Bearer {token}"}) as c:
                    rng = random.Random(seed)
                    for name in NAMES:  # one version each to start from
                        stats.acked.append((name, await publish(c, name, make_adapter(rng))))
                t0 = time.monotonic()
                await asyncio.gather(*(client(i, url, token, t0 + duration, stats, seed)
                                       for i in range(clients)))
                elapsed = time.monotonic() - t0
                return {"elapsed": elapsed, **await verify(url, token, stats)}

            # a thread of its own: the caller may already run an event loop (a test process
            # that drives a browser through playwright's sync API does)
            with ThreadPoolExecutor(1) as pool:
                out = pool.submit(asyncio.run, main()).result()
    finally:
        shutil.rmtree(home, ignore_errors=True)
    ops = {}
    for op in OPS:
        lat = stats.lat.get(op, [])
        ops[op] = {"ok": len(lat), "errors": len(stats.errors.get(op, [])),
                   "p50_ms": round(pct(lat, 0.5) * 1000, 1), "p99_ms": round(pct(lat, 0.99) * 1000, 1),
                   "per_s": round(len(lat) / out["elapsed"], 1)}
    return {"clients": clients, "duration_s": round(out["elapsed"], 1), "db": db,
            "workers": workers, "ops": ops, "versions": out["versions"],
            "acked_publishes": len(stats.acked), "problems": out["problems"],
            "errors": {k: v[:5] for k, v in stats.errors.items() if v}}


def table(rep: dict) -> str:
    lines = [f"{rep['clients']} clients, {rep['duration_s']} s, {rep['db']}, "
             f"{rep['workers']} worker(s): {rep['versions']} versions after the run, "
             f"{len(rep['problems'])} problems",
             "", "| operation | ok | errors | per s | p50 ms | p99 ms |",
             "|---|---:|---:|---:|---:|---:|"]
    for op, o in rep["ops"].items():
        lines.append(f"| {op} | {o['ok']} | {o['errors']} | {o['per_s']} | {o['p50_ms']} | "
                     f"{o['p99_ms']} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--duration", type=float, default=30.0)
    ap.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="print the report as JSON")
    a = ap.parse_args()
    rep = run(a.clients, a.duration, a.db, a.workers, a.seed)
    print(json.dumps(rep, indent=2) if a.json else table(rep))
    if rep["problems"] or rep["errors"]:
        print(json.dumps({"problems": rep["problems"], "errors": rep["errors"]}, indent=2),
              file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
