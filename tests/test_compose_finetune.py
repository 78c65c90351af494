"""``compose --fine-tune``: gradient steps on the shots after the search, on a tiny Llama.

The trained adapter must be what PEFT trains (the saved factors load in PEFT and give the
fine-tuned loss), the base model must come back untouched, and every record must say the
result is not gradient-free."""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel

from lorahive.compose.composer import Composer, SearchConfig, resolve_candidates
from lorahive.compose.composer.examples import encode_causal
from lorahive.compose.composer.finetune import fine_tune, output_token_loss
from lorahive.compose.composer.model import load_base
from lorahive.hub.peft_format import load_peft
from tests.compose_fixtures import yes_no_task
from tests.registry_helpers import run_cli_inprocess
from tests.test_compose_cli import EVAL, SHOTS


@pytest.fixture(scope="module")
def task(tiny_llama_dir, tmp_path_factory):
    return yes_no_task(tiny_llama_dir, tmp_path_factory.mktemp("compose-ft"), range(80, 82))


def _loss(model, tok) -> float:
    enc = encode_causal(tok, SHOTS)
    with torch.no_grad():
        return float(output_token_loss(model, enc.input_ids, enc.attention_mask, enc.labels))


def test_fine_tune_trains_the_mix_and_gives_the_base_model_back(task, tmp_path):
    base, cands, _shots, _ev = task
    bm = load_base(base, "cpu")
    before = _loss(bm.model, bm.tokenizer)
    with Composer(bm, resolve_candidates([str(c) for c in cands]), SHOTS) as comp:
        mix, _ = comp.adapter([0.7, 0.4])
    trained, record = fine_tune(bm.model, bm.tokenizer, mix, SHOTS, steps=12, lr=1e-2)
    assert _loss(bm.model, bm.tokenizer) == before  # LoRA layers gone, weights unmerged
    assert set(trained.modules) == set(mix.modules)
    assert all(trained.modules[n].A.shape == m.A.shape for n, m in mix.modules.items())
    assert record["steps"] == len(record["losses"]) == 12 and record["redrawn_A"] == 0
    assert record["loss_last"] < record["loss_first"]
    # the factors written are the ones trained: PEFT loads them and gets the trained loss
    out = tmp_path / "ft"
    from lorahive.hub.peft_format import save_peft

    save_peft(trained, out)
    peft = PeftModel.from_pretrained(load_base(base, "cpu").model, out)
    assert _loss(peft, bm.tokenizer) < record["loss_first"] - 0.05


def test_an_all_zero_mix_is_fine_tuned_from_a_fresh_A(task):
    base, cands, _shots, _ev = task
    bm = load_base(base, "cpu")
    with Composer(bm, resolve_candidates([str(c) for c in cands]), SHOTS) as comp:
        zero, _ = comp.adapter([0.0, 0.0])
    assert not any(torch.any(m.A) for m in zero.modules.values())
    trained, record = fine_tune(bm.model, bm.tokenizer, zero, SHOTS, steps=8, lr=1e-2)
    assert record["redrawn_A"] == len(zero.modules)
    assert all(torch.any(m.B) for m in trained.modules.values())  # B moved off zero


def test_compose_fine_tune_from_the_cli(task, tmp_path):
    base, cands, shots, ev = task
    out = tmp_path / "composed"
    args = ["compose", "--lorahub", "--base", base, "--examples", shots, "--eval", ev,
            "--out", out, "--budget", "4", "--fine-tune", "10", "--fine-tune-lr", "0.01",
            "--json", "-c", cands[0], "-c", cands[1]]
    r = run_cli_inprocess(tmp_path / "home", *args, check=False)
    assert r.exit_code == 0, r.stderr
    res = json.loads(r.stdout)
    side = json.loads((out / "lorahive.json").read_text())
    lin = side["lineage"]
    assert lin["method"] == "compose:ab+fine-tune"
    ft = lin["params"]["fine_tune"]
    assert (ft["steps"], ft["lr"], ft["batch"]) == (10, 0.01, len(SHOTS))
    assert res["fine_tune_steps"] == 10 and res["objective_fine_tuned"] == ft["objective"]
    assert ft["objective"] < ft["objective_start"]
    assert res["eval_n"] == len(EVAL) and "eval_accuracy" in res
    card = (out / "README.md").read_text()
    assert "not gradient-free: 10 full-batch AdamW steps (lr 0.01)" in card
    assert set(load_peft(out).modules) == set(load_peft(cands[0]).modules)
    # the same settings again: the output already holds them; other steps: a new result
    again = run_cli_inprocess(tmp_path / "home", *args, check=False)
    assert again.exit_code == 0 and json.loads(again.stdout)["reused"] is True
    other = [*args[:args.index("--fine-tune") + 1], "11", *args[args.index("--fine-tune") + 2:]]
    r = run_cli_inprocess(tmp_path / "home", *other, check=False)
    assert r.exit_code == 1 and "not empty" in r.stderr


@pytest.mark.parametrize("extra, msg", [
    (["--route", "arrow", "--fine-tune", "3"], "--fine-tune trains a searched mix"),
    (["--fine-tune-lr", "0.1"], "--fine-tune-lr goes with --fine-tune"),
    (["--fine-tune", "-2"], "--fine-tune takes a number of steps"),
    (["--fine-tune", "3", "--dtype", "bfloat16"], "trains in float32"),
])
def test_fine_tune_refusals_are_one_line(task, tmp_path, extra, msg):
    base, cands, shots, _ev = task
    r = run_cli_inprocess(tmp_path / "home", "compose", "--base", base, "--examples", shots,
                          "--out", tmp_path / "x", "-c", cands[0], "--budget", "2", *extra,
                          check=False)
    assert r.exit_code == 1 and msg in r.stderr and r.stderr.count("\n") == 1, r.stderr
    assert not (tmp_path / "x").exists()


def test_a_refused_mix_is_fine_tuned_from_the_base_model(task):
    """Where the check refused the mix, ``--fine-tune`` starts from the base model: a plain
    LoRA fine-tune, with the parents at weight 0 and the refused weights kept aside."""
    base, cands, _shots, _ev = task
    bm = load_base(base, "cpu")
    with Composer(bm, resolve_candidates([str(c) for c in cands]), SHOTS) as comp:
        result = comp.run(SearchConfig(budget=4, lower=0.2, upper=1.0, init=0.5), folds=2)
        searched = [float(w) for w in result.search.weights]
        assert min(abs(w) for w in searched) >= 0.2  # a real mix, refused or not
        ft = comp.fine_tune(result, 6, 1e-2, from_base=True)
    record = ft.lineage.params["fine_tune"]
    assert record["start"] == "base" and record["refused_weights"] == searched
    assert record["redrawn_A"] == len(ft.adapter.modules)
    assert [p.weight for p in ft.lineage.parents] == [0.0, 0.0]
    assert list(ft.weights.values()) == [0.0, 0.0]
    assert "starting from the base model, as the mix did not beat it" in ft.card("x")
