"""Core space, the factored SVD and the spectral/orthogonal methods on synthetic adapters."""

from __future__ import annotations

import pytest
import torch

from lorahive.compose.fusion import fuse
from lorahive.compose.fusion.budget import allocate_ranks
from lorahive.compose.fusion.core_space import CoreSpace
from lorahive.compose.fusion.terms import Factors, Term
from lorahive.hub.adapter import Adapter, LoraModule
from lorahive.hub.lowrank import factored_svd

OUT, IN = 48, 40
NAMES = ["model.layers.0.self_attn.q_proj", "model.layers.0.mlp.down_proj"]


def synthetic(seed: int, rank: int, scale: float = 0.5, names=NAMES) -> Adapter:
    g = torch.Generator().manual_seed(seed)
    mods = {n: LoraModule(A=torch.randn(rank, IN, generator=g),
                          B=torch.randn(OUT, rank, generator=g) * (i + 1), scale=scale)
            for i, n in enumerate(names)}
    return Adapter.from_factors(mods, base_model="synthetic")


@pytest.fixture(scope="module")
def adapters():
    return [synthetic(1, 4), synthetic(2, 8, 0.25), synthetic(3, 6, 2.0)]


W = [0.8, -0.5, 1.2]


def deltas(ad: Adapter) -> dict[str, torch.Tensor]:
    return {n: m.delta_matrix() for n, m in ad.modules.items()}


def close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-4) -> bool:
    return (a - b).abs().max().item() <= tol * max(b.abs().max().item(), 1e-12)


def exact_sum(ads, w):
    return {n: sum(wi * a.modules[n].delta_matrix() for a, wi in zip(ads, w, strict=True))
            for n in NAMES}


def test_factored_svd_matches_dense():
    g = torch.Generator().manual_seed(0)
    B, A = torch.randn(300, 24, generator=g), torch.randn(24, 200, generator=g)
    U, S, Vh = factored_svd(B, A)
    S_dense = torch.linalg.svdvals(B @ A)
    assert torch.allclose(S, S_dense[:24], rtol=1e-4, atol=1e-4 * S_dense[0].item())
    assert close((U * S) @ Vh, B @ A, 1e-5)
    assert torch.allclose(U.T @ U, torch.eye(24), atol=1e-5)
    k = 5  # truncation equals the dense best rank-k approximation
    Ud, Sd, Vhd = torch.linalg.svd(B @ A, full_matrices=False)
    assert close(Factors(B, A).truncated(k).dense(), (Ud[:, :k] * Sd[:k]) @ Vhd[:k], 1e-4)


def test_core_space_is_lossless_for_linear_merges(adapters):
    terms = [Term(a.modules[NAMES[0]], w, torch.device("cpu")) for a, w in zip(adapters, W,
                                                                                strict=True)]
    cs = CoreSpace.from_terms(terms)
    assert cs.cores[0].shape == (18, 18)
    M = sum(w * c for w, c in zip(W, cs.cores, strict=True))
    assert close(cs.lift(M).dense(), exact_sum(adapters, W)[NAMES[0]], 1e-5)
    got = deltas(fuse(adapters, "core_space", W, {"merge": "task_arithmetic"},
                      device="cpu").adapter)
    want = deltas(fuse(adapters, "task_arithmetic", W, device="cpu").adapter)
    assert all(close(got[n], want[n], 1e-5) for n in NAMES)


@pytest.mark.parametrize("method,params", [
    ("tsv", {}), ("iso_c", {}), ("iso_cts", {}), ("iso_cts", {"common_fraction": 0.5}),
    ("star", {}), ("cart", {"rank_fraction": 0.3}), ("knots", {"merge": "task_arithmetic"}),
])
def test_core_space_equals_dense(adapters, method, params):
    """Same math in both spaces: equal to float64 precision (Iso-CTS's residual SVDs are
    ill-conditioned enough that float32 agrees only to ~1e-3)."""
    def run(space):
        return deltas(fuse(adapters, method, W, {**params, "space": space}, device="cpu",
                           compute_dtype=torch.float64).adapter)

    core, dense = run("core"), run("dense")
    ta = exact_sum(adapters, W)
    for n in NAMES:
        assert close(core[n], dense[n], 2e-6), n
        assert not close(core[n], ta[n], 1e-2) or method == "knots"  # they do change the sum


