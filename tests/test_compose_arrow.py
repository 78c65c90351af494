"""Arrow routing: PEFT's per-token rule reproduced (prototypes and routed output), the static
per-module weights it gives a composition, and ``lorahive compose --route arrow`` end to end:
what is written is what was routed, and options that shape a search are refused."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from lorahive.compose.composer import Composer, resolve_candidates
from lorahive.compose.composer.arrow import coefficients, prototype, route_weights
from lorahive.compose.composer.model import load_base
from lorahive.hub.adapter import LoraModule
from lorahive.hub.errors import InvalidRequestError
from lorahive.hub.peft_format import save_peft
from tests import test_compose_core as core
from tests.test_compose_blocks import EXAMPLES, IDS, compose_cli

setup, base_model = core.setup, core.base_model


def _experts(E=3, r=4, d_in=16, d_out=12, seed=0):
    """LoRA factors with a clear top singular direction each (so PEFT's power iteration has
    converged), and scales that differ."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for e in range(E):
        A = torch.randn(r, d_in, generator=g)
        B = torch.randn(d_out, r, generator=g)
        A[0] *= 6.0
        B[:, 0] *= 6.0
        out.append(LoraModule(A, B, scale=0.5 + e))
    return out


def test_routing_matches_peft_arrow_layer():
    from peft.tuners.lora.arrow import ArrowLoraLinearLayer
    from peft.tuners.lora.config import ArrowConfig

    mods = _experts()
    names = [f"task_{i}" for i in range(len(mods))]
    cfg = ArrowConfig(top_k=2, router_temperature=0.7, rng_seed=0)
    cfg.task_adapter_names = names
    layer = ArrowLoraLinearLayer(16, cfg)
    lora_A, lora_B = nn.ModuleDict(), nn.ModuleDict()
    for n, m in zip(names, mods, strict=True):
        lora_A[n] = nn.Linear(16, m.rank, bias=False)
        lora_B[n] = nn.Linear(m.rank, 12, bias=False)
        lora_A[n].weight.data.copy_(m.A)
        lora_B[n].weight.data.copy_(m.B)
    layer.build_prototypes(lora_A, lora_B)
    protos = torch.stack([prototype(m) for m in mods])
    cos = (protos * layer.prototypes).sum(1).abs()  # unit vectors, equal up to sign
    torch.testing.assert_close(cos, torch.ones(3), rtol=0, atol=1e-5)

    x = torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(1))
    theirs = layer.forward(x, lora_A, lora_B, nn.Identity(),
                           {n: m.scale for n, m in zip(names, mods, strict=True)})
    c = coefficients(x.reshape(-1, 16), protos, top_k=2, temperature=0.7)  # [10, 3]
    assert torch.equal((c > 0).sum(1), torch.full((10,), 2))
    torch.testing.assert_close(c.sum(1), torch.ones(10))
    per = torch.stack([m.scale * (x.reshape(-1, 16) @ m.A.T @ m.B.T) for m in mods], 1)
    ours = (c.unsqueeze(-1) * per).sum(1).reshape(2, 5, 12)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)


def test_route_weights_are_mean_token_coefficients(setup, base_model):
    _, _, _, mixed = setup
    cands = resolve_candidates(mixed)  # modules differ: q/v, q/k, v/down
    with Composer(base_model, cands, EXAMPLES, mode="delta", per_module=True) as comp:
        names, enc = comp.names, comp.encoded
        tokens = int(enc.attention_mask.sum())
        W = route_weights(base_model.model, names, cands, enc, top_k=1)
        assert W.shape == (len(names), 3)
        for i, nm in enumerate(names):
            have = [j for j, c in enumerate(cands) if nm in c.adapter.modules]
            assert set(np.flatnonzero(W[i])) <= set(have)  # no weight where a module is absent
            np.testing.assert_allclose(W[i].sum(), 1.0, rtol=1e-6)
            # top-1: each token picks one candidate, so a weight is a share of the tokens
            np.testing.assert_allclose(W[i] * tokens, np.round(W[i] * tokens), atol=1e-6)
        flat = route_weights(base_model.model, names, cands, enc, top_k=3, temperature=1e6)
        for i, nm in enumerate(names):
            have = [j for j, c in enumerate(cands) if nm in c.adapter.modules]
            np.testing.assert_allclose(flat[i, have], 1 / len(have), rtol=1e-4)
        with pytest.raises(InvalidRequestError, match="top-k"):
            route_weights(base_model.model, names, cands, enc, top_k=0)


