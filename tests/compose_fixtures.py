"""Helpers for the composer tests: a word-level tokenizer for the tiny models, T5 adapters,
and LoRAHub's own loop pointed at a causal model (its loader hard-codes seq2seq)."""

from __future__ import annotations

import copy
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


def reference_loader(adapter_dirs: list[str], base_dir: str, causal: bool):
    """LoRAHub's ``load_base_model_and_lora_modules`` (its own code), with the state dicts it
    caches deep-copied: it keeps live views, which its later loads and get_score overwrite."""
    from lorahub import algorithm
    from transformers import AutoModelForCausalLM

    saved = algorithm.AutoModelForSeq2SeqLM
    if causal:
        algorithm.AutoModelForSeq2SeqLM = AutoModelForCausalLM
    try:
        model, tokenizer, cache = algorithm.load_base_model_and_lora_modules(
            adapter_dirs, base_dir)
    finally:
        algorithm.AutoModelForSeq2SeqLM = saved
    cache = {k: {kk: vv.detach().clone() for kk, vv in v.items()} for k, v in cache.items()}
    return model, tokenizer, copy.copy(cache)


def reference_causal_get_loss(tokenizer, append_eos: bool = True):
    """A ``get_loss`` for LoRAHub's ``get_score`` on a causal model, written like its default:
    per batch the model's own mean token loss (prompt tokens masked), summed, divided by N."""

    def get_loss(dataset, model, batch_size):
        n = len(dataset["input"])
        step = n if batch_size is None else min(n, batch_size)
        total = 0.0
        for s in range(0, n, step):
            rows = []
            for inp, out in zip(dataset["input"][s:s + step], dataset["output"][s:s + step],
                                strict=True):
                p = tokenizer(inp)["input_ids"]
                t = tokenizer(out, add_special_tokens=False)["input_ids"]
                if append_eos:
                    t = [*t, tokenizer.eos_token_id]
                rows.append((p, t))
            width = max(len(p) + len(t) for p, t in rows)
            ids = torch.full((len(rows), width), tokenizer.pad_token_id)
            mask = torch.zeros_like(ids)
            labels = torch.full_like(ids, -100)
            for i, (p, t) in enumerate(rows):
                ids[i, :len(p) + len(t)] = torch.tensor(p + t)
                mask[i, :len(p) + len(t)] = 1
                labels[i, len(p):len(p) + len(t)] = torch.tensor(t)
            with torch.no_grad():
                total += float(model(input_ids=ids, attention_mask=mask, labels=labels).loss)
        return total / n

    return get_loss
