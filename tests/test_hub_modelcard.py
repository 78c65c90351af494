"""Model cards carry the front matter the Hugging Face Hub and PEFT filter adapters by."""

from __future__ import annotations

from huggingface_hub import ModelCard

from lorahive.hub.modelcard import parse_card, render_card


def test_card_front_matter_round_trips_through_huggingface_hub():
    text = render_card(
        "acme/sentiment", "HuggingFaceTB/SmolLM2-135M-Instruct", task="text-classification",
        description="Food-review sentiment.", tags=["en"], metrics={"accuracy": 0.91},
        lineage={"method": "fuse:ties", "parents": [{"ref": "acme/a", "version": "1", "weight": 0.5}]},
        summary={"rank": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"]},
    )
    front = parse_card(text)
    assert front["library_name"] == "peft"
    assert front["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert front["base_model_relation"] == "adapter"
    assert {"lora", "peft", "base_model:adapter:HuggingFaceTB/SmolLM2-135M-Instruct", "en"} <= set(front["tags"])
    assert front["pipeline_tag"] == "text-classification"
    assert front["lorahive_metrics"] == {"accuracy": 0.91}
    # the official client parses it the same way
    card = ModelCard(text)
    assert card.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert "lora" in card.data.tags
    assert "acme/a @ 1 (weight 0.5)" in text


def test_parse_card_without_front_matter():
    assert parse_card("# just a title\n") == {}
    assert parse_card("---\n: : bad\n---\n") == {}
