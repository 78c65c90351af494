"""Web page latency on the embedded default (SQLite + blob directory) with many adapters.

    python benchmarks/web.py                          # 10,000 adapters, 200 requests per page
    python benchmarks/web.py --adapters 500 --requests 30   # a quick run

The registry is seeded directly through ``RegistryService`` (no HTTP): one small real LoRA
adapter (validated once, with its per-module statistics), then N adapters in 40 namespaces with
tasks, base models, tags, a model card each, every tenth with a second version, one in twenty
private and one in twenty composed from two others (lineage). A real ``lorahive serve`` (one
worker) then answers each page ``--requests`` times for random adapters; p50/p99 are per request
from one client on loopback. The reference in the same run is the JSON API answering the same
question (search, an adapter's version), so the table shows what rendering HTML adds.
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.load import serve  # noqa: E402
from benchmarks.registry import Server  # noqa: E402
from lorahive.hub.adapter import Adapter, LoraModule  # noqa: E402
from lorahive.hub.manifest import build_manifest  # noqa: E402
from lorahive.hub.peft_format import save_peft  # noqa: E402
from lorahive.hub.protocol import FileEntry  # noqa: E402
from lorahive.hub.refs import parse_ref  # noqa: E402
from lorahive.registry.card import CARD, card_text  # noqa: E402
from lorahive.registry.service import (  # noqa: E402
    PublishOptions,
    RegistryService,
    content_digest,
)
from lorahive.registry.settings import Settings  # noqa: E402

TASKS = ["sentiment", "summarization", "qa", "translation-en-de", "ner", "classification",
         "code", "math", "chat", "extraction", "rewriting", "toxicity"]
BASES = ["meta-llama/Llama-3.1-8B", "mistralai/Mistral-7B-v0.3", "Qwen/Qwen2.5-7B",
         "HuggingFaceTB/SmolLM2-135M"]
TAGS = [f"tag{i}" for i in range(30)] + ["en", "de", "fr", "legal", "medical", "finance"]


def tiny_adapter(out: Path, layers: int = 8, d: int = 64, r: int = 8) -> Path:
    g = torch.Generator().manual_seed(0)
    modules = {}
    for layer in range(layers):
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            modules[f"model.layers.{layer}.self_attn.{proj}"] = LoraModule(
                A=torch.randn(r, d, generator=g) * 0.1, B=torch.randn(d, r, generator=g) * 0.1,
                scale=2.0)
    return save_peft(Adapter.from_factors(modules, base_model=BASES[0], task_type="CAUSAL_LM"),
                     out)


def seed(home: Path, n: int, rng: random.Random) -> list[str]:
    """N adapters through the service's own commit transaction; returns their names."""
    svc = RegistryService(Settings(home=home))
    svc.bootstrap_admin()
    admin = svc.authenticate((home / "admin-token").read_text().strip())
    src = tiny_adapter(home.parent / "adapter")
    entries, local = build_manifest(src)
    for e in entries:
        svc._ingest([local[e.path].read_bytes()], e.sha256, e.size)
    checked = svc._validate(entries)  # once: every seeded version has these weights
    namespaces = [f"team{i:02d}" for i in range(40)]
    for ns in namespaces:
        svc.create_namespace(admin, ns)
    names: list[str] = []
    t0 = time.perf_counter()
    for i in range(n):
        repo = f"{rng.choice(namespaces)}/adapter-{i:05d}"
        task, tags = rng.choice(TASKS), sorted(rng.sample(TAGS, rng.randint(1, 3)))
        lineage = None
        if i >= 10 and i % 20 == 0:
            parents = rng.sample(names[-200:], 2)
            lineage = {"method": "compose:ab", "params": {"objective": 1.5},
                       "parents": [{"ref": f"{p}@1", "version": "1", "weight": w}
                                   for p, w in zip(parents, (0.6, 0.4), strict=True)]}
        valid = dataclasses.replace(checked, lineage=lineage,
                                    metrics={"accuracy": round(rng.random(), 3)})
        opts = PublishOptions(task=task, tags=tags, private=(i % 20 == 7),
                              description=f"Adapter {i} for {task}.",
                              allow_duplicate=True)  # a second version has the same files
        for _ in range(2 if i % 10 == 3 else 1):
            card = card_text(repo, summary=valid.summary, task=task,
                             description=opts.description, tags=tags, lineage=lineage,
                             metrics=valid.metrics)
            stored = svc._ingest([card], None, len(card))
            files = sorted([*entries, FileEntry(path=CARD, sha256=stored.sha256,
                                                size=stored.size)], key=lambda f: f.path)
            svc._commit_tx(admin, parse_ref(repo), files, content_digest(files), None, opts,
                           tags, valid)
        names.append(repo)
        if (i + 1) % 1000 == 0:
            print(f"  seeded {i + 1} ({(i + 1) / (time.perf_counter() - t0):.0f}/s)",
                  file=sys.stderr)
    svc.close()
    return names


