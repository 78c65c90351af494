"""Fusion of a 7B-shaped model: every method through the CLI, and PEFT on a sample of modules.

Eight synthetic rank-16 adapters on Llama-2-7B's shapes (32 layers x q, k, v, o (4096 x 4096),
gate, up (11008 x 4096), down (4096 x 11008): 224 modules, float32, about 1.28 GB of
safetensors) are written once under ``$LORAHIVE_BENCH_CACHE/fusion-7b``. Each method then runs
as a user runs it, ``lorahive fuse a0 ... a7 --method M --out DIR`` in a fresh process (start-up,
reading, fusing and the fsynced write included), timed by wall clock, CPU time and peak
resident memory (``wait4``). Inputs are read once first, so every run reads them from the page
cache. The header line also gives two floors no method can go below: ``import torch`` alone in
a fresh process, and writing and fsyncing a full-rank output's bytes where outputs go.

Dense element-wise methods (``ties_svd``, ``dare_*_svd``, ``magnitude_prune_svd``) form every
module's 8 dense deltas and truncate them with a dense SVD: minutes per layer on 2 cores. They
run through the CLI on the first ``--dense-layers`` layers (adapters cut to those layers, same
tensors) and the time per layer is extrapolated to 32 layers (start-up is subtracted first and
added back once); ``--dense-layers 32`` runs them whole.

``peft``: PEFT's ``add_weighted_adapter`` (``svd``, ``ties_svd``) on one module of each shape
with the same factors, timed per module and extrapolated as ``128 t(4096x4096) +
64 t(11008x4096) + 32 t(4096x11008)`` (PEFT loops over modules independently), and its deltas
compared with lorahive's on those modules.

    python -m benchmarks.fusion_7b prepare
    python -m benchmarks.fusion_7b cli [--methods tsv,iso_c,cart] [--device cpu] [--threads 2]
    python -m benchmarks.fusion_7b peft [--modules 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from benchmarks.smollm2 import CACHE

ROOT = CACHE / "fusion-7b"
N_ADAPTERS, RANK, ALPHA = 8, 16, 32
LAYERS, HIDDEN, INTER = 32, 4096, 11008
BASE = "synthetic/llama-2-7b-shapes"
# (module suffix, out, in) as in Llama-2-7B
SHAPES = [
    ("self_attn.q_proj", HIDDEN, HIDDEN), ("self_attn.k_proj", HIDDEN, HIDDEN),
    ("self_attn.v_proj", HIDDEN, HIDDEN), ("self_attn.o_proj", HIDDEN, HIDDEN),
    ("mlp.gate_proj", INTER, HIDDEN), ("mlp.up_proj", INTER, HIDDEN),
    ("mlp.down_proj", HIDDEN, INTER),
]
# element-wise on dense deltas + dense SVD: extrapolated from a few layers unless asked
DENSE = {"ties_svd", "dare_linear_svd", "dare_ties_svd", "magnitude_prune_svd"}
# parameters a method needs (or the setting the fusion docs use) for a run with defaults
PARAMS = {"ties": ["--density", "0.5"], "dare_linear": ["--density", "0.5"],
          "dare_ties": ["--density", "0.5"], "magnitude_prune": ["--density", "0.5"],
          "ties_svd": ["--density", "0.5"], "dare_linear_svd": ["--density", "0.5"],
          "dare_ties_svd": ["--density", "0.5"], "magnitude_prune_svd": ["--density", "0.5"]}


def module_names(layers: int = LAYERS) -> list[tuple[str, int, int]]:
    return [(f"model.layers.{i}.{s}", o, k) for i in range(layers) for s, o, k in SHAPES]


def adapter_dirs(layers: int = LAYERS) -> list[Path]:
    sub = "full" if layers == LAYERS else f"layers-{layers}"
    return [ROOT / sub / f"a{i}" for i in range(N_ADAPTERS)]


def prepare(layers: int = LAYERS) -> list[Path]:
    """Write the synthetic adapters once (seeded; a finished set is reused as it is)."""
    from lorahive.hub.adapter import Adapter, LoraModule
    from lorahive.hub.peft_format import save_peft

    dirs = adapter_dirs(layers)
    for i, d in enumerate(dirs):
        if (d / "adapter_model.safetensors").exists():
            continue
        g = torch.Generator().manual_seed(1000 + i)
        mods = {}
        for name, out_f, in_f in module_names(layers):
            # trained-LoRA-like magnitudes: A ~ N(0, 1/in), B small, a decaying spectrum
            decay = torch.linspace(1.0, 0.2, RANK)
            mods[name] = LoraModule(
                A=torch.randn(RANK, in_f, generator=g) / in_f ** 0.5,
                B=torch.randn(out_f, RANK, generator=g) * 0.01 * decay,
                scale=ALPHA / RANK)
        ad = Adapter.from_factors(mods, base_model=BASE, task_type="CAUSAL_LM")
        ad.config.data["lora_alpha"] = ALPHA
        save_peft(ad, d, overwrite=True)
        print(f"wrote {d}", flush=True)
    return dirs


def warm(dirs: list[Path]) -> float:
    """Read every input once (so timed runs read from the page cache); returns seconds."""
    t = time.perf_counter()
    for d in dirs:
        with open(d / "adapter_model.safetensors", "rb") as fh:
            while fh.read(1 << 24):
                pass
    return time.perf_counter() - t


@dataclass
class Run:
    wall: float
    user: float
    sys: float
    rss_mb: float
    rc: int
    stdout: str
    stderr: str


def run_cli(args: list[str], env: dict[str, str]) -> Run:
    """One ``lorahive`` process: wall clock, CPU time and peak RSS of that process alone."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t = time.perf_counter()
        p = subprocess.Popen([sys.executable, "-m", "lorahive", *args], stdout=out, stderr=err,
                             env=env, cwd=Path(__file__).resolve().parents[1])
        _, status, ru = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return Run(wall, ru.ru_utime, ru.ru_stime, ru.ru_maxrss / 1024, p.returncode,
                   out.read(), err.read())


