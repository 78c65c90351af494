"""Statistics from factors equal the dense computation; the factored SVD is exact."""

from __future__ import annotations

import pytest
import torch

from lorahive.hub import load_peft
from lorahive.hub.lowrank import (
    energy_kept,
    energy_rank,
    factored_svd,
    singular_values,
    truncated_factors,
)


@pytest.mark.parametrize("out_f,in_f,r", [(64, 48, 4), (32, 96, 12), (16, 16, 20)])
def test_factored_svd_matches_dense(out_f, in_f, r):
    g = torch.Generator().manual_seed(0)
    B, A = torch.randn(out_f, r, generator=g, dtype=torch.float64), torch.randn(r, in_f, generator=g, dtype=torch.float64)
    U, S, Vh = factored_svd(B, A, torch.float64)
    dense = B @ A
    torch.testing.assert_close(U @ torch.diag(S) @ Vh, dense)
    k = min(r, out_f, in_f)
    torch.testing.assert_close(S[:k], torch.linalg.svdvals(dense)[:k])
    torch.testing.assert_close(U.T @ U, torch.eye(U.shape[1], dtype=torch.float64), atol=1e-10, rtol=0)


def test_truncation_is_the_best_low_rank_approximation():
    g = torch.Generator().manual_seed(1)
    B, A = torch.randn(40, 12, generator=g, dtype=torch.float64), torch.randn(12, 30, generator=g, dtype=torch.float64)
    b, a, kept = truncated_factors(B, A, 5, torch.float64)
    U, S, Vh = torch.linalg.svd(B @ A, full_matrices=False)
    torch.testing.assert_close(b @ a, U[:, :5] @ torch.diag(S[:5]) @ Vh[:5])
    assert kept == pytest.approx(float((S[:5] ** 2).sum() / (S**2).sum()))


def test_energy_rank():
    s = torch.tensor([3.0, 2.0, 1.0, 0.0])
    assert energy_rank(s, 0.99) == 3
    assert energy_rank(s, 9 / 14) == 1
    assert energy_rank(s, 0.90) == 2
    assert energy_rank(torch.zeros(3), 0.9) == 0
    assert energy_kept(s, 2) == pytest.approx(13 / 14)


def test_module_stats_match_dense(lora_dir):
    a = load_peft(lora_dir)
    for st in a.stats():
        dense = a.delta(st.name)
        sv = torch.linalg.svdvals(dense)[: st.rank]
        torch.testing.assert_close(torch.tensor(st.singular_values), sv, atol=1e-5, rtol=1e-4)
        assert st.norm == pytest.approx(float(torch.linalg.norm(dense)), rel=1e-5)
        assert 1 <= st.effective_rank_90 <= st.effective_rank_99 <= st.rank
        assert tuple(st.shape) == tuple(dense.shape)


def test_singular_values_wide_and_tall():
    B, A = torch.randn(8, 3), torch.randn(3, 100)
    torch.testing.assert_close(singular_values(B, A), torch.linalg.svdvals(B @ A)[:3], atol=1e-4, rtol=1e-4)