def test_method_identities(adapters):
    ta = exact_sum(adapters, W)
    n = NAMES[0]
    # KnOTS with a linear merge is task arithmetic; CART keeping every direction is the
    # average (the centred tasks sum to zero)
    kn = deltas(fuse(adapters, "knots", W, {"merge": "task_arithmetic"}, device="cpu").adapter)
    assert close(kn[n], ta[n], 1e-4)
    ct = deltas(fuse(adapters, "cart", W, {"rank_fraction": 1.0}, device="cpu").adapter)
    assert close(ct[n], ta[n] / 3, 1e-4)
    ct = deltas(fuse(adapters, "cart", W, {"rank_fraction": 0.1}, device="cpu").adapter)
    assert not close(ct[n], ta[n] / 3, 1e-2)
    # STAR keeping the whole spectrum is the average
    st = deltas(fuse(adapters, "star", W, {"eta": 1.0}, device="cpu").adapter)
    assert close(st[n], ta[n] / 3, 1e-4)
    # Iso-C: flat spectrum at the mean singular value of the sum, same subspace
    iso = deltas(fuse(adapters, "iso_c", W, device="cpu").adapter)
    s = torch.linalg.svdvals(iso[n])[:18]
    assert torch.allclose(s, s.mean().expand(18), rtol=1e-3)
    assert s.mean() == pytest.approx(torch.linalg.svdvals(ta[n])[:18].mean().item(), rel=1e-3)
    cts = deltas(fuse(adapters, "iso_cts", W, {"common_fraction": 1.0}, device="cpu").adapter)
    assert close(cts[n], iso[n], 1e-3)


def test_tsv_on_orthogonal_tasks_is_task_arithmetic():
    """TSV-M orthogonalises singular vectors; tasks already orthogonal are left as they are."""
    q = torch.linalg.qr(torch.randn(OUT, OUT, generator=torch.Generator().manual_seed(5)))[0]
    p = torch.linalg.qr(torch.randn(IN, IN, generator=torch.Generator().manual_seed(6)))[0]
    ads = []
    for t in range(3):
        B = q[:, 4 * t:4 * t + 4] * torch.tensor([4.0, 3.0, 2.0, 1.0])
        ads.append(Adapter.from_factors(
            {NAMES[0]: LoraModule(A=p[:, 4 * t:4 * t + 4].T.contiguous(), B=B, scale=1.0)},
            base_model="synthetic"))
    got = deltas(fuse(ads, "tsv", [1.0, 1.0, 1.0], device="cpu").adapter)[NAMES[0]]
    want = sum(a.modules[NAMES[0]].delta_matrix() for a in ads)
    assert close(got, want, 1e-4)


def test_rank_budget_allocates_by_energy(adapters):
    res = fuse(adapters, "task_arithmetic", W, rank_budget=16, device="cpu")
    ranks = res.adapter.ranks
    assert sum(ranks.values()) == 16
    assert ranks[NAMES[1]] > ranks[NAMES[0]]  # down_proj's B is scaled x2: more energy
    assert set(res.energy) == set(NAMES) and all(0 < e <= 1 for e in res.energy.values())
    # the budget keeps at least as much total energy as a uniform split of the same size
    ta = exact_sum(adapters, W)
    err_budget = sum(((res.adapter.modules[n].delta_matrix() - ta[n]) ** 2).sum() for n in NAMES)
    uni = fuse(adapters, "task_arithmetic", W, rank=8, device="cpu").adapter
    err_uniform = sum(((uni.modules[n].delta_matrix() - ta[n]) ** 2).sum() for n in NAMES)
    assert err_budget < err_uniform
    with pytest.raises(Exception, match="below the number of modules"):
        allocate_ranks({n: Factors(torch.ones(3, 1), torch.ones(1, 3)) for n in "abc"}, 2)


