"""The streaming fusion engine: files in, file out, workers and batches, and the same numbers
as the direct computation it replaced (core space from an SVD of the stacked factors, every
task matrix decomposed densely)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from lorahive.compose.fusion import fuse, fuse_files, spectral
from lorahive.compose.fusion.core_space import merge_matrices, rank_cap
from lorahive.compose.fusion.terms import Factors, Term
from lorahive.hub.adapter import Adapter, LoraModule
from lorahive.hub.peft_format import load_peft, open_peft, save_peft
from lorahive.hub.safetensors_io import StreamWriter, read_header
from tests.models import make_peft_adapter

NAMES = {"model.layers.0.self_attn.q_proj": (48, 40), "model.layers.0.mlp.down_proj": (40, 72),
         "model.layers.1.self_attn.q_proj": (48, 40), "model.layers.1.mlp.down_proj": (40, 72)}
W = [0.8, -0.5, 1.2]


def synthetic(seed: int, rank: int, scale: float, names=NAMES, dtype=torch.float32) -> Adapter:
    g = torch.Generator().manual_seed(seed)
    mods = {n: LoraModule(A=torch.randn(rank, i, generator=g).to(dtype),
                          B=(torch.randn(o, rank, generator=g) * (k + 1)).to(dtype), scale=scale)
            for k, (n, (o, i)) in enumerate(names.items())}
    return Adapter.from_factors(mods, base_model="synthetic")


@pytest.fixture(scope="module")
def trio(tmp_path_factory):
    root = tmp_path_factory.mktemp("stream")
    ads = [synthetic(1, 4, 0.5), synthetic(2, 8, 0.25), synthetic(3, 6, 2.0)]
    dirs = [save_peft(a, root / f"a{i}") for i, a in enumerate(ads)]
    return ads, dirs


def deltas(ad: Adapter) -> dict[str, torch.Tensor]:
    return {n: m.delta_matrix(dtype=torch.float64) for n, m in ad.modules.items()}


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / max(b.abs().max(), 1e-30))


CASES = [
    ("task_arithmetic", {}, None), ("svd", {}, 5), ("tsv", {}, None), ("iso_c", {}, None),
    ("iso_cts", {"common_fraction": 0.5}, None), ("star", {}, None),
    ("cart", {"rank_fraction": 0.3}, None), ("knots", {}, None),
    ("core_space", {"merge": "dare_ties", "density": 0.5}, None),
    ("ties_svd", {"density": 0.5}, 6), ("dare_linear", {"density": 0.7}, None),
]


@pytest.mark.parametrize("method,params,rank", CASES)
def test_fuse_files_writes_what_fuse_returns(trio, tmp_path, method, params, rank):
    ads, dirs = trio
    if method == "dare_linear":  # needs equal ranks: the first input three times
        ads, dirs = [ads[0]] * 3, [dirs[0]] * 3
    seen: list[str] = []
    res = fuse_files(dirs, tmp_path / "out", method, W, params, rank=rank, seed=3,
                     device="cpu", progress=seen.append,
                     extra_files=lambda r: {"lorahive.json": json.dumps(r.params).encode()})
    want = fuse(ads, method, W, params, rank=rank, seed=3, device="cpu")
    got = load_peft(tmp_path / "out")
    assert sorted(seen) == sorted(NAMES)
    assert res.ranks == want.ranks == got.ranks
    for n in NAMES:  # the same computation: bit for bit
        assert torch.equal(got.modules[n].A, want.adapter.modules[n].A), n
        assert torch.equal(got.modules[n].B, want.adapter.modules[n].B), n
    assert got.config.data["r"] == want.adapter.config.data["r"]
    assert json.loads((tmp_path / "out" / "lorahive.json").read_text()) == want.params
    assert all(m.A.device.type == "meta" for m in res.adapter.modules.values())
    # the reserved header is padded with spaces; safetensors itself reads the file
    path = tmp_path / "out" / "adapter_model.safetensors"
    with safe_open(str(path), "pt") as f:
        assert len(list(f.keys())) == 2 * len(NAMES)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".lorahive-tmp")]


def test_workers_and_batches_do_not_change_results(trio):
    ads, _ = trio
    for method, params in [("tsv", {}), ("core_space", {"merge": "ties", "density": 0.4}),
                           ("iso_cts", {}), ("knots", {"merge": "dare_ties"})]:
        one = deltas(fuse(ads, method, W, params, seed=1, device="cpu", workers=1).adapter)
        many = deltas(fuse(ads, method, W, params, seed=1, device="cpu", workers=3).adapter)
        batched = deltas(fuse(ads, method, W, params, seed=1, device="cpu", workers=2,
                              batch=4).adapter)
        for n in NAMES:  # (torch's thread count moves the last bits of MKL's results)
            assert rel(many[n], one[n]) < 1e-5, (method, n)
            assert rel(batched[n], one[n]) < 1e-5, (method, n)


# the computation this engine replaced, kept here as the reference ----------------------------
def reference(method: str, terms: list[Term], params: dict, seed_gen) -> torch.Tensor:
    """Core space from thin SVDs of the stacked tall factors, every task decomposed densely."""
    U = torch.linalg.svd(torch.cat([t.B for t in terms], 1), full_matrices=False)[0]
    V = torch.linalg.svd(torch.cat([t.A for t in terms], 0), full_matrices=False)[2]
    cores = [(U.T @ t.B) @ (t.A @ V.T) * t.scale for t in terms]
    w = [t.weight for t in terms]
    cap = rank_cap(terms)
    ranks = [t.rank for t in terms]
    if method == "tsv":
        M = spectral.tsv_merge(cores, w, ranks, cap, 1.0 / len(terms), 1.0)
    elif method == "iso_c":
        M = spectral.iso_c(cores, w, cap, 1.0)
    elif method == "iso_cts":
        M = spectral.iso_cts(cores, w, ranks, cap, params["common_fraction"], 1.0)
    elif method == "star":
        M = spectral.star(cores, w, 0.4)
    elif method == "cart":
        M = spectral.cart(cores, w, cap, params["rank_fraction"], 1.0)
    elif method == "knots":
        M = spectral.knots(cores, w, cap, "ties", 0.5, "total", seed_gen)
    else:
        M = merge_matrices(cores, w, "ties", params["density"], "total", seed_gen)
    return U @ M @ V


@pytest.mark.parametrize("method,params", [
    ("tsv", {}), ("iso_c", {}), ("iso_cts", {"common_fraction": 0.5}), ("star", {}),
    ("cart", {"rank_fraction": 0.3}), ("knots", {}),
    ("core_space", {"merge": "ties", "density": 0.6}),
])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-6), (torch.float32, 2e-4)])
def test_same_numbers_as_the_direct_computation(trio, method, params, dtype, tol):
    """QR bases (singular-vector bases derived from them for element-wise merges) and per-task
    SVDs from the cores' factors give the deltas the direct computation gives."""
    ads, _ = trio
    got = deltas(fuse(ads, method, W, params, device="cpu", compute_dtype=dtype).adapter)
    for n in NAMES:
        terms = [Term(a.modules[n], wi, torch.device("cpu"), dtype)
                 for a, wi in zip(ads, W, strict=True)]
        want = reference(method, terms, params, None).to(torch.float64)
        tol_n = 5e-3 if (method == "iso_cts" and dtype == torch.float32) else tol
        assert rel(got[n], want) < tol_n, (method, n, rel(got[n], want))


