"""Gradient-free search over mixing weights with nevergrad, K candidates per step via ask/tell.

Seeding follows LoRAHub: its loop seeds numpy's global generator and nevergrad draws the
parametrization's random state from it; we derive the same state without touching the global
generator, so the same seed asks the same first points.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from lorahive.hub.errors import InvalidRequestError

ScoreFn = Callable[[np.ndarray], np.ndarray]  # [K, n] -> [K]


@dataclass
class SearchConfig:
    optimizer: str = "NGOpt"
    budget: int = 40
    workers: int = 1
    lower: float = -1.5
    upper: float = 1.5
    init: float = 0.0
    seed: int = 42


@dataclass
class SearchResult:
    weights: np.ndarray  # the optimizer's recommendation
    objective: float  # of the recommended weights (scored once more if never asked)
    trace: list[float] = field(default_factory=list)  # objective of each evaluation, in order
    asked: list[list[float]] = field(default_factory=list)
    evaluations: int = 0
    seconds: float = 0.0  # scoring time of the budgeted evaluations

    @property
    def best_trace(self) -> list[float]:
        return list(np.minimum.accumulate(self.trace)) if self.trace else []

    @property
    def seconds_per_eval(self) -> float:
        return self.seconds / max(self.evaluations, 1)


def optimizer_names() -> list[str]:
    import nevergrad as ng

    return sorted(ng.optimizers.registry)


def make_optimizer(n: int, cfg: SearchConfig):
    import nevergrad as ng

    if cfg.budget < 1:
        raise InvalidRequestError("budget must be at least 1", params="budget")
    if cfg.workers < 1:
        raise InvalidRequestError("workers must be at least 1", params="workers")
    if not cfg.lower < cfg.upper or not cfg.lower <= cfg.init <= cfg.upper:
        raise InvalidRequestError("bounds must satisfy lower <= init <= upper, lower < upper")
    try:
        cls = ng.optimizers.registry[cfg.optimizer]
    except KeyError:
        raise InvalidRequestError(
            f"unknown optimizer {cfg.optimizer!r}; nevergrad knows e.g. NGOpt, CMA, "
            "TwoPointsDE, OnePlusOne, RandomSearch") from None
    param = ng.p.Array(init=[cfg.init] * n, upper=[cfg.upper] * n, lower=[cfg.lower] * n)
    seed = np.random.RandomState(cfg.seed).randint(2**32, dtype=np.uint32)
    param.random_state = np.random.RandomState(seed)
    return cls(parametrization=param, budget=cfg.budget, num_workers=cfg.workers)


def search(score: ScoreFn, n: int, cfg: SearchConfig,
           on_eval: Callable[[int, float, float], None] | None = None) -> SearchResult:
    """Minimise ``score`` over ``n`` weights; ``on_eval(done, value, best)`` after each."""
    opt = make_optimizer(n, cfg)
    res = SearchResult(weights=np.zeros(n), objective=float("nan"))
    best = float("inf")
    seen: dict[tuple[float, ...], float] = {}
    while res.evaluations < cfg.budget:
        k = min(cfg.workers, cfg.budget - res.evaluations)
        cands = [opt.ask() for _ in range(k)]
        W = np.stack([np.asarray(c.value, dtype=np.float64) for c in cands])
        t0 = time.perf_counter()
        vals = np.asarray(score(W), dtype=np.float64).reshape(-1)
        res.seconds += time.perf_counter() - t0
        for c, w, v in zip(cands, W, vals, strict=True):
            opt.tell(c, float(v))
            res.evaluations += 1
            res.trace.append(float(v))
            res.asked.append([float(x) for x in w])
            seen[tuple(w.tolist())] = float(v)
            best = min(best, float(v))
            if on_eval is not None:
                on_eval(res.evaluations, float(v), best)
    rec = np.asarray(opt.provide_recommendation().value, dtype=np.float64)
    res.weights = rec
    key = tuple(rec.tolist())
    res.objective = seen[key] if key in seen else float(score(rec[None])[0])
    return res
