"""Fusion: N LoRA adapters into one, by a method found by name in one table.

Each family of methods is one module whose ``@fusion_method`` decorators fill
``methods.METHODS``; importing this package imports every family (as mergekit does), so a
new method is one decorated function in one file.
"""

from lorahive.compose.fusion import arithmetic, core_space, peft_methods, spectral  # noqa: F401
from lorahive.compose.fusion.engine import FusionResult, check_compatible, fuse, fuse_files
from lorahive.compose.fusion.methods import (
    METHODS,
    Method,
    Param,
    all_methods,
    fusion_method,
    get_method,
)

__all__ = [
    "METHODS", "FusionResult", "Method", "Param", "all_methods", "check_compatible", "fuse",
    "fuse_files", "fusion_method", "get_method",
]
