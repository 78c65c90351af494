"""A corpus of malicious adapter files and names, built from a valid PEFT adapter.

Each case is a dict ``{file name: bytes}`` that replaces/extends the valid adapter's files, so
the test can publish it and check it is refused. Nothing here executes what it builds: the
pickle payload is assembled opcode by opcode and never loaded.
"""

from __future__ import annotations

import json
import pickle
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"


@dataclass(frozen=True)
class Case:
    """One hostile variant of an adapter: files to put in place of (or next to) the good ones."""

    name: str
    files: dict[str, bytes]
    drop: tuple[str, ...] = ()


def pickle_bomb() -> bytes:
    """A pickle whose REDUCE would call ``os.system`` (GLOBAL + REDUCE); never unpickled here."""
    return (b"\x80\x04" + b"cos\nsystem\n" + b"(" + pickle.dumps("touch /tmp/pwned", protocol=0)[:-1]
            + b"tR.")


def safetensors_bytes(header: dict, data: bytes, declared: int | None = None) -> bytes:
    raw = json.dumps(header).encode()
    n = len(raw) if declared is None else declared
    return struct.pack("<Q", n) + raw + data


def _tensor(dtype: str, shape: list[int], begin: int, end: int) -> dict:
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


def weights_cases(good: dict[str, bytes]) -> list[Case]:
    """Broken or hostile ``adapter_model.safetensors`` files."""
    w = good[WEIGHTS]
    (n,) = struct.unpack("<Q", w[:8])
    header = json.loads(w[8:8 + n])
    keys = [k for k in header if k != "__metadata__"]
    k0, k1 = keys[0], keys[1]
    data = w[8 + n:]

    overlap = dict(header)
    b0, e0 = header[k0]["data_offsets"]
    overlap[k1] = {**header[k1], "data_offsets": [b0, b0 + (header[k1]["data_offsets"][1]
                                                         - header[k1]["data_offsets"][0])]}
    beyond = dict(header)
    beyond[k0] = {**header[k0], "data_offsets": [len(data) + 10, len(data) + 10 + (e0 - b0)]}
    wrong_size = dict(header)
    wrong_size[k0] = {**header[k0], "shape": [s * 2 for s in header[k0]["shape"]]}
    bad_dtype = dict(header)
    bad_dtype[k0] = {**header[k0], "dtype": "PICKLE"}
    return [
        Case("header-oversized", {WEIGHTS: struct.pack("<Q", 2**63) + w[8:]}),
        Case("header-over-100MB", {WEIGHTS: struct.pack("<Q", 100_000_001) + w[8:]}),
        Case("header-truncated", {WEIGHTS: w[: 8 + n // 2]}),
        Case("file-truncated-data", {WEIGHTS: w[: len(w) - 64]}),
        Case("tiny-file", {WEIGHTS: b"\x01\x02"}),
        Case("header-not-json", {WEIGHTS: struct.pack("<Q", 9) + b"not json!" + data}),
        Case("header-not-object", {WEIGHTS: struct.pack("<Q", 2) + b"[]" + data}),
        Case("overlapping-offsets", {WEIGHTS: safetensors_bytes(overlap, data)}),
        Case("offsets-beyond-data", {WEIGHTS: safetensors_bytes(beyond, data)}),
        Case("shape-vs-bytes", {WEIGHTS: safetensors_bytes(wrong_size, data)}),
        Case("unknown-dtype", {WEIGHTS: safetensors_bytes(bad_dtype, data)}),
        Case("empty-header", {WEIGHTS: safetensors_bytes({}, b"")}),
    ]


def config_cases(good: dict[str, bytes]) -> list[Case]:
    """Configs that disagree with the tensors or are malformed."""
    cfg = json.loads(good[CONFIG])

    def with_(**kw: object) -> bytes:
        return json.dumps({**cfg, **kw}).encode()

    return [
        Case("config-rank-mismatch", {CONFIG: with_(r=cfg["r"] * 2)}),
        Case("config-wrong-targets", {CONFIG: with_(target_modules=["o_proj"])}),
        Case("config-no-base-model", {CONFIG: with_(base_model_name_or_path=None)}),
        Case("config-not-json", {CONFIG: b"{this is not json"}),
        Case("config-a-list", {CONFIG: b"[1, 2, 3]"}),
        Case("config-missing", {}, drop=(CONFIG,)),
        Case("weights-missing", {}, drop=(WEIGHTS,)),
    ]


def pickle_cases() -> list[Case]:
    bomb = pickle_bomb()
    return [Case(f"pickle-{ext}", {f"adapter_model{ext}": bomb}) for ext in (".bin", ".pt", ".pkl")]


# names that must never be accepted as a file of a version
BAD_NAMES = [
    "../x", "../../etc/passwd", "/etc/x", "a/../b", "a\\..\\b", "..\\x", "C:/x", "C:x",
    "~/x", "./x", "a//b", "a/./b", ".git/config", "sub/.cache/x", "a\x00b", "a\nb", "x\u202e",
    "", "a" * 300,
]
# URL-encoded traversal, for routes that take a path in the URL
ENCODED_PATHS = [
    "..%2f..%2fetc%2fpasswd", "%2e%2e/%2e%2e/etc/passwd", "%2e%2e%2fx", "..%5c..%5cx",
    "%2fetc%2fpasswd", "a%00b", "..%252f..%252fetc", "%c0%ae%c0%ae/x",
]


def read_dir(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in path.iterdir() if p.is_file()}


def materialise(case: Case, good: dict[str, bytes], dest: Path) -> Path:
    """Write the good adapter with ``case`` applied into ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    files = {k: v for k, v in good.items() if k not in case.drop}
    files.update(case.files)
    for name, body in files.items():
        (dest / name).write_bytes(body)
    return dest


def all_cases(good: dict[str, bytes]) -> list[Case]:
    return [*pickle_cases(), *weights_cases(good), *config_cases(good)]


Builder = Callable[[dict[str, bytes]], list[Case]]


CASE_NAMES = [
    "pickle-.bin", "pickle-.pt", "pickle-.pkl",
    "header-oversized", "header-over-100MB", "header-truncated", "file-truncated-data",
    "tiny-file", "header-not-json", "header-not-object", "overlapping-offsets",
    "offsets-beyond-data", "shape-vs-bytes", "unknown-dtype", "empty-header",
    "config-rank-mismatch", "config-wrong-targets", "config-no-base-model", "config-not-json",
    "config-a-list", "config-missing", "weights-missing",
]


def case(good: dict[str, bytes], name: str) -> Case:
    return {c.name: c for c in all_cases(good)}[name]
