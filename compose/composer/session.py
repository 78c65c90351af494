"""One composition session: a base model loaded once, candidates wrapped, examples tokenised.

Everything that does not depend on the weights (model, tokens, stacked factors) is built here
once; ``search`` then only re-mixes factors and runs forward passes. ``Composer.run`` is the
whole pipeline — pre-screen policy, zero-shot score, the out-of-fold check when asked,
search, the composed adapter (written through ``compose.fusion``, so the scale rule is the
fusion engine's), held-out accuracy, metrics, lineage and model card — and returns a result
that a caller only prints or writes.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lorahive.compose.composer.arrow import TEMPERATURE, TOP_K, check_routing, route_weights
from lorahive.compose.composer.candidates import Candidate, ab_scales_differ, check_candidates
from lorahive.compose.composer.evaluate import Accuracy, accuracy, label_set
from lorahive.compose.composer.examples import Example, encode, examples_sha256
from lorahive.compose.composer.finetune import LR as FT_LR
from lorahive.compose.composer.finetune import SUFFIX as FT_SUFFIX
from lorahive.compose.composer.finetune import fine_tune, fine_tune_recipe
from lorahive.compose.composer.folds import (
    CrossValidation,
    blind_label,
    blind_reason,
    cross_validate,
    fold_labels,
)
from lorahive.compose.composer.memo import RememberedSearch, SearchMemo, files_fingerprint
from lorahive.compose.composer.mixing import Mixer, install
from lorahive.compose.composer.model import BaseModel
from lorahive.compose.composer.objective import ObjectiveFn, Scorer, label_objective
from lorahive.compose.composer.search import KEPT_ZERO, SearchConfig, SearchResult, search
from lorahive.compose.fusion import fuse
from lorahive.hub.adapter import Adapter
from lorahive.hub.errors import InvalidRequestError
from lorahive.hub.lineage import SIDECAR, Lineage, parents, recipe_digest, sidecar_bytes
from lorahive.hub.lowrank import singular_values
from lorahive.hub.manifest import CARD_NAME
from lorahive.hub.modelcard import render_card
from lorahive.hub.peft_format import save_peft

MAX_CANDIDATES = 20  # LoRAHub's advice: beyond ~20 modules the search budget is spread thin
FUSION_METHOD = {"ab": "lorahub", "delta": "task_arithmetic"}


def compose_params(mode: str, cfg: SearchConfig, *, l1: float = 0.05,
                   batch_size: int | None = None, rank: int | None = None,
                   prescreen: int | None = None, examples: Sequence[Example] = (),
                   held_out: Sequence[Example] | None = None,
                   record: dict[str, Any] | None = None, folds: int | None = None,
                   labels: Sequence[str] | None = None, blocks: int = 1) -> dict[str, Any]:
    """Every setting that determines a composition, as its lineage records them.

    ``record`` adds what the session cannot know itself (the base model's path, the compute
    dtype, a custom objective's name, the ``--select`` filter that chose the candidates).
    """
    if prescreen is not None and prescreen < 1:
        raise InvalidRequestError("prescreen must be at least 1", params="prescreen")
    params: dict[str, Any] = {
        "mode": mode, "optimizer": cfg.optimizer, "budget": cfg.budget, "workers": cfg.workers,
        "seed": cfg.seed, "bounds": [cfg.lower, cfg.upper], "init": cfg.init, "l1": l1,
        "batch_size": batch_size, "rank": rank, "prescreen": prescreen,
        "examples_sha256": examples_sha256(examples), "num_examples": len(examples),
    }
    if folds:
        params["folds"] = folds
    if blocks != 1:  # absent for one block, so earlier recipes stay what they were
        params["blocks"] = blocks
    if labels is not None:
        params["labels"] = list(labels)
    if held_out is not None:
        params["eval_sha256"] = examples_sha256(held_out)
    params.update(record or {})
    return params


def compose_recipe(mode: str, candidates: Sequence[Candidate], params: dict[str, Any]) -> str:
    """The recipe of a composition: its inputs (every candidate given, before pre-screening)
    and settings; computable before the base model loads."""
    return recipe_digest(f"compose:{mode}", candidates, params)


def search_key(mode: str, candidates: Sequence[Candidate], params: dict[str, Any]) -> str:
    """The recipe of the search alone (what ``SearchMemo`` files it under): the
    composition's, less ``--eval``'s examples, which only score the result, plus the base
    model's files (recorded by path in the recipe) by size and modification time."""
    key = {k: v for k, v in params.items() if k != "eval_sha256"}
    if key.get("base"):
        key["base_files"] = files_fingerprint(key["base"])
    return compose_recipe(mode, candidates, key)


ROUTE = "arrow"  # the lineage's method is ``compose:arrow``


def route_params(top_k: int, temperature: float, *, rank: int | None = None,
                 examples: Sequence[Example] = (), held_out: Sequence[Example] | None = None,
                 record: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every setting that determines an Arrow-routed composition, as its lineage records
    them (``compose_recipe(ROUTE, ...)`` digests them)."""
    check_routing(top_k, temperature)
    params: dict[str, Any] = {
        "mode": "delta", "route": ROUTE, "top_k": top_k, "temperature": temperature,
        "rank": rank, "examples_sha256": examples_sha256(examples),
        "num_examples": len(examples)}
    if held_out is not None:
        params["eval_sha256"] = examples_sha256(held_out)
    params.update(record or {})
    return params


@dataclass
class ComposeResult:
    """What ``Composer.run`` found; ``write`` saves it as a PEFT adapter with its lineage."""

    candidates: list[Candidate]  # those searched over (after pre-screening)
    search: SearchResult
    zero_shot: float
    adapter: Adapter
    energy: dict[str, float]  # delta: energy of the exact mix kept by the rank truncation
    prescreen: list[tuple[str, float]] | None
    accuracy: Accuracy | None
    metrics: dict[str, Any]
    lineage: Lineage
    cross_validation: CrossValidation | None = None

    @property
    def blocks(self) -> int:
        return len(self.search.weights) // max(len(self.candidates), 1)

    @property
    def block_weights(self) -> list[dict[str, float]]:
        """Each layer block's weight per candidate (one block: LoRAHub's weights)."""
        W = np.asarray(self.search.weights).reshape(self.blocks, len(self.candidates))
        return [{c.ref: float(w) for c, w in zip(self.candidates, row, strict=True)}
                for row in W]

    @property
    def weights(self) -> dict[str, float]:
        """One weight per candidate; with layer blocks, its mean over the blocks."""
        W = np.asarray(self.search.weights).reshape(self.blocks, len(self.candidates))
        return {c.ref: float(w) for c, w in zip(self.candidates, W.mean(0), strict=True)}

    @property
    def objective(self) -> float:
        return self.search.objective

    @property
    def helps(self) -> bool | None:
        """Whether the out-of-fold check passed the mix (``None``: not checked)."""
        return None if self.cross_validation is None else self.cross_validation.passes

    def write(self, out: str | os.PathLike[str]) -> Path:
        """Save the composed adapter (PEFT format) with its lineage sidecar and a model card
        that says how it was made, atomically."""
        card = self.card(Path(out).name or "composed")
        return save_peft(self.adapter, out, extra_files={
            SIDECAR: sidecar_bytes(self.lineage, self.metrics), CARD_NAME: card.encode()})

    def card(self, name: str) -> str:
        """The model card: method, candidates and weights, objective in and out of fold,
        held-out accuracy."""
        p, m = self.lineage.params, self.metrics
        mode = p["mode"]
        per_block = ("" if p.get("route") else
                     f" and layer block ({self.blocks} contiguous blocks of layers; the "
                     "parents' weights below are means over the blocks)"
                     if self.blocks > 1 else "")
        if p.get("route") == ROUTE:
            rows: list[tuple[str, Any]] = [
                ("method", f"{self.lineage.method}: training-free routing, no search and no "
                           f"gradient: each module's weights are the candidates' Arrow "
                           f"coefficients (top-k {p['top_k']}, temperature {p['temperature']}) "
                           "averaged over the shots' tokens, written by the fusion engine's "
                           f"`{FUSION_METHOD['delta']}` at rank {m['rank']}"),
                ("objective", "answer (LoRAHub's loss on the answer tokens), scored once "
                              "for the record"),
            ]
        else:
            rows = [
                ("method", f"{self.lineage.method}: gradient-free search of one weight per "
                           f"candidate{per_block} ({p['optimizer']}, {self.search.evaluations} "
                           f"evaluations, seed {p['seed']}), written by the fusion engine's "
                           f"`{FUSION_METHOD[mode]}`" + ("; then fine-tuned with gradients "
                                                         "(below)" if "fine_tune" in p
                                                         else "")),
                ("objective", _objective_name(p) + f", l1 {p['l1']}"),
            ]
        rows.append(("examples", f"{p['num_examples']} (sha256 {p['examples_sha256'][:12]})"))
        verb = "routed" if p.get("route") else "searched"
        if p.get("retrieve"):
            rows.append(("candidates", f"{len(self.candidates)} {verb}; retrieved "
                         f"{len(p['retrieval_scores'])} of {p['retrieval_pool']} by "
                         "example-prompt similarity (MiniLM)"))
        elif self.prescreen is not None:
            rows.append(("candidates", f"{len(self.candidates)} searched; pre-screened from "
                         f"{len(self.prescreen)}"))
        else:
            rows.append(("candidates", f"{len(self.candidates)} {verb}"))
        rows += [("zero-shot objective", m["zero_shot_objective"]),
                 ("objective (all shots)", m["objective"])]
        if "kept" in m:
            rows.append(("kept point", m["kept"]))
        ft = p.get("fine_tune")
        if ft:
            start = ("the base model, as the mix did not beat it out of fold (the "
                     "parents' weights are 0)" if ft.get("start") == "base" else
                     "the mix above" + (" (all zero: A drawn afresh)"
                                        if ft.get("redrawn_A") else ""))
            rows += [("fine-tune", f"not gradient-free: {ft['steps']} full-batch AdamW steps "
                                   f"(lr {ft['lr']}) on the examples' answer tokens, starting "
                                   f"from {start}; loss {ft['loss_first']:.4f} -> "
                                   f"{ft['loss_last']:.4f}"),
                     ("objective after the fine-tune", ft["objective"])]
        cv = self.cross_validation
        if cv is not None:
            rows.append(("folds", f"{len(cv.folds)}" + (
                "; never held out, as its label's only example: "
                + ", ".join(repr(x) for x in cv.lone_labels) if cv.lone_labels else "")))
            rows += [("objective in fold", cv.objective_in_fold),
                     ("loss out of fold", cv.objective_out_of_fold),
                     ("base model's loss out of fold", cv.base_objective_out_of_fold),
                     ("beats the base model out of fold", "yes" if cv.beats_base else "no")]
            if cv.blind_to is not None:
                rows.append(("check passes the mix", "no: " + blind_reason(cv.blind_to)))
        elif m.get("check_blind_to") is not None:
            rows.append(("out-of-fold check", "not run: " + blind_reason(m["check_blind_to"])))
        elif p.get("route") != ROUTE:
            rows.append(("out-of-fold check", "not run: the weights are fitted to every "
                                              "example above (--folds K checks them)"))
        if self.accuracy is not None:
            rows.append((f"held-out accuracy ({self.accuracy.metric})",
                         f"{self.accuracy.accuracy:.1%} of {self.accuracy.n}"))
        lineage = {"method": self.lineage.method,
                   "parents": [asdict(x) for x in self.lineage.parents]}
        return render_card(name, self.adapter.base_model, "LORA",
                           description="Composed from the adapters below for a task given by "
                           "a few examples.", details=rows, lineage=lineage)


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
    labels: list[str] | None = None  # the label objective's label set
    blocks: int = 1  # layer blocks with weights of their own
    per_module: bool = False  # every module a block of its own (Arrow routing sets them)

    def __post_init__(self) -> None:
        if not self.examples:
            raise InvalidRequestError("give at least one few-shot example")
        rows, self.targets = list(self.examples), None
        if self.labels is not None:
            rows, self.targets = label_rows(self.examples, self.labels)
            self.objective = self.objective or label_objective
        self.encoded = encode(self.base.tokenizer, rows,
                              self.base.is_encoder_decoder).to(self.base.device)
        self._install(self.candidates)

    def _install(self, cands: list[Candidate]) -> None:
        if self.mixer is not None:
            self.mixer.remove()
        self.names = check_candidates(cands, self.mode)
        if self.mode == "ab" and ab_scales_differ(cands) and not self.warnings:
            self.warnings.append(
                "candidates' scales (alpha/r) differ; mode ab folds each candidate's scale into "
                "its B, where LoRAHub would apply the first candidate's scale to all")
        self.candidates = cands
        self.mixer = install(self.base.model, cands, self.names, self.mode, self.base.device,
                             self.base.dtype, self.blocks, per_module=self.per_module)
        self.blocks = self.mixer.blocks
        self.scorer = Scorer(self.base.model, self.mixer, self.encoded, self.l1,
                             self.batch_size, self.objective, self.max_rows, self.pack_examples,
                             self.targets)

    @property
    def dim(self) -> int:
        """Weights in one point of the search: one per candidate and layer block."""
        return len(self.candidates) * self.blocks

    def score(self, W: np.ndarray | torch.Tensor) -> np.ndarray:
        """Objective of each row of ``W`` (``[K, n]``, or ``[K, blocks * n]`` block-major),
        in batched passes."""
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
        return search(self.score, self.dim, cfg, on_eval)

    def cross_validate(self, cfg: SearchConfig, folds: int,
                       on_eval: Callable[[int, float, float], None] | None = None
                       ) -> CrossValidation:
        """Search on all shots but one fold, score the mix and the base model on that fold
        (folds stratified by label under the label objective)."""
        return cross_validate(self.scorer, self.dim, len(self.examples), cfg, folds, on_eval,
                              self.fold_labels)

    @property
    def fold_labels(self) -> list[str] | None:
        """Each shot's label when the objective ranks a label set (the folds are stratified
        by it), else ``None``."""
        return fold_labels(self.examples, self.labels)

    def adapter(self, weights: Sequence[float], rank: int | None = None
                ) -> tuple[Adapter, dict[str, float]]:
        """The composed adapter, made by the fusion engine (``lorahub`` for mode ``ab``,
        ``task_arithmetic`` truncated to ``rank`` for ``delta``), and for ``delta`` the
        energy of the exact mix that the truncation kept, per module. With layer blocks,
        each block's modules are fused with that block's weights."""
        W = np.asarray(weights, dtype=np.float64).reshape(self.blocks, len(self.candidates))
        if self.blocks == 1:
            return self._fuse([c.adapter for c in self.candidates], W[0], rank)
        block_of = self.mixer.block_of if self.mixer is not None else {}
        modules: dict[str, Any] = {}
        energy: dict[str, float] = {}
        first: Adapter | None = None
        for b in range(self.blocks):
            names = {nm for nm, blk in block_of.items() if blk == b}
            ads = [replace(c.adapter, modules={k: v for k, v in c.adapter.modules.items()
                                               if k in names}) for c in self.candidates]
            if not any(a.modules for a in ads):
                continue
            part, e = self._fuse(ads, W[b], rank)
            first = first or part
            modules.update(part.modules)
            energy.update(e)
        assert first is not None
        return replace(first, modules=modules), energy

    def _fuse(self, ads: list[Adapter], w: Sequence[float], rank: int | None
              ) -> tuple[Adapter, dict[str, float]]:
        w = [float(x) for x in w]
        if self.mode == "ab":
            return fuse(ads, FUSION_METHOD["ab"], w, device="cpu").adapter, {}
        if rank is None:
            rank = max(c.adapter.max_rank for c in self.candidates)
        exact = fuse(ads, FUSION_METHOD["delta"], w, device="cpu").adapter
        out = fuse(ads, FUSION_METHOD["delta"], w, rank=rank, device="cpu").adapter
        return out, {n: _energy_kept(m, exact.modules[n]) for n, m in out.modules.items()}

    def accuracy(self, weights: Sequence[float], eval_examples: Sequence[Example],
                 labels: Sequence[str] | bool | None = True) -> Accuracy:
        """Held-out accuracy; ``labels=True`` detects a small label set from the outputs.

        Free-form answers are generated greedily and end where the examples' outputs end:
        at EOS, and at the first newline when no output spans lines."""
        if labels is True:
            labels = self.labels or label_set(list(eval_examples) + list(self.examples))
        tok = self.base.tokenizer
        # answers longer than the longest reference cannot match: stop decoding there
        longest = max(len(tok(e.output, add_special_tokens=False)["input_ids"])
                      for e in eval_examples)
        one_line = not any("\n" in e.output for e in (*eval_examples, *self.examples))
        return accuracy(self.base.model, tok, self.base.is_encoder_decoder, self.mixer,
                        weights, eval_examples, labels or None, max_new_tokens=longest + 2,
                        stop_at_newline=one_line)

    def run(self, cfg: SearchConfig, *, rank: int | None = None, prescreen: int | None = None,
            held_out: Sequence[Example] | None = None, record: dict[str, Any] | None = None,
            folds: int | None = None,
            on_eval: Callable[[int, float, float], None] | None = None,
            memo: SearchMemo | None = None, reuse: bool = True) -> ComposeResult:
        """Pre-screen (``prescreen`` candidates, or 20 when there are more), score the base
        model alone (zero-shot), check out of fold (``folds``: searches on all shots but one
        fold, ``folds`` times; ``on_eval`` counts them before the final search), search,
        build the adapter, score ``held_out`` and record everything in the lineage; the mixer
        stays installed (``close`` removes it). Whether to write a mix that does not beat the
        base model out of fold (``result.helps``) is the caller's choice.

        The kept point is the best of the optimizer's recommendation, every point the search
        evaluated and the zero-shot point (all weights 0, when the bounds hold it): a mix
        worse than one already scored is never written.

        ``memo``: the search (with pre-screening and the check) is looked up there first
        (unless ``reuse`` is false) and remembered there after; a remembered one is not
        repeated (``metrics["search_reused"]``)."""
        params = compose_params(self.mode, cfg, l1=self.l1, batch_size=self.batch_size,
                                rank=rank, prescreen=prescreen, examples=self.examples,
                                held_out=held_out, record=record, folds=folds,
                                labels=self.labels, blocks=self.blocks)
        recipe = compose_recipe(self.mode, self.candidates, params)
        key = search_key(self.mode, self.candidates, params)
        found = self._remembered(memo.load(key)) if memo is not None and reuse else None
        if found is None:
            found = self._search(cfg, prescreen, folds, on_eval)
            if memo is not None:
                memo.save(key, found)
            reused = False
        else:
            reused = True
        screened, zero, cv, res = (found.prescreen, found.zero_shot, found.cross_validation,
                                   found.search)
        adapter, energy = self.adapter(res.weights, rank)
        metrics: dict[str, Any] = {
            "objective": res.objective, "zero_shot_objective": zero, "kept": res.kept,
            "recommendation_objective": res.recommendation_objective,
            "seconds_per_eval": res.seconds_per_eval, "evaluations": res.evaluations,
        }
        if reused:
            metrics.update(search_reused=True, search_saved=found.saved)
        if cv is not None:
            metrics.update(objective_in_fold=cv.objective_in_fold,
                           objective_out_of_fold=cv.objective_out_of_fold,
                           zero_shot_out_of_fold=cv.base_objective_out_of_fold,
                           beats_base_out_of_fold=cv.beats_base, folds=len(cv.folds),
                           check_blind_to=cv.blind_to,
                           evaluations_out_of_fold=cv.evaluations)
        if self.mode == "delta":
            metrics["rank"] = adapter.max_rank
        acc = self._measure(metrics, energy, res.weights, held_out)
        results = {"objective": res.objective, "objective_trace": res.trace, "kept": res.kept,
                   "kept_evaluation": res.kept_evaluation, "prescreen_scores": screened}
        if cv is not None:
            results["cross_validation"] = cv.as_dict()
        out = ComposeResult(list(self.candidates), res, zero, adapter, energy, screened, acc,
                            metrics, Lineage(""), cv)
        if self.blocks > 1:
            results["block_weights"] = [list(b.values()) for b in out.block_weights]
        out.lineage = Lineage(f"compose:{self.mode}",
                              parents(self.candidates, list(out.weights.values())),
                              {**params, **results}, recipe)
        return out

    def _search(self, cfg: SearchConfig, prescreen: int | None, folds: int | None,
                on_eval: Callable[[int, float, float], None] | None) -> RememberedSearch:
        """Pre-screen, score the base model, check out of fold, search: everything of
        ``run`` that costs forward passes."""
        keep = prescreen or (MAX_CANDIDATES if len(self.candidates) > MAX_CANDIDATES else None)
        screened = self.prescreen(keep) if keep is not None else None
        zero = float(self.score(np.zeros((1, len(self.candidates))))[0])
        cv = self.cross_validate(cfg, folds, on_eval) if folds else None
        done = 0 if cv is None else cv.evaluations
        res = self.search(cfg, None if on_eval is None else
                          lambda i, v, best: on_eval(done + i, v, best))
        if zero < res.objective and cfg.lower <= 0.0 <= cfg.upper:
            # the base model alone beat every mix: keep all weights 0 rather than a worse mix
            res.weights, res.objective, res.kept = np.zeros(self.dim), zero, KEPT_ZERO
        return RememberedSearch([c.ref for c in self.candidates], screened, zero, cv, res)

    def _remembered(self, found: RememberedSearch | None) -> RememberedSearch | None:
        """``found`` with its candidates installed as the search left them (pre-screening's
        choice), or ``None`` when it does not fit these candidates."""
        if found is None:
            return None
        kept = [c for c in self.candidates if c.ref in set(found.kept)]
        if [c.ref for c in kept] != found.kept or \
                len(found.search.weights) != len(kept) * self.blocks:
            return None
        if len(kept) < len(self.candidates):
            self._install(kept)
        cv = found.cross_validation
        if cv is not None:  # derived, not stored: entries older than the rule have it too
            cv.blind_to = blind_label(cv.folds, self.fold_labels)
        return found

    def _measure(self, metrics: dict[str, Any], energy: dict[str, float],
                 weights: Sequence[float], held_out: Sequence[Example] | None
                 ) -> Accuracy | None:
        """Add what every result records of the written mix: the truncation's energy and,
        with ``held_out``, its accuracy (returned)."""
        if energy:
            metrics["energy_kept_min"] = min(energy.values())
            metrics["energy_kept_mean"] = sum(energy.values()) / len(energy)
        if held_out is None:
            return None
        acc = self.accuracy(weights, held_out)
        metrics.update(eval_accuracy=acc.accuracy, eval_metric=acc.metric, eval_n=acc.n)
        return acc

    def route(self, top_k: int = TOP_K, temperature: float = TEMPERATURE, *,
              rank: int | None = None, held_out: Sequence[Example] | None = None,
              record: dict[str, Any] | None = None) -> ComposeResult:
        """Arrow routing instead of a search: per module, the candidates' mean Arrow
        coefficients over the shots' tokens (``compose.composer.arrow``), written as their
        exact delta-space mix (rank: the sum of the routed candidates' ranks unless
        ``rank`` truncates it). The mix and the base model are each scored once on the
        shots, for the record; nothing is searched."""
        if not self.per_module or self.mode != "delta":
            raise InvalidRequestError("Arrow routing needs a per-module composer in mode delta")
        params = route_params(top_k, temperature, rank=rank, examples=self.examples,
                              held_out=held_out, record=record)
        recipe = compose_recipe(ROUTE, self.candidates, params)
        self.mixer.set_weights(torch.zeros(1, self.mixer.n))
        t0 = time.perf_counter()
        W = route_weights(self.base.model, self.names, self.candidates, self.encoded, top_k,
                          temperature, self.max_rows)
        seconds = time.perf_counter() - t0
        flat = W.reshape(-1)
        zero = float(self.score(np.zeros((1, len(self.candidates))))[0])
        obj = float(self.score(flat[None])[0])
        used = W.max(0) > 0
        exact = sum(c.adapter.max_rank for c, u in zip(self.candidates, used, strict=True) if u)
        adapter, energy = self.adapter(flat, rank or exact)
        res = SearchResult(flat, obj, seconds=seconds)  # nothing searched: no evaluations
        metrics: dict[str, Any] = {"objective": obj, "zero_shot_objective": zero,
                                   "route_seconds": seconds, "evaluations": 0,
                                   "rank": adapter.max_rank}
        acc = self._measure(metrics, energy, flat, held_out)
        out = ComposeResult(list(self.candidates), res, zero, adapter, energy, None, acc,
                            metrics, Lineage(""))
        results = {"objective": obj, "modules": list(self.names),
                   "module_weights": W.tolist()}
        out.lineage = Lineage(f"compose:{ROUTE}",
                              parents(self.candidates, list(out.weights.values())),
                              {**params, **results}, recipe)
        return out

    def fine_tune(self, result: ComposeResult, steps: int, lr: float = FT_LR, *,
                  held_out: Sequence[Example] | None = None, from_base: bool = False,
                  on_step: Callable[[int, int, float], None] | None = None) -> ComposeResult:
        """Train ``result``'s adapter on the shots for ``steps`` full-batch steps
        (``compose.composer.finetune``); the mixer is removed first and the composer is
        closed afterwards. The objective on the shots and ``held_out``'s accuracy are
        measured again on the trained adapter; the mix's own figures stay in the record.

        ``from_base``: start from the base model instead (all weights 0: a plain LoRA
        fine-tune), for a mix that did not beat the base model out of fold; the parents'
        weights become 0 and the refused mix's weights stay in the record."""
        start = result.adapter
        lineage = result.lineage
        w = np.asarray(result.search.weights, dtype=np.float32)
        if from_base:
            w = np.zeros_like(w)
            start, _ = self.adapter(w)
            lineage = replace(lineage, parents=parents(result.candidates,
                                                       [0.0] * len(result.candidates)))
        # the starting point's objective without the weight penalty, as the trained one's
        before = float(self.scorer.value(replace(self.scorer.inputs(torch.as_tensor(w[None])),
                                                 l1=0.0))[0])
        self.close()
        trained, record = fine_tune(self.base.model, self.base.tokenizer, start,
                                    self.examples, steps, lr,
                                    seed=int(lineage.params.get("seed", 0)), on_step=on_step)
        record["start"] = "base" if from_base else "mix"
        if from_base:
            record["refused_weights"] = [float(w) for w in result.search.weights]
        metrics = dict(result.metrics)
        metrics.update(fine_tune_steps=steps, fine_tune_start=record["start"],
                       fine_tune_loss_first=record["loss_first"],
                       fine_tune_loss_last=record["loss_last"])
        with Composer(self.base, [Candidate("fine-tuned", trained)], self.examples,
                      mode="ab", l1=0.0, batch_size=self.batch_size, objective=self.objective,
                      max_rows=self.max_rows, labels=self.labels) as one:
            record["objective_start"] = before
            record["objective"] = float(one.score(np.ones((1, 1)))[0])
            metrics["objective_fine_tuned"] = record["objective"]
            acc = result.accuracy
            if held_out is not None:
                if acc is not None:
                    metrics["eval_accuracy_mix"] = acc.accuracy
                acc = one.accuracy([1.0], held_out)
                metrics.update(eval_accuracy=acc.accuracy, eval_metric=acc.metric,
                               eval_n=acc.n)
        lineage = replace(lineage, method=lineage.method + FT_SUFFIX,
                          params={**lineage.params, "fine_tune": record},
                          recipe=fine_tune_recipe(lineage.recipe, steps, lr))
        search = result.search
        if from_base:
            search = replace(search, weights=np.zeros_like(search.weights))
        return replace(result, search=search, adapter=trained, energy={}, accuracy=acc,
                       metrics=metrics, lineage=lineage)

    def __enter__(self) -> Composer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Put the base model's own layers back."""
        if self.mixer is not None:
            self.mixer.remove()
            self.mixer = None


