"""Fusion speed and quality.

``speed``: SVD-truncated fusion of N=8 rank-16 adapters on one square d x d module
(d = 1024, 2048, 4096): lorahive's ``svd`` (factored: QR of the stacked factors, SVD of a
128 x 128 core) vs PEFT's ``add_weighted_adapter(combination_type="svd")`` (dense d x d delta,
full SVD) on the same adapters in one run, with the max relative difference of the deltas.
``core``: spectral methods in core space vs on dense deltas, same adapters.
``quality``: the composer benchmark's SmolLM2-135M task adapters fused by each method; each
fused model is scored on every task, normalised by that task's own adapter.

    python -m benchmarks.fusion speed [--sizes 1024,2048,4096]
    python -m benchmarks.fusion core [--sizes 1024,2048]
    python -m benchmarks.fusion quality [--tasks a,b,c,d] [--n-eval 40]
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import torch
from torch import nn

from lorahive.compose.fusion import fuse
from lorahive.hub.adapter import Adapter, LoraModule

N, R = 8, 16
WEIGHTS = [1.0, -0.5, 0.8, 0.3, 1.2, -0.7, 0.6, 0.9]


class _One(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.proj = nn.Linear(d, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


def _best(fn: Callable[[], object], reps: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(reps):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def peft_model(d: int, seed: int = 0):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    cfg = LoraConfig(r=R, lora_alpha=2 * R, target_modules=["proj"], init_lora_weights=False)
    model = get_peft_model(_One(d), cfg, adapter_name="a0")
    for i in range(1, N):
        model.add_adapter(f"a{i}", cfg)
    return model


def adapters_of(model) -> list[Adapter]:
    layer = model.base_model.model.proj
    return [Adapter.from_factors({"proj": LoraModule(
        A=layer.lora_A[f"a{i}"].weight.detach().clone(),
        B=layer.lora_B[f"a{i}"].weight.detach().clone(), scale=layer.scaling[f"a{i}"])},
        base_model="bench") for i in range(N)]


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def speed(sizes: list[int]) -> None:
    print("| d | PEFT svd (s) | lorahive svd (ms) | speed-up | max rel. diff |")
    print("|---:|---:|---:|---:|---:|")
    for d in sizes:
        model = peft_model(d)
        ads = adapters_of(model)
        ours_t, res = _best(lambda ads=ads: fuse(ads, "svd", WEIGHTS, device="cpu"), 3)
        names = [f"a{i}" for i in range(N)]
        t = time.perf_counter()
        model.add_weighted_adapter(names, WEIGHTS, "fused", combination_type="svd")
        peft_t = time.perf_counter() - t
        layer = model.base_model.model.proj
        ref = layer.lora_B["fused"].weight @ layer.lora_A["fused"].weight \
            * layer.scaling["fused"]
        got = res.adapter.modules["proj"].delta_matrix()
        print(f"| {d} | {peft_t:.2f} | {ours_t * 1000:.1f} | {peft_t / ours_t:.0f}x | "
              f"{rel_diff(got, ref.detach()):.1e} |", flush=True)
        del model


CORE_METHODS = {"task_arithmetic": {}, "iso_c": {}, "iso_cts": {}, "tsv": {}, "star": {},
                "knots": {"merge": "task_arithmetic"}}


def core(sizes: list[int]) -> None:
    print("| d | method | dense (s) | core space (ms) | speed-up | max rel. diff |")
    print("|---:|---|---:|---:|---:|---:|")
    for d in sizes:
        ads = adapters_of(peft_model(d))
        for name, params in CORE_METHODS.items():
            if name == "knots" and d > 1024:
                continue  # dense KnOTS is an SVD of d x 8d: minutes on 2 cores
            if name == "task_arithmetic":
                dense_t, dref = _best(lambda ads=ads: sum(
                    w * a.modules["proj"].delta_matrix() for a, w in zip(ads, WEIGHTS, strict=True)), 1)
                core_t, res = _best(lambda ads=ads: fuse(ads, "core_space", WEIGHTS,
                                                         {"merge": "task_arithmetic"},
                                                         device="cpu"), 3)
                got, ref = res.adapter.modules["proj"].delta_matrix(), dref
            else:
                dense_t, dres = _best(lambda ads=ads, n=name, p=params: fuse(
                    ads, n, WEIGHTS, {**p, "space": "dense"}, device="cpu"), 1)
                core_t, res = _best(lambda ads=ads, n=name, p=params: fuse(
                    ads, n, WEIGHTS, {**p, "space": "core"}, device="cpu"), 3)
                got = res.adapter.modules["proj"].delta_matrix()
                ref = dres.adapter.modules["proj"].delta_matrix()
            print(f"| {d} | {name} | {dense_t:.2f} | {core_t * 1000:.1f} | "
                  f"{dense_t / core_t:.0f}x | {rel_diff(got, ref):.1e} |", flush=True)


# quality ------------------------------------------------------------------------------------
QUALITY_METHODS: list[tuple[str, str, dict]] = [
    ("task arithmetic", "task_arithmetic", {}),
    ("linear (PEFT)", "linear", {}),
    ("svd (PEFT)", "svd", {}),
    ("ties_svd d=0.5", "ties_svd", {"density": 0.5}),
    ("dare_ties_svd d=0.5", "dare_ties_svd", {"density": 0.5}),
    ("core TIES d=0.5", "core_space", {"merge": "ties", "density": 0.5}),
    ("TSV-M", "tsv", {}),
    ("KnOTS-TIES d=0.5", "knots", {"merge": "ties", "density": 0.5}),
    ("Iso-C", "iso_c", {}),
    ("Iso-CTS", "iso_cts", {}),
    ("STAR eta=0.4", "star", {}),
    ("CART", "cart", {}),
]


def quality(tasks: list[str], n_eval: int, weight: float) -> None:
    from benchmarks.smollm2 import CACHE, smollm2_dir
    from benchmarks.tasks import build
    from lorahive.compose.composer.evaluate import accuracy, label_set
    from lorahive.compose.composer.model import load_base
    from lorahive.hub.peft_format import load_peft

    base = load_base(smollm2_dir(), device="cpu")
    model, tok = base.model, base.tokenizer
    ads = [load_peft(CACHE / "adapters" / t) for t in tasks]
    evals = {t: build(t, n_eval, seed=1234) for t in tasks}
    labels = {t: label_set(build(t, 200, seed=1234)) for t in tasks}
    names = sorted({n for a in ads for n in a.modules})
    originals = {n: model.get_submodule(n).weight.detach().clone() for n in names}

    def apply(ad: Adapter | None) -> None:
        with torch.no_grad():
            for n in names:
                w = model.get_submodule(n).weight
                w.copy_(originals[n])
                if ad is not None and n in ad.modules:
                    w.add_(ad.delta(n, "cpu", w.dtype))

    def score(ad: Adapter | None, only: list[str] | None = None) -> list[float]:
        apply(ad)
        return [accuracy(model, tok, False, None, None, evals[t], labels[t],
                         max_new_tokens=12).accuracy for t in (only or tasks)]

    t0 = time.perf_counter()
    own = [score(a, [t])[0] for t, a in zip(tasks, ads, strict=True)]
    head = " | ".join(tasks)
    print(f"| method | {head} | mean normalised | fuse time (s) |")
    print("|---|" + "---:|" * (len(tasks) + 2))
    print("| own adapter (accuracy) | " + " | ".join(f"{a:.2f}" for a in own) + " | 1.00 | - |",
          flush=True)

    def row(label: str, accs: list[float], ft: float) -> None:
        norm = [a / o if o > 0 else float("nan") for a, o in zip(accs, own, strict=True)]
        print(f"| {label} | " + " | ".join(f"{x:.2f}" for x in norm)
              + f" | {sum(norm) / len(norm):.2f} | {ft:.2f} |", flush=True)

    row("base model (no adapter)", score(None), 0.0)
    for label, method, params in QUALITY_METHODS:
        t = time.perf_counter()
        fused = fuse(ads, method, [weight] * len(ads), params, seed=0, device="cpu").adapter
        ft = time.perf_counter() - t
        row(label, score(fused), ft)
    apply(None)
    print(f"\n(n_eval={n_eval} per task, weight {weight} per adapter, "
          f"{time.perf_counter() - t0:.0f} s total)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("part", choices=["speed", "core", "quality"])
    p.add_argument("--sizes", default=None)
    p.add_argument("--tasks", default="bbc_topic,food_sentiment,uppercase,count_words")
    p.add_argument("--n-eval", type=int, default=40)
    p.add_argument("--weight", type=float, default=1.0)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU")
    if a.part == "speed":
        speed([int(x) for x in (a.sizes or "1024,2048,4096").split(",")])
    elif a.part == "core":
        core([int(x) for x in (a.sizes or "1024,2048").split(",")])
    else:
        quality(a.tasks.split(","), a.n_eval, a.weight)


if __name__ == "__main__":
    main()
