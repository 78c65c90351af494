"""Layer blocks: each contiguous block of layers mixes with weights of its own. What the
search scores is what is written (PEFT's logits on the written adapter equal the mixer's, in
both modes), one block is LoRAHub's one weight per candidate, and the result records every
block's weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lorahive.compose.composer import Composer, Example, SearchConfig, resolve_candidates
from lorahive.compose.composer.examples import write_examples
from lorahive.compose.composer.mixing import layer_blocks
from lorahive.compose.composer.model import load_base
from lorahive.hub.errors import InvalidRequestError
from lorahive.hub.peft_format import save_peft
from tests import test_compose_core as core
from tests.models import make_peft_adapter

EXAMPLES = [Example("the cat is red ?", "yes"), Example("add one and two", "three"),
            Example("the dog is big", "no")]
setup, base_model = core.setup, core.base_model  # the composer tests' tiny base and candidates
IDS = torch.tensor([[3, 5, 9, 11, 14, 20, 7], [4, 8, 15, 16, 23, 42, 5]])
ROOT = Path(__file__).resolve().parent.parent


def _logits(model, ids=IDS):
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_layer_blocks_split_layers_contiguously():
    names = [f"model.layers.{i}.self_attn.q_proj" for i in range(5)] + ["lm_head"]
    assert layer_blocks(names, 2) == {**{n: i * 2 // 5 for i, n in enumerate(names[:5])},
                                      "lm_head": 0}
    assert set(layer_blocks(names, 5).values()) == {0, 1, 2, 3, 4}
    assert set(layer_blocks(names, 1).values()) == {0}
    with pytest.raises(InvalidRequestError, match=r"between 1 and .* \(5\)"):
        layer_blocks(names, 6)
    with pytest.raises(InvalidRequestError):
        layer_blocks(names, 0)


@pytest.mark.parametrize("mode", ["ab", "delta"])
def test_block_mix_is_what_is_written(setup, base_model, tmp_path, mode):
    from peft import PeftModel

    _, base, same, mixed = setup
    cands = same if mode == "ab" else mixed
    W = [0.5, -0.9, 1.4, -1.2, 0.3, 0.8]  # block 0 (layer 0), then block 1 (layer 1)
    comp = Composer(base_model, resolve_candidates(cands), EXAMPLES, mode=mode, blocks=2)
    assert comp.dim == 6 and comp.mixer.block_of["model.layers.1.self_attn.v_proj"] == 1
    comp.mixer.set_weights([W])
    got = _logits(base_model.model)
    adapter, _ = comp.adapter(W, rank=64)
    comp.close()
    save_peft(adapter, tmp_path / "blocks")
    peft = PeftModel.from_pretrained(load_base(base, "cpu").model, tmp_path / "blocks").eval()
    torch.testing.assert_close(_logits(peft), got, rtol=1e-4, atol=1e-5)
    if mode == "delta":  # and it is the per-layer weighted sum of the deltas
        dense = load_base(base, "cpu").model
        with torch.no_grad():
            for i, c in enumerate(resolve_candidates(cands)):
                for name, m in c.adapter.modules.items():
                    w = W[3 * int(name.split(".")[2]) + i]
                    dense.get_submodule(name).weight += w * m.scale * (m.B @ m.A)
        torch.testing.assert_close(_logits(dense), got, rtol=1e-4, atol=1e-5)


def test_one_weight_in_every_block_is_one_block(setup, base_model):
    _, _, same, _ = setup
    w = np.array([0.7, -0.4, 1.1])
    one = Composer(base_model, resolve_candidates(same), EXAMPLES, mode="ab")
    a = one.score(w[None])
    one.close()
    two = Composer(base_model, resolve_candidates(same), EXAMPLES, mode="ab", blocks=2)
    b, c = two.score(np.concatenate([w, w])[None]), two.score(w[None])
    with pytest.raises(InvalidRequestError, match="in 2 layer blocks"):
        two.score(np.zeros((1, 4)))
    two.close()
    np.testing.assert_allclose(a, b, rtol=1e-6)
    np.testing.assert_allclose(a, c, rtol=1e-6)


def test_run_records_every_blocks_weights(setup, base_model, tmp_path):
    _, _, same, _ = setup
    with Composer(base_model, resolve_candidates(same), EXAMPLES, mode="ab",
                  blocks=2) as comp:
        res = comp.run(SearchConfig(budget=6, seed=1))
    assert len(res.search.weights) == 6 and len(res.block_weights) == 2
    assert res.lineage.params["blocks"] == 2
    assert res.lineage.params["block_weights"] == [list(b.values()) for b in res.block_weights]
    means = [np.mean([b[c.ref] for b in res.block_weights]) for c in res.candidates]
    assert [p.weight for p in res.lineage.parents] == pytest.approx(means)
    assert "layer block (2 contiguous blocks" in res.card("x")
    res.write(tmp_path / "out")
    side = json.loads((tmp_path / "out" / "lorahive.json").read_text())
    assert side["lineage"]["params"]["blocks"] == 2


def compose_cli(base: str, tmp_path: Path):
    """``lorahive compose --base base --examples <EXAMPLES>`` in a fresh process, with an
    empty registry home: a function of the remaining arguments."""
    shots = write_examples(tmp_path / "shots.jsonl", EXAMPLES)
    env = {**os.environ, "COLUMNS": "200", "LORAHIVE_HOME": str(tmp_path / "home")}

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "lorahive", "compose", "--base", base,
                               "--examples", shots, *map(str, args)], capture_output=True,
                              text=True, env=env, cwd=ROOT)
    return cli


def test_cli_blocks(setup, tmp_path):
    _, base, same, _ = setup
    cli = compose_cli(base, tmp_path)
    args = ["--lorahub", *(a for c in same for a in ("-c", c))]
    r = cli(*args, "--blocks", "2", "--budget", "4", "--out", tmp_path / "o", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert len(out["block_weights"]) == 2 and set(out["block_weights"][0]) == set(same)
    assert (tmp_path / "o" / "adapter_model.safetensors").exists()
    r = cli(*args, "--blocks", "3", "--budget", "2", "--out", tmp_path / "p")
    assert r.returncode == 1 and r.stderr.startswith("error: --blocks must be between 1")
    assert r.stderr.count("\n") == 1 and not (tmp_path / "p").exists()


def test_blocks_with_different_modules_all_load_in_peft(setup, base_model, tmp_path):
    """A candidate that adapts ``k_proj`` in layer 1 only: block 0 has no ``k_proj``, and the
    written adapter's config must still target it in block 1."""
    from peft import PeftModel

    _, base, same, _ = setup
    late = str(make_peft_adapter(base, tmp_path / "late", seed=70, r=2, lora_alpha=4,
                                 target_modules=["k_proj"], layers_to_transform=[1]))
    W = [0.9, -0.6, 0.0, 1.3]  # block 0: same[0], late; block 1: same[0], late
    comp = Composer(base_model, resolve_candidates([same[0], late]), EXAMPLES, mode="delta",
                    blocks=2)
    comp.mixer.set_weights([W])
    got = _logits(base_model.model)
    adapter, _ = comp.adapter(W, rank=64)
    comp.close()
    assert "model.layers.1.self_attn.k_proj" in adapter.modules
    save_peft(adapter, tmp_path / "out")
    peft = PeftModel.from_pretrained(load_base(base, "cpu").model, tmp_path / "out").eval()
    torch.testing.assert_close(_logits(peft), got, rtol=1e-4, atol=1e-5)
