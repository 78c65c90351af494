"""PEFT's on-disk adapter format, both ways.

A directory holds ``adapter_config.json`` and ``adapter_model.safetensors`` whose keys read
``base_model.model.<module>.lora_A.weight`` (``lora_B``, ``lora_embedding_A/B``,
``lora_magnitude_vector``, AdaLoRA's ``lora_E``). Some PEFT versions keep the adapter name
(``.default``) in keys; that is tolerated on read. Pickle files (``adapter_model.bin``) are
refused unless the caller opts in, and then read with ``torch.load(weights_only=True)`` only.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import torch

from lorahive.hub.adapter import Adapter, LoraModule
from lorahive.hub.atomic import atomic_directory, atomic_file, require_free_dir
from lorahive.hub.config import AdapterConfig
from lorahive.hub.errors import InvalidAdapterError, ShapeMismatchError, UnsafeFileError
from lorahive.hub.manifest import CONFIG_NAME, PICKLE_NAMES, WEIGHTS_NAME
from lorahive.hub.safetensors_io import (
    ST_DTYPES,
    ST_NAMES,
    StreamWriter,
    load_tensors,
    read_at,
    read_header,
    read_metadata,
    save_tensors,
)

PREFIX = "base_model.model."

_PARTS = "lora_A|lora_B|lora_embedding_A|lora_embedding_B|lora_magnitude_vector|lora_E"
_KEY = re.compile(rf"^(?P<mod>.+?)\.(?P<part>{_PARTS})(?:\.(?P<adapter>(?!weight$)[^.]+))?(?:\.weight)?$")


def parse_key(key: str) -> tuple[str, str] | None:
    """``(module name, part)`` for a factor key, ``None`` for anything else (kept verbatim)."""
    k = key[len(PREFIX):] if key.startswith(PREFIX) else key
    m = _KEY.match(k)
    if not m:
        return None
    return m.group("mod"), m.group("part")


def is_adapter_dir(path: str | os.PathLike[str]) -> bool:
    return (Path(path) / CONFIG_NAME).is_file()


def _read_state(path: Path, allow_pickle: bool) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    st = path / WEIGHTS_NAME
    if st.is_file():
        return load_tensors(st), read_metadata(st)
    pickles = [path / n for n in PICKLE_NAMES if (path / n).is_file()]
    if pickles:
        if not allow_pickle:
            raise UnsafeFileError(
                f"{pickles[0]} is a pickle file, which can run arbitrary code when loaded; "
                "lorahive reads safetensors only. Convert it once with "
                f"`lorahive convert {path} --allow-pickle --out DIR` (weights-only load)"
            )
        try:
            sd = torch.load(pickles[0], map_location="cpu", weights_only=True)
        except Exception as e:
            raise UnsafeFileError(
                f"{pickles[0]}: refused by the weights-only loader ({str(e).splitlines()[0]})"
            ) from None
        if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
            raise InvalidAdapterError(f"{pickles[0]}: does not hold a flat tensor state dict")
        return sd, {}
    raise InvalidAdapterError(f"no {WEIGHTS_NAME} in {path}; is this a PEFT adapter directory?")


def from_state_dict(
    config: AdapterConfig, state: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> Adapter:
    """Build the factored adapter from a PEFT state dict and config, validating consistency."""
    if not config.is_lora_family:
        return Adapter(config, {}, dict(state), dict(metadata or {}))
    parts: dict[str, dict[str, torch.Tensor]] = {}
    extra: dict[str, torch.Tensor] = {}
    for key, t in state.items():
        parsed = parse_key(key)
        if parsed is None:
            extra[key] = t
            continue
        mod, part = parsed
        if part in parts.setdefault(mod, {}):
            raise InvalidAdapterError(f"module {mod!r} has {part} twice (several adapter names?)")
        if not t.is_floating_point():
            raise InvalidAdapterError(f"{key}: factors must be floating point, got {t.dtype}")
        parts[mod][part] = t
    modules: dict[str, LoraModule] = {}
    fifo = config.fan_in_fan_out
    for mod, p in sorted(parts.items()):
        emb = "lora_embedding_A" in p or "lora_embedding_B" in p
        a = p.get("lora_embedding_A" if emb else "lora_A")
        b = p.get("lora_embedding_B" if emb else "lora_B")
        if a is None or b is None:
            missing = "lora_A" if a is None else "lora_B"
            raise InvalidAdapterError(f"module {mod!r} has no {missing}: the A/B pair is incomplete")
        kind, a_shape, b_shape = ("embedding" if emb else "linear"), None, None
        if a.dim() > 2:
            kind, a_shape, b_shape = "conv", tuple(a.shape), tuple(b.shape)
            a, b = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
        if a.dim() != 2 or b.dim() != 2 or b.shape[1] != a.shape[0]:
            raise InvalidAdapterError(
                f"module {mod!r}: lora_A {tuple(a.shape)} and lora_B {tuple(b.shape)} do not "
                "form a product B @ A"
            )
        rank = a.shape[0]
        if config.peft_type == "LORA" and rank != config.rank_for(mod):
            raise InvalidAdapterError(
                f"module {mod!r} has rank {rank} but adapter_config.json says r="
                f"{config.rank_for(mod)}; the config and the weights contradict each other"
            )
        if config.peft_type == "ADALORA":
            e = p.get("lora_E")
            if e is None or e.numel() != rank:
                raise InvalidAdapterError(f"AdaLoRA module {mod!r} lacks a matching lora_E")
            # AdaLoRA's delta is B @ (A * E) * alpha / (ranknum + 1e-5): fold E into A.
            a = a * e.reshape(-1, 1).to(a.dtype)
        mag = p.get("lora_magnitude_vector")
        if mag is not None:
            mag = mag.reshape(-1)
            if mag.numel() != b.shape[0]:
                raise InvalidAdapterError(
                    f"module {mod!r}: DoRA magnitude has {mag.numel()} entries, expected "
                    f"{b.shape[0]}"
                )
        modules[mod] = LoraModule(
            A=a, B=b, scale=config.scale_for(mod, rank), magnitude=mag, kind=kind,
            fan_in_fan_out=fifo and kind == "linear", a_shape=a_shape, b_shape=b_shape,
        )
    if not modules:
        raise InvalidAdapterError("the adapter has no LoRA factors (no lora_A/lora_B tensors)")
    check_targets(config, modules)
    return Adapter(config, modules, extra, dict(metadata or {}))


def check_targets(config: AdapterConfig, modules: Iterable[str]) -> None:
    """Every module with weights must be one the config selects as PEFT matches it
    (``AdapterConfig.selects``): otherwise PEFT builds LoRA layers elsewhere and silently
    drops these weights on load (a config without ``target_modules`` cannot be checked)."""
    for name in modules:
        if config.selects(name) is False:
            raise InvalidAdapterError(
                f"{CONFIG_NAME}: target_modules {config.target_modules!r} does not select "
                f"{name}, which has LoRA weights; PEFT would drop them on load. Fix "
                "target_modules (or layers_to_transform / exclude_modules) to cover it"
            )


def load_peft(path: str | os.PathLike[str], allow_pickle: bool = False) -> Adapter:
    """Read a PEFT adapter directory (safetensors only unless ``allow_pickle``)."""
    path = Path(path)
    if not path.exists():
        raise InvalidAdapterError(f"{path} does not exist")
    if not path.is_dir():
        raise InvalidAdapterError(f"{path} is not a directory; pass the adapter's directory")
    config = AdapterConfig.load(path / CONFIG_NAME)
    state, meta = _read_state(path, allow_pickle)
    return from_state_dict(config, state, meta)


def module_state(name: str, m: LoraModule) -> dict[str, torch.Tensor]:
    """One module's tensors under PEFT's keys."""
    base = f"{PREFIX}{name}"
    out: dict[str, torch.Tensor] = {}
    if m.kind == "embedding":
        out[f"{base}.lora_embedding_A"] = m.A
        out[f"{base}.lora_embedding_B"] = m.B
    else:
        a = m.A.reshape(m.a_shape) if m.a_shape is not None else m.A
        b = m.B.reshape(m.b_shape) if m.b_shape is not None else m.B
        out[f"{base}.lora_A.weight"] = a
        out[f"{base}.lora_B.weight"] = b
    if m.magnitude is not None:
        out[f"{base}.lora_magnitude_vector"] = m.magnitude
    return out


def to_state_dict(adapter: Adapter) -> dict[str, torch.Tensor]:
    """PEFT keys for every tensor (AdaLoRA adapters are written as plain LoRA)."""
    out: dict[str, torch.Tensor] = {}
    for name, m in adapter.modules.items():
        out.update(module_state(name, m))
    out.update(adapter.extra_tensors)
    return out


def save_peft(
    adapter: Adapter,
    path: str | os.PathLike[str],
    overwrite: bool = False,
    extra_files: dict[str, bytes] | None = None,
) -> Path:
    """Write a PEFT directory atomically: it appears whole under ``path`` or not at all."""
    path = Path(path)
    if not overwrite:
        require_free_dir(path)
    config = adapter.canonical_config()
    with atomic_directory(path, overwrite=True) as tmp:
        save_tensors(to_state_dict(adapter), tmp / WEIGHTS_NAME,
                     metadata={"format": "pt", **adapter.metadata})
        with atomic_file(tmp / CONFIG_NAME, "w") as fh:
            fh.write(config.to_json())
        for rel, data in (extra_files or {}).items():
            with atomic_file(tmp / rel, "wb") as fh:
                fh.write(data)
    return path


class PeftFile:
    """A PEFT adapter directory opened for reading one module at a time.

    ``adapter`` has the config and every module with its shapes and dtypes, its tensors on
    the meta device (checked as ``load_peft`` checks them; what a fusion plans with);
    ``module(name)`` reads that module's tensors with positioned reads, so a process never
    holds more of the file than the modules it is working on. A pickle-only directory is
    loaded whole (``allow_pickle``). Close it, or use it as a context manager.
    """

    def __init__(self, path: str | os.PathLike[str], allow_pickle: bool = False):
        self.path = Path(path)
        st = self.path / WEIGHTS_NAME
        self._fd: int | None = None
        self._keys: dict[str, list[str]] = {}
        if not st.is_file():  # no such directory, or pickle weights: as load_peft does it
            self.adapter = load_peft(self.path, allow_pickle)
            return
        config = AdapterConfig.load(self.path / CONFIG_NAME)
        header, self._start = read_header(st)
        self._header = header
        meta = {k: torch.empty(v["shape"], dtype=ST_DTYPES[v["dtype"]], device="meta")
                for k, v in header.items()}
        self.adapter = from_state_dict(config, meta, read_metadata(st))
        for key in header:
            parsed = parse_key(key)
            if parsed is not None:
                self._keys.setdefault(parsed[0], []).append(key)
        self._fd = os.open(st, os.O_RDONLY)

    def module(self, name: str, device: str | torch.device = "cpu",
               dtype: torch.dtype | None = None) -> LoraModule:
        """Module ``name`` read from disk (on ``device``, in ``dtype`` when given)."""
        if self._fd is None:
            m = self.adapter.modules[name]
        else:
            st = {}
            for key in self._keys[name]:
                info = self._header[key]
                st[key] = read_at(self._fd, self._start + info["data_offsets"][0],
                                  info["dtype"], info["shape"], WEIGHTS_NAME)
            m = from_state_dict(self.adapter.config, st).modules[name]
        return m.to(device, dtype) if (dtype is not None or str(device) != "cpu") else m

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> PeftFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_peft(path: str | os.PathLike[str], allow_pickle: bool = False) -> PeftFile:
    return PeftFile(path, allow_pickle)


class PeftWriter:
    """Writes a PEFT adapter module by module (see ``peft_writer``)."""

    def __init__(self, tmp: Path, planned: dict[str, LoraModule], dtype: torch.dtype,
                 metadata: dict[str, str]):
        entries = []
        for name, m in planned.items():
            entries += [(k, ST_NAMES[dtype], list(t.shape))
                        for k, t in module_state(name, m).items()]
        self.weights = StreamWriter(tmp / WEIGHTS_NAME, entries, {"format": "pt", **metadata})
        self.modules: dict[str, LoraModule] = {}
        self.extra_files: dict[str, bytes] = {}  # written beside the weights at the end

    def add(self, name: str, m: LoraModule) -> None:
        """Write one module's tensors; keep its shapes (on the meta device) for the config."""
        for key, t in module_state(name, m).items():
            self.weights.write(key, t)
        self.modules[name] = m.to("meta")


