"""Shared fixtures: tiny seeded transformers models saved as real checkpoints, and PEFT adapters.

Everything runs on CPU in seconds. Helpers are plain functions (importable from
``tests.conftest``-free code via ``tests/models.py``) plus fixtures wrapping them.
"""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# No test may touch the user's ~/.lorahive or a registry named by the environment.
os.environ["LORAHIVE_HOME"] = tempfile.mkdtemp(prefix="lorahive-test-home-")
for _var in ("LORAHIVE_URL", "LORAHIVE_TOKEN"):
    os.environ.pop(_var, None)
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

import pytest  # noqa: E402

from tests.models import make_peft_adapter, save_tiny_llama, save_tiny_t5  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _bnb_reference_kernels():
    """bitsandbytes' generic 4-bit code where its native CPU kernels are wrong (AVX-512;
    tests/bnb_reference.py)."""
    from tests.bnb_reference import use_generic_kernels_where_native_ones_are_wrong

    use_generic_kernels_where_native_ones_are_wrong()


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory):
    """A saved Llama-style checkpoint (safetensors + config), fixed seed."""
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_t5_dir(tmp_path_factory):
    return save_tiny_t5(tmp_path_factory.mktemp("tiny-t5"))


@pytest.fixture(scope="session")
def lora_dir(tiny_llama_dir, tmp_path_factory):
    """A plain LoRA adapter saved by PEFT on the tiny Llama (q_proj, v_proj, r=4)."""
    return make_peft_adapter(tiny_llama_dir, tmp_path_factory.mktemp("lora") / "a", seed=1)


@pytest.fixture(autouse=True)
def _own_searches(tmp_path, monkeypatch):
    """Each test remembers its own compose searches: a search left by another test with the
    same tiny inputs would otherwise be reused."""
    monkeypatch.setenv("LORAHIVE_SEARCHES", str(tmp_path / "searches"))


@pytest.fixture()
def home(tmp_path, monkeypatch):
    """An isolated LORAHIVE_HOME for registry and cache state."""
    h = tmp_path / "lorahive-home"
    monkeypatch.setenv("LORAHIVE_HOME", str(h))
    return h
