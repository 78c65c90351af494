"""Model cards: ``README.md`` with the YAML front matter the Hugging Face Hub and PEFT use.

Every published version gets one (unless the publisher supplied a README): ``library_name: peft``,
``base_model``, ``base_model_relation: adapter`` and the tags ``lora`` and
``base_model:adapter:<id>`` that the Hub and serving stacks filter adapters by, plus the task,
metrics and lineage lorahive knows.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

_FRONT = re.compile(r"\A---\s*\n(.*?)\n---\s*(?:\n|\Z)", re.S)


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
) -> str:
    """A complete model card for one adapter version."""
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
    if metrics:
        lines += ["## Metrics", ""] + [f"- {k}: {v}" for k, v in metrics.items()] + [""]
    if lineage:
        lines += ["## Lineage", "", f"Made with `{lineage.get('method')}` from:", ""]
        for p in lineage.get("parents", []):
            w = p.get("weight")
            lines.append(f"- {p.get('ref')}" + (f" @ {p['version']}" if p.get("version") else "")
                         + (f" (weight {w:.4g})" if isinstance(w, int | float) else ""))
        lines.append("")
    lines += [
        "## Usage", "", "```python", "from peft import PeftModel",
        "from transformers import AutoModelForCausalLM", "",
        f'base = AutoModelForCausalLM.from_pretrained("{base_model or "BASE_MODEL"}")',
        f'model = PeftModel.from_pretrained(base, "{name}")', "```", "",
    ]
    return "\n".join(lines)


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
