"""``lorahive fuse``, ``merge`` and ``methods`` through the real console entry point: in a
``python -m lorahive`` process, or in this process (``acme_cli``) where the test is about
registry references and re-runs rather than the process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from lorahive.hub.peft_format import load_peft
from tests.models import LLAMA_KW, load_base, make_peft_adapter


def run(*args):
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "lorahive", *map(str, args)],
                          capture_output=True, text=True, env=env)


def acme_cli(home):
    """The console entry point, in this process, on a registry of its own (``home``) with the
    namespace ``acme``."""
    from tests.registry_helpers import run_cli_inprocess

    def cli(*args):
        return run_cli_inprocess(home, *args, check=False)

    assert cli("namespace", "create", "acme").exit_code == 0
    return cli


@pytest.fixture(scope="module")
def pair(tiny_llama_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("fuse-cli")
    return root, [make_peft_adapter(tiny_llama_dir, root / f"a{i}", seed=30 + i)
                  for i in range(2)]


def test_methods_lists_registry():
    r = run("methods", "--json")
    assert r.returncode == 0, r.stderr
    ms = {m["name"]: m for m in json.loads(r.stdout)}
    assert {"linear", "cat", "svd", "ties", "ties_svd", "dare_linear", "dare_ties",
            "dare_linear_svd", "dare_ties_svd", "magnitude_prune", "magnitude_prune_svd",
            "task_arithmetic"} <= set(ms)
    ties = {p["name"]: p for p in ms["ties"]["params"]}
    assert ties["density"]["required"] and ties["majority_sign_method"]["default"] == "total"
    assert "cross terms" in ms["linear"]["note"]
    r = run("methods")
    assert r.returncode == 0 and "cross terms" in r.stdout


def test_fuse_writes_adapter_with_lineage(pair, tiny_llama_dir):
    root, dirs = pair
    out = root / "fused"
    r = run("fuse", *dirs, "--method", "ties_svd", "--density", "0.5", "--weights", "0.6,0.4",
            "--rank", "3", "--device", "cpu", "--out", out, "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["max_rank"] == 3 and info["params"]["density"] == 0.5
    side = json.loads((out / "lorahive.json").read_text())["lineage"]
    assert side["method"] == "fuse:ties_svd"
    assert [p["weight"] for p in side["parents"]] == [0.6, 0.4]
    assert all(len(p["sha256"]) == 64 for p in side["parents"])
    from peft import PeftModel  # the fused adapter loads in PEFT

    PeftModel.from_pretrained(load_base(tiny_llama_dir), str(out))
    ad = load_peft(out)
    assert all(m.scale == 1.0 and m.rank == 3 for m in ad.modules.values())
    out2 = root / "budget"
    r = run("fuse", *dirs, "--method", "iso_cts", "--param", "common_fraction=0.5",
            "--rank-budget", "20", "--device", "cpu", "--out", out2)
    assert r.returncode == 0, r.stderr
    assert "energy kept" in r.stdout
    side = json.loads((out2 / "lorahive.json").read_text())
    assert side["lineage"]["params"]["common_fraction"] == 0.5
    assert sum(load_peft(out2).ranks.values()) == 20
    assert set(side["metrics"]["energy_kept"]) == set(load_peft(out2).modules)


def test_fuse_user_errors_are_one_line(pair, tmp_path):
    _, dirs = pair
    r = run("fuse", *dirs, "--method", "ties", "--out", tmp_path / "x")
    assert r.returncode == 1 and "needs --density" in r.stderr and "Traceback" not in r.stderr
    r = run("fuse", dirs[0], "acme/sentiment@3", "--out", tmp_path / "x")
    assert r.returncode == 1 and "not found" in r.stderr  # resolved through the registry
    r = run("fuse", *dirs)
    assert r.returncode == 1 and "--publish" in r.stderr
    r = run("fuse", *dirs, "--method", "nope", "--out", tmp_path / "x")
    assert r.returncode == 1 and "unknown fusion method" in r.stderr
    assert not (tmp_path / "x").exists()


def test_merge_cli_and_wrong_base(pair, tiny_llama_dir, tmp_path):
    _, dirs = pair
    out = tmp_path / "merged"
    r = run("merge", "--base", tiny_llama_dir, "--adapter", dirs[0], "--adapter", dirs[1],
            "--weights", "1,0.5", "--device", "cpu", "--out", out, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["merged"]
    assert json.loads((out / "lorahive.json").read_text())["lineage"]["method"] == "merge:sum"
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(out).state_dict()
    base = load_base(tiny_llama_dir).state_dict()
    a, b = (load_peft(d) for d in dirs)
    n = "model.layers.1.self_attn.v_proj"
    assert torch.allclose(merged[f"{n}.weight"],
                          base[f"{n}.weight"] + a.delta(n) + 0.5 * b.delta(n), atol=1e-6)
    other = tmp_path / "other"
    LlamaForCausalLM(LlamaConfig(**{**LLAMA_KW, "intermediate_size": 80})).save_pretrained(other)
    ad = make_peft_adapter(tiny_llama_dir, tmp_path / "mlp", seed=1, target_modules=["up_proj"])
    r = run("merge", "--base", other, "--adapter", ad, "--out", tmp_path / "bad")
    assert r.returncode == 1 and "another base model" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "bad").exists()


def test_fuse_and_merge_registry_references(pair, tiny_llama_dir, tmp_path):
    """Inputs by reference (exact versions in the lineage), output published to the registry."""
    _, dirs = pair
    cli = acme_cli(tmp_path / "home")
    for i, d in enumerate(dirs):
        assert cli("publish", d, "--name", f"acme/task-{i}").exit_code == 0
    r = cli("fuse", "acme/task-0", "acme/task-1:latest", "--method", "ties_svd", "--density",
            "0.5", "--publish", "acme/fused", "--task", "multi", "--json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["published"] == "acme/fused@1"
    shown = json.loads(cli("show", "acme/fused", "--json").stdout)
    text = json.dumps(shown)
    assert "fuse:ties_svd" in text and "acme/task-0@1" in text and "acme/task-1@1" in text
    out = tmp_path / "merged"
    r = cli("merge", "--base", tiny_llama_dir, "--adapter", "acme/fused", "--device", "cpu",
            "--out", out, "--json")
    assert r.exit_code == 0, r.stderr
    parent = json.loads((out / "lorahive.json").read_text())["lineage"]["parents"][0]
    assert parent["ref"] == "acme/fused@1" and len(parent["sha256"]) == 64


def _run_with_terminal_stderr(*args):
    """Run the CLI with stderr on a pseudo-terminal (as a user's shell has it)."""
    import pty
    import select

    master, slave = pty.openpty()
    p = subprocess.Popen([sys.executable, "-m", "lorahive", *map(str, args)],
                         stdout=subprocess.PIPE, stderr=slave,
                         env={**os.environ, "COLUMNS": "150"})
    os.close(slave)
    chunks = []
    while True:
        ready, _, _ = select.select([master], [], [], 0.5)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:  # the child closed its end
                break
            if not data:
                break
            chunks.append(data)
        elif p.poll() is not None:
            break
    out = p.stdout.read().decode()
    p.wait(timeout=60)
    os.close(master)
    return p.returncode, out, b"".join(chunks).decode(errors="replace")


def test_fuse_shows_progress_per_module_on_a_terminal(pair, tmp_path):
    _, dirs = pair
    modules = sorted({n for d in dirs for n in load_peft(d).modules})
    rc, _out, err = _run_with_terminal_stderr(
        "fuse", *dirs, "--method", "ties_svd", "--density", "0.5", "--device", "cpu",
        "--out", tmp_path / "tty")
    assert rc == 0, err
    assert "fusing" in err and f"{len(modules)}/{len(modules)}" in err
    assert any(m in err for m in modules)
    r = run("fuse", *dirs, "--device", "cpu", "--out", tmp_path / "piped")
    assert r.returncode == 0 and "fusing" not in r.stderr  # no bar when stderr is not a tty


def test_fuse_rerun_finishes_an_interrupted_publish(pair, tmp_path):
    """`fuse --out D --publish` interrupted after writing D: the same command again finds the
    same result in D (its lineage's recipe) and publishes it; other inputs are refused."""
    _, dirs = pair
    cli = acme_cli(tmp_path / "home")
    out = tmp_path / "d"
    args = ["fuse", *dirs, "--method", "ties_svd", "--density", "0.5", "--weights", "0.6,0.4",
            "--device", "cpu", "--out", out]
    assert cli(*args).exit_code == 0  # the run that "was interrupted" before publishing
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    r = cli(*args, "--publish", "acme/f", "--private")
    assert r.exit_code == 0, r.stderr
    assert "already holds this fusion" in r.stdout and "acme/f@1" in r.stdout
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    shown = json.loads(cli("show", "acme/f", "--json").stdout)
    assert shown["adapter"]["private"] is True
    assert shown["version"]["lineage"]["recipe"] == json.loads(
        (out / "lorahive.json").read_text())["lineage"]["recipe"]
    r = cli(*args[:-1], tmp_path / "other", "--publish", "acme/g", "--public")
    assert r.exit_code == 0, r.stderr
    assert json.loads(cli("show", "acme/g", "--json").stdout)["adapter"]["private"] is False
    for changed in (["--weights", "0.5,0.5"], ["--density", "0.6"], ["--method", "ties"]):
        r = cli(*args, *changed, "--publish", "acme/f")
        assert r.exit_code == 1 and "exists and is not empty" in r.stderr, changed
    (tmp_path / "stray").mkdir()
    (tmp_path / "stray" / "notes.txt").write_text("x")
    r = cli(*args[:-1], tmp_path / "stray")
    assert r.exit_code == 1 and "exists and is not empty" in r.stderr