def test_lift_keeps_the_rank_and_the_product():
    """The tall product goes on the narrower side; the rank is the basis size either way."""
    from lorahive.compose.fusion.core_space import CoreSpace

    for out_f, in_f in [(72, 40), (40, 72)]:
        ads = [synthetic(s, 4, 1.0, {"m": (out_f, in_f)}) for s in (1, 2)]
        terms = [Term(a.modules["m"], 1.0, torch.device("cpu")) for a in ads]
        cs = CoreSpace.from_terms(terms, "qr")
        f = cs.lift(sum(cs.cores))
        assert isinstance(f, Factors) and f.rank == 8
        exact = sum(t.delta() for t in terms)
        assert rel(f.dense(), exact) < 1e-5


def test_stream_writer_reserves_the_header(tmp_path):
    planned = [("a", "F32", [9, 100]), ("b", "F32", [100, 9]), ("c", "F32", [3])]
    w = StreamWriter(tmp_path / "x.safetensors", planned, {"format": "pt"})
    w.write("a", torch.ones(2, 100))
    w.write("b", torch.arange(200, dtype=torch.float32).reshape(100, 2))
    w.close()
    header, start = read_header(tmp_path / "x.safetensors")
    assert start % 8 == 0 and set(header) == {"a", "b"}
    with safe_open(str(tmp_path / "x.safetensors"), "pt") as f:
        assert torch.equal(f.get_tensor("b"), torch.arange(200.0).reshape(100, 2))
    w = StreamWriter(tmp_path / "y.safetensors", [("a", "F32", [2])], {})
    w.write("a", torch.ones(12345))
    with pytest.raises(AssertionError, match="planned"):
        w.close()


