"""The adapter page's "use this adapter" snippets, copied from the page and run as shown against
a live server: ``lorahive pull`` in a shell, PEFT through ``HF_ENDPOINT`` and
``huggingface_hub.snapshot_download`` in fresh interpreters."""

from __future__ import annotations

import hashlib
import html
import os
import re
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.web_helpers import LiveServer, copy_adapter, sign_in

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def live(tmp_path_factory, tiny_llama_dir, lora_dir) -> Iterator[tuple[LiveServer, str]]:
    server = LiveServer(tmp_path_factory.mktemp("web-snippets"))
    # the base model recorded in the config is a local directory, so PEFT's snippet loads it
    # as written while HF_ENDPOINT points at the registry
    src = copy_adapter(lora_dir, tmp_path_factory.mktemp("snip") / "a", str(tiny_llama_dir))
    server.admin.publish(src, "admin/snippet-demo", task="text-generation")
    alice = server.admin.create_token("alice", scope="write", user="alice")
    from lorahive.registry.local import LocalRegistry

    LocalRegistry(service=server.service, token=alice.token).publish(
        src, "alice/private-demo", private=True)
    yield server, alice.token
    server.stop()


def page_snippets(server: LiveServer, path: str, cookies: dict[str, str] | None = None
                  ) -> dict[str, str]:
    with server.client(cookies=cookies) as c:
        r = c.get(path)
    assert r.status_code == 200
    found = re.findall(r'<code data-snippet="([a-z]+)"[^>]*>(.*?)</code>', r.text, re.S)
    return {k: html.unescape(v) for k, v in found}


def client_env(tmp: Path, **extra: str) -> dict[str, str]:
    """A clean environment: no registry or Hub settings of this test process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "LORAHIVE_"))}
    wrappers = tmp / "bin"
    wrappers.mkdir(exist_ok=True)
    cli = wrappers / "lorahive"  # the console script, for whichever interpreter runs the tests
    cli.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m lorahive "$@"\n')
    cli.chmod(cli.stat().st_mode | stat.S_IEXEC)
    env.update(PATH=f"{wrappers}{os.pathsep}{env.get('PATH', '')}", HF_HOME=str(tmp / "hf"),
               LORAHIVE_HOME=str(tmp / "client-home"), PYTHONPATH=str(ROOT),
               HF_HUB_DISABLE_PROGRESS_BARS="1", TRANSFORMERS_NO_ADVISORY_WARNINGS="1", **extra)
    return env


def run(args: list[str], env: dict[str, str], cwd: Path) -> str:
    r = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    return r.stdout


def digests(d: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in d.iterdir()
            if p.is_file()}


def test_lorahive_pull_snippet(live, tmp_path):
    server, _ = live
    snip = page_snippets(server, "/admin/snippet-demo")["pull"]
    assert snip.startswith("lorahive pull admin/snippet-demo@1 --url " + server.url)
    run(["bash", "-ec", snip], client_env(tmp_path), tmp_path)
    want = {f.path: f.sha256 for f in server.admin.resolve("admin/snippet-demo@1").files}
    assert digests(tmp_path / "snippet-demo") == want


def test_private_pull_snippet_reads_the_token_from_the_environment(live, tmp_path):
    server, alice = live
    with server.client() as c:
        sign_in(c, alice)
        cookies = dict(c.cookies)
    snip = page_snippets(server, "/alice/private-demo", cookies)["pull"]
    assert '--token "$LORAHIVE_TOKEN"' in snip
    run(["bash", "-ec", snip], client_env(tmp_path, LORAHIVE_TOKEN=alice), tmp_path)
    assert (tmp_path / "private-demo" / "adapter_model.safetensors").is_file()


def test_snapshot_download_snippet(live, tmp_path):
    server, _ = live
    snip = page_snippets(server, "/admin/snippet-demo")["snapshot"]
    (tmp_path / "snap.py").write_text(snip)
    out = run([sys.executable, "snap.py"], client_env(tmp_path), tmp_path)
    path = Path(out.strip().splitlines()[-1])
    want = {f.path: f.sha256 for f in server.admin.resolve("admin/snippet-demo@1").files}
    assert {k: v for k, v in digests(path).items() if k in want} == want


CHECK = """
# appended by the test: the loaded adapter's factors are the published ones
import json, sys
from safetensors.torch import load_file
want = load_file(sys.argv[1])
got = {n: p for n, p in model.named_parameters() if "lora_" in n}
assert len(got) == len(want) > 0
for key, t in want.items():
    name = key.replace(".weight", ".default.weight")
    assert name in got and bool((got[name].detach() == t).all()), key
print(json.dumps({"ok": True, "n": len(got)}))
"""


def test_peft_snippet_through_hf_endpoint(live, lora_dir, tmp_path):
    server, _ = live
    snip = page_snippets(server, "/admin/snippet-demo")["peft"]
    assert f'os.environ["HF_ENDPOINT"] = "{server.url}"' in snip
    (tmp_path / "use.py").write_text(snip + CHECK)
    out = run([sys.executable, "use.py", str(lora_dir / "adapter_model.safetensors")],
              client_env(tmp_path), tmp_path)
    assert '"ok": true' in out