def test_core_space_element_wise_is_seeded(adapters):
    a = fuse(adapters, "core_space", W, {"merge": "dare_ties", "density": 0.5}, seed=1,
             device="cpu").adapter
    b = fuse(adapters, "core_space", W, {"merge": "dare_ties", "density": 0.5}, seed=1,
             device="cpu").adapter
    c = fuse(adapters, "core_space", W, {"merge": "dare_ties", "density": 0.5}, seed=2,
             device="cpu").adapter
    n = NAMES[0]
    assert torch.equal(a.modules[n].delta_matrix(), b.modules[n].delta_matrix())
    assert not torch.equal(a.modules[n].delta_matrix(), c.modules[n].delta_matrix())
    assert a.modules[n].rank <= 18


def test_module_in_some_adapters_and_unknown_param(adapters):
    extra = synthetic(9, 4, names=[NAMES[0], "model.layers.1.self_attn.v_proj"])
    res = fuse([*adapters, extra], "iso_c", [*W, 1.0], device="cpu")
    assert "model.layers.1.self_attn.v_proj" in res.adapter.modules
    with pytest.raises(Exception, match="takes no parameter"):
        fuse(adapters, "iso_c", W, {"density": 0.3}, device="cpu")


def _authors_split(size: int, tasks: int, fraction: float) -> tuple[int, int]:
    """The split as written in danielm1405/iso-merging src/utils/iso.py (iso_cts)."""
    common_space_index_s = int(size * fraction)
    _task_specific_total_space_index_s = round((size - common_space_index_s) / tasks) * tasks
    common_space_index_s = size - _task_specific_total_space_index_s
    n_dims_per_task = int((size - common_space_index_s) / tasks)
    return common_space_index_s, n_dims_per_task


@pytest.mark.parametrize("cap,tasks,fraction", [
    (6, 3, 0.8), (18, 3, 0.8), (32, 4, 0.8), (24, 3, 0.8), (16, 3, 0.8), (10, 4, 0.8),
    (64, 5, 0.8), (12, 5, 0.5), (7, 2, 0.8), (9, 4, 0.6),
])
def test_iso_cts_split_follows_the_authors_code(cap, tasks, fraction):
    """The task-specific share is rounded to a multiple of the task count, not floored:
    with 3 rank-2 tasks (6 directions) the default keeps 3 common + 1 per task (a floor kept
    all 6 in the common space and no task-specific direction)."""
    from lorahive.compose.fusion.spectral import cts_split

    assert cts_split(cap, tasks, fraction) == _authors_split(cap, tasks, fraction)


def test_iso_cts_default_keeps_task_specific_directions():
    """Three rank-2 tasks: the default split is 3 common + 1 per task, so the result is not
    Iso-C (which the floored split, all 6 directions common, reduced it to)."""
    from lorahive.compose.fusion.spectral import cts_split, iso_c, iso_cts

    g = torch.Generator().manual_seed(7)
    mats = [torch.randn(OUT, 2, generator=g, dtype=torch.float64)
            @ torch.randn(2, IN, generator=g, dtype=torch.float64) for _ in range(3)]
    w = [1.0, 0.7, -0.4]
    assert cts_split(6, 3, 0.8) == (3, 1)
    got = iso_cts(mats, w, [2, 2, 2], 6, 0.8, 1.0)
    # the same construction written out: top-3 of the sum, then each task's top direction
    # outside it, orthogonalised together, at the mean of the kept singular values
    U, S, Vh = torch.linalg.svd(sum(wi * m for wi, m in zip(w, mats, strict=True)),
                                full_matrices=False)
    us, ss, vs = [U[:, :3]], [S[:3]], [Vh[:3].T]
    for m, wi in zip(mats, w, strict=True):
        r = wi * m - U[:, :3] @ (U[:, :3].T @ (wi * m))
        u, s, vh = torch.linalg.svd(r, full_matrices=False)
        us.append(u[:, :1])
        ss.append(s[:1])
        vs.append(vh[:1].T)
    Uc, Vc = torch.cat(us, 1), torch.cat(vs, 1)
    pu, _, qu = torch.linalg.svd(Uc, full_matrices=False)
    pv, _, qv = torch.linalg.svd(Vc, full_matrices=False)
    want = torch.cat(ss).mean() * (pu @ qu) @ (pv @ qv).T
    assert close(got, want, 1e-9)
    assert not close(got, iso_c(mats, w, 6, 1.0), 1e-3)