def measure(c: httpx.Client, paths: list[str]) -> tuple[float, float]:
    c.get(paths[0]).raise_for_status()  # warm
    times = []
    for p in paths:
        t0 = time.perf_counter()
        r = c.get(p)
        times.append(time.perf_counter() - t0)
        if r.status_code != 200:
            raise SystemExit(f"GET {p} answered {r.status_code}")
    times.sort()
    p99 = times[min(len(times) - 1, round(0.99 * (len(times) - 1)))]
    return statistics.median(times) * 1000, p99 * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--adapters", type=int, default=10_000)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="lorahive-bench-web-") as tmp:
        home = Path(tmp) / "home"
        t0 = time.perf_counter()
        names = seed(home, args.adapters, rng)
        print(f"seeded {len(names)} adapters in {time.perf_counter() - t0:.1f} s",
              file=sys.stderr)
        public = [n for i, n in enumerate(names) if i % 20 != 7]
        composed = [n for i, n in enumerate(names) if i >= 10 and i % 20 == 0]
        k = args.requests
        with serve(home, 1, {}) as url:
            server = Server(url, home)
            with httpx.Client(base_url=server.url, timeout=60) as c:
                page = c.get("/-/signin")
                csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
                signed = httpx.Client(base_url=server.url, timeout=60, cookies=c.cookies)
                signed.post("/-/signin", data={"csrf": csrf, "token": server.token})
                pick = [rng.choice(public) for _ in range(k)]
                pages = max(1, len(public) // 20)
                rows = [
                    ("search: first page", [f"/?sort=updated&x={i}" for i in range(k)],
                     [f"/api/v1/adapters?sort=updated&x={i}" for i in range(k)]),
                    ("search: text", [f"/?q={rng.choice(TASKS)}" for _ in range(k)],
                     [f"/api/v1/adapters?q={rng.choice(TASKS)}" for _ in range(k)]),
                    ("search: task + tag, by downloads",
                     [f"/?task={rng.choice(TASKS)}&tag={rng.choice(TAGS)}&sort=downloads"
                      for _ in range(k)],
                     [f"/api/v1/adapters?task={rng.choice(TASKS)}&tag={rng.choice(TAGS)}"
                      f"&sort=downloads" for _ in range(k)]),
                    ("search: a deep page", [f"/?page={rng.randint(1, pages)}" for _ in range(k)],
                     [f"/api/v1/adapters?offset={20 * rng.randint(0, pages - 1)}"
                      for _ in range(k)]),
                    ("adapter (card)", [f"/{n}" for n in pick],
                     [f"/api/v1/adapters/{n}/aliases/latest" for n in pick]),
                    ("files and versions", [f"/{n}/files" for n in pick], None),
                    ("lineage", [f"/{rng.choice(composed)}/lineage" for _ in range(k)], None),
                    ("spectra", [f"/{n}/spectra" for n in pick], None),
                    ("compare (overlap cached)",
                     [f"/-/compare?a={composed[0]}@1&b={composed[1]}@1"] * k, None),
                ]
                print(f"\n{len(names):,} adapters, {k} requests per row, 1 worker, "
                      "one client on loopback (ms)\n")
                print(f"| {'page':34} | {'p50':>7} | {'p99':>7} | {'JSON API p50':>12} |")
                print(f"|{'-' * 36}|{'-' * 9}|{'-' * 9}|{'-' * 14}|")
                for label, paths, api in rows:
                    p50, p99 = measure(c, paths)
                    ref = f"{measure(c, api)[0]:12.1f}" if api else f"{'-':>12}"
                    print(f"| {label:34} | {p50:7.1f} | {p99:7.1f} | {ref} |")
                p50, p99 = measure(signed, [f"/?sort=updated&y={i}" for i in range(k)])
                print(f"| {'search: signed in (session)':34} | {p50:7.1f} | {p99:7.1f} | "
                      f"{'-':>12} |")
                signed.close()


if __name__ == "__main__":
    main()
