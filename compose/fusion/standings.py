"""Measured standings of the fusion methods, and the default method they support.

``standings.json`` (shipped beside this module) holds, per number of fused inputs, each method's
mean accuracy normalised by every task's own adapter, with its 95% interval, the number of
scores behind it and the evidence it came from. ``benchmarks/fusion_curve.py`` writes it; until
that curve has run, it holds the one table measured before (see its ``evidence``). ``lorahive
fuse`` without a method takes the best-standing method at the measured input count nearest to
the number of inputs, and says so; ``lorahive methods`` shows every method's standing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from lorahive.hub.errors import InvalidRequestError

FILE = "standings.json"
FALLBACK = "task_arithmetic"  # the exact sum: what fusing one adapter, or no evidence, keeps
FIXED = "fixed"  # a setting scored on every task subset as the default is
COMPETING = ("default", FIXED)  # the settings ``choose`` picks among
SETTINGS = (*COMPETING, "tuned")  # every setting, in the order they are shown


@dataclass(frozen=True)
class Standing:
    """One method (with one parameter setting) at one number of fused inputs."""

    method: str
    inputs: int
    mean: float
    params: dict[str, Any] = field(default_factory=dict)
    label: str = ""
    ci95: tuple[float, float] | None = None
    n: int = 0  # normalised task scores behind the mean
    # "default" parameters; "fixed": one setting scored on every task subset as the default
    # is (it competes with the defaults); "tuned" on each subset's validation split
    setting: str = "default"
    fuse_seconds: float | None = None
    # its difference from the leader at this count on the same task scores (paired), with
    # the 95% interval: whether the leader is ahead of it, which two own intervals cannot say
    vs: str | None = None
    diff: float | None = None
    diff_ci95: tuple[float, float] | None = None

    @property
    def name(self) -> str:
        """How the row is named to users: its label, else its method."""
        return self.label or self.method

    def describe(self, count: bool = True) -> str:
        """Mean [interval] at the count (n); ``count=False`` for a line about one count."""
        ci = f" [{self.ci95[0]:.2f}, {self.ci95[1]:.2f}]" if self.ci95 else ""
        at = f" at {self.inputs} inputs" if count else ""
        return f"{self.mean:.2f}{ci}{at} (n={self.n})"

    def setting_text(self) -> str:
        """``default``, or ``tuned`` with the values it was tuned to: a tuned mean is only
        worth reading beside the setting that reaches it."""
        if self.setting == "default" or not self.params:
            return self.setting
        return f"{self.setting} ({params_text(self.params)})"


def params_text(params: dict[str, Any]) -> str:
    """Parameters as a user sets them; ``weight`` is the curve's uniform weight (``--weights``
    with that value for every input)."""
    return ", ".join(f"weights {v} each" if k == "weight" else f"{k}={v}"
                     for k, v in sorted(params.items()))


@dataclass(frozen=True)
class Standings:
    rows: tuple[Standing, ...]
    evidence: str  # what was measured, on what, how often: shown with every choice
    metric: str = "mean accuracy normalised by each task's own adapter"
    seed_table: bool = False  # True until the curve benchmark has replaced the seed

    @property
    def input_counts(self) -> list[int]:
        return sorted({r.inputs for r in self.rows})

    def of(self, method: str) -> list[Standing]:
        """A method's rows, by input count; within a count the default setting, then a fixed
        one (both can be ``fuse``'s choice), then the tuned one."""
        order = {s: i for i, s in enumerate(SETTINGS)}
        return sorted((r for r in self.rows if r.method == method),
                      key=lambda r: (r.inputs, order.get(r.setting, len(order)), -r.mean))

    def nearest_count(self, n_inputs: int) -> int:
        """The measured input count nearest to ``n_inputs`` (the larger one on a tie)."""
        counts = self.input_counts
        if not counts:
            raise InvalidRequestError("the standings table is empty")
        return min(counts, key=lambda c: (abs(c - n_inputs), -c))

    def as_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "evidence": self.evidence, "seed_table": self.seed_table,
                "rows": [{**r.__dict__, "ci95": list(r.ci95) if r.ci95 else None,
                          "diff_ci95": list(r.diff_ci95) if r.diff_ci95 else None}
                         for r in self.rows]}


@dataclass(frozen=True)
class Choice:
    method: str
    params: dict[str, Any]
    reason: str

    def picks(self, row: Standing) -> bool:
        """Whether ``row`` is the measured row this choice was made from."""
        return (row.setting in COMPETING and row.method == self.method
                and row.params == self.params)


