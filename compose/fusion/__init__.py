"""Fusion: N LoRA adapters into one, by a method found by name in one registry."""

from compose.fusion.engine import FusionResult, check_compatible, fuse
from compose.fusion.registry import METHODS, Method, Param, all_methods, fusion_method, get_method

__all__ = [
    "METHODS", "FusionResult", "Method", "Param", "all_methods", "check_compatible", "fuse",
    "fusion_method", "get_method",
]
