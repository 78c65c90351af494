"""Out-of-fold checking: does a mix found on some shots help on the shots it did not see?

Five examples are easy to memorise: a search over a dozen weights can always lower the loss on
the examples it is scored on, and that says little about the task. Here the shots are split
into k folds (leave-one-out when k equals the number of shots); for each fold the weights are
searched on the other folds' shots (the same optimizer, budget and objective as the real
search, with the base model's all-zero point as a candidate) and then scored on the fold
itself. The base model is scored the same way. A mix is worth writing only when its
out-of-fold loss is lower than the base model's.

For a label task the folds are stratified by label, and a label's only shot is never held
out: a search that never saw a label would learn to avoid it, and the check would then refuse
every mix because of a label the shots cannot test (five shots with one "question" among
four "article"s). Such shots stay in every fold's search; when every label has one shot there
is no fold to hold out, which ``split_folds`` says.

A check whose held-out shots all have one label (four "yes" and one "no": the "no" is never
held out) cannot pass a mix: a mix that answers "yes" to everything lowers every held-out
shot's loss as much as one that learned the task, so its passing says nothing
(``blind_label``). ``CrossValidation.passes`` is false then, and the default policy does not
run such a check at all (``compose.composer.policy``).

Out of fold the weight penalty is left out (``l1 = 0``): it is a device of the search, and the
base model, whose weights are all zero, would never pay it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from lorahive.compose.composer.examples import Example
from lorahive.compose.composer.objective import Scorer
from lorahive.compose.composer.search import SearchConfig, search
from lorahive.hub.errors import InvalidRequestError


@dataclass
class CrossValidation:
    """Per fold: the held-out shots, the weights found without them, the kept point's
    objective on the shots it was searched on (in fold), and the held-out loss of that mix and
    of the base model (out of fold)."""

    folds: list[list[int]]
    always_searched: list[int] = field(default_factory=list)  # a label's only shot...
    lone_labels: list[str] = field(default_factory=list)  # ...and its label
    weights: list[list[float]] = field(default_factory=list)
    in_fold: list[float] = field(default_factory=list)
    out_of_fold: list[float] = field(default_factory=list)
    base_out_of_fold: list[float] = field(default_factory=list)
    evaluations: int = 0
    blind_to: str | None = None  # every held-out shot's one label (``blind_label``)

    @property
    def objective_in_fold(self) -> float:
        return float(np.mean(self.in_fold))

    @property
    def objective_out_of_fold(self) -> float:
        return float(np.mean(self.out_of_fold))

    @property
    def base_objective_out_of_fold(self) -> float:
        return float(np.mean(self.base_out_of_fold))

    @property
    def beats_base(self) -> bool:
        """Whether the mixes beat the base model on the shots they were not searched on."""
        return self.objective_out_of_fold < self.base_objective_out_of_fold

    @property
    def passes(self) -> bool:
        """Whether the check passes the mix: it beats the base model out of fold, and the
        held-out shots have more than one label (see ``blind_label``)."""
        return self.beats_base and self.blind_to is None

    def as_dict(self) -> dict[str, Any]:
        return {"folds": self.folds, "always_searched": self.always_searched,
                "lone_labels": self.lone_labels,
                "weights": self.weights, "in_fold": self.in_fold,
                "out_of_fold": self.out_of_fold, "base_out_of_fold": self.base_out_of_fold,
                "objective_in_fold": self.objective_in_fold,
                "objective_out_of_fold": self.objective_out_of_fold,
                "base_objective_out_of_fold": self.base_objective_out_of_fold,
                "beats_base": self.beats_base, "blind_to": self.blind_to,
                "passes": self.passes, "evaluations": self.evaluations}


def fold_labels(examples: Sequence[Example], labels: Sequence[str] | None
                ) -> list[str] | None:
    """What the folds are stratified by: each example's output under a label objective
    (``labels``: its label set), else nothing."""
    return None if labels is None else [e.output for e in examples]


def split_folds(n: int, folds: int, seed: int, labels: Sequence[str] | None = None
                ) -> list[list[int]]:
    """``folds`` disjoint groups of example indices (one per shot when ``folds`` is at least
    the number of shots), shuffled by ``seed`` so that examples listed by class are not held
    out together. With ``labels`` (each example's label) the folds are dealt label by label
    and a label's only shot is in no fold (see the module's docstring)."""
    if folds < 2:
        raise InvalidRequestError("folds must be at least 2 (0 turns the check off)",
                                  params="folds")
    if n < 2:
        raise InvalidRequestError("out-of-fold checking needs at least 2 examples",
                                  params="folds")
    order = [int(i) for i in np.random.RandomState(seed).permutation(n)]
    if labels is not None:
        if len(labels) != n:
            raise ValueError(f"{len(labels)} labels for {n} examples")
        seen = Counter(labels)
        order = [i for i in order if seen[labels[i]] > 1]
        if not order:
            raise InvalidRequestError("out-of-fold checking needs a label with at least 2 "
                                      "examples: a label's only example is never held out",
                                      params="folds")
        k = min(folds, len(order))
        if k < len(order):  # a fold holds several shots: spread each label over the folds
            first: dict[str, int] = {}
            for pos, i in enumerate(order):
                first.setdefault(labels[i], pos)
            order.sort(key=lambda i: first[labels[i]])
    else:
        k = min(folds, n)
    return [sorted(order[f::k]) for f in range(k)]


def never_held(n: int, split: Sequence[Sequence[int]]) -> list[int]:
    """The examples in no fold (a label's only shot): searched in every fold."""
    held = {i for f in split for i in f}
    return [i for i in range(n) if i not in held]


def blind_label(split: Sequence[Sequence[int]], labels: Sequence[str] | None) -> str | None:
    """The one label of every shot ``split`` holds out, when the shots have other labels too
    (only as lone shots, never held out): a check that can only see that label cannot tell
    a mix that learned the task from one that leans to the label. ``None``: no labels, or
    the held-out shots have two or more."""
    if labels is None:
        return None
    held = {labels[i] for f in split for i in f}
    return held.pop() if len(held) == 1 and len(set(labels)) > 1 else None


def blind_reason(label: str) -> str:
    """Why a check that holds out only ``label`` cannot pass a mix, in one clause."""
    return (f"every example it can hold out is {label!r} (another label's only example is "
            f"never held out), so a mix that answers {label!r} to everything would pass it")


def cross_validate(scorer: Scorer, n_weights: int, n_examples: int, cfg: SearchConfig,
                   folds: int, on_eval: Callable[[int, float, float], None] | None = None,
                   labels: Sequence[str] | None = None) -> CrossValidation:
    """Search on each fold's complement, score on the fold; ``on_eval(done, value, best)``
    counts evaluations across all folds. ``labels``: each example's label, for a label
    objective (stratified folds)."""
    split = split_folds(n_examples, folds, cfg.seed, labels)
    lone = never_held(n_examples, split)
    cv = CrossValidation(split, lone, [labels[i] for i in lone] if labels else [],
                         blind_to=blind_label(split, labels))
    zero = torch.zeros(1, n_weights)
    base = replace(scorer.inputs(zero), l1=0.0)
    zero_allowed = cfg.lower <= 0.0 <= cfg.upper
    for held in cv.folds:
        train = [i for i in range(n_examples) if i not in held]
        offset = cv.evaluations

        def score(W: np.ndarray, train: list[int] = train) -> np.ndarray:
            x = scorer.inputs(torch.as_tensor(np.asarray(W), dtype=torch.float32))
            return scorer.value(x.select(train)).numpy()

        step = None if on_eval is None else (
            lambda done, v, best, offset=offset: on_eval(offset + done, v, best))
        res = search(score, n_weights, cfg, step)
        cv.evaluations += res.evaluations
        weights, objective = res.weights, res.objective
        zero_in = float(scorer.value(base.select(train))[0])  # w = 0: no penalty
        if zero_allowed and zero_in < objective:
            weights, objective = np.zeros(n_weights), zero_in
        mixed = replace(scorer.inputs(torch.as_tensor(weights[None], dtype=torch.float32)),
                        l1=0.0)
        cv.weights.append([float(w) for w in weights])
        cv.in_fold.append(float(objective))
        cv.out_of_fold.append(float(scorer.value(mixed.select(held))[0]))
        cv.base_out_of_fold.append(float(scorer.value(base.select(held))[0]))
    return cv
