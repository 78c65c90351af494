"""Mean accuracy over few-shot seeds with a 95% interval that counts both sources of noise.

A row's result on one task is a 0/1 matrix ``c[s, i]``: seed ``s`` (which five shots were
drawn) by evaluation example ``i`` (the same examples for every seed). The mean accuracy
``m`` varies because the shots were drawn (between-seed variance of the per-seed accuracies
``a_s``) and because the evaluation set is a sample (variance of the per-example accuracies
``e_i``, each averaged over seeds)::

    SE^2 = var(a_s) / S + var(e_i) / n          (sample variances, ddof 1)

Both terms also hold part of the seed-by-example interaction, so the sum errs on the wide
side. The interval is ``m +- t * SE`` with Student's t at the Welch-Satterthwaite degrees of
freedom of the two terms (S - 1 and n - 1): with three seeds and a large seed term that is
close to t with 2 degrees of freedom (4.30), with a seed-independent row (zero-shot, the
upper bound: S = 1 or identical seeds) it is the t-interval over examples. When every
prediction agrees (``SE = 0``: all right or all wrong) it falls back to the Wilson score
interval for ``m`` of ``n``, so 0 of 100 reads 0-3.7%, not 0-0%. The interval is clipped to
[0, 1].
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float
    seeds: int
    n: int

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def format(self, digits: int = 1) -> str:
        p = 100
        return (f"{self.mean * p:.{digits}f} "
                f"[{self.low * p:.{digits}f}, {self.high * p:.{digits}f}]")


def wilson(k: float, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    p = k / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, centre - half), min(1.0, centre + half)


def interval(correct: np.ndarray | list, level: float = 0.95) -> Interval:
    """Mean and interval of a ``[seeds, examples]`` 0/1 matrix (a 1-D array is one seed)."""
    c = np.asarray(correct, dtype=float)
    if c.ndim == 1:
        c = c[None]
    S, n = c.shape
    if n < 2:
        raise ValueError("need at least two evaluation examples")
    m = float(c.mean())
    u_seed = float(c.mean(1).var(ddof=1)) / S if S > 1 else 0.0
    u_ex = float(c.mean(0).var(ddof=1)) / n
    se2 = u_seed + u_ex
    if se2 <= 0:
        lo, hi = wilson(m * n, n, stats.norm.ppf(0.5 + level / 2))
        return Interval(m, min(lo, m), max(hi, m), S, n)
    parts = [(u_ex, n - 1)] + ([(u_seed, S - 1)] if u_seed > 0 else [])
    df = se2 ** 2 / sum(u * u / d for u, d in parts)
    half = float(stats.t.ppf(0.5 + level / 2, df)) * math.sqrt(se2)
    return Interval(m, max(0.0, m - half), min(1.0, m + half), S, n)