@contextlib.contextmanager
def peft_writer(
    path: str | os.PathLike[str],
    planned: dict[str, LoraModule],
    dtype: torch.dtype,
    config: Callable[[dict[str, LoraModule]], AdapterConfig],
    extra_files: dict[str, bytes] | None = None,
    metadata: dict[str, str] | None = None,
    overwrite: bool = False,
) -> Iterator[PeftWriter]:
    """Write a PEFT directory one module at a time, atomically (whole or not at all).

    ``planned`` has every module that may be written, with its largest possible shapes (the
    weights file's header is reserved for them, then filled in last); ``config`` makes the
    adapter config from the modules written (their tensors on the meta device), since ranks
    are known only at the end. Tensors are written in ``dtype``; files put in the writer's
    ``extra_files`` before the block ends are written too.
    """
    path = Path(path)
    if not overwrite:
        require_free_dir(path)
    with atomic_directory(path, overwrite=True) as tmp:
        w = PeftWriter(tmp, planned, dtype, metadata or {})
        w.extra_files.update(extra_files or {})
        try:
            yield w
        except BaseException:
            w.weights.abort()
            raise
        w.weights.close()
        with atomic_file(tmp / CONFIG_NAME, "w") as fh:
            fh.write(config(w.modules).to_json())
        for rel, data in w.extra_files.items():
            with atomic_file(tmp / rel, "wb") as fh:
                fh.write(data)


