"""Composing on a bitsandbytes 4-bit base: kept 4-bit, dequantized per layer, no bitsandbytes.

The forward pass must be bitsandbytes' own (same logits as the model transformers loads with
``BitsAndBytesConfig``), and scores equal those on the dequantized float base.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lorahive.compose.composer import Composer, Example, resolve_candidates
from lorahive.compose.composer.examples import write_examples
from lorahive.compose.composer.linear4 import Dequant4Linear, resident_bytes
from lorahive.compose.composer.model import load_base
from lorahive.compose.merge import merge_into_base
from lorahive.hub.peft_format import load_peft
from tests.compose_fixtures import add_tokenizer
from tests.models import load_4bit, make_qlora_adapter, save_tiny_llama_4bit

pytest.importorskip("bitsandbytes")
REPO = Path(__file__).resolve().parents[1]
SHOTS = [Example("the cat is red ?", "yes"), Example("the dog is blue ?", "no"),
         Example("the sun is big ?", "yes"), Example("the moon is small ?", "no")]
IDS = torch.tensor([[3, 5, 9, 11, 14, 20, 7], [4, 8, 15, 16, 23, 42, 5]])


@pytest.fixture(scope="module")
def task(tiny_llama_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("compose-q4")
    q4 = add_tokenizer(save_tiny_llama_4bit(tiny_llama_dir, root / "raw"), root / "q4")
    cands = [make_qlora_adapter(q4, root / f"c{i}", seed=70 + i) for i in range(3)]
    # the same weights as floats: the 4-bit base dequantized (a zero-weight merge)
    deq = root / "deq"
    merge_into_base(q4, [load_peft(cands[0])], deq, weights=[0.0], device="cpu")
    return root, q4, deq, cands


def test_4bit_base_stays_4bit_and_runs_bitsandbytes_forward(task):
    _, q4, deq, _ = task
    bm = load_base(q4, "cpu")
    lin = bm.model.get_submodule("model.layers.0.self_attn.q_proj")
    assert isinstance(lin, Dequant4Linear) and lin.packed.dtype == torch.uint8
    with torch.no_grad():
        got = bm.model(input_ids=IDS).logits
        want = load_4bit(q4)(input_ids=IDS).logits
    assert torch.equal(got, want)
    float_base = load_base(deq, "cpu")
    assert resident_bytes(bm.model) < 0.45 * resident_bytes(float_base.model)


@pytest.mark.parametrize("mode", ["ab", "delta"])
def test_scores_on_4bit_base_equal_scores_on_its_dequantized_weights(task, mode):
    _, q4, deq, cands = task
    W = np.random.default_rng(0).uniform(-1.5, 1.5, size=(4, 3))
    scores = []
    for base in (q4, deq):
        with Composer(load_base(base, "cpu"), resolve_candidates([str(c) for c in cands]),
                      SHOTS, mode=mode) as comp:
            scores.append(comp.score(W))
    np.testing.assert_allclose(scores[0], scores[1], rtol=1e-6, atol=1e-7)


def test_cli_composes_on_a_4bit_base_without_bitsandbytes(task, tmp_path):
    """The CLI runs with bitsandbytes made unimportable: nothing on this path needs it."""
    root, q4, _, cands = task
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "bitsandbytes.py").write_text("raise ImportError('bitsandbytes is not here')\n")
    env = {**os.environ, "COLUMNS": "200",
           "PYTHONPATH": os.pathsep.join([str(shim), os.environ.get("PYTHONPATH", "")])}
    shots = write_examples(root / "shots.jsonl", SHOTS)
    out = tmp_path / "composed"
    args = ["compose", "--lorahub", "--base", q4, "--examples", shots, "--out", out, "--budget", "6",
            "--mode", "delta", "--json"]
    for c in cands:
        args += ["--candidates", c]
    r = subprocess.run([sys.executable, "-m", "lorahive", *map(str, args)], cwd=REPO,
                       capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert len(res["trace"]) == 6
    composed = load_peft(out)
    assert set(composed.modules) == set(load_peft(cands[0]).modules)
    # and it merges back into the 4-bit base it was composed on
    rep = merge_into_base(q4, [composed], tmp_path / "merged", device="cpu",
                          requantize="nf4")
    assert len(rep.modules) == len(composed.modules)
