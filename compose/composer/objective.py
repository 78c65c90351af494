"""The search objective: few-shot loss of each mixed candidate plus an L1 penalty on the weights.

The default (``answer``) is LoRAHub's exact form. Its loss sums, over batches of
``batch_size`` examples (all of them when ``None``), the batch's mean token loss, then divides
by the number of examples; the penalty is ``l1 * mean(|w|)`` (0.05 in LoRAHub). K weight
vectors are scored in one forward pass over the examples repeated K times.

``label`` is rank classification's loss for tasks whose answers come from a small label set:
every example is scored with every label as its output, and the loss is the cross-entropy of
the right label under the softmax of the labels' sequence log-likelihoods. It rewards
separating the labels, not making the right answer's tokens likely in general.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from lorahive.compose.composer.examples import IGNORE, Encoded, Packed, Tree, pack, tree_pack
from lorahive.compose.composer.mixing import Mixer
from lorahive.hub.errors import InvalidRequestError


@dataclass
class LossInputs:
    """What an objective sees for K weight vectors over N examples."""

    nll: torch.Tensor  # [K, N] summed token loss per example
    counts: torch.Tensor  # [N] scored tokens per example
    weights: torch.Tensor  # [K, n]
    l1: float
    batch_size: int | None
    # label objective: ``nll`` columns are example-major, one per label (``[K, N * L]``),
    # and ``targets [N]`` is the index of each example's right label
    targets: torch.Tensor | None = None

    @property
    def per_example(self) -> int:
        """Columns of ``nll`` per example: the number of labels, or 1."""
        if self.targets is None:
            return 1
        return self.nll.shape[1] // max(len(self.targets), 1)

    def select(self, examples: Sequence[int]) -> LossInputs:
        """The same inputs restricted to some examples (a fold of them), in that order."""
        idx = torch.as_tensor(list(examples), dtype=torch.long)
        per = self.per_example
        cols = (idx.unsqueeze(1) * per + torch.arange(per)).reshape(-1)
        return LossInputs(self.nll[:, cols], self.counts[cols], self.weights, self.l1,
                          self.batch_size, None if self.targets is None else self.targets[idx])


ObjectiveFn = Callable[[LossInputs], torch.Tensor]


def reference_loss(x: LossInputs) -> torch.Tensor:
    """LoRAHub's loss: sum over batches of the batch's token-mean loss, divided by N."""
    n = x.nll.shape[1]
    step = n if x.batch_size is None else min(n, x.batch_size)
    total = torch.zeros(x.nll.shape[0], dtype=torch.float64)
    for s in range(0, n, step):
        total += x.nll[:, s:s + step].double().sum(1) / x.counts[s:s + step].double().sum()
    return total / n


def l1_penalty(x: LossInputs) -> torch.Tensor:
    return x.l1 * x.weights.double().abs().mean(1)


def default_objective(x: LossInputs) -> torch.Tensor:
    """Few-shot loss + ``l1 * mean(|w|)``, as LoRAHub."""
    return reference_loss(x) + l1_penalty(x)


def label_loss(x: LossInputs) -> torch.Tensor:
    """Mean over examples of the cross-entropy of the right label among all labels, each
    label's score being its sequence log-likelihood (minus its summed token loss)."""
    if x.targets is None:
        raise InvalidRequestError("the label objective needs a label set", params="labels")
    n = len(x.targets)
    logits = -x.nll.double().view(x.nll.shape[0], n, x.per_example)  # [K, N, L]
    right = logits.gather(2, x.targets.view(1, n, 1).expand(logits.shape[0], n, 1)).squeeze(2)
    return (torch.logsumexp(logits, dim=2) - right).mean(1)


def label_objective(x: LossInputs) -> torch.Tensor:
    """Rank classification's cross-entropy over the label set + ``l1 * mean(|w|)``."""
    return label_loss(x) + l1_penalty(x)


OBJECTIVES = {"answer": default_objective, "label": label_objective}


