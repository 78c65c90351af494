"""One evaluator for every row of the held-out suite: an adapter (or none) added to the base
weights, an optional in-context prefix, rank classification or greedy generation.

It scores what ``lorahive.compose.composer.evaluate`` scores — for a label set, the label with
the lowest summed token loss of ``label + EOS`` after the prompt; otherwise a greedy
completion compared after LoRAHub's normalisation — but runs each prompt once: the prompt's
keys and values are cached and every label continues from them, and an in-context prefix (the
five shots) is run once per evaluation set instead of once per example and label. On the
suite's tasks this is what makes 100-example evaluations of every row affordable on a CPU.
``tests/test_bench_suite.py`` checks the scores against the composer's on a tiny model.

Adapters are applied by adding each module's dense delta to the base weight and restoring
the saved original afterwards (exact), so every row — a library adapter, a mix, a fine-tune —
runs through the same unwrapped model.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
from collections.abc import Iterator, Sequence

import torch

from lorahive.compose.composer.evaluate import normalise
from lorahive.hub.adapter import Adapter

VERSION = 2  # part of every cached result's key: a change here recomputes them all


def first_line(text: str) -> str:
    """The answer a generation gives: up to the end of its first non-empty line (every suite
    answer is one line; in-context prompts would otherwise run on into the next example)."""
    return text.lstrip().split("\n", 1)[0]


@contextlib.contextmanager
def applied(model, adapter: Adapter | None) -> Iterator[None]:
    """``model`` with ``adapter``'s deltas added to its weights for the duration."""
    if adapter is None:
        yield
        return
    saved: dict[str, torch.Tensor] = {}
    try:
        with torch.no_grad():
            for name in adapter.modules:
                w = model.get_submodule(name).weight
                saved[name] = w.detach().clone()
                w.add_(adapter.delta(name, device=w.device, dtype=torch.float32).to(w.dtype))
        yield
    finally:
        with torch.no_grad():
            for name, w0 in saved.items():
                model.get_submodule(name).weight.copy_(w0)


def _device(model) -> torch.device:
    return next(model.parameters()).device