def cli_env(threads: int | None) -> dict[str, str]:
    """The CLI's environment; ``threads`` sets torch's thread count (lorahive runs that many
    one-thread workers on CPU)."""
    env = {**os.environ, "COLUMNS": "200"}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def startup(env: dict[str, str], reps: int = 3) -> Run:
    """``lorahive fuse --help``-like start-up cost: the best of ``reps`` no-op runs."""
    runs = [run_cli(["methods", "--json"], env) for _ in range(reps)]
    return min(runs, key=lambda r: r.wall)


def output_bytes() -> int:
    """Size of a full-rank fused output: rank ``N_ADAPTERS * RANK`` float32 factors."""
    return sum(N_ADAPTERS * RANK * (o + k) * 4 for _, o, k in module_names())


def torch_import(reps: int = 3) -> Run:
    """``import torch`` alone in a fresh process (best of ``reps``): what every fusion pays
    before it can compute anything."""
    runs = []
    for _ in range(reps):
        t = time.perf_counter()
        p = subprocess.Popen([sys.executable, "-c", "import torch"])
        _, status, ru = os.wait4(p.pid, 0)
        runs.append(Run(time.perf_counter() - t, ru.ru_utime, ru.ru_stime, ru.ru_maxrss / 1024,
                        os.waitstatus_to_exitcode(status), "", ""))
    return min(runs, key=lambda r: r.wall)


def disk_write(directory: Path, size: int) -> float:
    """Seconds to write ``size`` bytes under ``directory`` and fsync them, writeback started
    every 64 MiB as the output writer does: the floor of any run that writes that much."""
    chunk = os.urandom(64 << 20)
    fd, name = tempfile.mkstemp(prefix="disk-", dir=directory)
    try:
        t = time.perf_counter()
        done = 0
        while done < size:
            n = os.write(fd, chunk[:min(len(chunk), size - done)])
            if hasattr(os, "posix_fadvise"):
                os.posix_fadvise(fd, done, n, os.POSIX_FADV_DONTNEED)
            done += n
        os.fsync(fd)
        return time.perf_counter() - t
    finally:
        os.close(fd)
        os.unlink(name)