def load_objective(spec: str | None) -> ObjectiveFn:
    """``None`` or ``answer`` for LoRAHub's objective, ``label`` for rank classification's,
    or ``module:function`` taking ``LossInputs`` -> ``[K]``."""
    if not spec:
        return default_objective
    if spec in OBJECTIVES:
        return OBJECTIVES[spec]
    mod, _, fn = spec.partition(":")
    if not mod or not fn:
        raise InvalidRequestError(
            f"objective {spec!r} must be {', '.join(OBJECTIVES)} or read module:function",
            params="objective")
    try:
        obj = getattr(importlib.import_module(mod), fn)
    except (ImportError, AttributeError) as e:
        raise InvalidRequestError(f"cannot load objective {spec!r}: {e}") from None
    if not callable(obj):
        raise InvalidRequestError(f"objective {spec!r} is not callable")
    return obj


def _head_only_on_scored(model: nn.Module) -> bool:
    """Whether logits are a plain head over the decoder's states (no softcap, no scaling)."""
    cfg = getattr(model, "config", None)
    if getattr(cfg, "final_logit_softcapping", None) or getattr(cfg, "logit_scale", None):
        return False
    return hasattr(model, "get_decoder") and model.get_output_embeddings() is not None


def _nll_at(model: nn.Module, inputs: dict[str, torch.Tensor], src: torch.Tensor,
            target: torch.Tensor, owner: torch.Tensor, n: int) -> torch.Tensor:
    """Summed loss per owner of the tokens ``target``, each predicted by the state at flat
    position ``src`` (row * width + column): ``[n]``. The vocabulary-wide LM head runs only
    where a token is scored, when the model allows."""
    if _head_only_on_scored(model):
        hidden = model.get_decoder()(**inputs, use_cache=False).last_hidden_state
        logits = model.get_output_embeddings()(hidden.flatten(0, 1)[src])
    else:
        logits = model(**inputs, use_cache=False).logits.flatten(0, 1)[src]
    nll = nn.functional.cross_entropy(logits.float(), target, reduction="none")
    total = torch.zeros(n, device=nll.device, dtype=torch.float32)
    return total.index_add_(0, owner, nll)


def _causal_nll(model: nn.Module, inputs: dict[str, torch.Tensor], labels: torch.Tensor,
                owner: torch.Tensor, n: int) -> torch.Tensor:
    """Summed loss of the scored tokens per owner (a row, or a packed example): ``[n]``;
    ``labels[:, t]`` is predicted by the state at ``t - 1``."""
    sel = torch.zeros_like(labels, dtype=torch.bool)
    sel[:, :-1] = labels[:, 1:] != IGNORE
    src = sel.flatten().nonzero().squeeze(1)
    return _nll_at(model, inputs, src, labels[:, 1:][sel[:, :-1]], owner[:, 1:][sel[:, :-1]],
                   n)


def token_nll(model: nn.Module, batch: Encoded) -> torch.Tensor:
    """Summed cross-entropy of the scored tokens of each row: ``[rows]`` in float32."""
    if not batch.is_encoder_decoder:
        rows = torch.arange(len(batch), device=batch.labels.device).unsqueeze(1)
        return _causal_nll(model, {"input_ids": batch.input_ids,
                                   "attention_mask": batch.attention_mask},
                           batch.labels, rows.expand_as(batch.labels), len(batch))
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                   labels=batch.labels).logits
    nll = nn.functional.cross_entropy(logits.float().transpose(1, 2), batch.labels,
                                      ignore_index=IGNORE, reduction="none")
    return nll.sum(1)


def packed_nll(model: nn.Module, batch: Packed) -> torch.Tensor:
    """``token_nll`` over a packed batch: ``[batch.n]``, one sum per example."""
    return _causal_nll(model, {"input_ids": batch.input_ids,
                               "position_ids": batch.position_ids},
                       batch.labels, batch.example, batch.n)


def tree_nll(model: nn.Module, tree: Tree) -> torch.Tensor:
    """``token_nll`` over rows packed as trees: ``[tree.n]``, one sum per original row."""
    dtype = next(model.parameters()).dtype
    return _nll_at(model, {"input_ids": tree.input_ids, "position_ids": tree.position_ids,
                           "attention_mask": tree.mask(dtype)},
                   tree.src, tree.target, tree.owner, tree.n)


