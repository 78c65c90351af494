"""`lorahive compose` end to end through the real console entry point on tiny models."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from lorahive.compose.composer import Example, examples_sha256
from lorahive.compose.composer.examples import write_examples
from lorahive.hub.peft_format import load_peft
from tests.compose_fixtures import add_tokenizer
from tests.models import make_peft_adapter

SHOTS = [Example("the cat is red ?", "yes"), Example("the dog is blue ?", "no"),
         Example("the sun is big ?", "yes"), Example("the moon is small ?", "no")]
EVAL = [Example("the bird is fast ?", "yes"), Example("the star is slow ?", "no"),
        Example("the cat is green ?", "no"), Example("the dog is big ?", "yes")]


def run(*args):
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "lorahive", *map(str, args)],
                          capture_output=True, text=True, env=env)


@pytest.fixture(scope="module")
def task(tiny_llama_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("compose-cli")
    base = add_tokenizer(tiny_llama_dir, root / "base")
    cands = [make_peft_adapter(base, root / f"c{i}", seed=50 + i) for i in range(3)]
    r2 = make_peft_adapter(base, root / "r2", seed=60, r=2, lora_alpha=4)
    return root, base, cands, r2, write_examples(root / "shots.jsonl", SHOTS), \
        write_examples(root / "eval.jsonl", EVAL)


def test_compose_ab_writes_adapter_and_lineage(task, tmp_path):
    _root, base, cands, _, shots, ev = task
    out = tmp_path / "composed"
    args = ["compose", "--base", base, "--examples", shots, "--eval", ev, "--out", out,
            "--budget", "8", "--seed", "3", "--json"]
    for c in cands:
        args += ["--candidates", c]
    r = run(*args)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert len(res["trace"]) == 8 and res["eval_metric"] == "rank" and res["eval_n"] == 4
    assert 0.0 <= res["eval_accuracy"] <= 1.0
    side = json.loads((out / "lorahive.json").read_text())
    lin = side["lineage"]
    assert lin["method"] == "compose:ab"
    assert [p["ref"] for p in lin["parents"]] == [str(c) for c in cands]
    assert all(len(p["sha256"]) == 64 for p in lin["parents"])
    w = [p["weight"] for p in lin["parents"]]
    assert w == [res["weights"][str(c)] for c in cands]
    params = lin["params"]
    assert params["examples_sha256"] == examples_sha256(SHOTS)
    assert (params["optimizer"], params["budget"], params["seed"], params["mode"]) == \
        ("NGOpt", 8, 3, "ab")
    assert params["objective"] == res["objective"] == side["metrics"]["objective"]
    # the written adapter is LoRAHub's element-wise mix of the candidates' factors
    got = load_peft(out)
    name = "model.layers.1.self_attn.v_proj"
    loaded = [load_peft(c).modules[name] for c in cands]
    want_A = sum(wi * m.A for wi, m in zip(w, loaded, strict=True))
    torch.testing.assert_close(got.modules[name].A, want_A, rtol=1e-5, atol=1e-6)
    assert got.modules[name].scale == loaded[0].scale
    # same seed, same search
    r2 = run(*[a if a != out else tmp_path / "again" for a in args])
    assert json.loads(r2.stdout)["trace"] == res["trace"]


def test_compose_delta_table_output(task, tmp_path):
    _root, base, cands, r2, shots, ev = task
    out = tmp_path / "delta"
    r = run("compose", "--base", base, "-c", cands[0], "-c", r2, "-c", cands[1],
            "--examples", shots, "--eval", ev, "--out", out, "--mode", "delta", "--rank", "3",
            "--budget", "6", "--workers", "3", "--optimizer", "TwoPointsDE", "--prescreen", "2")
    assert r.returncode == 0, r.stderr
    for text in ("mixing weights", "objective trace", "energy kept", "held-out accuracy (rank)"):
        assert text in r.stdout
    side = json.loads((out / "lorahive.json").read_text())
    assert len(side["lineage"]["parents"]) == 2 and side["lineage"]["params"]["rank"] == 3
    assert len(side["lineage"]["params"]["prescreen"]) == 3
    assert load_peft(out).max_rank == 3


def test_compose_user_errors_are_one_line(task, tmp_path):
    _root, base, cands, r2, shots, _ = task
    r = run("compose", "--base", base, "-c", cands[0], "-c", r2, "--examples", shots,
            "--out", tmp_path / "x", "--budget", "2")
    assert r.returncode == 1
    assert r.stderr.startswith("error: --mode ab needs equal ranks") and "Traceback" not in r.stderr
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "f").write_text("x")
    r = run("compose", "--base", base, "-c", cands[0], "--examples", shots, "--out", busy)
    assert r.returncode == 1 and "not empty" in r.stderr
    r = run("compose", "--base", base, "-c", "team/adapter", "--examples", shots,
            "--out", tmp_path / "y")
    assert r.returncode == 1 and "not found" in r.stderr and r.stderr.count("\n") == 1


def test_compose_from_registry_refs_and_publish(task, tmp_path):
    """Candidates by reference and by --select, result published with its lineage."""
    _root, base, cands, _, shots, _ev = task
    env = {**os.environ, "COLUMNS": "200", "LORAHIVE_HOME": str(tmp_path / "home")}
    env.pop("LORAHIVE_URL", None)

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "lorahive", *map(str, args)],
                              capture_output=True, text=True, env=env)

    assert cli("namespace", "create", "acme").returncode == 0
    for i, c in enumerate(cands):
        r = cli("publish", c, "--name", f"acme/skill-{i}", "--task", "skills", "--tag", "en")
        assert r.returncode == 0, r.stderr
    r = cli("compose", "--base", base, "--examples", shots, "--candidates", "acme/skill-0",
            "--select", "task=skills,tag=en", "--budget", "4", "--publish", "acme/composed",
            "--task", "new-task", "--json")
    assert r.returncode == 1 and "listed twice" in r.stderr  # skill-0 by ref and by filter
    r = cli("compose", "--base", base, "--examples", shots, "--select", "task=skills",
            "--budget", "4", "--publish", "acme/composed", "--task", "new-task", "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["published"] == "acme/composed@1" and res["out"] is None
    r = cli("show", "acme/composed", "--json")
    assert r.returncode == 0, r.stderr
    shown = json.loads(r.stdout)
    text = json.dumps(shown)
    assert "compose:ab" in text
    for i in range(3):
        assert f"acme/skill-{i}@1" in text
    r = cli("compose", "--base", base, "--examples", shots, "--select", "task=skills",
            "--budget", "2", "--publish", "acme/composed:prod")
    assert r.returncode == 1 and "not an alias" in r.stderr
    r = cli("compose", "--base", base, "--examples", shots, "--candidates", "acme/nope",
            "--budget", "2", "--out", tmp_path / "x")
    assert r.returncode == 1 and r.stderr.startswith("error:") and not (tmp_path / "x").exists()
