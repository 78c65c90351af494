"""PEFT's ``adapter_config.json`` as a typed view over the verbatim dict.

Every key is preserved (unknown ones too) so a config saved here is the config that was read.
Per-module rank and alpha follow PEFT's pattern matching: a ``rank_pattern``/``alpha_pattern``
key applies to a module whose name ends with it (``(.*\\.)?(key)$``).
"""

from __future__ import annotations

import copy
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lorahive.hub.errors import InvalidAdapterError

LORA_FAMILY = {"LORA", "ADALORA"}
# init schemes that train on a residual base: the saved factors are a delta against W_res.
RESIDUAL_INITS = ("pissa", "olora", "corda", "milora")


def pattern_key(patterns: dict[str, Any], module: str) -> str | None:
    """PEFT's rule: the first pattern ``key`` such that ``module`` matches ``(.*\\.)?(key)$``."""
    if module in patterns:
        return module
    for key in patterns:
        if re.match(rf"(.*\.)?({key})$", module):
            return key
    return None


def _matches(spec: str | list[str], module: str) -> bool:
    """PEFT's rule for ``exclude_modules``: a regex over the whole name, or names/suffixes."""
    if isinstance(spec, str):
        return re.fullmatch(spec, module) is not None
    return module in spec or any(module.endswith(f".{k}") for k in spec)


@dataclass
class AdapterConfig:
    data: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | Path) -> AdapterConfig:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise InvalidAdapterError(
                f"no adapter_config.json in {path.parent}; is this a PEFT adapter directory?"
            ) from None
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise InvalidAdapterError(f"{path}: not valid JSON ({e})") from None
        if not isinstance(data, dict):
            raise InvalidAdapterError(f"{path}: adapter config must be a JSON object")
        if "peft_type" not in data:
            raise InvalidAdapterError(f"{path}: adapter config has no 'peft_type'")
        return cls(data)

    def to_json(self) -> str:
        return json.dumps(self.data, indent=2, sort_keys=True) + "\n"

    def copy(self) -> AdapterConfig:
        return AdapterConfig(copy.deepcopy(self.data))

    # typed views -----------------------------------------------------------------
    @property
    def peft_type(self) -> str:
        return str(self.data.get("peft_type", "LORA")).upper()

    @property
    def is_lora_family(self) -> bool:
        return self.peft_type in LORA_FAMILY

    @property
    def base_model(self) -> str | None:
        return self.data.get("base_model_name_or_path")

    @property
    def r(self) -> int:
        return int(self.data.get("r", 8))

    @property
    def lora_alpha(self) -> float:
        return float(self.data.get("lora_alpha", 8))

    @property
    def use_rslora(self) -> bool:
        return bool(self.data.get("use_rslora", False))

    @property
    def use_dora(self) -> bool:
        return bool(self.data.get("use_dora", False))

    @property
    def fan_in_fan_out(self) -> bool:
        return bool(self.data.get("fan_in_fan_out", False))

    @property
    def target_modules(self) -> list[str] | str | None:
        return self.data.get("target_modules")

    @property
    def task_type(self) -> str | None:
        return self.data.get("task_type")

    @property
    def rank_pattern(self) -> dict[str, Any]:
        return self.data.get("rank_pattern") or {}

    @property
    def alpha_pattern(self) -> dict[str, Any]:
        return self.data.get("alpha_pattern") or {}

    @property
    def residual_init(self) -> str | None:
        """The init scheme when the adapter was trained on a residual base (PiSSA, OLoRA...)."""
        init = self.data.get("init_lora_weights")
        if isinstance(init, str) and init.lower().startswith(RESIDUAL_INITS):
            return init
        return None

    # per-module values -------------------------------------------------------------
    def selects(self, module: str) -> bool | None:
        """Whether PEFT would put LoRA layers on ``module`` under this config
        (``peft.tuners.tuners_utils.check_target_module_exists``): ``target_modules`` as a
        regex over the whole name (a string), else an exact name or a ``.name`` suffix, then
        ``layers_to_transform``/``layers_pattern``; ``exclude_modules`` and
        ``modules_to_save`` take precedence. ``None`` when it cannot be told from the config:
        no ``target_modules`` (PEFT then picks per-architecture defaults) or ``all-linear``."""
        excluded = self.data.get("exclude_modules")
        if excluded and _matches(excluded, module):
            return False
        saved = self.data.get("modules_to_save") or []
        if any(re.match(rf"(^|.*\.){m}($|\..*)", module) for m in saved):
            return False
        targets = self.target_modules
        if not targets or targets == "all-linear":
            return None
        if isinstance(targets, str):
            return re.fullmatch(targets, module) is not None
        if module in targets:
            return True
        if not any(module.endswith(f".{t}") for t in targets):
            return False
        layers = self.data.get("layers_to_transform")
        if layers is None or layers == []:
            return True
        pattern = self.data.get("layers_pattern")
        patterns = [pattern] if isinstance(pattern, str) else list(pattern or [])
        found = None
        if not patterns:
            found = re.match(r".*?\.[^.]*\.(?P<idx>\d+)\.", module)
        for pat in patterns:
            found = re.match(rf"(?:^|.*?\.){pat}\.(?P<idx>\d+)\.", module)
            if found is not None:
                break
        if found is None:
            return False
        index = int(found.group("idx"))
        return index == layers if isinstance(layers, int) else index in layers

    def rank_for(self, module: str) -> int:
        if self.peft_type == "LORA":
            key = pattern_key(self.rank_pattern, module)
            if key is not None:
                return int(self.rank_pattern[key])
        return self.r

    def alpha_for(self, module: str) -> float:
        key = pattern_key(self.alpha_pattern, module)
        return float(self.alpha_pattern[key]) if key is not None else self.lora_alpha

    def scale_for(self, module: str, rank: int) -> float:
        """The factor PEFT multiplies ``B @ A`` by for this module."""
        alpha = self.alpha_for(module)
        if self.peft_type == "ADALORA":
            # AdaLoRA: scaling = alpha (or r when alpha <= 0), divided by ranknum + 1e-5
            scaling = alpha if alpha > 0 else float(rank)
            return scaling / (rank + 1e-5)
        if rank == 0:
            return 0.0
        return alpha / math.sqrt(rank) if self.use_rslora else alpha / rank