def layout_nll(model: nn.Module, layout: Packed | Tree) -> torch.Tensor:
    """The per-example (or per-row) loss over a packed or tree layout."""
    return packed_nll(model, layout) if isinstance(layout, Packed) else tree_nll(model, layout)


def packing_agrees(model: nn.Module, examples: Encoded, packed: Packed | Tree) -> bool:
    """Whether this model reads the layout as the separate sequences it stands for (restarted
    positions, or a custom attention mask): its losses and the padded ones must agree
    (checked once, on the weights installed now)."""
    with torch.inference_mode():
        ref = token_nll(model, examples)
        got = layout_nll(model, packed)
    tol = 1e-4 if next(model.parameters()).dtype == torch.float32 else 2e-2
    return bool(torch.allclose(got, ref, rtol=tol, atol=tol))


class Scorer:
    """Scores weight vectors on fixed, pre-tokenised examples with one installed mixer.

    ``max_rows`` bounds one forward pass: K vectors go in chunks of ``max_rows // rows``
    groups. Causal examples of uneven lengths are packed several to a row when the model
    handles it; the label objective's rows (one per example and label) are packed as trees,
    each prompt computed once for all its labels. Either layout is checked against the padded
    loss once, and the padded rows are used where it disagrees.
    """

    def __init__(self, model: nn.Module, mixer: Mixer, examples: Encoded, l1: float = 0.05,
                 batch_size: int | None = None, objective: ObjectiveFn | None = None,
                 max_rows: int = 64, pack_examples: bool = True,
                 targets: torch.Tensor | None = None):
        self.model = model
        self.mixer = mixer
        self.examples = examples
        self.targets = targets  # label objective: rows are example-major, one per label
        self.l1 = l1
        self.batch_size = batch_size
        self.objective = objective or default_objective
        self.packed: Packed | Tree | None = None
        if pack_examples:
            per = len(examples) // len(targets) if targets is not None and len(targets) else 1
            for layout in (tree_pack(examples, per), pack(examples)):
                if layout is not None and packing_agrees(model, examples, layout):
                    self.packed = layout
                    break
        rows = len(examples) if self.packed is None else int(self.packed.input_ids.shape[0])
        self.max_rows = max(max_rows, rows)
        self.rows = rows
        self.evaluations = 0

    @torch.inference_mode()
    def nll(self, W: torch.Tensor) -> torch.Tensor:
        """``[K, N]`` summed token loss of each example under each weight vector."""
        W = torch.as_tensor(W, dtype=torch.float32)
        if W.ndim == 1:
            W = W.unsqueeze(0)
        n_ex = len(self.examples)
        per_pass = max(1, self.max_rows // self.rows)
        out = []
        for s in range(0, W.shape[0], per_pass):
            chunk = W[s:s + per_pass]
            k = chunk.shape[0]
            self.mixer.set_weights(chunk)
            if self.packed is not None:
                rows = layout_nll(self.model, self.packed.repeat(k))
            else:
                rows = token_nll(self.model, self.examples.repeat(k))
            out.append(rows.view(k, n_ex).cpu())
        self.evaluations += W.shape[0]
        return torch.cat(out)

    def inputs(self, W: torch.Tensor) -> LossInputs:
        W = torch.as_tensor(W, dtype=torch.float32)
        if W.ndim == 1:
            W = W.unsqueeze(0)
        return LossInputs(self.nll(W), self.examples.token_counts.cpu(), W, self.l1,
                          self.batch_size, self.targets)

    def __call__(self, W: torch.Tensor) -> torch.Tensor:
        """Objective of each weight vector: ``[K]`` float64."""
        return self.value(self.inputs(W))

    def value(self, x: LossInputs) -> torch.Tensor:
        """The objective of already computed losses (all examples, or a fold of them)."""
        val = torch.as_tensor(self.objective(x), dtype=torch.float64).reshape(-1)
        if val.shape[0] != x.weights.shape[0]:
            raise InvalidRequestError(
                f"the objective returned {val.shape[0]} values for {x.weights.shape[0]} "
                "weight vectors")
        return val
