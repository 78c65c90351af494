"""Registry throughput: pull over loopback vs a plain file copy, and metadata latency.

    python benchmarks/registry.py            # 100 MB adapter, metadata with 1/4/16 clients
    python benchmarks/registry.py --large    # adds the 1 GB adapter (about a minute more)

A synthetic PEFT adapter (random float32 LoRA factors, so nothing compresses) is published to
a real ``lorahive serve`` on 127.0.0.1 in a temp data directory. A pull goes into a fresh,
empty cache every time and includes what a pull does: streaming download, sha256 check,
fsync, rename, snapshot links. The reference is a plain ``shutil.copyfile`` + ``fsync`` of the
same bytes on the same disk (page cache warm for both). Metadata reads are
``GET .../aliases/latest`` (a resolve) from N concurrent client threads, each with its own
connection; p50/p99 are per request.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lorahive.hub.cache import PullCache  # noqa: E402
from lorahive.hub.client import HttpRegistry  # noqa: E402


def make_adapter(out: Path, megabytes: int, r: int = 64, d: int = 4096) -> Path:
    """A LoRA adapter of about ``megabytes`` MB over q_proj/v_proj of a d-wide model."""
    per_module = 2 * r * d * 4
    n_modules = max(1, round(megabytes * 1024 * 1024 / per_module))
    g = torch.Generator().manual_seed(0)
    tensors = {}
    for i in range(n_modules):
        layer, proj = divmod(i, 2)
        name = f"base_model.model.model.layers.{layer}.self_attn.{('q_proj', 'v_proj')[proj]}"
        tensors[f"{name}.lora_A.weight"] = torch.randn(r, d, generator=g) * 0.01
        tensors[f"{name}.lora_B.weight"] = torch.randn(d, r, generator=g) * 0.01
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    (out / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "base_model_name_or_path": "bench/llama-like-4096", "r": r,
        "lora_alpha": 2 * r, "target_modules": ["q_proj", "v_proj"], "lora_dropout": 0.0,
        "bias": "none", "task_type": "CAUSAL_LM", "fan_in_fan_out": False,
    }))
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, home: Path, workers: int):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "LORAHIVE_HOME": str(home)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lorahive", "serve", "--port", str(self.port), "--workers",
             str(workers), "--log-level", "warning"], cwd=ROOT, env=env,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(600):
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        else:
            self.stop()
            raise SystemExit("server did not start")
        self.token = (home / "admin-token").read_text().strip()

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=30)


def copy_with_fsync(src: Path, dest: Path) -> None:
    shutil.copyfile(src, dest)
    with open(dest, "rb+") as fh:
        os.fsync(fh.fileno())


def bench_pull(server: Server, work: Path, megabytes: int, repeats: int) -> dict:
    src = make_adapter(work / f"adapter-{megabytes}", megabytes)
    weights = src / "adapter_model.safetensors"
    size = sum(p.stat().st_size for p in src.iterdir())
    with HttpRegistry(server.url, server.token, cache=PullCache(work / "pub-cache")) as reg:
        t0 = time.perf_counter()
        reg.publish(src, f"admin/bench-{megabytes}")
        publish_s = time.perf_counter() - t0
    pulls, copies = [], []
    for i in range(repeats):
        cache = work / f"cache-{megabytes}-{i}"
        with HttpRegistry(server.url, None, cache=PullCache(cache)) as reg:
            t0 = time.perf_counter()
            reg.pull(f"admin/bench-{megabytes}")
            pulls.append(time.perf_counter() - t0)
        shutil.rmtree(cache)
        dest = work / f"copy-{i}"
        t0 = time.perf_counter()
        copy_with_fsync(weights, dest)
        copies.append(time.perf_counter() - t0)
        dest.unlink()
    shutil.rmtree(src)
    mb = size / 1e6
    pull_s, copy_s = statistics.median(pulls), statistics.median(copies)
    return {"size_mb": mb, "publish_s": publish_s, "pull_s": pull_s, "copy_s": copy_s,
            "pull_mbps": mb / pull_s, "copy_mbps": mb / copy_s, "ratio": copy_s / pull_s}


def bench_metadata(server: Server, clients: int, total: int, ref: str) -> dict:
    latencies: list[float] = []
    lock = threading.Lock()
    per_client = max(1, total // clients)
    ns, name = ref.split("/")
    barrier = threading.Barrier(clients)

    def run() -> None:
        mine = []
        with httpx.Client(base_url=server.url) as c:
            c.get(f"/api/v1/adapters/{ns}/{name}/aliases/latest").raise_for_status()  # warm
            barrier.wait()
            for _ in range(per_client):
                t0 = time.perf_counter()
                c.get(f"/api/v1/adapters/{ns}/{name}/aliases/latest").raise_for_status()
                mine.append(time.perf_counter() - t0)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=run) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    latencies.sort()
    q = statistics.quantiles(latencies, n=100)
    return {"clients": clients, "requests": len(latencies), "rps": len(latencies) / wall,
            "p50_ms": q[49] * 1000, "p99_ms": q[98] * 1000}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--large", action="store_true", help="also the 1 GB adapter")
    ap.add_argument("--repeats", type=int, default=3, help="pulls per size (median reported)")
    ap.add_argument("--workers", type=int, default=2, help="server worker processes")
    ap.add_argument("--requests", type=int, default=600, help="metadata requests per level")
    ap.add_argument("--clients", default="1,4,16", help="concurrent metadata clients")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="lorahive-bench-", dir=os.environ.get("TMPDIR")))
    server = Server(work / "home", args.workers)
    try:
        sizes = [100] + ([1024] if args.large else [])
        rows = [bench_pull(server, work, mb, args.repeats) for mb in sizes]
        meta = [bench_metadata(server, int(n), args.requests, "admin/bench-100")
                for n in args.clients.split(",")]
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(f"\nserver: lorahive serve --workers {args.workers} (SQLite + local blobs), loopback\n")
    print("| adapter | publish (s) | pull (s) | pull MB/s | copy+fsync (s) | copy MB/s | "
          "pull / copy throughput |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['size_mb']:.0f} MB | {r['publish_s']:.2f} | {r['pull_s']:.2f} | "
              f"{r['pull_mbps']:.0f} | {r['copy_s']:.2f} | {r['copy_mbps']:.0f} | "
              f"{r['ratio']:.2f} |")
    print("\n| metadata clients | requests | req/s | p50 (ms) | p99 (ms) |")
    print("|---|---|---|---|---|")
    for m in meta:
        print(f"| {m['clients']} | {m['requests']} | {m['rps']:.0f} | {m['p50_ms']:.1f} | "
              f"{m['p99_ms']:.1f} |")


if __name__ == "__main__":
    main()
