"""Model cards: ``README.md`` with the YAML front matter the Hugging Face Hub and PEFT use.

Every published version gets one (unless the publisher supplied a README): ``library_name: peft``,
``base_model``, ``base_model_relation: adapter`` and the tags ``lora`` and
``base_model:adapter:<id>`` that the Hub and serving stacks filter adapters by, plus the task,
metrics and lineage lorahive knows.

A card may also show the task's example prompts (``## Example prompts``, one fenced ``text``
block each); ``example_prompts`` reads them back, from ``lorahive_examples.jsonl`` when the
directory has that file, else from the card, for candidate retrieval.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import yaml

_FRONT = re.compile(r"\A---\s*\n(.*?)\n---\s*(?:\n|\Z)", re.S)
EXAMPLES_HEADING = "## Example prompts"
_FENCE = re.compile(r"^```text\n(.*?)\n```$", re.S | re.M)


def card_tags(base_model: str | None, peft_type: str, extra: list[str] | None = None) -> list[str]:
    tags = ["peft", "lora" if peft_type in ("LORA", "ADALORA") else peft_type.lower()]
    if base_model:
        tags.append(f"base_model:adapter:{base_model}")
    for t in extra or []:
        if t not in tags:
            tags.append(t)
    return tags


def render_card(
    name: str,
    base_model: str | None,
    peft_type: str = "LORA",
    task: str | None = None,
    description: str | None = None,
    tags: list[str] | None = None,
    metrics: dict[str, Any] | None = None,
    lineage: dict[str, Any] | None = None,
    summary: dict[str, Any] | None = None,
    details: list[tuple[str, Any]] | None = None,
    examples: list[str] | None = None,
) -> str:
    """A complete model card for one adapter version; ``details`` are ``(what, value)`` rows
    of how it was made, ``examples`` prompts of its task."""
    front: dict[str, Any] = {"library_name": "peft"}
    if base_model:
        front["base_model"] = base_model
        front["base_model_relation"] = "adapter"
    front["tags"] = card_tags(base_model, peft_type, tags)
    if task:
        front["pipeline_tag"] = task if task in _PIPELINE_TAGS else None
        front["lorahive_task"] = task
        if front["pipeline_tag"] is None:
            del front["pipeline_tag"]
    if metrics:
        front["lorahive_metrics"] = metrics
    if lineage:
        front["lorahive_lineage"] = lineage
    lines = ["---", yaml.safe_dump(front, sort_keys=False).rstrip(), "---", "", f"# {name}", ""]
    if description:
        lines += [description, ""]
    lines.append(f"A {peft_type} adapter" + (f" for `{base_model}`" if base_model else "") + ".")
    lines.append("")
    if summary:
        lines += ["| property | value |", "|---|---|"]
        for key in ("rank", "lora_alpha", "target_modules", "num_parameters", "use_rslora", "use_dora"):
            if key in summary:
                lines.append(f"| {key} | {summary[key]} |")
        lines.append("")
    if details:
        lines += ["## How it was made", "", "| what | value |", "|---|---|"]
        lines += [f"| {k} | {_cell(v)} |" for k, v in details] + [""]
    if metrics:
        lines += ["## Metrics", ""] + [f"- {k}: {v}" for k, v in metrics.items()] + [""]
    if lineage:
        lines += ["## Lineage", "", f"Made with `{lineage.get('method')}` from:", ""]
        for p in lineage.get("parents", []):
            w = p.get("weight")
            lines.append(f"- {p.get('ref')}" + (f" @ {p['version']}" if p.get("version") else "")
                         + (f" (weight {w:.4g})" if isinstance(w, int | float) else ""))
        lines.append("")
    if examples:
        lines += [EXAMPLES_HEADING, ""]
        for e in examples:
            lines += ["```text", e, "```", ""]
    lines += [
        "## Usage", "", "```python", "from peft import PeftModel",
        "from transformers import AutoModelForCausalLM", "",
        f'base = AutoModelForCausalLM.from_pretrained("{base_model or "BASE_MODEL"}")',
        f'model = PeftModel.from_pretrained(base, "{name}")', "```", "",
    ]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        value = f"{value:.4g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def card_examples(text: str) -> list[str]:
    """The example prompts a card shows (the fenced ``text`` blocks of its
    ``## Example prompts`` section)."""
    _front, body = split_card(text)
    at = body.find(EXAMPLES_HEADING + "\n")
    if at < 0:
        return []
    section = body[at + len(EXAMPLES_HEADING):]
    end = re.search(r"^#{1,2} ", section, re.M)
    return _FENCE.findall(section[:end.start()] if end else section)


def example_prompts(adapter_dir: str | os.PathLike[str]) -> list[str]:
    """An adapter directory's example prompts: the inputs of ``lorahive_examples.jsonl``,
    else those its model card shows; ``[]`` when it has neither."""
    from lorahive.hub.manifest import CARD_NAME, EXAMPLES_NAME

    d = Path(adapter_dir)
    if (d / EXAMPLES_NAME).is_file():
        out = []
        for line in (d / EXAMPLES_NAME).read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            text = row.get("input") if isinstance(row, dict) else row
            if isinstance(text, str) and text.strip():
                out.append(text)
        if out:
            return out
    if (d / CARD_NAME).is_file():
        return card_examples((d / CARD_NAME).read_text(encoding="utf-8", errors="replace"))
    return []


def parse_card(text: str) -> dict[str, Any]:
    """The YAML front matter of a model card (``{}`` when there is none or it is malformed)."""
    return split_card(text)[0]


def split_card(text: str) -> tuple[dict[str, Any], str]:
    """``(front matter, Markdown body)``; a card without (valid) front matter is all body."""
    m = _FRONT.match(text)
    if not m:
        return {}, text
    try:
        data = yaml.safe_load(m.group(1))
    except yaml.YAMLError:
        return {}, text[m.end():]
    return (data if isinstance(data, dict) else {}), text[m.end():]


_PIPELINE_TAGS = {
    "text-generation", "text-classification", "text2text-generation", "summarization",
    "translation", "question-answering", "token-classification", "feature-extraction",
    "fill-mask", "image-classification", "text-to-image", "automatic-speech-recognition",
}
