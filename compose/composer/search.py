"""Gradient-free search over mixing weights with nevergrad, K candidates per step via ask/tell.

Seeding follows LoRAHub: its loop seeds numpy's global generator and nevergrad draws the
parametrization's random state from it; we derive the same state without touching the global
generator, so the same seed asks the same first points.

Two guards keep nevergrad's own behaviour usable:

- NGOpt with more than one worker chooses a meta-model optimizer (a quadratic surrogate over
  CMA). nevergrad 1.0.12 converts the surrogate's one-element prediction with ``float()``,
  which numpy deprecated in 1.25 and refuses from 2.4 on (``TypeError: only 0-dimensional
  arrays can be converted to Python scalars``). That one module is given the conversion numpy
  performed before 2.4, so the optimizer asks the same points as it does under numpy 2.3.
- Some optimizers (Cobyla, Powell, the surrogate's inner search) run scipy in a non-daemon
  thread that waits for the next ``tell``. A search that fails leaves such a thread waiting,
  and the interpreter then never exits; every thread a search started is stopped on the way out.
"""

from __future__ import annotations

import builtins
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from lorahive.hub.errors import InvalidRequestError

ScoreFn = Callable[[np.ndarray], np.ndarray]  # [K, n] -> [K]

KEPT_RECOMMENDATION = "recommendation"
KEPT_BEST = "best evaluated"
KEPT_ZERO = "zero-shot"  # the composer's own score of all weights 0 (the base model alone)


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
    weights: np.ndarray  # the kept point: the recommendation unless an evaluated point beat it
    objective: float  # of the kept point
    trace: list[float] = field(default_factory=list)  # objective of each evaluation, in order
    asked: list[list[float]] = field(default_factory=list)
    evaluations: int = 0
    seconds: float = 0.0  # scoring time of the budgeted evaluations
    kept: str = KEPT_RECOMMENDATION  # which point ``weights`` is
    recommendation: np.ndarray | None = None  # the optimizer's recommendation
    recommendation_objective: float = float("nan")  # scored once more if never asked

    @property
    def best_trace(self) -> list[float]:
        return list(np.minimum.accumulate(self.trace)) if self.trace else []

    @property
    def seconds_per_eval(self) -> float:
        return self.seconds / max(self.evaluations, 1)

    @property
    def kept_evaluation(self) -> int | None:
        """1-based number of the evaluation whose point was kept (``None``: not evaluated)."""
        target = [float(x) for x in self.weights]
        for i, w in enumerate(self.asked):
            if w == target:
                return i + 1
        return None


def optimizer_names() -> list[str]:
    import nevergrad as ng

    return sorted(ng.optimizers.registry)


def _scalar(x: object = 0.0) -> float:
    """``float()`` as numpy < 2.4 performed it: a one-element array converts to its element."""
    if isinstance(x, np.ndarray) and x.size == 1:
        return builtins.float(x.reshape(()))
    return builtins.float(x)  # type: ignore[arg-type]


def _restore_metamodel_conversion() -> None:
    from nevergrad.optimization import metamodel

    if tuple(int(p) for p in np.__version__.split(".")[:2]) >= (2, 4):
        metamodel.float = _scalar  # type: ignore[attr-defined]


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
            "TwoPointsDE, OnePlusOne, RandomSearch", params="optimizer") from None
    _restore_metamodel_conversion()
    param = ng.p.Array(init=[cfg.init] * n, upper=[cfg.upper] * n, lower=[cfg.lower] * n)
    seed = np.random.RandomState(cfg.seed).randint(2**32, dtype=np.uint32)
    param.random_state = np.random.RandomState(seed)
    return cls(parametrization=param, budget=cfg.budget, num_workers=cfg.workers)


def _optimizer_threads() -> set[threading.Thread]:
    from nevergrad.optimization.recaster import _MessagingThread

    return {t for t in threading.enumerate() if isinstance(t, _MessagingThread)}


def _stop_threads(threads: set[threading.Thread], timeout: float = 5.0) -> None:
    """Tell optimizer threads to finish (nevergrad's own stop message) and wait briefly."""
    for t in threads:
        t.stop()  # type: ignore[attr-defined]
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))


def search(score: ScoreFn, n: int, cfg: SearchConfig,
           on_eval: Callable[[int, float, float], None] | None = None) -> SearchResult:
    """Minimise ``score`` over ``n`` weights; ``on_eval(done, value, best)`` after each.

    The result keeps the optimizer's recommendation unless a point the search evaluated scored
    lower; then that point is kept (``kept`` says which), so the written mix is never worse
    than the best one seen.
    """
    before = _optimizer_threads()
    try:
        return _search(score, n, cfg, on_eval)
    finally:
        _stop_threads(_optimizer_threads() - before)


def _search(score: ScoreFn, n: int, cfg: SearchConfig,
            on_eval: Callable[[int, float, float], None] | None) -> SearchResult:
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
            seen.setdefault(tuple(w.tolist()), float(v))
            best = min(best, float(v))
            if on_eval is not None:
                on_eval(res.evaluations, float(v), best)
    rec = np.asarray(opt.provide_recommendation().value, dtype=np.float64)
    key = tuple(rec.tolist())
    res.recommendation = rec
    res.recommendation_objective = seen[key] if key in seen else float(score(rec[None])[0])
    i = int(np.argmin(res.trace))
    if res.trace[i] < res.recommendation_objective or np.isnan(res.recommendation_objective):
        res.weights, res.objective, res.kept = np.asarray(res.asked[i]), res.trace[i], KEPT_BEST
    else:
        res.weights, res.objective = rec, res.recommendation_objective
    return res
