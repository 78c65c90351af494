"""Merge one adapter into SmolLM2-135M-Instruct: lorahive vs PEFT vs a plain copy.

Each contender runs in its own process (so peak RSS is its own) on a warm page cache:
``copy`` reads and writes every file of the checkpoint in 1 MiB chunks and fsyncs it (the
physical floor); ``lorahive`` is ``compose.merge.merge_into_base`` (streaming, fsync, atomic
rename); ``peft`` is ``AutoModelForCausalLM.from_pretrained`` + ``PeftModel.from_pretrained``
+ ``merge_and_unload`` + ``save_pretrained``. ``import`` is the interpreter with torch,
transformers and peft imported, for the RSS baseline. The merged weights of lorahive and PEFT
are compared at the end.

    python -m benchmarks.merge [--adapter DIR] [--reps 3] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

WORK = Path(os.environ.get("LORAHIVE_BENCH_TMP", "/tmp/lorahive-bench-merge"))


def _copy(base: Path, out: Path) -> None:
    out.mkdir(parents=True)
    for p in base.iterdir():
        with open(p, "rb") as src, open(out / p.name, "wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
            dst.flush()
            os.fsync(dst.fileno())


def _lorahive(base: Path, adapter: Path, out: Path) -> None:
    from lorahive.compose.merge import merge_into_base
    from lorahive.hub.peft_format import load_peft

    merge_into_base(base, [load_peft(adapter)], out, device="cpu")


def _peft(base: Path, adapter: Path, out: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base)
    model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    model.save_pretrained(out)


def child(kind: str, base: Path, adapter: Path, out: Path) -> None:
    import peft  # noqa: F401  (same imports for every contender: RSS compares work, not imports)
    import torch  # noqa: F401
    import transformers  # noqa: F401

    from lorahive.compose.merge import merge_into_base  # noqa: F401

    t = time.perf_counter()
    if kind == "copy":
        _copy(base, out)
    elif kind == "lorahive":
        _lorahive(base, adapter, out)
    elif kind == "peft":
        _peft(base, adapter, out)
    wall = time.perf_counter() - t
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB
    print(json.dumps({"wall": wall, "rss_mb": rss}))


def run(kind: str, base: Path, adapter: Path, out: Path, threads: int) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    r = subprocess.run([sys.executable, "-m", "benchmarks.merge", "--child", kind, str(base),
                        str(adapter), str(out)], capture_output=True, text=True, check=True,
                       env=env)
    return json.loads(r.stdout.strip().splitlines()[-1])


def compare(a: Path, b: Path) -> float:
    from safetensors.torch import load_file

    x, y = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    return max(float((x[k].float() - y[k].float()).abs().max()) for k in x if k in y)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--adapter", default=None)
    p.add_argument("--reps", type=int, default=3)  # the docs report the best of 3
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--child", nargs=4, default=None)
    a = p.parse_args()
    if a.child:
        kind, base, adapter, out = a.child
        child(kind, Path(base), Path(adapter), Path(out))
        return
    from benchmarks.smollm2 import CACHE, smollm2_dir

    base = smollm2_dir()
    adapter = Path(a.adapter or CACHE / "adapters" / "bbc_topic")
    size = sum(f.stat().st_size for f in base.iterdir())
    WORK.mkdir(parents=True, exist_ok=True)
    _copy(base, WORK / "warm")  # warm the page cache
    shutil.rmtree(WORK / "warm")
    print(f"base {base.name}: {size / 1e6:.0f} MB; adapter {adapter.name}; "
          f"{a.threads} thread(s)")
    print("| contender | wall (s) | peak RSS (MiB) | throughput (MB/s) |")
    print("|---|---:|---:|---:|")
    for kind in ("import", "copy", "lorahive", "peft"):
        best = None
        for _ in range(a.reps if kind != "import" else 1):
            r = run(kind, base, adapter, WORK / kind, a.threads)
            best = r if best is None or r["wall"] < best["wall"] else best
        tput = "-" if kind == "import" else f"{size / 1e6 / best['wall']:.0f}"
        wall = "-" if kind == "import" else f"{best['wall']:.2f}"
        print(f"| {kind} | {wall} | {best['rss_mb']:.0f} | {tput} |", flush=True)
    print(f"\nmax |lorahive - peft| over all tensors: "
          f"{compare(WORK / 'lorahive', WORK / 'peft'):.2e}")
    shutil.rmtree(WORK, ignore_errors=True)


if __name__ == "__main__":
    main()
