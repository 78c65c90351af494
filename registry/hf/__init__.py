"""Hugging Face Hub compatibility: the wire format, the routes, and their translation onto the
registry service (so unmodified ``huggingface_hub``/PEFT clients can pull and push)."""
