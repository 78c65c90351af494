"""The search loop on its own: NGOpt with several workers (its meta-model step), the point that
is kept, and no optimizer thread left behind when a search fails."""

from __future__ import annotations

import hashlib
import threading

import numpy as np
import pytest

from lorahive.compose.composer.search import (
    KEPT_BEST,
    KEPT_RECOMMENDATION,
    SearchConfig,
    search,
)


def rugged(W: np.ndarray) -> np.ndarray:
    """A bowl at 0.4 with deterministic per-point noise: many local minima, reproducible."""
    out = []
    for w in np.asarray(W):
        digest = hashlib.sha256(np.round(w, 6).tobytes()).digest()
        out.append(float(((w - 0.4) ** 2).sum()
                         + 0.05 * int.from_bytes(digest[:4], "little") / 2**32))
    return np.array(out)


@pytest.fixture()
def metamodel_steps(monkeypatch):
    """Counts NGOpt's surrogate (meta-model) steps; they still run nevergrad's own code."""
    from nevergrad.optimization import optimizerlib

    calls = []
    real = optimizerlib.learn_on_k_best

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(optimizerlib, "learn_on_k_best", counted)
    return calls


@pytest.mark.parametrize(("n", "workers", "budget"),
                         [(2, 2, 24), (3, 4, 24), (4, 3, 40), (5, 4, 40)])
def test_ngopt_with_several_workers_runs_its_metamodel(n, workers, budget, metamodel_steps):
    """NGOpt picks a meta-model optimizer for workers > 1; its surrogate step used to raise
    TypeError under numpy >= 2.4."""
    res = search(rugged, n, SearchConfig(budget=budget, workers=workers, seed=0))
    assert metamodel_steps, "the surrogate step never ran: the test would not cover it"
    assert res.evaluations == budget == len(res.trace) == len(res.asked)
    assert res.objective <= min(res.trace)
    assert np.all(np.abs(res.weights) <= 1.5)


def test_kept_point_is_the_best_evaluated_when_the_recommendation_is_worse():
    """TBPSA recommends the centre of its distribution, a point it never asked; it is scored
    once more after the budget, and here scores worse than the best evaluated point. The kept
    point is never worse than the best point the search evaluated, and says which it is."""
    calls = {"n": 0}

    def worse_after_the_budget(W):
        calls["n"] += len(W)
        return rugged(W) + (10.0 if calls["n"] > 12 else 0.0)

    res = search(worse_after_the_budget, 3, SearchConfig(optimizer="TBPSA", budget=12,
                                                         workers=4, seed=0))
    assert [float(x) for x in res.recommendation] not in res.asked
    assert res.recommendation_objective > 10
    assert res.kept == KEPT_BEST
    assert res.objective == min(res.trace)
    assert res.asked[res.kept_evaluation - 1] == [float(x) for x in res.weights]


def test_recommendation_kept_when_it_is_the_best():
    res = search(rugged, 3, SearchConfig(budget=16, workers=1, seed=0))
    assert res.kept == KEPT_RECOMMENDATION
    assert res.objective == res.recommendation_objective == min(res.trace)
    np.testing.assert_array_equal(res.weights, res.recommendation)


def _live_optimizer_threads():
    from nevergrad.optimization.recaster import _MessagingThread

    return [t for t in threading.enumerate() if isinstance(t, _MessagingThread) and t.is_alive()]


@pytest.mark.parametrize(("optimizer", "workers"), [("NGOpt", 1), ("Cobyla", 1), ("NGOpt", 2)])
def test_failing_search_leaves_no_optimizer_thread(optimizer, workers):
    """Cobyla (NGOpt's choice for one worker) runs scipy in a non-daemon thread waiting for the
    next value; a search that fails must not leave it waiting, or the process never exits."""
    before = set(_live_optimizer_threads())
    calls = {"n": 0}

    def fails_on_the_third_batch(W):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("scorer failed")
        return rugged(W)

    with pytest.raises(RuntimeError, match="scorer failed") as caught:
        search(fails_on_the_third_batch, 3, SearchConfig(optimizer=optimizer, budget=20,
                                                         workers=workers))
    # the traceback (kept alive by `caught`) still references the optimizer
    assert caught.traceback
    left = [t for t in _live_optimizer_threads() if t not in before]
    assert not left, f"optimizer threads still waiting: {left}"