def parse(data: dict[str, Any]) -> Standings:
    try:
        rows = tuple(
            Standing(method=r["method"], inputs=int(r["inputs"]), mean=float(r["mean"]),
                     params=dict(r.get("params") or {}), label=r.get("label") or r["method"],
                     ci95=tuple(r["ci95"]) if r.get("ci95") else None, n=int(r.get("n", 0)),
                     setting=r.get("setting", "default"), fuse_seconds=r.get("fuse_seconds"),
                     vs=r.get("vs"), diff=None if r.get("diff") is None else float(r["diff"]),
                     diff_ci95=tuple(r["diff_ci95"]) if r.get("diff_ci95") else None)
            for r in data["rows"])
        return Standings(rows, str(data["evidence"]),
                         data.get("metric", Standings.metric), bool(data.get("seed_table")))
    except (KeyError, TypeError, ValueError) as e:
        raise InvalidRequestError(f"the standings table is malformed ({e!r})") from None


@cache
def load(path: str | None = None) -> Standings:
    """The shipped table (or one at ``path``)."""
    if path is not None:
        text = Path(path).read_text()
    else:
        text = resources.files("lorahive.compose.fusion").joinpath(FILE).read_text()
    return parse(json.loads(text))


def write(standings: Standings, path: str | Path) -> None:
    """Write a table in the shipped format (atomically)."""
    from lorahive.hub.atomic import atomic_file

    with atomic_file(path, "w") as fh:
        fh.write(json.dumps(standings.as_dict(), indent=2) + "\n")


def choose(n_inputs: int, standings: Standings | None = None,
           known: set[str] | None = None) -> Choice:
    """The method the standings support for ``n_inputs`` adapters, with a one-line reason.

    The best mean with default parameters, or with a fixed setting (scored on every subset
    as the defaults are), at the measured input count nearest to ``n_inputs`` wins (a faster
    fuse breaks a tie; tuned settings are shown, not chosen: they were tuned per task subset,
    so a user cannot take one as it is); methods not in ``known`` (when given) are skipped.
    One input is kept exactly by the exact sum, whatever the table says.
    """
    if n_inputs < 1:
        raise InvalidRequestError("give at least one adapter to fuse")
    if n_inputs == 1:
        return Choice(FALLBACK, {}, f"{FALLBACK} (one input: the exact sum keeps it as it is)")
    st = standings or load()
    count = st.nearest_count(n_inputs)
    rows = [r for r in st.rows if r.inputs == count and r.setting in COMPETING
            and (known is None or r.method in known)]
    if not rows:
        return Choice(FALLBACK, {}, f"{FALLBACK} (no measured method applies; exact sum)")
    rows.sort(key=lambda r: (-r.mean, r.fuse_seconds if r.fuse_seconds is not None else 1e9))
    best = rows[0]
    where = "" if count == n_inputs else f", the measured count nearest to {n_inputs}"
    if n_inputs < st.input_counts[0] or n_inputs > st.input_counts[-1]:
        where += " (outside the measured range)"
    runner = next((r for r in rows[1:] if r.method != best.method), None)
    vs = ""
    if runner is not None:
        vs = f"; next {runner.name} {runner.mean:.2f}"
        if runner.vs == best.name and runner.diff is not None and runner.diff_ci95:
            lo, hi = runner.diff_ci95
            vs += (f", {-runner.diff:.2f} behind on the same tasks "
                   f"[{-hi:.2f}, {-lo:.2f}]: " + ("a real lead" if hi < 0 else "not resolved"))
        elif best.ci95 and runner.ci95 and best.ci95[0] <= runner.ci95[1]:
            vs += ", intervals overlap"
    setting = "" if not best.params else " with " + params_text(best.params)
    reason = (f"{best.method}{setting}, best mean normalised accuracy: {best.describe()}"
              f"{where}{vs}; evidence: {st.evidence}")
    return Choice(best.method, dict(best.params), reason)


def setting_note(method: str, given: dict[str, Any], n_inputs: int,
                 standings: Standings | None = None) -> str | None:
    """For a method named by the user: when its fixed setting measured above its defaults at
    the nearest count and the user set none of that setting's parameters, one line saying so
    and how to use it (``--method iso_cts`` alone runs alpha 1, which scored about half)."""
    if n_inputs < 2:
        return None
    st = standings or load()
    if not st.rows:
        return None
    count = st.nearest_count(n_inputs)
    here = [r for r in st.rows if r.inputs == count and r.method == method]
    default = next((r for r in here if r.setting == "default"), None)
    fixed = next((r for r in here if r.setting == FIXED), None)
    if default is None or fixed is None or fixed.mean <= default.mean:
        return None
    if any(given.get(k) is not None for k in fixed.params):
        return None
    flags = " ".join(f"--param {k}={v}" for k, v in sorted(fixed.params.items()))
    return (f"{method} with {params_text(fixed.params)} measured {fixed.mean:.2f} against "
            f"{default.mean:.2f} at its defaults ({count} inputs); {flags} uses it")