def _objective_name(params: dict[str, Any]) -> str:
    if params.get("labels") is not None:
        return "label (cross-entropy over the labels " + ", ".join(
            repr(x) for x in params["labels"]) + ")"
    custom = params.get("objective_fn")
    return f"custom `{custom}`" if custom and custom != "answer" else \
        "answer (LoRAHub's loss on the answer tokens)"


def label_rows(examples: Sequence[Example], labels: Sequence[str]
               ) -> tuple[list[Example], torch.Tensor]:
    """Every example with every label as its output (example-major), and the index of each
    example's own output in ``labels``: what the label objective scores."""
    labels = list(labels)
    if len(set(labels)) < 2 or len(set(labels)) != len(labels):
        raise InvalidRequestError("labels must hold at least 2 distinct labels", params="labels")
    missing = sorted({e.output for e in examples} - set(labels))
    if missing:
        raise InvalidRequestError(
            f"example output {missing[0]!r} is not among the labels ({', '.join(labels)})",
            params="labels")
    rows = [Example(e.input, lab) for e in examples for lab in labels]
    return rows, torch.tensor([labels.index(e.output) for e in examples])


def _energy_kept(kept, exact) -> float:
    """Share of the exact delta's squared singular values (energy) that a truncation keeps."""
    total = float((singular_values(exact.B, exact.A).double() ** 2).sum()) * exact.scale ** 2
    if total == 0.0:
        return 1.0
    return float((singular_values(kept.B, kept.A).double() ** 2).sum()) * kept.scale ** 2 / total
