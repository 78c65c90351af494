"""The real `lorahive` console script on real adapter directories."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import torch
from safetensors.torch import load_file


def run(*args, check=False):
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "lorahive", *map(str, args)], capture_output=True, text=True, check=check, env=env)


def test_inspect_table(lora_dir):
    r = run("inspect", lora_dir)
    assert r.returncode == 0, r.stderr
    assert "peft_type: LORA" in r.stdout
    rows = [line for line in r.stdout.splitlines() if "model.layers." in line]
    assert len(rows) == 4  # q_proj and v_proj in two layers
    assert "model.layers.0.self_attn.q_proj" in rows[0]
    assert "eff.rank 90%" in r.stdout


def test_inspect_json(lora_dir):
    r = run("inspect", lora_dir, "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["summary"]["rank"] == 4
    names = {m["name"] for m in data["modules"]}
    assert "model.layers.1.self_attn.v_proj" in names
    assert all(m["effective_rank_99"] <= m["rank"] for m in data["modules"])
    assert data["config"]["base_model_name_or_path"] == "lorahive-tests/tiny-llama"


def test_bad_input_is_one_line(tmp_path, lora_dir):
    r = run("inspect", tmp_path / "missing")
    assert r.returncode == 1
    assert r.stderr.strip().count("\n") == 0 and r.stderr.startswith("error:")
    assert "Traceback" not in r.stderr
    d = tmp_path / "pickled"
    shutil.copytree(lora_dir, d)
    torch.save(load_file(d / "adapter_model.safetensors"), d / "adapter_model.bin")
    (d / "adapter_model.safetensors").unlink()
    r = run("inspect", d)
    assert r.returncode == 1 and "pickle" in r.stderr and "lorahive convert" in r.stderr


def test_convert_pickle_with_opt_in(tmp_path, lora_dir):
    d = tmp_path / "pickled"
    shutil.copytree(lora_dir, d)
    torch.save(load_file(d / "adapter_model.safetensors"), d / "adapter_model.bin")
    (d / "adapter_model.safetensors").unlink()
    r = run("convert", d, "--out", tmp_path / "safe", "--allow-pickle")
    assert r.returncode == 0, r.stderr
    a, b = load_file(tmp_path / "safe" / "adapter_model.safetensors"), load_file(lora_dir / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    r = run("inspect", tmp_path / "safe")
    assert r.returncode == 0


def test_help_lists_commands():
    r = run("--help")
    assert r.returncode == 0 and "inspect" in r.stdout


def test_convert_residual_adapter(tmp_path, tiny_llama_dir):
    from lorahive.hub import load_peft
    from tests.models import make_pissa_adapters

    make_pissa_adapters(tiny_llama_dir, tmp_path / "init", tmp_path / "trained")
    r = run("convert", tmp_path / "trained", "--out", tmp_path / "plain", "--initial", tmp_path / "init")
    assert r.returncode == 0, r.stderr
    plain = load_peft(tmp_path / "plain")
    assert plain.max_rank == 8 and plain.config.residual_init is None
    r = run("convert", tmp_path / "trained", "--out", tmp_path / "as-is")
    assert r.returncode == 0 and "--initial" in r.stdout