def test_open_peft_reads_modules_as_load_peft_does(tiny_llama_dir, tmp_path):
    dirs = [make_peft_adapter(tiny_llama_dir, tmp_path / "lora", seed=2,
                              target_modules=["q_proj", "down_proj", "embed_tokens"]),
            make_peft_adapter(tiny_llama_dir, tmp_path / "ada", seed=3, peft_type="ADALORA",
                              target_modules=["q_proj", "v_proj"])]
    for d in dirs:
        whole = load_peft(d)
        with open_peft(d) as f:
            assert set(f.adapter.modules) == set(whole.modules)
            for n, m in whole.modules.items():
                got = f.module(n)
                assert torch.equal(got.A, m.A) and torch.equal(got.B, m.B), n
                assert (got.scale, got.kind, got.rank) == (m.scale, m.kind, m.rank)
                assert f.adapter.modules[n].A.device.type == "meta"
        assert f._fd is None  # closed


def test_fuse_files_failure_leaves_nothing(trio, tmp_path):
    _, dirs = trio
    with pytest.raises(Exception, match="equal ranks"):
        fuse_files(dirs, tmp_path / "out", "lorahub", device="cpu")
    assert list(tmp_path.iterdir()) == []


def test_fuse_files_rank_budget_and_dtype(tmp_path):
    ads = [synthetic(s, 4, 1.0, dtype=torch.bfloat16) for s in (5, 6)]
    dirs = [save_peft(a, tmp_path / f"b{i}") for i, a in enumerate(ads)]
    res = fuse_files(dirs, tmp_path / "out", "tsv", rank_budget=12, device="cpu")
    got = load_peft(tmp_path / "out")
    assert sum(got.ranks.values()) == 12 and set(res.energy) == set(NAMES)
    assert all(m.A.dtype == torch.bfloat16 for m in got.modules.values())
    want = fuse(ads, "tsv", rank_budget=12, device="cpu")
    assert res.ranks == want.ranks


@pytest.mark.gpu  # `make test` deselects it; `make test-gpu` runs it where CUDA is
def test_cuda_matches_cpu(trio):
    ads, _ = trio
    for method in ("tsv", "iso_c", "core_space"):
        cpu = deltas(fuse(ads, method, W, device="cpu").adapter)
        gpu = deltas(fuse(ads, method, W, device="cuda").adapter)
        assert all(rel(gpu[n], cpu[n]) < 1e-4 for n in NAMES)


def test_no_dense_work_for_core_space_methods(trio, monkeypatch):
    """Core-space and spectral methods never form an out x in matrix."""
    ads, _ = trio
    calls = []
    orig = LoraModule.delta_matrix
    monkeypatch.setattr(LoraModule, "delta_matrix",
                        lambda self, *a, **k: calls.append(1) or orig(self, *a, **k))
    for method in ("tsv", "iso_c", "iso_cts", "star", "cart", "knots", "core_space"):
        fuse(ads, method, W, device="cpu")
    assert calls == []
