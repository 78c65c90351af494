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


def train_task_adapter(base_dir: Path, out: Path, examples, steps: int = 60, seed: int = 0,
                       lr: float = 1e-2, r: int = 4) -> Path:
    """A LoRA adapter trained with PEFT on ``examples`` (answer tokens only, Adam): a
    candidate that really knows the task, for checks that must tell it from noise."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer

    from lorahive.compose.composer.examples import encode_causal
    from tests.models import BASE_ID, load_base, save_adapter

    tok = AutoTokenizer.from_pretrained(base_dir)
    torch.manual_seed(seed)
    model = get_peft_model(load_base(base_dir), LoraConfig(
        r=r, lora_alpha=2 * r, target_modules=["q_proj", "v_proj"]))
    enc = encode_causal(tok, list(examples))
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    for _ in range(steps):
        loss = model(input_ids=enc.input_ids, attention_mask=enc.attention_mask,
                     labels=enc.labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return save_adapter(model, out, BASE_ID)


ANIMALS, SKY = ["cat", "dog", "bird"], ["sun", "moon", "star"]
TRAITS = ["red", "blue", "green", "big", "small", "fast", "slow"]


def animal_task(n: int, seed: int, rule: bool = True) -> list:
    """``the <thing> is <trait> ?`` -> ``yes`` for an animal, ``no`` for a sky object
    (``rule=False``: the same prompts with coin-flip answers)."""
    import random

    from lorahive.compose.composer import Example

    rng = random.Random(seed)
    out = []
    for _ in range(n):
        animal = rng.random() < 0.5
        answer = ("yes" if animal else "no") if rule else rng.choice(["yes", "no"])
        thing = rng.choice(ANIMALS if animal else SKY)
        out.append(Example(f"the {thing} is {rng.choice(TRAITS)} ?", answer))
    return out


def answer_format_base(raw: Path, out: Path, work: Path) -> Path:
    """A base that answers ``yes``/``no`` and stops, but not by the animal rule: the tiny
    model with an adapter trained on coin-flip answers merged in. Random adapters cannot
    teach it the rule, so their mixes cannot help on shots they were not searched on."""
    from peft import PeftModel

    from tests.models import load_base

    fmt = train_task_adapter(raw, work, animal_task(40, 5, rule=False), steps=40)
    PeftModel.from_pretrained(load_base(raw), fmt).merge_and_unload().save_pretrained(out)
    for f in raw.iterdir():
        if f.name.startswith(("token", "special")):
            shutil.copy(f, out / f.name)
    return out


def yes_no_task(tiny_llama_dir: Path, root: Path, seeds: range) -> tuple:
    """The tiny yes/no task of the CLI tests on disk: a base with a tokenizer, one adapter per
    seed, the shots and the held-out examples as JSONL files."""
    from lorahive.compose.composer.examples import write_examples
    from tests.models import make_peft_adapter
    from tests.test_compose_cli import EVAL, SHOTS

    base = add_tokenizer(tiny_llama_dir, root / "base")
    cands = [make_peft_adapter(base, root / f"c{i}", seed=s) for i, s in enumerate(seeds)]
    return base, cands, write_examples(root / "shots.jsonl", SHOTS), \
        write_examples(root / "eval.jsonl", EVAL)

