"""Multi-adapter serving with vLLM and the lorahive resolver, against the base model alone and
against one merged model per adapter served in turn.

    python -m benchmarks.vllm            # N = 1, 4, 16 adapters, 32 requests x 32 tokens
    python -m benchmarks.vllm --small    # N = 1, 2, 4 requests x 8 tokens: proves it runs

SmolLM2-135M-Instruct (float32) on vLLM's OpenAI server; adapters are r=8 LoRAs with random
factors, published to a real ``lorahive serve`` on loopback and named in requests as
``admin/bench-i@1``. Figures:

- tokens/s of a burst of concurrent requests: the base model alone; mixed batches whose
  requests name N distinct adapters (round robin); and each merged model (``lorahive merge``)
  on its own vLLM server, generation only and with the server restart that switching costs.
  vLLM's CPU backend runs eagerly when LoRA is enabled, so merged models run with
  ``--enforce-eager`` too (the same engine path; ``--merged-compiled`` lets vLLM compile them);
- first-request latency of an adapter (resolve + pull + verify + load + 1 token) and warm
  latency (the same adapter again), against a 1-token request to the base model.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks.registry import ROOT, Server
from benchmarks.smollm2 import smollm2_dir
from benchmarks.vllm_serving import VllmServer, make_adapter, start_vllm, vllm_env

PROMPTS = (
    "The capital of France is",
    "Write a haiku about the sea.",
    "List three uses of copper:",
    "def fibonacci(n):",
    "The quick brown fox",
    "Translate to German: good morning",
    "In 1969, the first people to walk on the moon",
    "A recipe for pancakes needs",
)


def burst(server: VllmServer, models: list[str], prompts: list[list[int]], tokens: int) -> dict:
    """All requests at once; tokens/s of the whole burst."""
    t0 = time.perf_counter()
    with ThreadPoolExecutor(len(models)) as pool:
        answers = list(pool.map(lambda i: server.completion(models[i], prompts[i % len(prompts)],
                                                            tokens), range(len(models))))
    wall = time.perf_counter() - t0
    bad = [a for a in answers if a["status"] != 200]
    if bad:
        raise SystemExit(f"request failed: {bad[0]}")
    generated = sum(a["usage"]["completion_tokens"] for a in answers)
    return {"wall": wall, "tokens": generated, "tok_s": generated / wall}


def timed(server: VllmServer, model: str, prompt: list[int]) -> float:
    t0 = time.perf_counter()
    answer = server.completion(model, prompt, 1)
    if answer["status"] != 200:
        raise SystemExit(f"request failed: {answer}")
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--small", action="store_true", help="a quick run that proves it works")
    ap.add_argument("--adapters", type=int, nargs="+", default=None,
                    help="batch mixes to measure (default 1 4 16; --small: 1 2)")
    ap.add_argument("--requests", type=int, default=None, help="requests per burst")
    ap.add_argument("--tokens", type=int, default=None, help="tokens generated per request")
    ap.add_argument("--merged", type=int, default=None,
                    help="merged models to serve in turn (default 2; --small: 1)")
    ap.add_argument("--merged-compiled", action="store_true",
                    help="let vLLM torch.compile the merged models (slow start on CPU)")
    args = ap.parse_args()
    mixes = args.adapters or ([1, 2] if args.small else [1, 4, 16])
    requests = args.requests or (4 if args.small else 32)
    tokens = args.tokens or (8 if args.small else 32)
    n_merged = args.merged if args.merged is not None else (1 if args.small else 2)
    n_adapters = max(mixes)

    import torch
    from transformers import AutoTokenizer

    torch.set_num_threads(1)
    base = smollm2_dir()
    tok = AutoTokenizer.from_pretrained(base)
    prompts = [tok(p).input_ids for p in PROMPTS]
    with tempfile.TemporaryDirectory(prefix="lorahive-bench-vllm-") as tmp:
        work = Path(tmp)
        registry = Server(work / "registry", workers=1)
        try:
            refs = publish_adapters(registry, base, work, n_adapters)
            env = vllm_env(registry.url, registry.token, work / "cache")
            rows, lat = serve_with_plugin(base, env, work, refs, mixes, requests, tokens,
                                          prompts)
            rows += serve_merged(base, registry, work, refs[:n_merged], requests, tokens,
                                 prompts, compiled=args.merged_compiled)
        finally:
            registry.stop()
    print_tables(rows, lat, requests, tokens)


def publish_adapters(registry: Server, base: Path, work: Path, n: int) -> list[str]:
    from lorahive.hub.client import HttpRegistry

    refs = []
    with HttpRegistry(registry.url, registry.token) as reg:
        for i in range(n):
            src = make_adapter(base, work / f"adapter-{i}", seed=100 + i)
            refs.append(reg.publish(src, f"admin/bench-{i}").ref)
    return refs


def serve_with_plugin(base: Path, env: dict[str, str], work: Path, refs: list[str],
                      mixes: list[int], requests: int, tokens: int,
                      prompts: list[list[int]]) -> tuple[list[dict], dict]:
    rows: list[dict] = []
    server = start_vllm(base, env, work / "vllm-lora.log", max_loras=max(mixes))
    try:
        name = str(base)
        timed(server, name, prompts[0])  # warm-up
        lat = {"base": [timed(server, name, prompts[0]) for _ in range(3)],
               "first": [], "warm": []}
        for ref in refs[:3]:
            lat["first"].append(timed(server, ref, prompts[0]))
            lat["warm"].append(timed(server, ref, prompts[0]))
        for ref in refs[3:]:  # every adapter loaded before the throughput bursts
            timed(server, ref, prompts[0])
        b = burst(server, [name] * requests, prompts, tokens)
        rows.append({"what": "base model alone (same LoRA-enabled server)", "n": 0, **b})
        for n in mixes:
            b = burst(server, [refs[i % n] for i in range(requests)], prompts, tokens)
            rows.append({"what": "base + lorahive resolver, mixed batch", "n": n, **b})
        lat["startup"] = server.started_s
    finally:
        server.stop()
    return rows, lat


def serve_merged(base: Path, registry: Server, work: Path, refs: list[str], requests: int,
                 tokens: int, prompts: list[list[int]], compiled: bool = False) -> list[dict]:
    rows = []
    env = {**os.environ, "LORAHIVE_URL": registry.url, "LORAHIVE_TOKEN": registry.token,
           "LORAHIVE_HOME": str(work / "cli-home")}
    for i, ref in enumerate(refs):
        out = work / f"merged-{i}"
        subprocess.run([sys.executable, "-m", "lorahive", "merge", "--base", str(base),
                        "--adapter", ref, "--out", str(out)], env=env, cwd=ROOT, check=True,
                       capture_output=True)
        server = start_vllm(out, vllm_env(registry.url, None, work / "cache"),
                            work / f"vllm-merged-{i}.log", lora=False,
                            extra=() if compiled else ("--enforce-eager",))
        try:
            b = burst(server, [str(out)] * requests, prompts, tokens)
        finally:
            server.stop()
        mode = "compiled" if compiled else "eager"
        rows.append({"what": f"merged model ({ref}), own server, {mode}", "n": 1, **b,
                     "restart": server.started_s})
    return rows


def print_tables(rows: list[dict], lat: dict, requests: int, tokens: int) -> None:
    base = rows[0]["tok_s"]
    print(f"\n{requests} concurrent requests x {tokens} tokens, greedy, float32, CPU\n")
    print("| serving | distinct adapters | wall (s) | tokens/s | vs base | with restart, tokens/s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        restart = r.get("restart")
        with_restart = (f"{r['tokens'] / (r['wall'] + restart):.2f} ({restart:.0f} s start)"
                        if restart is not None else "")
        print(f"| {r['what']} | {r['n']} | {r['wall']:.2f} | {r['tok_s']:.1f} | "
              f"{r['tok_s'] / base:.2f} | {with_restart} |")
    med = statistics.median
    print("\n| 1-token request | median (s) | runs |")
    print("|---|---|---|")
    print(f"| base model | {med(lat['base']):.3f} | {len(lat['base'])} |")
    print(f"| adapter, first request (resolve + pull + verify + load) | "
          f"{med(lat['first']):.3f} | {len(lat['first'])} |")
    print(f"| adapter, warm | {med(lat['warm']):.3f} | {len(lat['warm'])} |")
    print(f"\nvLLM server start with --enable-lora: {lat['startup']:.0f} s")


if __name__ == "__main__":
    main()
