"""lorahive.hub: the adapter object, its file formats and the client side of the registry."""

from hub.adapter import Adapter, LoraModule, ModuleStats
from hub.config import AdapterConfig
from hub.errors import LorahiveError
from hub.peft_format import convert_residual, load_peft, save_peft

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
