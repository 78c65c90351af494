"""Helpers for the composer tests: a word-level tokenizer for the tiny models, T5 adapters.

LoRAHub's own loop (its loader, ``get_score``) lives in ``benchmarks.lorahub_ref``."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

WORDS = ["the", "a", "is", "of", "to", "and", "red", "blue", "green", "cat", "dog", "bird", "sun", "moon", "star", "one", "two", "three", "four", "five", "yes", "no", "big", "small", "fast", "slow", "up", "down", "left", "right", "add", "sum", "word", "count", "topic", "sport", "news", "tech", "food", "good", "bad", "great", "other", "answer", "question", "input", "output", ":", "?", "."]


def add_tokenizer(model_dir: Path, out: Path, eos_after: bool = False) -> Path:
    """Copy a tiny checkpoint to ``out`` and save a word-level fast tokenizer beside it."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    shutil.copytree(model_dir, out)
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for w in WORDS:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if eos_after:  # T5-style: every encoded text ends with </s>
        tok.post_processor = processors.TemplateProcessing(
            single="$A </s>", special_tokens=[("</s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                                   unk_token="<unk>")
    fast.save_pretrained(out)
    return out


def make_t5_adapter(base_dir: Path, out: Path, seed: int, r: int = 4,
                    targets: tuple[str, ...] = ("q", "v")) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSeq2SeqLM

    base = AutoModelForSeq2SeqLM.from_pretrained(base_dir).eval()
    torch.manual_seed(seed)
    model = get_peft_model(base, LoraConfig(r=r, lora_alpha=2 * r, target_modules=list(targets),
                                            init_lora_weights=False))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_" in n:
                p.normal_(0, 0.2)
    model.save_pretrained(out)
    return out


_calls = {"n": 0}


def fails_mid_search(x):
    """An objective for ``compose --objective``: LoRAHub's for nine calls (the zero-shot score
    and eight search steps: with two workers, past NGOpt's first meta-model step), then a wrong
    number of values."""
    from lorahive.compose.composer.objective import default_objective

    _calls["n"] += 1
    out = default_objective(x)
    return out if _calls["n"] < 10 else torch.cat([out, out])


def near_half(x):
    """An objective for ``compose --objective``: the distance of the weights from 0.5 each, so
    the kept mix is known to be non-zero whatever the tiny model's losses are."""
    return ((x.weights.double() - 0.5) ** 2).sum(1)
