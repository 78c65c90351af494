"""The README's examples, run as written and in order, on a tiny model in a scratch directory
laid out as the README assumes (``./SmolLM2-135M``, ``./my-adapter``, ``./other-adapter``, ...).

Every line of every ``bash`` block is either run here or listed in ``NOT_RUN`` with the reason,
so a new example cannot go untested by accident."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lorahive.compose.composer import Example
from lorahive.compose.composer.examples import write_examples
from tests.compose_fixtures import add_tokenizer
from tests.models import (
    make_peft_adapter,
    make_pissa_adapters,
    make_qlora_adapter,
    save_tiny_llama_4bit,
)

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
BASE_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"

# example (prefix) -> why it is not run here
NOT_RUN = {
    "make serve": "installs the package and serves until stopped",
    "make test": "is the whole suite, this test included",
    "lorahive serve": "serves until stopped; tests/test_registry_http.py runs the server",
    "HF_ENDPOINT=": "needs a running server; tests/test_hf_interop.py covers the HF routes",
    "lorahive import-hf": "needs a Hugging Face-compatible hub holding org/some-adapter",
    "lorahive export-hf": "needs a Hugging Face-compatible hub at hf.example",
    "LORAHIVE_URL=": "needs vLLM (make install-vllm); tests/test_vllm_e2e.py serves it "
                     "(make test-vllm)",
}


def examples(kind: str = "bash") -> list[str]:
    """The README's ``kind`` blocks: for bash, one entry per command (continuations joined,
    comment lines dropped); for python, each block whole."""
    blocks = re.findall(rf"```{kind}\n(.*?)```", README.read_text(), re.S)
    if kind != "bash":
        return blocks
    out = []
    for block in blocks:
        for text in block.replace("\\\n", " ").splitlines():
            text = text.strip()
            if text and not text.startswith("#"):
                out.append(text)
    return out


def skipped(cmd: str) -> str | None:
    return next((why for prefix, why in NOT_RUN.items() if cmd.startswith(prefix)), None)


@pytest.fixture(scope="module")
def workdir(tiny_llama_dir, tmp_path_factory):
    """A directory with what the README's examples expect to find, and `lorahive` on PATH."""
    from safetensors.torch import load_file

    root = tmp_path_factory.mktemp("readme")
    work = root / "work"
    work.mkdir()
    base = add_tokenizer(tiny_llama_dir, work / "SmolLM2-135M")
    make_peft_adapter(base, work / "my-adapter", seed=1, base_id=BASE_ID)
    make_peft_adapter(base, work / "other-adapter", seed=2, base_id=BASE_ID)
    old = shutil.copytree(work / "my-adapter", work / "old")  # a pickle-only adapter
    torch.save(load_file(old / "adapter_model.safetensors"), old / "adapter_model.bin")
    (old / "adapter_model.safetensors").unlink()
    make_pissa_adapters(base, work / "pissa-init", work / "pissa")
    nf4 = save_tiny_llama_4bit(tiny_llama_dir, work / "SmolLM2-nf4")  # a QLoRA base
    make_qlora_adapter(nf4, work / "qlora", seed=3)
    write_examples(work / "shots.jsonl", [Example("the cat is red ?", "yes"),
                                          Example("the dog is blue ?", "no")])
    write_examples(work / "heldout.jsonl", [Example("the sun is big ?", "yes"),
                                            Example("the moon is small ?", "no")])
    bin_dir = root / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "lorahive"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m lorahive "$@"\n')
    shim.chmod(shim.stat().st_mode | stat.S_IXUSR)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
           "LORAHIVE_HOME": str(root / "home"), "PYTHONPATH": str(ROOT), "COLUMNS": "100"}
    for var in ("LORAHIVE_URL", "LORAHIVE_TOKEN"):
        env.pop(var, None)
    return work, env


def test_every_bash_example_is_accounted_for():
    cmds = examples()
    assert any(c.startswith("lorahive fuse") for c in cmds)
    assert all(c.startswith(("lorahive ", "make ")) or skipped(c) for c in cmds), cmds
    assert len([c for c in cmds if not skipped(c)]) >= 15


def test_readme_examples_run_as_written(workdir):
    work, env = workdir
    ran = []
    for cmd in examples():
        if skipped(cmd):
            continue
        r = subprocess.run(["bash", "-c", cmd], cwd=work, env=env, capture_output=True,
                           text=True, timeout=600)
        if cmd.startswith("lorahive compose") and r.returncode == 3:  # as the README says
            assert r.stdout.startswith("no mix beats the base model out of fold"), r.stdout
        else:
            assert r.returncode == 0, (cmd, r.stdout, r.stderr)
        assert "Traceback" not in r.stderr, (cmd, r.stdout, r.stderr)
        ran.append((cmd, r))

    def out(prefix: str) -> str:
        """stdout of the example that is ``prefix`` (less its comment), else the first that
        starts with it."""
        bare = [(c.split(" #")[0].strip(), r.stdout) for c, r in ran]
        exact = [o for c, o in bare if c == prefix]
        return (exact or [o for c, o in bare if c.startswith(prefix + " ")])[0]

    # what the examples produced
    assert "model.layers.1.self_attn.v_proj" in out("lorahive inspect ./my-adapter")
    assert json.loads(out("lorahive inspect ./my-adapter --json"))["summary"]["rank"] == 4
    for d in ("safe", "plain", "here", "merged", "merged-nf4"):
        assert (work / d).is_dir() and any((work / d).iterdir()), d
    assert (work / "here" / "adapter_model.safetensors").is_file()
    assert not (work / "safe" / "adapter_model.bin").exists()
    assert "acme/sentiment" in out("lorahive search")
    assert "acme/sentiment@1" in out("lorahive show")
    assert "paper: https://" in out("lorahive methods")
    assert "acme/ab@1" in out("lorahive fuse")

    from safetensors import safe_open

    with safe_open(str(next((work / "merged").glob("*.safetensors"))), "pt") as f:
        keys = list(f.keys())
        assert {f.get_tensor(k).dtype for k in keys} == {torch.bfloat16}  # --dtype


def test_readme_python_example_runs(workdir):
    work, env = workdir
    (code,) = examples("python")
    r = subprocess.run([sys.executable, "-c", code], cwd=work, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "model.layers.0.self_attn.q_proj" in r.stdout
    assert (work / "copy" / "adapter_model.safetensors").is_file()
