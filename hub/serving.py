"""Adapter names as a multi-adapter inference server sees them, resolved through the registry.

A server that batches many adapters over one base model (vLLM, LoRAX) receives a request naming
``ns/name``, ``ns/name@version`` or ``ns/name:alias`` and needs a local PEFT directory for it.
``ServingResolver`` owns that step for every such integration: it resolves the name on the
registry (an alias is looked up every time, so moving it changes what the next load gets),
refuses what the server cannot serve (another base model, DoRA, a non-LoRA type) before a byte
is downloaded, and pulls the exact version through the ``PullCache`` (each file verified against
its sha256). Exact versions are immutable, so they are cached in memory by version; aliases never
are. No server library is imported here; ``hub.vllm_plugin`` adapts this to vLLM.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from lorahive.hub.client import HttpRegistry
from lorahive.hub.credentials import server_selection
from lorahive.hub.errors import (
    BaseModelMismatchError,
    InvalidReferenceError,
    InvalidRequestError,
    NotFoundError,
    OfflineError,
    UnsupportedAdapterError,
)
from lorahive.hub.protocol import VersionInfo
from lorahive.hub.refs import Ref, parse_ref

logger = logging.getLogger("lorahive.serving")

# The name(s) the served base model has in adapter configs, when the server was started from
# a local copy (vLLM hands resolvers the --model argument: often a directory, not a model id).
BASE_MODEL_ENV = "LORAHIVE_BASE_MODEL"
# Seconds an alias lookup is trusted before the next request checks the registry again.
ALIAS_TTL_ENV = "LORAHIVE_ALIAS_TTL"


@dataclass(frozen=True)
class ServedAdapter:
    """One exact adapter version on local disk, ready to be loaded by a server."""

    ref: str  # ns/name@version
    version: str
    path: Path
    base_model: str | None


@dataclass
class _Loaded:
    """What a request name was last resolved to, and when an alias was last checked."""

    version: str
    pinned: bool
    checked_at: float


def as_reference(name: str) -> Ref | None:
    """The registry reference a served model name stands for, or None for any other name."""
    try:
        return parse_ref(name)
    except InvalidReferenceError:
        return None


class ServingResolver:
    """Request names -> verified local directories of exact adapter versions."""

    def __init__(self, registry: HttpRegistry, base_models: Sequence[str] = (),
                 alias_ttl: float = 0.0, clock: Callable[[], float] = time.monotonic):
        self.registry = registry
        self.base_models = tuple(b.rstrip("/") for b in base_models if b)
        self.alias_ttl = alias_ttl
        self.clock = clock
        self._lock = threading.Lock()
        self._versions: dict[str, ServedAdapter] = {}  # ns/name@version -> on disk
        self._loaded: dict[str, _Loaded] = {}  # request name -> version it was served as

    @classmethod
    def from_environment(cls) -> ServingResolver | None:
        """The resolver for the registry the CLI would use (``LORAHIVE_URL`` + ``LORAHIVE_TOKEN``
        or the saved login); None when no server is configured."""
        url, token = server_selection()
        if not url:
            return None
        bases = [b.strip() for b in os.environ.get(BASE_MODEL_ENV, "").split(",") if b.strip()]
        raw_ttl = os.environ.get(ALIAS_TTL_ENV, "0")
        try:
            ttl = float(raw_ttl)
        except ValueError:
            ttl = -1.0
        if not ttl >= 0:
            raise InvalidRequestError(
                f"{ALIAS_TTL_ENV}={raw_ttl!r}: give a number of seconds >= 0", params="alias_ttl")
        return cls(HttpRegistry(url, token), bases, ttl)

    def close(self) -> None:
        self.registry.close()

    # -- resolving -----------------------------------------------------------------------
    def resolve(self, base_model: str, name: str) -> ServedAdapter | None:
        """The adapter ``name`` stands for, pulled and checked against ``base_model``.

        None when ``name`` is not a registry reference or the registry has no such adapter
        (private adapters look absent without a token that may read them); an error when it
        exists but cannot be served on this base model.
        """
        ref = as_reference(name)
        if ref is None:
            return None
        if ref.version:
            with self._lock:
                hit = self._versions.get(str(ref))
            if hit is not None:  # an exact version never changes: no registry round trip
                self._check_base(str(ref), hit.base_model, base_model)
                self._track(name, hit.version, pinned=True)
                return hit
        try:
            info = self.registry.resolve(str(ref))
        except NotFoundError as e:
            logger.warning("lorahive: %s is not in the registry at %s (%s); if it is private, "
                           "give the server a token that may read it", name, self.registry.url, e)
            return None
        except OfflineError:
            info = self.registry.cache.lookup(ref)
            if info is None:
                raise
            logger.warning("lorahive: registry unreachable; serving %s as cached (%s)",
                           name, info.ref)
        self.check(info, base_model)
        with self._lock:
            hit = self._versions.get(info.ref)
        if hit is None:
            path = self.registry.pull_version(info, ref)
            hit = ServedAdapter(info.ref, info.version, path, info.base_model)
            with self._lock:
                self._versions[info.ref] = hit
        elif not ref.version:
            self.registry.cache.remember(ref, info)  # what the alias means now, for offline use
        self._track(name, info.version, pinned=ref.version is not None)
        return hit

    def check(self, info: VersionInfo, base_model: str) -> None:
        """Refuse, before downloading, what a LoRA server cannot apply to ``base_model``."""
        peft_type = (info.peft_type or "").upper()
        if peft_type != "LORA":
            raise UnsupportedAdapterError(
                f"{info.ref} is a {peft_type or 'non-PEFT'} adapter; LoRA servers apply LoRA "
                "adapters only (merge it into the base model with `lorahive merge` instead)")
        if info.summary.get("use_dora"):
            raise UnsupportedAdapterError(
                f"{info.ref} is a DoRA adapter, which LoRA servers do not apply; merge it into "
                "the base model with `lorahive merge` instead")
        self._check_base(info.ref, info.base_model, base_model)

    def _check_base(self, ref: str, adapter_base: str | None, served: str) -> None:
        accepted = {served.rstrip("/"), *self.base_models}
        if adapter_base is None or adapter_base.rstrip("/") not in accepted:
            also = (f" (known here as {', '.join(repr(b) for b in self.base_models)})"
                    if self.base_models else "")
            raise BaseModelMismatchError(
                f"{ref} was trained on base model {adapter_base!r}, but this server serves "
                f"{served!r}{also}; serve {ref} on its own base model, or, if {served!r} is a "
                f"copy of {adapter_base!r}, name it in {BASE_MODEL_ENV}")

    def _track(self, name: str, version: str, pinned: bool) -> None:
        with self._lock:
            self._loaded[name] = _Loaded(version, pinned, self.clock())

    # -- aliases -------------------------------------------------------------------------
    def tracks_aliases(self) -> bool:
        """Whether any name served so far may change meaning (an alias, or ``latest``)."""
        with self._lock:
            return any(not t.pinned for t in self._loaded.values())

    def moved(self, name: str) -> bool:
        """Whether ``name`` (an alias served earlier) now points elsewhere, or nowhere.

        Exact versions never move. The registry is asked at most once per ``alias_ttl``
        seconds per name; when it is unreachable, what is loaded stays served.
        """
        with self._lock:
            t = self._loaded.get(name)
            if t is None or t.pinned or self.clock() - t.checked_at < self.alias_ttl:
                return False
            version = t.version
        try:
            info = self.registry.resolve(name)
        except NotFoundError:
            return True  # the alias (or adapter) is gone: the next request should not find it
        except OfflineError as e:
            logger.warning("lorahive: cannot check alias %s (%s); keeping %s", name, e, version)
            return False
        with self._lock:
            t = self._loaded.get(name)
            if t is not None:
                t.checked_at = self.clock()
        return info.version != version

    def forget(self, name: str) -> None:
        """The server dropped ``name``; the next request resolves it afresh."""
        with self._lock:
            self._loaded.pop(name, None)

    def served_version(self, name: str) -> str | None:
        with self._lock:
            t = self._loaded.get(name)
            return t.version if t else None
