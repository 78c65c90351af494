"""lorahive.hub: the adapter object, its file formats and the client side of the registry.

Exports are resolved lazily so light commands (search, pull, show) never import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "Adapter": "lorahive.hub.adapter",
    "LoraModule": "lorahive.hub.adapter",
    "ModuleStats": "lorahive.hub.adapter",
    "AdapterConfig": "lorahive.hub.config",
    "LorahiveError": "lorahive.hub.errors",
    "convert_residual": "lorahive.hub.peft_format",
    "load_peft": "lorahive.hub.peft_format",
    "save_peft": "lorahive.hub.peft_format",
}

__all__ = [
    "Adapter",
    "AdapterConfig",
    "LoraModule",
    "LorahiveError",
    "ModuleStats",
    "convert_residual",
    "load_peft",
    "save_peft",
]

if TYPE_CHECKING:
    from lorahive.hub.adapter import Adapter, LoraModule, ModuleStats
    from lorahive.hub.config import AdapterConfig
    from lorahive.hub.errors import LorahiveError
    from lorahive.hub.peft_format import convert_residual, load_peft, save_peft


def __getattr__(name: str) -> Any:
    try:
        module = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'lorahive.hub' has no attribute {name!r}") from None
    return getattr(importlib.import_module(module), name)
