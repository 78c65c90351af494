"""One composition session: a base model loaded once, candidates wrapped, examples tokenised.

Everything that does not depend on the weights (model, tokens, stacked factors) is built here
once; ``search`` then only re-mixes factors and runs forward passes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lorahive.compose.composer.build import compose_ab, compose_delta
from lorahive.compose.composer.candidates import Candidate, ab_scales_differ, check_candidates
from lorahive.compose.composer.evaluate import Accuracy, accuracy, label_set
from lorahive.compose.composer.examples import Example, encode, examples_sha256
from lorahive.compose.composer.mixing import Mixer, install
from lorahive.compose.composer.model import BaseModel
from lorahive.compose.composer.objective import ObjectiveFn, Scorer
from lorahive.compose.composer.search import SearchConfig, SearchResult, search
from lorahive.hub.adapter import Adapter
from lorahive.hub.errors import InvalidRequestError
from lorahive.hub.lineage import SIDECAR, Lineage, Parent
from lorahive.hub.peft_format import save_peft

MAX_CANDIDATES = 20  # LoRAHub's advice: beyond ~20 modules the search budget is spread thin


@dataclass
class Composer:
    base: BaseModel
    candidates: list[Candidate]
    examples: list[Example]
    mode: str = "ab"
    l1: float = 0.05
    batch_size: int | None = None
    objective: ObjectiveFn | None = None
    max_rows: int = 64
    pack_examples: bool = True
    names: list[str] = field(default_factory=list)
    mixer: Mixer | None = None
    scorer: Scorer | None = None
    warnings: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.examples:
            raise InvalidRequestError("give at least one few-shot example")
        self.encoded = encode(self.base.tokenizer, self.examples,
                              self.base.is_encoder_decoder).to(self.base.device)
        self._install(self.candidates)

    def _install(self, cands: list[Candidate]) -> None:
        if self.mixer is not None:
            self.mixer.remove()
        self.names = check_candidates(cands, self.mode)
        if self.mode == "ab" and ab_scales_differ(cands):
            self.warnings.append(
                "candidates' scales differ; mode ab uses the first candidate's scale, as LoRAHub")
        self.candidates = cands
        self.mixer = install(self.base.model, cands, self.names, self.mode, self.base.device,
                             self.base.dtype)
        self.scorer = Scorer(self.base.model, self.mixer, self.encoded, self.l1,
                             self.batch_size, self.objective, self.max_rows, self.pack_examples)

    def score(self, W: np.ndarray | torch.Tensor) -> np.ndarray:
        """Objective of each row of ``W`` (``[K, n]``), in batched passes."""
        return self.scorer(torch.as_tensor(np.asarray(W), dtype=torch.float32)).numpy()

    def prescreen(self, keep: int) -> list[tuple[str, float]]:
        """Score each candidate alone (weight 1) and keep the ``keep`` lowest; returns all
        candidates' scores, best first."""
        n = len(self.candidates)
        vals = self.score(np.eye(n))
        order = np.argsort(vals, kind="stable")
        ranked = [(self.candidates[i].ref, float(vals[i])) for i in order]
        if keep < n:
            self._install([self.candidates[i] for i in sorted(order[:keep])])
        return ranked

    def search(self, cfg: SearchConfig,
               on_eval: Callable[[int, float, float], None] | None = None) -> SearchResult:
        return search(self.score, len(self.candidates), cfg, on_eval)

    def adapter(self, weights: Sequence[float], rank: int | None = None
                ) -> tuple[Adapter, dict[str, float]]:
        if self.mode == "ab":
            return compose_ab(self.candidates, weights, self.names), {}
        if rank is None:
            rank = max(c.adapter.max_rank for c in self.candidates)
        return compose_delta(self.candidates, weights, self.names, rank)

    def accuracy(self, weights: Sequence[float], eval_examples: Sequence[Example],
                 labels: Sequence[str] | bool | None = True) -> Accuracy:
        """Held-out accuracy; ``labels=True`` detects a small label set from the outputs."""
        if labels is True:
            labels = label_set(list(eval_examples) + list(self.examples))
        tok = self.base.tokenizer
        # answers longer than the longest reference cannot match: stop decoding there
        longest = max(len(tok(e.output, add_special_tokens=False)["input_ids"])
                      for e in eval_examples)
        return accuracy(self.base.model, tok, self.base.is_encoder_decoder, self.mixer,
                        weights, eval_examples, labels or None, max_new_tokens=longest + 2)

    def __enter__(self) -> Composer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Put the base model's own layers back."""
        if self.mixer is not None:
            self.mixer.remove()
            self.mixer = None


def write_composed(adapter: Adapter, out: str | os.PathLike[str], composer: Composer,
                   cfg: SearchConfig, result: SearchResult, extra_params: dict[str, Any],
                   metrics: dict[str, Any]) -> Path:
    """Save the composed adapter (PEFT format) with its lineage sidecar, in one atomic write."""
    lineage = Lineage(
        method=f"compose:{composer.mode}",
        parents=[Parent(ref=c.ref, version=c.version, sha256=c.sha256, weight=float(w))
                 for c, w in zip(composer.candidates, result.weights, strict=True)],
        params={"mode": composer.mode, "optimizer": cfg.optimizer, "budget": cfg.budget,
                "workers": cfg.workers, "seed": cfg.seed, "bounds": [cfg.lower, cfg.upper],
                "init": cfg.init, "l1": composer.l1, "batch_size": composer.batch_size,
                "objective": result.objective, "objective_trace": result.trace,
                "examples_sha256": examples_sha256(composer.examples),
                "num_examples": len(composer.examples), **extra_params},
    )
    sidecar = {"lineage": lineage.as_dict(), "metrics": metrics}
    body = json.dumps(sidecar, indent=2, sort_keys=True, default=str).encode()
    return save_peft(adapter, out, extra_files={SIDECAR: body})
