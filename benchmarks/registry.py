"""Registry throughput: pull over loopback vs a plain file copy, and metadata under ``wrk``.

    python -m benchmarks.registry                  # 100 MB pull; metadata at 1/16/64 connections
    python -m benchmarks.registry --large          # adds the 1 GB adapter (about a minute more)
    python -m benchmarks.registry --no-pull --duration 5 --connections 1,16   # metadata only
    python -m benchmarks.registry --db postgres    # the same on a throwaway PostgreSQL cluster
    python -m benchmarks.registry --profile        # where a resolve's time goes (py-spy)
    python -m benchmarks.registry --peers          # beside MLflow's server and nginx
    python -m benchmarks.registry --workers-scan 1,2,4   # resolve behind nginx, 1/2/4 workers

A synthetic PEFT adapter (random float32 LoRA factors, so nothing compresses) is published to
a real ``lorahive serve --workers N`` on 127.0.0.1 in a temp data directory. A pull goes into
a fresh, empty cache every time and includes what a pull does: streaming download, sha256
check, fsync, rename, snapshot links. The reference is a plain ``shutil.copyfile`` + ``fsync``
of the same bytes on the same disk (page cache warm for both).

Metadata is measured with ``wrk`` (Debian package ``wrk``; one load thread by default, so the
load generator leaves the server its cores), each level for ``--duration`` seconds after a
one-second warm-up: a resolve (``GET .../aliases/latest``), the same resolve revalidated
(``If-None-Match`` with its ``ETag``: a 304), and one page of search (``GET /adapters?limit=20``)
over ``--catalog`` published adapters. Anything but 2xx/3xx is counted as an error.

``--peers`` runs the same adapter through MLflow's server and nginx in the same run (see
``benchmarks/peers.py``): metadata (lorahive's resolve beside MLflow's model-version GET and
alias GET, same ``wrk`` levels), pulls end to end with a sha256 of every result (lorahive pull,
``hf_hub_download`` against lorahive, MLflow's artifact download, ``curl`` from nginx +
``sha256sum``) and publish time (lorahive publish, MLflow log-artifacts + register).

``--workers-scan 1,2,4`` starts the scale-out layout of docs/deploy.md for each count (see
``benchmarks/scaleout.py``): that many ``lorahive serve --workers 1`` processes on one
throwaway PostgreSQL database and a moto S3 bucket, behind Debian's nginx running
``deploy/nginx.conf``, and measures a resolve through the proxy at each ``--connections`` level:
how throughput grows with workers and where it stops (on a machine with fewer cores than
workers, where the cores run out).

``--profile`` samples one server worker with ``py-spy`` (dev extra) while ``wrk`` resolves at
16 connections, and prints the share of busy samples per frame (inclusive, idle threads and
the idle event loop left out): where a resolve's time goes, independent of machine speed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.load import database, serve  # noqa: E402
from lorahive.hub.cache import PullCache  # noqa: E402
from lorahive.hub.client import HttpRegistry  # noqa: E402

API = "/api/v1"


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


class Server:
    """A running ``lorahive serve``: its URL and the admin token of its data directory."""

    def __init__(self, url: str, home: Path):
        self.url = url
        self.token = (home / "admin-token").read_text().strip()


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


def publish_catalog(server: Server, work: Path, n: int) -> str:
    """``n`` small adapters (1 MB, same blobs) for search to page over; returns one of them."""
    src = make_adapter(work / "meta-adapter", 1)
    with HttpRegistry(server.url, server.token, cache=PullCache(work / "meta-cache")) as reg:
        for i in range(max(1, n)):
            reg.publish(src, f"admin/meta-{i:04d}", description=f"catalog adapter {i}",
                        allow_duplicate=True)
    return "admin/meta-0000"


_WRK_RPS = re.compile(r"Requests/sec:\s+([\d.]+)")
_WRK_PCT = re.compile(r"^\s+(50|99)(?:\.000)?%\s+([\d.]+)(us|ms|s)\s*$", re.M)
_WRK_NON2XX = re.compile(r"Non-2xx or 3xx responses:\s+(\d+)")
_WRK_SOCKET = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
_WRK_TOTAL = re.compile(r"(\d+) requests in")
_UNIT_MS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def wrk(url: str, connections: int, duration: float, threads: int = 1,
        headers: dict[str, str] | None = None) -> dict:
    """One ``wrk`` run (after a one-second warm-up) parsed into req/s, p50/p99 and errors."""
    hdr = [x for k, v in (headers or {}).items() for x in ("-H", f"{k}: {v}")]
    base = ["wrk", "-t", str(min(threads, connections)), "-c", str(connections), *hdr, url]
    subprocess.run([*base[:-1], "-d", "1s", url], capture_output=True, timeout=60, check=True)
    out = subprocess.run([*base[:-1], "-d", f"{duration:g}s", "--latency", url],
                         capture_output=True, text=True, timeout=duration + 60, check=True).stdout
    pct = {int(m[0]): float(m[1]) * _UNIT_MS[m[2]] for m in _WRK_PCT.findall(out)}
    sock = _WRK_SOCKET.search(out)
    non2xx = _WRK_NON2XX.search(out)
    errors = (int(non2xx.group(1)) if non2xx else 0) + (
        sum(int(x) for x in sock.groups()) if sock else 0)
    total = _WRK_TOTAL.search(out)
    rps = _WRK_RPS.search(out)
    if rps is None or total is None:
        raise RuntimeError(f"unexpected wrk output:\n{out}")
    return {"connections": connections, "requests": int(total.group(1)),
            "rps": float(rps.group(1)), "p50_ms": pct.get(50, float("nan")),
            "p99_ms": pct.get(99, float("nan")), "errors": errors}


def print_wrk(rows: list[dict], key: str = "what", label: str = "") -> None:
    """``wrk`` rows as a Markdown table, first column ``row[key]``."""
    print(f"| {label or {'what': 'metadata'}.get(key, key)} | connections | requests | req/s | "
          "p50 (ms) | p99 (ms) | errors |")
    print("|---|---|---|---|---|---|---|")
    for m in rows:
        print(f"| {m[key]} | {m['connections']} | {m['requests']} | {m['rps']:.0f} | "
              f"{m['p50_ms']:.1f} | {m['p99_ms']:.1f} | {m['errors']} |")


def bench_metadata(server: Server, ref: str, levels: list[int], duration: float,
                   threads: int) -> list[dict]:
    ns, name = ref.split("/")
    resolve = f"{server.url}{API}/adapters/{ns}/{name}/aliases/latest"
    first = httpx.get(resolve)
    first.raise_for_status()
    targets = [
        ("resolve", resolve, {}),
        ("resolve, revalidated (304)", resolve, {"If-None-Match": first.headers["etag"]}),
        ("search page (20)", f"{server.url}{API}/adapters?limit=20", {}),
    ]
    rows = []
    for label, url, headers in targets:
        for c in levels:
            rows.append({"what": label, **wrk(url, c, duration, threads, headers)})
    return rows


def _frame(raw: str) -> str:
    """``name (path/to/file.py:12)`` -> ``name (file.py:12)``."""
    name, _, where = raw.partition(" (")
    return f"{name} ({where.rstrip(')').rsplit('/', 1)[-1]})" if where else name


def profile(url: str, pid: int, seconds: float, top: int = 40) -> list[tuple[float, str]]:
    """Busy-sample shares per frame of process ``pid`` under a 16-connection resolve load."""
    import collections

    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        raise SystemExit("error: py-spy is not installed (pip install py-spy)")
    with tempfile.TemporaryDirectory() as d:
        raw = Path(d) / "raw.txt"
        load = subprocess.Popen(["wrk", "-t1", "-c16", "-d", f"{seconds + 3:g}s", url],
                                stdout=subprocess.DEVNULL)
        time.sleep(1)
        subprocess.run([spy, "record", "--pid", str(pid), "-d", f"{seconds:g}", "-r", "200",
                        "-f", "raw", "--nonblocking", "-o", str(raw)], check=True,
                       capture_output=True, timeout=seconds + 60)
        load.wait(timeout=60)
        incl: collections.Counter[str] = collections.Counter()
        total = 0
        for line in raw.read_text().splitlines():
            stack, _, n = line.rpartition(" ")
            if not n.isdigit():
                continue
            frames = stack.split(";")
            if frames[-1].startswith(("Condition.wait", "select ", "_run_once ")):
                continue  # idle worker threads and the waiting event loop
            total += int(n)
            for fr in dict.fromkeys(_frame(f) for f in frames):
                incl[fr] += int(n)
    return [(100 * n / max(1, total), fr) for fr, n in incl.most_common(top)]


def _timed(fn: Callable[[int], object], repeats: int) -> float:
    times = []
    for i in range(repeats):
        t0 = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_peers(server: Server, work: Path, megabytes: int, levels: list[int],
                args: argparse.Namespace) -> tuple[list[dict], list[dict], list[dict]]:
    """Metadata, pull and publish rows for lorahive, MLflow and nginx on one adapter."""
    from benchmarks import peers

    src = make_adapter(work / f"peer-{megabytes}", megabytes)
    weights = src / "adapter_model.safetensors"
    sha, mb = peers.file_sha256(weights), weights.stat().st_size / 1e6
    repo = f"admin/peer-{megabytes}"

    def check(path: Path) -> None:
        if peers.file_sha256(path) != sha:
            raise SystemExit(f"error: {path} does not hash to the published sha256")

    t0 = time.perf_counter()
    with HttpRegistry(server.url, server.token, cache=PullCache(work / "pub-cache")) as reg:
        reg.publish(src, repo)
    publish = [{"tool": "lorahive publish", "mb": mb, "s": time.perf_counter() - t0}]
    pulls, meta = [], []

    def lorahive_pull(i: int) -> None:
        with HttpRegistry(server.url, None, cache=PullCache(work / f"lh-{megabytes}-{i}")) as r:
            r.pull(repo)  # verifies every file's sha256 itself

    def hf(i: int) -> None:
        check(peers.hf_pull(server.url, repo, work / f"hf-{megabytes}-{i}"))

    pulls.append({"client": "lorahive pull", "s": _timed(lorahive_pull, args.repeats)})
    pulls.append({"client": "hf_hub_download (lorahive) + sha256",
                  "s": _timed(hf, args.repeats)})
    (work / "mlflow").mkdir(exist_ok=True)
    with peers.mlflow_server(work / "mlflow", args.workers) as ml:
        run_id, ml_s = peers.mlflow_publish(ml, src)
        publish.append({"tool": "MLflow log_artifacts + register", "mb": mb, "s": ml_s})

        def mlflow_pull(i: int) -> None:
            check(peers.mlflow_pull(ml, run_id, work / f"ml-{megabytes}-{i}"))

        pulls.append({"client": "MLflow download_artifacts + sha256",
                      "s": _timed(mlflow_pull, args.repeats)})
        if megabytes == min(args.peer_sizes):
            ns, name = repo.split("/")
            targets = [
                ("lorahive resolve (alias latest)",
                 f"{server.url}{API}/adapters/{ns}/{name}/aliases/latest"),
                ("MLflow model-versions/get",
                 f"{ml}/api/2.0/mlflow/model-versions/get?name={peers.MODEL}&version=1"),
                ("MLflow registered-models/alias",
                 f"{ml}/api/2.0/mlflow/registered-models/alias?name={peers.MODEL}&alias={peers.ALIAS}"),
            ]
            for label, url in targets:
                httpx.get(url).raise_for_status()
                for c in levels:
                    meta.append({"what": label, **wrk(url, c, args.duration, args.wrk_threads)})
    with peers.nginx_server(work, weights) as ng:
        def curl(i: int) -> None:
            check(peers.curl_pull(f"{ng}/{weights.name}", work / f"curl-{megabytes}-{i}"))

        pulls.append({"client": "curl from nginx (sendfile) + sha256sum",
                      "s": _timed(curl, args.repeats)})
    for p in pulls:
        p.update(mb=mb, mbps=mb / p["s"])
    return meta, pulls, publish


def print_peers(meta: list[dict], pulls: list[dict], publish: list[dict]) -> None:
    print_wrk(meta)
    print("\n| pull (end to end, sha256 checked) | MB | s | MB/s |\n|---|---|---|---|")
    for p in pulls:
        print(f"| {p['client']} | {p['mb']:.0f} | {p['s']:.2f} | {p['mbps']:.0f} |")
    print("\n| publish | MB | s |\n|---|---|---|")
    for p in publish:
        print(f"| {p['tool']} | {p['mb']:.0f} | {p['s']:.2f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--large", action="store_true", help="also the 1 GB adapter")
    ap.add_argument("--no-pull", action="store_true", help="metadata only")
    ap.add_argument("--repeats", type=int, default=3, help="pulls per size (median reported)")
    ap.add_argument("--workers", type=int, default=2, help="server worker processes")
    ap.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    ap.add_argument("--connections", default="1,16,64", help="wrk connection levels")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per wrk run")
    ap.add_argument("--wrk-threads", type=int, default=1, help="wrk load threads")
    ap.add_argument("--catalog", type=int, default=40, help="adapters for search to page over")
    ap.add_argument("--json", action="store_true", help="print the results as JSON too")
    ap.add_argument("--peers", action="store_true",
                    help="MLflow's server and nginx beside lorahive, on the same adapter")
    ap.add_argument("--peer-sizes", default="100",
                    help="adapter sizes (MB) for --peers; --large adds 1024")
    ap.add_argument("--workers-scan", default=None, metavar="N,N,...",
                    help="resolve through nginx in front of N workers on PostgreSQL + S3, "
                         "for each N (e.g. 1,2,4)")
    ap.add_argument("--profile", action="store_true",
                    help="sample a one-worker server with py-spy under a resolve load instead")
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("error: wrk is not installed (Debian: apt-get install -y wrk)")
    if args.profile:
        return run_profile(args)
    levels = [int(x) for x in args.connections.split(",")]
    args.peer_sizes = [int(x) for x in args.peer_sizes.split(",")] + ([1024] if args.large else [])
    if args.peers:
        return run_peers(args, levels)
    if args.workers_scan:
        return run_workers_scan(args, levels)
    work = Path(tempfile.mkdtemp(prefix="lorahive-bench-", dir=os.environ.get("TMPDIR")))
    (work / "home").mkdir()
    rows: list[dict] = []
    try:
        with database(args.db) as env, serve(work / "home", args.workers, env) as url:
            server = Server(url, work / "home")
            if not args.no_pull:
                sizes = [100] + ([1024] if args.large else [])
                rows = [bench_pull(server, work, mb, args.repeats) for mb in sizes]
            ref = publish_catalog(server, work, args.catalog)
            t0 = time.perf_counter()
            meta = bench_metadata(server, ref, levels, args.duration, args.wrk_threads)
            meta_s = time.perf_counter() - t0
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\nserver: lorahive serve --workers {args.workers} ({args.db} + local blobs), "
          f"loopback; load: wrk -t{args.wrk_threads}, {args.duration:g} s per level "
          f"({meta_s:.0f} s in all); cores: {os.cpu_count()}\n")
    if rows:
        print("| adapter | publish (s) | pull (s) | pull MB/s | copy+fsync (s) | copy MB/s | "
              "pull / copy throughput |")
        print("|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['size_mb']:.0f} MB | {r['publish_s']:.2f} | {r['pull_s']:.2f} | "
                  f"{r['pull_mbps']:.0f} | {r['copy_s']:.2f} | {r['copy_mbps']:.0f} | "
                  f"{r['ratio']:.2f} |")
        print()
    print_wrk(meta)
    if args.json:
        print(json.dumps({"pull": rows, "metadata": meta}, indent=1))


def run_peers(args: argparse.Namespace, levels: list[int]) -> None:
    """lorahive (SQLite + local blobs), MLflow and nginx on the same adapters, in one run."""
    work = Path(tempfile.mkdtemp(prefix="lorahive-peers-", dir=os.environ.get("TMPDIR")))
    (work / "home").mkdir()
    meta: list[dict] = []
    pulls: list[dict] = []
    publish: list[dict] = []
    try:
        with serve(work / "home", args.workers, {}) as url:
            server = Server(url, work / "home")
            for mb in args.peer_sizes:
                m, p, pub = bench_peers(server, work, mb, levels, args)
                meta += m
                pulls += p
                publish += pub
    finally:
        shutil.rmtree(work, ignore_errors=True)
    import mlflow

    print(f"\nlorahive serve --workers {args.workers} (SQLite + local blobs) | mlflow server "
          f"{mlflow.__version__} --workers {args.workers} (SQLite, --serve-artifacts) | "
          f"{_nginx_version()} (sendfile, 2 workers); loopback; wrk -t{args.wrk_threads}, "
          f"{args.duration:g} s per level; medians of {args.repeats} pulls; "
          f"cores: {os.cpu_count()}\n")
    print_peers(meta, pulls, publish)
    if args.json:
        print(json.dumps({"metadata": meta, "pull": pulls, "publish": publish}, indent=1))


def run_workers_scan(args: argparse.Namespace, levels: list[int]) -> None:
    """The scale-out layout with each worker count, a fresh database each time."""
    from benchmarks.postgres import pg_cluster, pg_unavailable_reason, unique
    from benchmarks.scaleout import deployment, moto_s3, shared_env

    counts = [int(x) for x in args.workers_scan.split(",")]
    if min(counts) < 1:
        raise SystemExit("error: --workers-scan takes worker counts of at least 1")
    reason = pg_unavailable_reason()
    if reason:
        raise SystemExit(f"error: {reason}")
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_DEFAULT_REGION": "us-east-1"}.items():
        os.environ.setdefault(k, v)  # moto's, for the benchmark's own publishes
    work = Path(tempfile.mkdtemp(prefix="lorahive-scan-", dir=os.environ.get("TMPDIR")))
    rows: list[dict] = []
    try:
        with pg_cluster() as pg, moto_s3() as s3:
            for n in counts:
                env = shared_env(pg.url(pg.create_db()), s3, unique("bucket"))
                with deployment(n, env, work / f"workers-{n}") as d:
                    server = Server(d.url, d.workers[0].home)
                    ref = publish_catalog(server, work / f"catalog-{n}", args.catalog)
                    ns, name = ref.split("/")
                    url = f"{d.url}{API}/adapters/{ns}/{name}/aliases/latest"
                    httpx.get(url).raise_for_status()
                    for c in levels:
                        rows.append({"workers": n, **wrk(url, c, args.duration,
                                                         args.wrk_threads)})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\nlorahive serve --workers 1 x N (PostgreSQL 15 + moto S3) behind "
          f"{_nginx_version()} (deploy/nginx.conf); resolve (GET .../aliases/latest) through "
          f"the proxy; loopback; wrk -t{args.wrk_threads}, {args.duration:g} s per level; "
          f"cores: {os.cpu_count()}\n")
    print_wrk(rows, "workers")
    if args.json:
        print(json.dumps({"workers_scan": rows}, indent=1))


def _nginx_version() -> str:
    out = subprocess.run([shutil.which("nginx") or "/usr/sbin/nginx", "-v"],
                         capture_output=True, text=True)
    return (out.stderr or out.stdout).strip().split(": ")[-1]


def run_profile(args: argparse.Namespace) -> None:
    """``lorahive serve --workers 1`` (the worker is the served process) under py-spy."""
    from benchmarks.postgres import free_port

    work = Path(tempfile.mkdtemp(prefix="lorahive-profile-"))
    home = work / "home"
    home.mkdir()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LORAHIVE_")}
    proc = subprocess.Popen([sys.executable, "-m", "lorahive", "serve", "--port", str(port),
                             "--workers", "1", "--log-level", "warning"], cwd=ROOT,
                            env={**env, "LORAHIVE_HOME": str(home)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        ref = publish_catalog(Server(url, home), work, 1)
        ns, name = ref.split("/")
        rows = profile(f"{url}{API}/adapters/{ns}/{name}/aliases/latest", proc.pid,
                       args.duration)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)
    print("\n| busy samples (inclusive) | frame |\n|---|---|")
    for share, frame in rows:
        print(f"| {share:.1f}% | `{frame}` |")


if __name__ == "__main__":
    main()