def test_routed_adapter_is_the_routed_mix(setup, base_model, tmp_path):
    from peft import PeftModel

    _, base, _, mixed = setup
    cands = resolve_candidates(mixed)
    with Composer(base_model, cands, EXAMPLES, mode="delta", per_module=True) as comp:
        res = comp.route(top_k=2, temperature=0.5, held_out=EXAMPLES[:2])
        comp.mixer.set_weights(res.search.weights[None])
        with torch.no_grad():
            got = base_model.model(input_ids=IDS).logits
    W = np.asarray(res.lineage.params["module_weights"])
    assert res.lineage.method == "compose:arrow" and res.metrics["evaluations"] == 0
    assert res.lineage.params["route"] == "arrow" and res.metrics["energy_kept_min"] > 0.9999
    assert [p.weight for p in res.lineage.parents] == pytest.approx(W.mean(0))
    assert res.accuracy is not None and res.accuracy.n == 2
    card = res.card("x")
    assert "training-free routing" in card and "3 routed" in card
    save_peft(res.adapter, tmp_path / "routed")
    peft = PeftModel.from_pretrained(load_base(base, "cpu").model, tmp_path / "routed").eval()
    with torch.no_grad():
        torch.testing.assert_close(peft(input_ids=IDS).logits, got, rtol=1e-4, atol=1e-5)
        dense = load_base(base, "cpu").model  # and it is sum_m,e w_me s_e B_e A_e
        names = res.lineage.params["modules"]
        for i, c in enumerate(cands):
            for name, m in c.adapter.modules.items():
                dense.get_submodule(name).weight += W[names.index(name), i] * m.scale * (m.B @ m.A)
        torch.testing.assert_close(dense(input_ids=IDS).logits, got, rtol=1e-4, atol=1e-5)


def test_cli_route_arrow(setup, tmp_path):
    _, base, same, _ = setup
    cli = compose_cli(base, tmp_path)
    args = [a for c in same for a in ("-c", c)]
    r = cli(*args, "--route", "arrow", "--top-k", "2", "--out", tmp_path / "o", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["evaluations"] == 0 and set(out["weights"]) == set(same)
    assert len(out["module_weights"]) == 4  # q and v in 2 layers
    side = json.loads((tmp_path / "o" / "lorahive.json").read_text())
    assert side["lineage"]["method"] == "compose:arrow"
    assert side["lineage"]["params"]["top_k"] == 2
    r = cli(*args, "--route", "arrow", "--mode", "ab", "--out", tmp_path / "p")
    assert r.returncode == 1 and r.stderr.startswith("error: --route arrow mixes the deltas")
    assert r.stderr.count("\n") == 1 and not (tmp_path / "p").exists()


def test_route_refuses_search_options():
    from lorahive.cli.commands.compose import _check_route

    assert _check_route("arrow", None, None, 1, None, None, [], False) == "delta"
    for args, msg in ((("soup", None, 0, 1, None, None, [], False), "unknown route 'soup'"),
                      (("arrow", "ab", 0, 1, None, None, [], False), "mixes the deltas"),
                      (("arrow", None, 2, 1, None, None, [], False), "--folds shapes a search"),
                      (("arrow", None, 0, 2, None, None, [], False), "--blocks shapes a search"),
                      (("arrow", None, 0, 1, "label", None, [], False),
                       "--objective shapes a search"),
                      (("arrow", None, 0, 1, None, 5, [], False), "--prescreen shapes a search"),
                      (("arrow", None, 0, 1, None, None, ["yes"], False),
                       "--labels shapes a search"),
                      (("arrow", None, 0, 1, None, None, [], True), "--lorahub shapes a search")):
        with pytest.raises(InvalidRequestError, match=msg):
            _check_route(*args)


def test_route_needs_a_per_module_delta_composer(setup, base_model):
    _, _, same, _ = setup
    with Composer(base_model, resolve_candidates(same), EXAMPLES, mode="ab") as comp, \
            pytest.raises(InvalidRequestError, match="per-module composer in mode delta"):
        comp.route()
