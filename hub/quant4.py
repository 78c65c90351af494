"""4-bit weights as bitsandbytes stores them (NF4 / FP4), read and written in plain torch.

QLoRA adapters are trained over a base whose Linear weights transformers saved with
bitsandbytes; merging or composing them must read that layout without bitsandbytes (a CUDA-first
native library) installed. A 4-bit weight ``W`` (``out x in``, ``n`` values) is a group of
tensors under its key:

- ``<key>``: the codes, two 4-bit codes a byte (high nibble first), shape ``[ceil(n/2), 1]``
  as uint8, or the same bytes viewed as ``bnb_4bit_quant_storage`` (e.g. bfloat16 for FSDP);
- ``<key>.absmax``: one float32 scale per block of ``blocksize`` values;
- ``<key>.quant_map``: the 16-value code book (NF4 quantiles or FP4 values, in [-1, 1]);
- ``<key>.quant_state.bitsandbytes__nf4`` (or ``__fp4``): a JSON object stored as uint8 bytes:
  ``quant_type``, ``blocksize``, ``dtype`` (what dequantization yields), ``shape``;
- with double quantization, ``absmax`` holds 8-bit codes of ``absmax - nested_offset`` in
  blocks of ``nested_blocksize`` with their own ``<key>.nested_absmax`` and
  ``<key>.nested_quant_map`` (bitsandbytes' dynamic 8-bit map); the JSON adds
  ``nested_blocksize``, ``nested_dtype`` and ``nested_offset``.

Dequantization is ``quant_map[code] * absmax[block]`` in float32, cast to the recorded dtype —
bit for bit what bitsandbytes computes (the tests compare with ``dequantize_4bit``).
Quantization rounds each value to the nearest code after scaling by its block's absmax, as
bitsandbytes' 4-bit kernel does (same bytes); the nested 8-bit codes are the nearest too, where
bitsandbytes' CPU kernel picks the neighbouring code for about 0.15% of the scales, those lying
within 2e-5 (on the [-1, 1] scale) of a midpoint between two codes: one 8-bit step of a scale.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

import torch

from lorahive.hub.errors import InvalidRequestError

QUANT_TYPES = ("nf4", "fp4")
BLOCKSIZES = (32, 64, 128, 256, 512, 1024, 2048, 4096)
STATE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
PACKED_PREFIX = "quant_state.bitsandbytes__"
SUFFIXES = ("absmax", "quant_map", "nested_absmax", "nested_quant_map")

# The NF4 code book: quantiles of N(0, 1) normalised to [-1, 1] with an exact zero (QLoRA,
# arXiv:2305.14314, appendix E). FP4: 1 sign, 2 exponent, 1 mantissa bits, bias 2, in code
# order, divided by the largest magnitude.
NF4_CODE = torch.tensor([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
], dtype=torch.float32)
FP4_CODE = torch.tensor([0.0, 0.0625, 8.0, 12.0, 4.0, 6.0, 2.0, 3.0,
                         -0.0, -0.0625, -8.0, -12.0, -4.0, -6.0, -2.0, -3.0],
                        dtype=torch.float32) / 12.0
CODES = {"nf4": NF4_CODE, "fp4": FP4_CODE}


@dataclass(frozen=True)
class Nested:
    """Double quantization of the per-block scales: 8-bit codes over blocks of their own."""

    absmax: torch.Tensor  # float32 [ceil(blocks / blocksize)]
    code: torch.Tensor  # float32 [256]
    blocksize: int
    offset: float
    dtype: torch.dtype = torch.float32


@dataclass(frozen=True)
class Quant4State:
    """Everything needed besides the codes to dequantize one 4-bit weight."""

    quant_type: str
    blocksize: int
    dtype: torch.dtype  # what dequantization yields (the weight's dtype when quantized)
    shape: tuple[int, ...]
    absmax: torch.Tensor  # float32 [blocks], or uint8 codes when nested
    code: torch.Tensor  # float32 [16]
    nested: Nested | None = None

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def packed_bytes(self) -> int:
        return (self.numel + 1) // 2

    def to(self, device: torch.device | str) -> Quant4State:
        nq = self.nested
        if nq is not None:
            nq = replace(nq, absmax=nq.absmax.to(device), code=nq.code.to(device))
        return replace(self, absmax=self.absmax.to(device), code=self.code.to(device), nested=nq)

    def scales(self) -> torch.Tensor:
        """Per-block float32 scales (undoing double quantization)."""
        if self.nested is None:
            return self.absmax.float()
        nq = self.nested
        values = nq.code.float()[self.absmax.reshape(-1).long()]
        blocks = _per_block(values, nq.absmax.float(), nq.blocksize)
        return blocks + torch.tensor(nq.offset, dtype=torch.float32, device=values.device)


# naming -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Quant4Keys:
    """The checkpoint keys of one 4-bit weight."""

    weight: str
    quant_type: str  # from the packed state's key suffix
    packed_state: str
    absmax: str
    quant_map: str
    nested_absmax: str | None = None
    nested_quant_map: str | None = None

    @property
    def state_keys(self) -> list[str]:
        keys = [self.absmax, self.quant_map, self.nested_absmax, self.nested_quant_map,
                self.packed_state]
        return [k for k in keys if k is not None]

    @property
    def all_keys(self) -> list[str]:
        return [self.weight, *self.state_keys]


def find_quantized(keys: Iterable[str]) -> dict[str, Quant4Keys]:
    """Group a checkpoint's keys into 4-bit weights: weight key -> its keys.

    A packed quant state names its weight; every piece it needs must be there. Pieces without
    a packed state (``.absmax`` alone) mean the checkpoint is incomplete.
    """
    keyset = set(keys)
    found: dict[str, Quant4Keys] = {}
    for key in sorted(keyset):
        head, sep, kind = key.rpartition("." + PACKED_PREFIX)
        if not sep:
            continue
        if kind not in QUANT_TYPES:
            raise InvalidRequestError(
                f"{key}: unknown 4-bit quant type {kind!r}; bitsandbytes checkpoints use "
                f"{' or '.join(QUANT_TYPES)}")
        if head in found:
            raise InvalidRequestError(f"{head} has two packed quant states; the checkpoint is "
                                      "corrupt")
        missing = [k for k in (head, f"{head}.absmax", f"{head}.quant_map") if k not in keyset]
        nested = [f"{head}.nested_absmax", f"{head}.nested_quant_map"]
        if sum(k in keyset for k in nested) == 1:
            missing += [k for k in nested if k not in keyset]
        if missing:
            raise InvalidRequestError(
                f"4-bit weight {head} lacks {', '.join(missing)}; the checkpoint is incomplete")
        has_nested = nested[0] in keyset
        found[head] = Quant4Keys(head, kind, key, f"{head}.absmax", f"{head}.quant_map",
                                 nested[0] if has_nested else None,
                                 nested[1] if has_nested else None)
    orphans = sorted(k.rpartition(".")[0] for k in keyset
                     if k.endswith(".absmax") and k.rpartition(".")[0] in keyset
                     and k.rpartition(".")[0] not in found)
    if orphans:
        raise InvalidRequestError(
            f"4-bit weight {orphans[0]} has no quant state ({orphans[0]}.{PACKED_PREFIX}nf4 "
            "or fp4); the checkpoint is incomplete or was not written by transformers")
    return found


def is_4bit_config(config: Mapping) -> bool:
    """Whether a model's ``config.json`` says its weights are bitsandbytes 4-bit.

    8-bit bitsandbytes checkpoints (LLM.int8 row-wise scales) are a different format and
    refused with a clear message.
    """
    qc = config.get("quantization_config")
    if not isinstance(qc, Mapping) or qc.get("quant_method") != "bitsandbytes":
        return False
    if qc.get("load_in_8bit") or qc.get("_load_in_8bit"):
        raise InvalidRequestError(
            "this base is bitsandbytes 8-bit (LLM.int8); only 4-bit (NF4/FP4) bases are read: "
            "merge into the original 16-bit base instead")
    return bool(qc.get("load_in_4bit") or qc.get("_load_in_4bit"))


# the packed JSON state ----------------------------------------------------------------------
def decode_packed(data: torch.Tensor, key: str) -> dict:
    """The JSON object bitsandbytes packs into ``quant_state.bitsandbytes__*`` as bytes."""
    try:
        raw = data.reshape(-1).contiguous().view(torch.uint8).cpu().numpy().tobytes()
        obj = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise InvalidRequestError(f"{key} is not a JSON quant state; the checkpoint is corrupt") \
            from None
    if not isinstance(obj, dict):
        raise InvalidRequestError(f"{key} is not a JSON object; the checkpoint is corrupt")
    return obj


def encode_packed(state: Quant4State) -> torch.Tensor:
    """The packed JSON state as bitsandbytes writes it (same keys, order and separators)."""
    obj: dict = {"quant_type": state.quant_type, "blocksize": state.blocksize,
                 "dtype": _dtype_name(state.dtype), "shape": list(state.shape)}
    if state.nested is not None:
        obj.update(nested_blocksize=state.nested.blocksize,
                   nested_dtype=_dtype_name(state.nested.dtype),
                   nested_offset=state.nested.offset)
    return torch.tensor(list(json.dumps(obj).encode("utf-8")), dtype=torch.uint8)


def packed_state_bound(state: Quant4State) -> int:
    """Most bytes ``encode_packed`` can take for a state like this one, whatever its offset
    (a float's shortest repr is at most 24 characters)."""
    if state.nested is None:
        return int(encode_packed(state).numel())
    base = encode_packed(replace(state, nested=replace(state.nested, offset=0.0)))
    return int(base.numel()) - len("0.0") + 24


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _field(obj: dict, name: str, key: str, kind: type | tuple[type, ...]):
    value = obj.get(name)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise InvalidRequestError(f"{key}: quant state field {name!r} is missing or malformed; "
                                  "the checkpoint is corrupt")
    return value


@dataclass(frozen=True)
class Quant4Meta:
    """What the packed JSON state says: enough to know a 4-bit weight's shape without its
    scales (a checkpoint is checked against an adapter before any scale is read)."""

    quant_type: str
    blocksize: int
    dtype: torch.dtype
    shape: tuple[int, ...]
    nested_blocksize: int | None = None
    nested_offset: float | None = None
    nested_dtype: torch.dtype | None = None

    @property
    def blocks(self) -> int:
        return -(-math.prod(self.shape) // self.blocksize)


def parse_meta(keys: Quant4Keys, packed_state: torch.Tensor) -> Quant4Meta:
    """Validate and read the packed JSON state of one 4-bit weight."""
    key = keys.packed_state
    obj = decode_packed(packed_state, key)
    qt = _field(obj, "quant_type", key, str)
    if qt not in QUANT_TYPES:
        raise InvalidRequestError(f"{key}: unknown 4-bit quant type {qt!r}; bitsandbytes "
                                  f"checkpoints use {' or '.join(QUANT_TYPES)}")
    if qt != keys.quant_type:
        raise InvalidRequestError(f"{key} says quant type {qt!r}; the checkpoint is corrupt")
    blocksize = _field(obj, "blocksize", key, int)
    if blocksize not in BLOCKSIZES:
        raise InvalidRequestError(f"{key}: blocksize {blocksize} is not one of {BLOCKSIZES}")
    dtype = STATE_DTYPES.get(_field(obj, "dtype", key, str))
    if dtype is None:
        raise InvalidRequestError(f"{key}: dtype {obj['dtype']!r} is not one of "
                                  f"{', '.join(STATE_DTYPES)}")
    shape = _field(obj, "shape", key, list)
    if not shape or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0
                            for d in shape):
        raise InvalidRequestError(f"{key}: malformed shape {shape!r}")
    if keys.nested_absmax is None:
        return Quant4Meta(qt, blocksize, dtype, tuple(shape))
    nb = _field(obj, "nested_blocksize", key, int)
    offset = _field(obj, "nested_offset", key, (int, float))
    ndt = STATE_DTYPES.get(_field(obj, "nested_dtype", key, str))
    if nb <= 0 or ndt is None:
        raise InvalidRequestError(f"{key}: malformed nested quant state")
    return Quant4Meta(qt, blocksize, dtype, tuple(shape), nb, float(offset), ndt)


def parse_state(keys: Quant4Keys, tensors: Mapping[str, torch.Tensor]) -> Quant4State:
    """Build the state of one 4-bit weight from its (already read) state tensors."""
    meta = parse_meta(keys, tensors[keys.packed_state])
    code = tensors[keys.quant_map].float().reshape(-1)
    if code.numel() != 16:
        raise InvalidRequestError(f"{keys.quant_map} has {code.numel()} values; a 4-bit code "
                                  "book has 16")
    absmax = tensors[keys.absmax].reshape(-1)
    if absmax.numel() != meta.blocks:
        raise InvalidRequestError(
            f"{keys.absmax} has {absmax.numel()} scales; {math.prod(meta.shape)} values in "
            f"blocks of {meta.blocksize} need {meta.blocks}")
    nested = None
    if meta.nested_blocksize is not None:
        assert keys.nested_absmax and keys.nested_quant_map
        if absmax.dtype != torch.uint8:
            raise InvalidRequestError(f"{keys.absmax} must hold 8-bit codes under double "
                                      "quantization; the checkpoint is corrupt")
        nabs = tensors[keys.nested_absmax].float().reshape(-1)
        ncode = tensors[keys.nested_quant_map].float().reshape(-1)
        if ncode.numel() != 256 or nabs.numel() != -(-meta.blocks // meta.nested_blocksize):
            raise InvalidRequestError(f"{keys.packed_state}: nested scales or code book have "
                                      "the wrong size; the checkpoint is corrupt")
        nested = Nested(nabs, ncode, meta.nested_blocksize, float(meta.nested_offset or 0.0),
                        meta.nested_dtype or torch.float32)
    elif not absmax.dtype.is_floating_point:
        raise InvalidRequestError(f"{keys.absmax} holds codes but the checkpoint has no "
                                  "nested_absmax; the checkpoint is incomplete")
    return Quant4State(meta.quant_type, meta.blocksize, meta.dtype, meta.shape, absmax, code,
                       nested)


def state_tensors(keys_of: str, state: Quant4State) -> dict[str, torch.Tensor]:
    """The state tensors transformers writes beside the codes of weight ``keys_of``."""
    out = {f"{keys_of}.absmax": state.absmax, f"{keys_of}.quant_map": state.code}
    if state.nested is not None:
        out[f"{keys_of}.nested_absmax"] = state.nested.absmax
        out[f"{keys_of}.nested_quant_map"] = state.nested.code
    out[f"{keys_of}.{PACKED_PREFIX}{state.quant_type}"] = encode_packed(state)
    return out


# the arithmetic -----------------------------------------------------------------------------
def _per_block(values: torch.Tensor, scales: torch.Tensor, blocksize: int) -> torch.Tensor:
    """``values[i] * scales[i // blocksize]`` in float32, the last block possibly short."""
    n = values.numel()
    full = n - n % blocksize
    out = torch.empty(n, dtype=torch.float32, device=values.device)
    out[:full] = (values[:full].view(-1, blocksize) * scales[: full // blocksize].view(-1, 1)
                  ).reshape(-1)
    if full < n:
        out[full:] = values[full:] * scales[-1]
    return out


def _packed_bytes(packed: torch.Tensor, n: int) -> torch.Tensor:
    """The packed codes as a flat uint8 tensor, checked against the weight's size."""
    b = packed.reshape(-1).contiguous().view(torch.uint8)
    if b.numel() != (n + 1) // 2:
        raise InvalidRequestError(f"packed 4-bit data has {b.numel()} bytes; {n} values need "
                                  f"{(n + 1) // 2}")
    return b


def dequantize(packed: torch.Tensor, state: Quant4State, dtype: torch.dtype | None = None,
               device: torch.device | str | None = None) -> torch.Tensor:
    """The weight, exactly as bitsandbytes' ``dequantize_4bit`` gives it (``dtype`` defaults
    to the recorded one; float32 is exact, every other dtype is one rounding of it)."""
    dev = torch.device(device) if device is not None else packed.device
    state = state.to(dev)
    b = _packed_bytes(packed.to(dev), state.numel)
    # one lookup per byte: both of its codes' values at once (a 256 x 2 table)
    idx = torch.arange(256, device=dev)
    pairs = torch.stack([state.code.float()[idx >> 4], state.code.float()[idx & 15]], dim=1)
    values = torch.index_select(pairs, 0, b.int()).reshape(-1)[: state.numel]
    out = _per_block(values, state.scales(), state.blocksize)
    return out.to(dtype or state.dtype).reshape(state.shape)


def codes_changed(old: torch.Tensor, new: torch.Tensor, n: int) -> float:
    """Share of the ``n`` 4-bit codes that differ between two packed weights."""
    x = _packed_bytes(old.to(new.device), n) ^ _packed_bytes(new, n)
    return float(((x >> 4) != 0).sum() + ((x & 15) != 0).sum()) / n


def _quantize_blocks(x: torch.Tensor, blocksize: int, bounds: torch.Tensor,
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale each block by its absmax and bucket every value: ``(bucket index, absmax)``.

    Same arithmetic as bitsandbytes' 4-bit quantizer: full blocks multiply by the reciprocal,
    the short last block divides.
    """
    n = x.numel()
    full = n - n % blocksize
    blocks = x[:full].view(-1, blocksize)
    absmax = blocks.abs().amax(dim=1)
    scaled = torch.clamp(blocks * (1.0 / absmax.clamp(min=1e-38).view(-1, 1)), -1, 1)
    scaled = scaled.reshape(-1)
    if full < n:
        last = x[full:].abs().max().clamp(min=1e-38)
        absmax = torch.cat([absmax, last.view(1)])
        scaled = torch.cat([scaled, torch.clamp(x[full:] / last, -1, 1)])
    if scaled.numel() % 2:
        scaled = torch.nn.functional.pad(scaled, (0, 1))
    return torch.bucketize(scaled, bounds), absmax


def _nearest_8bit(x: torch.Tensor, code: torch.Tensor, blocksize: int,
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Blockwise 8-bit codes of ``x`` in ``code`` (sorted, 256 values): nearest, ties left."""
    n = x.numel()
    nb = -(-n // blocksize)
    padded = torch.nn.functional.pad(x, (0, nb * blocksize - n)).view(nb, blocksize)
    absmax = padded.abs().amax(dim=1)
    safe = torch.where(absmax > 0, absmax, torch.ones_like(absmax))
    normed = (padded / safe.view(-1, 1)).reshape(-1)[:n]
    c = code.clone()
    c[0] = -1.0  # the search range is [-1, 1] (the map's own lowest value is -0.993)
    left = (torch.searchsorted(c, normed, right=True) - 1).clamp(0, c.numel() - 1)
    right = (left + 1).clamp(max=c.numel() - 1)
    go_right = (left < c.numel() - 1) & ((normed - c[right]).abs() < (normed - c[left]).abs())
    return (left + go_right.long()).to(torch.uint8), absmax


def quantize(W: torch.Tensor, quant_type: str, blocksize: int = 64,
             like: Quant4State | None = None, storage: torch.dtype = torch.uint8,
             ) -> tuple[torch.Tensor, Quant4State]:
    """Quantize ``W`` to 4-bit codes and a state, as bitsandbytes' ``quantize_4bit``.

    ``like`` carries the double-quantization settings (and code books) of the weight being
    replaced: nested when it was nested, with its 8-bit map. The recorded dtype is ``W``'s.
    """
    if quant_type not in QUANT_TYPES:
        raise InvalidRequestError(f"unknown 4-bit quant type {quant_type!r}; use "
                                  f"{' or '.join(QUANT_TYPES)}", params="requantize")
    if blocksize not in BLOCKSIZES:
        raise InvalidRequestError(f"blocksize {blocksize} is not one of {BLOCKSIZES}")
    if W.dtype not in STATE_DTYPES.values():
        raise InvalidRequestError(f"cannot quantize a {W.dtype} tensor to 4 bits")
    dev = W.device
    code = CODES[quant_type].to(dev)
    order = torch.argsort(code)
    bounds = (code[order[:-1]] + code[order[1:]]) / 2
    bucket, absmax = _quantize_blocks(W.reshape(-1).float(), blocksize, bounds)
    q = bucket if quant_type == "nf4" else order[bucket]
    q8 = q.to(torch.uint8)
    packed = ((q8[::2] << 4) | q8[1::2]).unsqueeze(1)
    if storage != torch.uint8:
        size = torch.empty((), dtype=storage).element_size()
        if packed.numel() % size:
            raise InvalidRequestError(f"{packed.numel()} packed bytes do not fill {storage} "
                                      "storage elements")
        packed = packed.reshape(-1).view(storage).unsqueeze(1)
    nested = None
    if like is not None and like.nested is not None:
        offset = absmax.mean()
        qabs, nabs = _nearest_8bit(absmax - offset, like.nested.code.to(dev),
                                   like.nested.blocksize)
        nested = Nested(nabs, like.nested.code.to(dev), like.nested.blocksize, offset.item(),
                        like.nested.dtype)
        absmax = qabs
    return packed, Quant4State(quant_type, blocksize, W.dtype, tuple(W.shape), absmax, code,
                               nested)


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """``||got - want|| / ||want||`` in float32 (0 when both are 0)."""
    ref = float(torch.linalg.vector_norm(want.float()))
    err = float(torch.linalg.vector_norm(got.float() - want.float()))
    return err / ref if ref > 0 else (0.0 if err == 0 else math.inf)
