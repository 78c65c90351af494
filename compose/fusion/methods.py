"""The table of fusion methods, read from typed function signatures (as mergekit does).

A method is a plain function ``fn(terms, ctx, *, param: type = default, ...) -> Fused`` that
fuses one module. ``@fusion_method`` registers it under a name with its paper's URL; its
keyword-only parameters (and defaults) are read from the signature, so the CLI, ``lorahive
methods`` and the docs list them from here and nowhere else.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, get_args, get_origin

from lorahive.hub.errors import InvalidRequestError

_REQUIRED = inspect.Parameter.empty


@dataclass(frozen=True)
class Param:
    """A method parameter: name, type (float, int, bool, str or a Literal's choices), default."""

    name: str
    type: type
    default: Any = _REQUIRED
    choices: tuple[Any, ...] | None = None

    @property
    def required(self) -> bool:
        return self.default is _REQUIRED

    def describe(self) -> str:
        t = "|".join(map(str, self.choices)) if self.choices else self.type.__name__
        return f"{self.name}: {t}" + ("" if self.required else f" = {self.default!r}")

    def coerce(self, value: Any) -> Any:
        """Parse a CLI string (or pass a typed value) into this parameter's type."""
        if value is None:
            return None
        try:
            if self.type is bool and isinstance(value, str):
                if value.lower() not in ("1", "0", "true", "false", "yes", "no"):
                    raise ValueError(value)
                v: Any = value.lower() in ("1", "true", "yes")
            else:
                v = self.type(value)
        except (TypeError, ValueError):
            raise InvalidRequestError(
                f"parameter {self.name!r} expects {self.type.__name__}, got {value!r}"
            ) from None
        if self.choices and v not in self.choices:
            raise InvalidRequestError(
                f"parameter {self.name!r} must be one of {', '.join(map(str, self.choices))}; "
                f"got {v!r}"
            )
        return v


@dataclass(frozen=True)
class Method:
    """A registered fusion method."""

    name: str
    fn: Callable[..., Any]
    description: str
    paper: str | None
    params: tuple[Param, ...]
    family: str
    note: str | None = None  # caveat shown by `lorahive methods` (PEFT's cross terms ...)
    dense: bool = False  # works on dense out x in deltas: one module at a time, many threads

    def param(self, name: str) -> Param | None:
        return next((p for p in self.params if p.name == name), None)

    def bind(self, given: dict[str, Any]) -> dict[str, Any]:
        """Validate user parameters against the signature; fill defaults; refuse unknowns."""
        known = {p.name for p in self.params}
        unknown = sorted(k for k, v in given.items() if v is not None and k not in known)
        if unknown:
            accepted = ", ".join(sorted(known)) or "none"
            raise InvalidRequestError(
                f"method {self.name!r} takes no parameter {', '.join(unknown)} "
                f"(it accepts: {accepted}); see `lorahive methods`"
            )
        out: dict[str, Any] = {}
        for p in self.params:
            v = p.coerce(given.get(p.name))
            if v is None:
                if p.required:
                    raise InvalidRequestError(
                        f"method {self.name!r} needs {p.name}", params=p.name
                    )
                v = p.default
            out[p.name] = v
        return out


METHODS: dict[str, Method] = {}


def _param_from(p: inspect.Parameter, hint: Any) -> Param:
    if get_origin(hint) is Literal:
        choices = get_args(hint)
        return Param(p.name, type(choices[0]), p.default, tuple(choices))
    if hint not in (float, int, bool, str):
        raise TypeError(f"fusion parameter {p.name!r} must be float, int, bool, str or Literal")
    return Param(p.name, hint, p.default)


def fusion_method(
    name: str, *, paper: str | None = None, family: str = "arithmetic", note: str | None = None,
    dense: bool = False,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register ``fn`` under ``name``; its docstring's first line is the description."""

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        if name in METHODS:
            raise ValueError(f"fusion method {name!r} registered twice")
        hints = typing.get_type_hints(fn)
        params = tuple(
            _param_from(p, hints[p.name])
            for p in inspect.signature(fn).parameters.values()
            if p.kind is inspect.Parameter.KEYWORD_ONLY
        )
        doc = inspect.getdoc(fn) or ""
        METHODS[name] = Method(name, fn, doc.splitlines()[0] if doc else name, paper, params,
                               family, note, dense)
        return fn

    return deco


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise InvalidRequestError(
            f"unknown fusion method {name!r}; choose one of {', '.join(sorted(METHODS))} "
            "(`lorahive methods` lists them)"
        ) from None


FAMILY_ORDER = ("peft", "arithmetic", "core space", "spectral")


def all_methods() -> list[Method]:
    """Every method, PEFT's first, then exact arithmetic, core space and spectral ones."""
    order = {f: i for i, f in enumerate(FAMILY_ORDER)}
    return sorted(METHODS.values(), key=lambda m: order.get(m.family, len(order)))

