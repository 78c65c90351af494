"""The central object: a LoRA-family adapter in factored form.

Modules are keyed by the base model's own module names (``model.layers.0.self_attn.q_proj``)
so an adapter lines up with a base checkpoint (``<name>.weight``) without building the model.
Each module keeps ``A`` (r x in), ``B`` (out x r) and its effective scale; the dense delta is
formed only when asked for.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from lorahive.hub.config import AdapterConfig
from lorahive.hub.devices import resolve_device
from lorahive.hub.errors import ShapeMismatchError, UnsupportedAdapterError
from lorahive.hub.lowrank import energy_rank, singular_values


@dataclass
class LoraModule:
    """One adapted weight: ``delta = scale * B @ A`` in the (out x in) frame.

    ``kind`` says how the delta maps onto the base weight: ``linear`` (as is, or transposed
    with ``fan_in_fan_out``), ``embedding`` (transposed: the weight is vocab x dim) or ``conv``
    (``A`` is stored flattened; ``a_shape`` restores the kernel).
    """

    A: torch.Tensor
    B: torch.Tensor
    scale: float
    magnitude: torch.Tensor | None = None
    kind: str = "linear"
    fan_in_fan_out: bool = False
    a_shape: tuple[int, ...] | None = None
    b_shape: tuple[int, ...] | None = None

    @property
    def rank(self) -> int:
        return int(self.A.shape[0])

    @property
    def in_features(self) -> int:
        return int(self.A.shape[1])

    @property
    def out_features(self) -> int:
        return int(self.B.shape[0])

    @property
    def weight_shape(self) -> tuple[int, ...]:
        """Shape of the base weight this module adapts."""
        if self.kind == "conv" and self.a_shape is not None:
            return (self.out_features, *self.a_shape[1:])
        if self.kind == "embedding" or self.fan_in_fan_out:
            return (self.in_features, self.out_features)
        return (self.out_features, self.in_features)

    def delta_matrix(
        self, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
    ) -> torch.Tensor:
        """``scale * B @ A`` as an (out x in) matrix."""
        A = self.A.to(device=device, dtype=dtype)
        B = self.B.to(device=device, dtype=dtype)
        return (B @ A) * self.scale

    def to_weight_layout(self, m: torch.Tensor) -> torch.Tensor:
        """Map an (out x in) matrix onto the base weight's layout."""
        if self.kind == "conv" and self.a_shape is not None:
            return m.reshape(self.weight_shape)
        if self.kind == "embedding" or self.fan_in_fan_out:
            return m.T
        return m

    def delta(
        self,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        base_weight: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The change this module makes to its base weight, in the weight's layout.

        DoRA's change depends on the base weight (column norms are re-normalised), so
        ``base_weight`` is required for DoRA modules.
        """
        m = self.delta_matrix(device, dtype)
        if self.magnitude is None:
            return self.to_weight_layout(m)
        if base_weight is None:
            raise UnsupportedAdapterError(
                "a DoRA module's delta depends on the base weight; pass base_weight "
                "(lorahive merge reads it from the base checkpoint)"
            )
        if self.kind != "linear":
            raise UnsupportedAdapterError("DoRA is supported on Linear layers only")
        W = base_weight.to(device=device, dtype=dtype)
        W_oi = W.T if self.fan_in_fan_out else W
        merged = W_oi + m
        norm = torch.linalg.norm(merged, dim=1)
        merged = (self.magnitude.to(device=device, dtype=dtype) / norm).view(-1, 1) * merged
        return self.to_weight_layout(merged - W_oi)

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None):
        mag = self.magnitude
        if mag is not None:
            mag = mag.to(device=device, dtype=dtype)
        return replace(
            self, A=self.A.to(device=device, dtype=dtype), B=self.B.to(device=device, dtype=dtype),
            magnitude=mag,
        )

    def num_parameters(self) -> int:
        n = self.A.numel() + self.B.numel()
        return n + (self.magnitude.numel() if self.magnitude is not None else 0)


@dataclass
class ModuleStats:
    name: str
    shape: tuple[int, ...]
    rank: int
    scale: float
    norm: float
    singular_values: list[float]
    effective_rank_90: int
    effective_rank_99: int
    dora: bool

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "shape": list(self.shape), "rank": self.rank,
            "scale": self.scale, "norm": self.norm, "singular_values": self.singular_values,
            "effective_rank_90": self.effective_rank_90,
            "effective_rank_99": self.effective_rank_99, "dora": self.dora,
        }


@dataclass
class Adapter:
    """A LoRA-family adapter: its PEFT config plus per-module factors.

    ``extra_tensors`` holds tensors that are not factors (``modules_to_save`` copies, saved
    embedding base layers, LoRA biases) under their PEFT keys, and every tensor of an opaque
    (non-LoRA) adapter; they are written back verbatim.
    """

    config: AdapterConfig
    modules: dict[str, LoraModule] = field(default_factory=dict)
    extra_tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)

    # construction -----------------------------------------------------------------------
    @classmethod
    def from_factors(
        cls,
        modules: dict[str, LoraModule],
        base_model: str | None = None,
        task_type: str | None = None,
        base_config: AdapterConfig | None = None,
    ) -> Adapter:
        """A new plain-LoRA adapter around given factors; the config is derived from them."""
        data = dict(base_config.data) if base_config is not None else {}
        data["peft_type"] = "LORA"
        data.setdefault("base_model_name_or_path", base_model)
        if base_model is not None:
            data["base_model_name_or_path"] = base_model
        if task_type is not None:
            data["task_type"] = task_type
        data.setdefault("task_type", None)
        data.setdefault("bias", "none")
        data.setdefault("lora_dropout", 0.0)
        data.setdefault("inference_mode", True)
        for key in ("use_rslora", "use_dora", "fan_in_fan_out"):
            data[key] = False
        data["use_dora"] = any(m.magnitude is not None for m in modules.values())
        ad = cls(AdapterConfig(data), modules)
        ad.config = ad.canonical_config()
        return ad

    def canonical_config(self) -> AdapterConfig:
        """A complete config whose r/alpha/patterns reproduce every module's rank and scale
        exactly and whose ``target_modules`` select every adapted module, as PEFT reads it.

        Kept verbatim when it already does and states ``r``, ``lora_alpha`` and
        ``target_modules`` (so loading and saving is a no-op); otherwise rewritten as a plain
        LoRA config with per-module patterns where modules differ.
        """
        cfg = self.config
        if not self.modules or not cfg.is_lora_family:
            return cfg
        exact = cfg.peft_type == "LORA" and all(
            cfg.rank_for(n) == m.rank and math.isclose(cfg.scale_for(n, m.rank), m.scale,
                                                       rel_tol=1e-6, abs_tol=1e-12)
            for n, m in self.modules.items()
        )
        stated = "r" in cfg.data and "lora_alpha" in cfg.data
        targeted = all(cfg.selects(n) or (cfg.target_modules == "all-linear"
                                          and cfg.selects(n) is None) for n in self.modules)
        if exact and stated and targeted:
            return cfg
        data = dict(cfg.data)
        rs = data.get("use_rslora", False) and cfg.peft_type == "LORA"

        def alpha_of(m: LoraModule) -> float:
            return m.scale * (math.sqrt(m.rank) if rs else m.rank)

        r = Counter(m.rank for m in self.modules.values()).most_common(1)[0][0]
        alphas = Counter(round(alpha_of(m), 10) for m in self.modules.values() if m.rank == r)
        alpha = alphas.most_common(1)[0][0] if alphas else float(r)
        alpha = int(alpha) if float(alpha).is_integer() else alpha
        data.update(peft_type="LORA", r=r, lora_alpha=alpha, use_rslora=rs)
        data["rank_pattern"] = {n: m.rank for n, m in self.modules.items() if m.rank != r}
        data["alpha_pattern"] = {}
        for n, m in self.modules.items():
            a = alpha_of(m)
            if not math.isclose(a, float(alpha), rel_tol=1e-9):
                data["alpha_pattern"][n] = int(a) if float(a).is_integer() else a
        for key in ("init_r", "target_r", "tinit", "tfinal", "deltaT", "beta1", "beta2",
                    "orth_reg_weight", "total_step"):
            data.pop(key, None)
        if isinstance(data.get("init_lora_weights"), str):
            data["init_lora_weights"] = True
        data["target_modules"] = sorted({n.rsplit(".", 1)[-1] for n in self.modules})
        out = AdapterConfig(data)
        if not all(out.selects(n) for n in self.modules):  # layer or exclusion filters
            for key in ("exclude_modules", "layers_to_transform", "layers_pattern"):
                out.data.pop(key, None)
        return out

    # views -------------------------------------------------------------------------------
    @property
    def is_lora(self) -> bool:
        return self.config.is_lora_family

    @property
    def peft_type(self) -> str:
        return self.config.peft_type

    @property
    def base_model(self) -> str | None:
        return self.config.base_model

    @property
    def ranks(self) -> dict[str, int]:
        return {n: m.rank for n, m in self.modules.items()}

    @property
    def max_rank(self) -> int:
        return max((m.rank for m in self.modules.values()), default=0)

    @property
    def target_module_types(self) -> list[str]:
        return sorted({n.rsplit(".", 1)[-1] for n in self.modules})

    def require_lora(self, what: str = "this operation") -> None:
        if not self.is_lora:
            raise UnsupportedAdapterError(
                f"{what} needs a LoRA-family adapter; this one is {self.peft_type}, which "
                "lorahive stores, lists and serves but does not do math on"
            )

    def module(self, name: str) -> LoraModule:
        self.require_lora()
        try:
            return self.modules[name]
        except KeyError:
            raise ShapeMismatchError(f"adapter has no module {name!r}") from None

    # math ---------------------------------------------------------------------------------
    def delta(
        self,
        name: str,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        base_weight: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Dense change to ``<name>.weight`` on ``device`` in ``dtype``."""
        return self.module(name).delta(resolve_device(device), dtype, base_weight)

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None):
        dev = resolve_device(device) if device is not None else None
        return replace(
            self,
            modules={n: m.to(dev, dtype) for n, m in self.modules.items()},
            extra_tensors={k: v.to(device=dev) for k, v in self.extra_tensors.items()},
        )

    def num_parameters(self) -> int:
        n = sum(m.num_parameters() for m in self.modules.values())
        return n + sum(v.numel() for v in self.extra_tensors.values())

    def module_stats(self, name: str) -> ModuleStats:
        m = self.module(name)
        s = singular_values(m.B, m.A) * abs(m.scale)
        return ModuleStats(
            name=name, shape=m.weight_shape, rank=m.rank, scale=m.scale,
            norm=float(torch.linalg.vector_norm(s)), singular_values=[float(x) for x in s],
            effective_rank_90=energy_rank(s, 0.90), effective_rank_99=energy_rank(s, 0.99),
            dora=m.magnitude is not None,
        )

    def stats(self) -> list[ModuleStats]:
        self.require_lora("statistics")
        return [self.module_stats(n) for n in self.modules]

    def summary(self) -> dict[str, Any]:
        """Aggregate figures the registry stores and `inspect` prints."""
        out: dict[str, Any] = {
            "peft_type": self.peft_type,
            "base_model": self.base_model,
            "task_type": self.config.task_type,
            "num_parameters": self.num_parameters(),
            "num_modules": len(self.modules),
        }
        if self.is_lora and self.modules:
            ranks = [m.rank for m in self.modules.values()]
            out.update(
                rank=max(ranks), min_rank=min(ranks), lora_alpha=self.config.lora_alpha,
                use_rslora=self.config.use_rslora, use_dora=self.config.use_dora,
                target_modules=self.target_module_types,
            )
        return out