def convert_residual(trained: Adapter, initial: Adapter) -> Adapter:
    """Turn a PiSSA/OLoRA/CorDA-style adapter into a plain delta against the original base.

    Such adapters train on ``W_res = W - s B0 A0``; the change to the original ``W`` is
    ``s (B A - B0 A0) = s [B, -B0] @ [A; A0]`` — the same conversion PEFT's
    ``path_initial_model_for_weight_conversion`` performs, at doubled rank.
    """
    trained.require_lora("residual conversion")
    if set(trained.modules) != set(initial.modules):
        raise ShapeMismatchError("the initial adapter does not have the same modules as the trained one")
    modules = {}
    for name, m in trained.modules.items():
        m0 = initial.modules[name]
        if m0.A.shape != m.A.shape or m0.B.shape != m.B.shape:
            raise ShapeMismatchError(f"module {name!r}: initial and trained factor shapes differ")
        modules[name] = LoraModule(
            A=torch.cat([m.A, m0.A.to(m.A.dtype)], 0), B=torch.cat([m.B, -m0.B.to(m.B.dtype)], 1),
            scale=m.scale, magnitude=m.magnitude, kind=m.kind, fan_in_fan_out=m.fan_in_fan_out,
        )
    cfg = trained.config.copy()
    cfg.data["init_lora_weights"] = True
    out = Adapter(cfg, modules, dict(trained.extra_tensors), dict(trained.metadata))
    out.config = out.canonical_config()
    return out


def read_config_only(path: str | os.PathLike[str]) -> dict:
    return json.loads((Path(path) / CONFIG_NAME).read_text())
