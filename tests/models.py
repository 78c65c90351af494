"""Tiny models and PEFT adapters for tests: real checkpoints, fixed seeds, CPU, seconds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

LLAMA_KW = dict(
    vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
    tie_word_embeddings=False,
)
T5_KW = dict(
    vocab_size=128, d_model=48, d_kv=12, d_ff=64, num_layers=2, num_decoder_layers=2,
    num_heads=4, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
)
BASE_ID = "lorahive-tests/tiny-llama"


def tiny_llama(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**LLAMA_KW))
    model.config.name_or_path = BASE_ID
    return model.eval()


def tiny_t5(seed: int = 0):
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(seed)
    return T5ForConditionalGeneration(T5Config(**T5_KW)).eval()


def save_tiny_llama(path: Path, seed: int = 0) -> Path:
    model = tiny_llama(seed)
    model.save_pretrained(path)
    return Path(path)


def save_tiny_t5(path: Path, seed: int = 0) -> Path:
    tiny_t5(seed).save_pretrained(path)
    return Path(path)


def load_base(base_dir: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(base_dir).eval()


def make_peft_adapter(
    base_dir: Path,
    out: Path,
    seed: int = 1,
    base_id: str = BASE_ID,
    **lora_kw: Any,
) -> Path:
    """Create a LoRA(-family) adapter with PEFT on the saved base and save it with PEFT.

    Factors are random (``init_lora_weights=False``) so deltas are non-zero, as after training.
    ``lora_kw`` goes to ``LoraConfig`` (or ``AdaLoraConfig`` with ``peft_type="ADALORA"``).
    """
    from peft import AdaLoraConfig, LoraConfig, get_peft_model

    base = load_base(base_dir)
    kind = lora_kw.pop("peft_type", "LORA")
    kw = dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    kw.update(lora_kw)
    if kind == "ADALORA":
        kw.pop("r", None)
        kw.setdefault("init_r", 6)
        kw.setdefault("total_step", 10)
        cfg = AdaLoraConfig(**kw)
    else:
        kw.setdefault("init_lora_weights", False)
        cfg = LoraConfig(**kw)
    cfg.base_model_name_or_path = base_id
    torch.manual_seed(seed)
    model = get_peft_model(base, cfg)
    if kind == "ADALORA" or kw.get("init_lora_weights") is not False:
        # these inits start at zero delta; perturb every factor so the delta is non-trivial
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_" in n:
                    p.add_(torch.randn_like(p) * 0.1)
    return save_adapter(model, out, base_id)


def save_adapter(model: Any, out: Path, base_id: str = BASE_ID) -> Path:
    """Save a PEFT model's adapter. PEFT records the local path it loaded from; pin the
    stable id the tests reason about."""
    model.save_pretrained(out)
    cfg_path = Path(out) / "adapter_config.json"
    data = json.loads(cfg_path.read_text())
    data["base_model_name_or_path"] = base_id
    cfg_path.write_text(json.dumps(data, indent=2))
    return Path(out)


def make_pissa_adapters(base_dir: Path, initial: Path, trained: Path) -> tuple[Path, Path]:
    """A PiSSA adapter (q_proj, r=4) as saved before training and after a step of "training"
    (every factor moved by 0.05): the pair ``lorahive convert --initial`` takes."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = get_peft_model(load_base(base_dir), LoraConfig(r=4, target_modules=["q_proj"],
                                                           init_lora_weights="pissa"))
    model.save_pretrained(initial)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_" in n:
                p.add_(0.05)
    model.save_pretrained(trained)
    return Path(initial), Path(trained)


def save_tiny_llama_4bit(base_dir: Path, out: Path, quant_type: str = "nf4",
                         double_quant: bool = True, max_shard_size: str | None = None,
                         storage: torch.dtype = torch.uint8,
                         dtype: torch.dtype = torch.float32) -> Path:
    """The tiny Llama loaded 4-bit by transformers with bitsandbytes (CPU) and saved: the
    layout a QLoRA base has on disk. ``dtype`` is what the weights are quantized from (the
    recorded dtype). Needs the ``bitsandbytes`` package (dev extra)."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    cfg = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quant_type,
                             bnb_4bit_use_double_quant=double_quant,
                             bnb_4bit_compute_dtype=torch.float32,
                             bnb_4bit_quant_storage=storage)
    model = AutoModelForCausalLM.from_pretrained(base_dir, quantization_config=cfg, dtype=dtype,
                                                 device_map="cpu")
    kw = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(out, **kw)
    return Path(out)


def load_4bit(path: Path):
    """A saved 4-bit checkpoint through transformers and bitsandbytes (the reference)."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, device_map="cpu").eval()


def make_qlora_adapter(q4_dir: Path, out: Path, seed: int = 1, scale: float = 1.0,
                       base_id: str = BASE_ID, **lora_kw: Any) -> Path:
    """A LoRA adapter made with PEFT on the 4-bit model itself (QLoRA), random factors times
    ``scale``, saved by PEFT."""
    from peft import LoraConfig, get_peft_model

    kw = dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    kw.update(lora_kw)
    torch.manual_seed(seed)
    model = get_peft_model(load_4bit(q4_dir), LoraConfig(**kw))
    if scale != 1.0:
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.mul_(scale)
    return save_adapter(model, out, base_id)
