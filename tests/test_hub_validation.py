"""Bad adapters give clear errors: missing files, contradicting shapes, hostile safetensors, pickle."""

from __future__ import annotations

import json
import shutil
import struct

import pytest
import torch
from safetensors.torch import load_file, save_file

from lorahive.hub import load_peft, save_peft
from lorahive.hub.errors import (
    InvalidAdapterError,
    InvalidRequestError,
    UnsafeFileError,
    UnsupportedAdapterError,
)
from lorahive.hub.safetensors_io import read_header

ST = "adapter_model.safetensors"


def copy_adapter(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_missing_directory_and_files(tmp_path, lora_dir):
    with pytest.raises(InvalidAdapterError, match="does not exist"):
        load_peft(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidAdapterError, match=r"no adapter_config\.json"):
        load_peft(tmp_path / "empty")
    d = copy_adapter(lora_dir, tmp_path / "noweights")
    (d / ST).unlink()
    with pytest.raises(InvalidAdapterError, match=f"no {ST}"):
        load_peft(d)
    with pytest.raises(InvalidAdapterError, match="not a directory"):
        load_peft(lora_dir / ST)


def test_bad_config(tmp_path, lora_dir):
    d = copy_adapter(lora_dir, tmp_path / "a")
    (d / "adapter_config.json").write_text("{not json")
    with pytest.raises(InvalidAdapterError, match="not valid JSON"):
        load_peft(d)
    (d / "adapter_config.json").write_text(json.dumps({"r": 4}))
    with pytest.raises(InvalidAdapterError, match="peft_type"):
        load_peft(d)


def test_shapes_contradicting_r(tmp_path, lora_dir):
    d = copy_adapter(lora_dir, tmp_path / "a")
    cfg = json.loads((d / "adapter_config.json").read_text())
    cfg["r"] = 8
    (d / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(InvalidAdapterError, match=r"rank 4 but adapter_config\.json says r=8"):
        load_peft(d)


def test_missing_half_of_a_pair(tmp_path, lora_dir):
    d = copy_adapter(lora_dir, tmp_path / "a")
    sd = load_file(d / ST)
    victim = next(k for k in sd if k.endswith("lora_B.weight"))
    del sd[victim]
    save_file(sd, d / ST)
    with pytest.raises(InvalidAdapterError, match="no lora_B"):
        load_peft(d)


def test_incompatible_factor_shapes(tmp_path, lora_dir):
    d = copy_adapter(lora_dir, tmp_path / "a")
    sd = load_file(d / ST)
    k = next(k for k in sd if k.endswith("lora_B.weight"))
    sd[k] = torch.zeros(sd[k].shape[0], 3)
    save_file(sd, d / ST)
    with pytest.raises(InvalidAdapterError, match="do not form a product"):
        load_peft(d)


def write_raw(path, header: dict, data: bytes = b"", declared_len: int | None = None):
    raw = json.dumps(header).encode()
    n = len(raw) if declared_len is None else declared_len
    path.write_bytes(struct.pack("<Q", n) + raw + data)


@pytest.mark.parametrize(
    "header,data,declared,match",
    [
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8, 10**12, "header claims"),
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"", 10**6, "truncated safetensors header"),
        ({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 8, None, "outside the file"),
        ({"a": {"dtype": "Q4", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8, None, "unknown dtype"),
        ({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8, None, "needs 12"),
        (
            {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
             "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}},
            b"\0" * 12, None, "overlap",
        ),
        ({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 8]}}, b"\0" * 8, None, "malformed"),
    ],
    ids=["huge-header", "truncated-header", "truncated-data", "unknown-dtype", "span-mismatch", "overlap", "negative-shape"],
)
def test_hostile_safetensors(tmp_path, lora_dir, header, data, declared, match):
    d = copy_adapter(lora_dir, tmp_path / "a")
    write_raw(d / ST, header, data, declared)
    with pytest.raises(InvalidAdapterError, match=match):
        read_header(d / ST)
    with pytest.raises(InvalidAdapterError, match=match):
        load_peft(d)


def test_tiny_file_is_not_safetensors(tmp_path, lora_dir):
    d = copy_adapter(lora_dir, tmp_path / "a")
    (d / ST).write_bytes(b"abc")
    with pytest.raises(InvalidAdapterError, match="not a safetensors file"):
        load_peft(d)


def test_non_float_factor_is_rejected(tmp_path, lora_dir):
    d = copy_adapter(lora_dir, tmp_path / "a")
    sd = load_file(d / ST)
    k = next(iter(sd))
    sd[k] = sd[k].to(torch.int32)
    save_file(sd, d / ST)
    with pytest.raises(InvalidAdapterError, match="floating point"):
        load_peft(d)


def test_pickle_is_refused_and_weights_only_opt_in_converts(tmp_path, lora_dir):
    d = copy_adapter(lora_dir, tmp_path / "a")
    sd = load_file(d / ST)
    (d / ST).unlink()
    torch.save(sd, d / "adapter_model.bin")
    with pytest.raises(UnsafeFileError, match="pickle file"):
        load_peft(d)
    converted = load_peft(d, allow_pickle=True)
    save_peft(converted, tmp_path / "safe")
    assert (tmp_path / "safe" / ST).exists()
    for n in converted.modules:
        assert torch.equal(load_peft(tmp_path / "safe").delta(n), load_peft(lora_dir).delta(n))


def test_malicious_pickle_is_not_executed(tmp_path, lora_dir):
    class Boom:
        def __reduce__(self):
            return (exec, ("open('/tmp/lorahive-pwned','w').write('x')",))

    d = copy_adapter(lora_dir, tmp_path / "a")
    (d / ST).unlink()
    torch.save({"x": Boom()}, d / "adapter_model.bin")
    with pytest.raises(UnsafeFileError, match="weights-only"):
        load_peft(d, allow_pickle=True)
    import os

    assert not os.path.exists("/tmp/lorahive-pwned")


def test_opaque_adapter_types_load_but_refuse_math(tiny_llama_dir, tmp_path):
    from peft import IA3Config, get_peft_model

    from tests.models import load_base

    model = get_peft_model(load_base(tiny_llama_dir), IA3Config(target_modules=["k_proj", "down_proj"], feedforward_modules=["down_proj"]))
    model.save_pretrained(tmp_path / "ia3")
    a = load_peft(tmp_path / "ia3")
    assert a.peft_type == "IA3" and not a.is_lora and a.extra_tensors
    with pytest.raises(UnsupportedAdapterError, match="IA3"):
        a.stats()
    with pytest.raises(UnsupportedAdapterError):
        a.delta("model.layers.0.self_attn.k_proj")
    save_peft(a, tmp_path / "ia3-copy")
    before, after = load_file(tmp_path / "ia3" / ST), load_file(tmp_path / "ia3-copy" / ST)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_save_never_leaves_partial_output(tmp_path, lora_dir, monkeypatch):
    a = load_peft(lora_dir)
    import lorahive.hub.peft_format as pf

    def boom(*args, **kw):
        raise OSError("disk full")

    monkeypatch.setattr(pf, "save_tensors", boom)
    with pytest.raises(OSError, match="disk full"):
        save_peft(a, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    save_peft(a, tmp_path / "out")
    with pytest.raises(InvalidRequestError, match="not empty"):
        save_peft(a, tmp_path / "out")