def cli(methods: list[str], device: str, threads: int | None, dense_layers: int,
        rank: int | None, out_dir: Path) -> None:
    from lorahive.compose.fusion import all_methods

    names = methods or [m.name for m in all_methods()]
    env = cli_env(threads)
    full = prepare()
    warm_s = warm(full)
    dense_dirs = prepare(dense_layers) if any(n in DENSE for n in names) else []
    if dense_dirs:
        warm(dense_dirs)
    st = startup(env)
    ti = torch_import()
    out_dir.mkdir(parents=True, exist_ok=True)
    disk = disk_write(out_dir, output_bytes())
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f}, device {device}, threads {threads or 'default'}, "
          f"outputs under {out_dir}; "
          f"inputs read once in {warm_s:.2f} s; CLI start-up (`lorahive methods --json`, best "
          f"of 3) {st.wall:.2f} s wall, {st.user + st.sys:.2f} s CPU, of which `import torch` "
          f"alone {ti.wall:.2f} s wall; writing and fsyncing {output_bytes() / 2**20:.0f} MiB "
          f"(a full-rank output) under {out_dir}: {disk:.2f} s "
          f"({output_bytes() / 2**20 / disk:.0f} MiB/s)")
    print()
    print("| method | modules | wall (s) | CPU (s) | peak RSS (MB) | output (MB) | how |")
    print("|---|---:|---:|---:|---:|---:|---|")
    scratch = Path(tempfile.mkdtemp(prefix="fuse-7b-", dir=out_dir))
    try:
        for name in names:
            dense = name in DENSE and dense_layers < LAYERS
            dirs = dense_dirs if dense else full
            out = scratch / name
            args = ["fuse", *map(str, dirs), "--method", name, *PARAMS.get(name, []),
                    "--device", device, "--out", str(out), "--json"]
            if rank is not None:
                args += ["--rank", str(rank)]
            r = run_cli(args, env)
            if r.rc != 0:
                print(f"| {name} | - | - | - | - | - | failed: "
                      f"{r.stderr.strip().splitlines()[-1] if r.stderr.strip() else r.rc} |",
                      flush=True)
                continue
            info = json.loads(r.stdout)
            size = (out / "adapter_model.safetensors").stat().st_size / 2**20
            if dense:
                scale = LAYERS / dense_layers
                wall = st.wall + (r.wall - st.wall) * scale
                cpu = (st.user + st.sys) + (r.user + r.sys - st.user - st.sys) * scale
                how = (f"{dense_layers} layer(s) through the CLI ({r.wall:.1f} s), "
                       f"extrapolated x{scale:g} past start-up")
                print(f"| {name} | 224 | ~{wall:.0f} | ~{cpu:.0f} | {r.rss_mb:.0f} | "
                      f"~{size * scale:.0f} | {how} |", flush=True)
            else:
                print(f"| {name} | {info['modules']} | {r.wall:.2f} | {r.user + r.sys:.2f} | "
                      f"{r.rss_mb:.0f} | {size:.0f} | CLI, whole model |", flush=True)
            shutil.rmtree(out, ignore_errors=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("part", choices=["prepare", "cli", "peft"])
    p.add_argument("--methods", default="", help="comma-separated (default: every method)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads of the CLI (OMP_NUM_THREADS; default: torch's)")
    p.add_argument("--out-dir", type=Path, default=ROOT,
                   help="where outputs are written (and deleted): the bench cache's disk by "
                   "default; /dev/shm leaves the disk's fsync out")
    p.add_argument("--dense-layers", type=int, default=1,
                   help="layers the dense element-wise methods run on before extrapolating")
    p.add_argument("--rank", type=int, default=None, help="--rank passed to every fuse")
    p.add_argument("--modules", type=int, default=3, help="PEFT: modules sampled (1 per shape)")
    a = p.parse_args()
    if a.part == "prepare":
        prepare()
    elif a.part == "cli":
        cli([m for m in a.methods.split(",") if m], a.device, a.threads, a.dense_layers, a.rank,
            a.out_dir)
    else:
        raise SystemExit("peft: not yet")


if __name__ == "__main__":
    main()