class Predictor:
    """Predictions of a causal LM for prompts, optionally after a shared prefix. Generation
    is greedy and stops at EOS or at the end of the answer's first line."""

    def __init__(self, model, tokenizer, batch: int = 16):
        self.model = model
        self.tok = tokenizer
        self.batch = batch
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None \
            else tokenizer.eos_token_id
        self.eos = tokenizer.eos_token_id
        # transformers 5.2x names the cache argument ``cache``; earlier, ``past_key_values``
        params = inspect.signature(model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"

    def _run(self, cache, **kw):
        out = self.model(**kw, **{self._cache_kw: cache}, use_cache=True)
        new = out.get("cache") if "cache" in out else out.get("past_key_values")
        return out.logits, new

    # --- the shared prefix and one batch of prompts ---------------------------------------
    def _prefix(self, prefix: str):
        if not prefix:
            return None, 0
        ids = self.tok(prefix, add_special_tokens=True)["input_ids"]
        _, cache = self._run(None, input_ids=torch.tensor([ids], device=_device(self.model)),
                             logits_to_keep=1)
        return cache, len(ids)

    def _prompts(self, inputs: Sequence[str], prefix_len: int, prefix_cache):
        """Run left-padded prompts after the prefix; returns (next-token log-probs, cache,
        attention mask, next position of each row)."""
        dev = _device(self.model)
        ids = [self.tok(x, add_special_tokens=prefix_len == 0)["input_ids"] for x in inputs]
        width = max(map(len, ids))
        B = len(ids)
        x = torch.full((B, width), self.pad, dtype=torch.long)
        mask = torch.zeros((B, prefix_len + width), dtype=torch.long)
        mask[:, :prefix_len] = 1
        pos = torch.zeros((B, width), dtype=torch.long)
        for i, row in enumerate(ids):
            x[i, width - len(row):] = torch.tensor(row)
            mask[i, prefix_len + width - len(row):] = 1
            pos[i, width - len(row):] = torch.arange(prefix_len, prefix_len + len(row))
        cache = None
        if prefix_cache is not None:
            cache = copy.deepcopy(prefix_cache)
            cache.batch_repeat_interleave(B)
        logits, cache = self._run(cache, input_ids=x.to(dev), attention_mask=mask.to(dev),
                                  position_ids=pos.to(dev), logits_to_keep=1)
        nxt = torch.tensor([prefix_len + len(r) for r in ids])
        return logits[:, -1].float().log_softmax(-1), cache, mask, nxt

    def _continue(self, tokens: torch.Tensor, cache, mask: torch.Tensor, nxt: torch.Tensor):
        """Feed ``tokens`` [B, m] after the cached prompts; log-probs at each fed position."""
        dev = _device(self.model)
        B, m = tokens.shape
        mask = torch.cat([mask, torch.ones((B, m), dtype=mask.dtype)], 1)
        pos = nxt[:, None] + torch.arange(m)[None]
        logits, _ = self._run(cache, input_ids=tokens.to(dev), attention_mask=mask.to(dev),
                              position_ids=pos.to(dev))
        return logits.float().log_softmax(-1), mask

    # --- rank classification -----------------------------------------------------------------
    @torch.inference_mode()
    def label_nll(self, inputs: Sequence[str], labels: Sequence[str], prefix: str = ""
                  ) -> torch.Tensor:
        """Summed token loss of ``label + EOS`` after each input: ``[N, L]``."""
        targets = [self.tok(lab, add_special_tokens=False)["input_ids"] + [self.eos]
                   for lab in labels]
        pcache, plen = self._prefix(prefix)
        out = []
        for s in range(0, len(inputs), self.batch):
            chunk = inputs[s:s + self.batch]
            first, cache, mask, nxt = self._prompts(chunk, plen, pcache)
            scores = torch.zeros(len(chunk), len(labels))
            for j, t in enumerate(targets):
                nll = -first[:, t[0]].cpu()
                if len(t) > 1:
                    feed = torch.tensor([t[:-1]] * len(chunk))
                    logp, _ = self._continue(feed, cache, mask, nxt)
                    tgt = torch.tensor(t[1:], device=logp.device)
                    nll = nll - logp.gather(2, tgt.expand(len(chunk), -1)[..., None]
                                            ).squeeze(-1).sum(1).cpu()
                    cache.crop(-(len(t) - 1))  # drop the label again (negative: remove)
                scores[:, j] = nll
            out.append(scores)
        return torch.cat(out)

    # --- greedy generation -------------------------------------------------------------------
    @torch.inference_mode()
    def generate(self, inputs: Sequence[str], max_new_tokens: int, prefix: str = ""
                 ) -> list[str]:
        pcache, plen = self._prefix(prefix)
        texts: list[str] = []
        for s in range(0, len(inputs), self.batch):
            chunk = inputs[s:s + self.batch]
            logp, cache, mask, nxt = self._prompts(chunk, plen, pcache)
            done = torch.zeros(len(chunk), dtype=torch.bool)
            gen: list[list[int]] = [[] for _ in chunk]
            for _ in range(max_new_tokens):
                tok = logp.argmax(-1).cpu()
                for i, t in enumerate(tok.tolist()):
                    if not done[i]:
                        if t == self.eos:
                            done[i] = True
                        else:
                            gen[i].append(t)
                            text = self.tok.decode(gen[i], skip_special_tokens=True)
                            done[i] = "\n" in text.lstrip()  # the first line is complete
                if bool(done.all()):
                    break
                feed = torch.where(done, torch.full_like(tok, self.pad), tok)[:, None]
                lp, mask = self._continue(feed, cache, mask, nxt)
                logp = lp[:, -1]
                nxt = nxt + 1
            texts += [first_line(self.tok.decode(g, skip_special_tokens=True)) for g in gen]
        return texts

    def predict(self, inputs: Sequence[str], labels: Sequence[str] | None,
                max_new_tokens: int = 16, prefix: str = "") -> list[str]:
        if labels:
            best = self.label_nll(inputs, labels, prefix).argmin(1)
            return [labels[int(i)] for i in best]
        return self.generate(inputs, max_new_tokens, prefix)


def correct(predictions: Sequence[str], references: Sequence[str]) -> list[int]:
    return [int(normalise(p) == normalise(r)) for p, r in zip(predictions, references,
                                                               strict=True)]
