"""`lorahive compose` end to end on tiny models: through a real ``python -m lorahive`` process
where the process is the point (exit codes, one-line errors, a search that must let the process
exit), else through the same console entry point in this process (``cli``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lorahive.compose.composer import Example, examples_sha256
from lorahive.compose.composer.examples import write_examples
from lorahive.hub.peft_format import load_peft
from tests.compose_fixtures import add_tokenizer
from tests.models import make_peft_adapter
from tests.registry_helpers import run_cli_inprocess

SHOTS = [Example("the cat is red ?", "yes"), Example("the dog is blue ?", "no"),
         Example("the sun is big ?", "yes"), Example("the moon is small ?", "no")]
EVAL = [Example("the bird is fast ?", "yes"), Example("the star is slow ?", "no"),
        Example("the cat is green ?", "no"), Example("the dog is big ?", "yes")]


ROOT = Path(__file__).resolve().parents[1]


def run(*args, timeout=None, env=None):
    env = {**os.environ, "COLUMNS": "200", **(env or {})}
    return subprocess.run([sys.executable, "-m", "lorahive", *map(str, args)],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=timeout)


def cli(home: Path, *args):
    """The console entry point in this process, on the registry at ``home``."""
    return run_cli_inprocess(home, *args, check=False)


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
    args = ["compose", "--lorahub", "--base", base, "--examples", shots, "--eval", ev, "--out", out,
            "--budget", "8", "--seed", "3", "--json"]
    for c in cands:
        args += ["--candidates", c]
    r = cli(tmp_path / "home", *args)
    assert r.exit_code == 0, r.stderr
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
    want_B = sum(wi * m.scale * m.B for wi, m in zip(w, loaded, strict=True))
    torch.testing.assert_close(got.modules[name].A, want_A, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got.modules[name].B, want_B, rtol=1e-5, atol=1e-6)
    assert got.modules[name].scale == 1.0  # each candidate's scale is folded into B
    # same seed, same search
    r2 = cli(tmp_path / "home", *[a if a != out else tmp_path / "again" for a in args])
    assert json.loads(r2.stdout)["trace"] == res["trace"]


def test_compose_delta_table_output(task, tmp_path):
    _root, base, cands, r2, shots, ev = task
    out = tmp_path / "delta"
    r = cli(tmp_path / "home", "compose", "--lorahub", "--base", base, "-c", cands[0], "-c", r2, "-c",
            cands[1], "--examples", shots, "--eval", ev, "--out", out, "--mode", "delta",
            "--rank", "3", "--budget", "6", "--workers", "3", "--optimizer", "TwoPointsDE",
            "--prescreen", "2")
    assert r.exit_code == 0, r.stderr
    for text in ("mixing weights", "objective trace", "energy kept", "held-out accuracy (rank)"):
        assert text in r.stdout
    side = json.loads((out / "lorahive.json").read_text())
    assert len(side["lineage"]["parents"]) == 2 and side["lineage"]["params"]["rank"] == 3
    assert side["lineage"]["params"]["prescreen"] == 2
    assert len(side["lineage"]["params"]["prescreen_scores"]) == 3
    assert load_peft(out).max_rank == 3


def test_compose_user_errors_are_one_line(task, tmp_path):
    _root, base, cands, r2, shots, _ = task
    r = run("compose", "--lorahub", "--base", base, "-c", cands[0], "-c", r2, "--examples", shots,
            "--out", tmp_path / "x", "--budget", "2")
    assert r.returncode == 1
    assert r.stderr.startswith("error: --mode ab needs equal ranks") and "Traceback" not in r.stderr
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "f").write_text("x")
    r = run("compose", "--lorahub", "--base", base, "-c", cands[0], "--examples", shots, "--out", busy)
    assert r.returncode == 1 and "not empty" in r.stderr
    r = run("compose", "--lorahub", "--base", base, "-c", "team/adapter", "--examples", shots,
            "--out", tmp_path / "y")
    assert r.returncode == 1 and "not found" in r.stderr and r.stderr.count("\n") == 1


def test_compose_from_registry_refs_and_publish(task, tmp_path):
    """Candidates by reference and by --select, result published with its lineage."""
    _root, base, cands, _, shots, _ev = task
    home = tmp_path / "home"
    run_cli_inprocess(home, "namespace", "create", "acme")  # set-up: a failure raises
    for i, c in enumerate(cands):
        run_cli_inprocess(home, "publish", str(c), "--name", f"acme/skill-{i}", "--task",
                          "skills", "--tag", "en")
    r = cli(home, "compose", "--lorahub", "--base", base, "--examples", shots, "--candidates", "acme/skill-0",
            "--select", "task=skills,tag=en", "--budget", "4", "--publish", "acme/composed",
            "--task", "new-task", "--json")
    assert r.exit_code == 1 and "listed twice" in r.stderr  # skill-0 by ref and by filter
    r = cli(home, "compose", "--lorahub", "--base", base, "--examples", shots, "--select", "task=skills",
            "--budget", "4", "--publish", "acme/composed", "--task", "new-task", "--json")
    assert r.exit_code == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["published"] == "acme/composed@1" and res["out"] is None
    r = cli(home, "show", "acme/composed", "--json")
    assert r.exit_code == 0, r.stderr
    shown = json.loads(r.stdout)
    text = json.dumps(shown)
    assert "compose:ab" in text
    for i in range(3):
        assert f"acme/skill-{i}@1" in text
    assert shown["version"]["lineage"]["params"]["select"] == "task=skills"
    r = cli(home, "compose", "--lorahub", "--base", base, "--examples", shots, "--select", "task=skills",
            "--budget", "2", "--publish", "acme/composed:prod")
    assert r.exit_code == 1 and "not an alias" in r.stderr
    r = cli(home, "compose", "--lorahub", "--base", base, "--examples", shots, "--candidates", "acme/nope",
            "--budget", "2", "--out", tmp_path / "x")
    assert r.exit_code == 1 and r.stderr.startswith("error:") and not (tmp_path / "x").exists()


def _cands(args, cands):
    for c in cands:
        args += ["-c", c]
    return args


def test_compose_with_workers_finishes_and_says_which_point_it_kept(task, tmp_path):
    """NGOpt with workers > 1 runs its meta-model step (it crashed under numpy 2.4, then the
    process hung); the written mix is never worse than a point already scored."""
    _root, base, cands, _, shots, _ = task
    out = tmp_path / "w"
    r = run(*_cands(["compose", "--lorahub", "--base", base, "--examples", shots, "--out", out,
                     "--budget", "24", "--workers", "2"], cands[:2]), timeout=600)
    assert r.returncode == 0, r.stderr
    side = json.loads((out / "lorahive.json").read_text())
    metrics, params = side["metrics"], side["lineage"]["params"]
    assert metrics["kept"] == params["kept"]
    assert metrics["objective"] <= min(params["objective_trace"] + [metrics["zero_shot_objective"]])
    assert metrics["objective"] <= metrics["recommendation_objective"]
    assert len(params["objective_trace"]) == 24 and params["workers"] == 2
    said = {"recommendation": "kept the optimizer's recommendation",
            "best evaluated": f"kept the best evaluated point (#{params['kept_evaluation']})",
            "zero-shot": "kept all weights 0"}
    assert said[metrics["kept"]] in " ".join(r.stdout.split())


@pytest.mark.parametrize("workers", [1, 2])
def test_failing_search_exits_with_one_line_in_bounded_time(task, tmp_path, workers):
    """A search that fails mid-way (here: a custom objective returning the wrong number of
    values) must print one line and exit, not leave an optimizer thread holding the process."""
    _root, base, cands, _, shots, _ = task
    r = run(*_cands(["compose", "--lorahub", "--base", base, "--examples", shots, "--out", tmp_path / "f",
                     "--budget", "24", "--workers", str(workers),
                     "--objective", "tests.compose_fixtures:fails_mid_search"], cands[:2]),
            timeout=300)
    assert r.returncode == 1
    assert r.stderr.splitlines()[-1].startswith("error: the objective returned")
    assert "Traceback" not in r.stderr and not (tmp_path / "f").exists()


@pytest.mark.parametrize("mode", ["delta", "ab"])
def test_composed_o_proj_adapter_loads_in_peft_with_its_modules(task, tmp_path, mode):
    """Candidates on o_proj only: the written config must select o_proj (not PEFT's q/v
    default for Llama), with r and lora_alpha matching the weights, so the mix takes effect."""
    from peft import PeftModel

    from tests.models import load_base

    _root, base, _cands_qv, _, shots, _ = task
    cands = [make_peft_adapter(base, tmp_path / f"o{i}", seed=90 + i, target_modules=["o_proj"])
             for i in range(2)]
    out = tmp_path / "composed"
    args = ["compose", "--lorahub", "--base", base, "--examples", shots, "--out", out, "--budget", "4",
            "--mode", mode, "--objective", "tests.compose_fixtures:near_half"]
    r = cli(tmp_path / "home", *_cands(args + (["--rank", "8"] if mode == "delta" else []), cands))
    assert r.exit_code == 0, r.stderr
    cfg = json.loads((out / "adapter_config.json").read_text())
    written = load_peft(out)
    assert cfg["target_modules"] == ["o_proj"]
    assert cfg["r"] == written.max_rank == (8 if mode == "delta" else 4)
    assert cfg["lora_alpha"] == cfg["r"]  # scale 1: the fusion engine folds scales into B
    ids = torch.tensor([[3, 5, 9, 11, 14, 20, 7]])
    plain = load_base(base)
    with torch.no_grad():
        want = plain(input_ids=ids).logits
        peft = PeftModel.from_pretrained(load_base(base), out).eval()
        got = peft(input_ids=ids).logits
    assert {n.split(".lora_B")[0].rsplit(".", 1)[-1] for n, _ in peft.named_parameters()
            if "lora_B" in n} == {"o_proj"}
    assert not torch.allclose(got, want, atol=1e-4)
    dense = load_base(base)
    with torch.no_grad():  # and PEFT applies exactly the written delta
        for name, m in written.modules.items():
            dense.get_submodule(name).weight += m.delta_matrix()
        torch.testing.assert_close(got, dense(input_ids=ids).logits, rtol=1e-4, atol=1e-5)


def test_fuse_lorahub_and_compose_ab_write_the_same_adapter(task, tmp_path):
    """One scale rule: compose --mode ab writes through the fusion engine's lorahub method,
    also when the candidates' scales differ (alpha 8 and 2 at rank 4)."""
    _root, base, cands, _, shots, _ = task
    low = make_peft_adapter(base, tmp_path / "low", seed=77, lora_alpha=2)
    out = tmp_path / "ab"
    r = cli(tmp_path / "home", *_cands(["compose", "--lorahub", "--base", base, "--examples", shots, "--out",
                                        out, "--budget", "6", "--objective",
                                        "tests.compose_fixtures:near_half"], [cands[0], low]))
    assert r.exit_code == 0, r.stderr
    r_compose_stderr = r.stderr
    w = [p["weight"] for p in json.loads((out / "lorahive.json").read_text())["lineage"]["parents"]]
    assert any(x != 0 for x in w)
    fused = tmp_path / "fused"
    r = cli(tmp_path / "home", "fuse", cands[0], low, "--method", "lorahub", "--weights",
            ",".join(map(repr, w)), "--device", "cpu", "--out", fused)
    assert r.exit_code == 0, r.stderr
    a, b = load_peft(out), load_peft(fused)
    assert set(a.modules) == set(b.modules)
    for name in a.modules:
        assert torch.equal(a.modules[name].A, b.modules[name].A)
        assert torch.equal(a.modules[name].B, b.modules[name].B)
        assert a.modules[name].scale == b.modules[name].scale
    assert json.loads((out / "adapter_config.json").read_text()) == \
        json.loads((fused / "adapter_config.json").read_text())
    assert "scales (alpha/r) differ" in r_compose_stderr


def test_compose_rerun_finishes_an_interrupted_publish(task, tmp_path):
    """A run that wrote --out but never published (interrupted) is re-run with the same
    inputs: it finds its result there and publishes it without searching again; with other
    settings the directory is still refused."""
    _root, base, cands, _, shots, _ = task
    home = tmp_path / "home"
    assert cli(home, "namespace", "create", "acme").exit_code == 0
    out = tmp_path / "d"
    args = _cands(["compose", "--lorahub", "--base", base, "--examples", shots, "--out", out,
                   "--budget", "4"], cands[:2])
    r = cli(home, *args)
    assert r.exit_code == 0, r.stderr
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    r = cli(home, *args, "--publish", "acme/c", "--private")
    assert r.exit_code == 0, r.stderr
    assert "already holds this composition" in r.stdout and "published acme/c@1" in r.stdout
    assert "search" not in r.stderr  # no progress bar: nothing searched
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    shown = json.loads(cli(home, "show", "acme/c", "--json").stdout)
    assert shown["adapter"]["private"] is True
    r = cli(home, *args, "--budget", "5", "--publish", "acme/c")  # another budget
    assert r.exit_code == 1 and "exists and is not empty" in r.stderr
