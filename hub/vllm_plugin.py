"""vLLM serves lorahive adapters by name: a LoRA resolver plugin and an alias-refresh middleware.

``register`` is the ``vllm.general_plugins`` entry point (``pip install lorahive[vllm]``). With
``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`` and ``--enable-lora``, vLLM asks its resolvers about a
request whose ``model`` it does not know; this one answers for registry references through
``hub.serving.ServingResolver`` (registry from ``LORAHIVE_URL``/``LORAHIVE_TOKEN`` or the saved
login), so ``"model": "acme/sentiment@3"`` loads that version into the running server.

vLLM keeps what a name resolved to for the life of the server. An alias (``acme/sentiment:prod``,
or ``acme/sentiment`` for ``latest``) must follow the registry, so ``AliasRefresh`` (given to
``vllm serve --middleware lorahive.hub.vllm_plugin.AliasRefresh``) checks such a name before its
request runs and, when the alias has moved, unloads it through vLLM's own unload path: the
request then resolves the alias afresh. Pinned versions are never checked again.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from vllm.lora.request import LoRARequest
from vllm.lora.resolver import LoRAResolver, LoRAResolverRegistry

from lorahive.hub.serving import ServingResolver

logger = logging.getLogger("lorahive.vllm")

RESOLVER_NAME = "lorahive"
_ids = itertools.count(1)
_plugin: LorahiveResolver | None = None


class LorahiveResolver(LoRAResolver):
    """vLLM's resolver interface over ``ServingResolver`` (blocking work runs off the loop)."""

    def __init__(self, core: ServingResolver):
        self.core = core

    async def resolve_lora(self, base_model_name: str, lora_name: str) -> LoRARequest | None:
        hit = await asyncio.to_thread(self.core.resolve, base_model_name, lora_name)
        if hit is None:
            return None
        logger.info("lorahive: %s -> %s (%s)", lora_name, hit.ref, hit.path)
        # vLLM assigns its own id when it loads the adapter; this one only has to be valid
        return LoRARequest(lora_name=lora_name, lora_int_id=next(_ids), lora_path=str(hit.path))


def register() -> None:
    """Entry point: register the resolver when a registry server is configured.

    vLLM runs general plugins in each of its processes; nothing here touches the network.
    """
    global _plugin
    _log_like_vllm()
    core = ServingResolver.from_environment()
    if core is None:
        logger.info("lorahive: no registry configured (LORAHIVE_URL or `lorahive login`); "
                    "the lorahive LoRA resolver is not registered")
        return
    _plugin = LorahiveResolver(core)
    LoRAResolverRegistry.register_resolver(RESOLVER_NAME, _plugin)


def active_resolver() -> LorahiveResolver | None:
    return _plugin


class _ToVllmLog(logging.Handler):
    """Hands lorahive's log records to vLLM's logger tree, configured or not yet."""

    def emit(self, record: logging.LogRecord) -> None:
        logging.getLogger("vllm.plugins.lorahive").handle(record)


def _log_like_vllm() -> None:
    """lorahive's messages go where, and look as, vLLM's own do."""
    ours = logging.getLogger("lorahive")
    if not any(isinstance(h, _ToVllmLog) for h in ours.handlers):
        ours.addHandler(_ToVllmLog())
        ours.setLevel(logging.INFO)
        ours.propagate = False


Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class AliasRefresh:
    """ASGI middleware: before a request that names a moved alias runs, unload the alias.

    Only POST bodies are read, and only while some alias is loaded; the body is handed on
    unchanged. vLLM's unload keeps requests in flight on the old version; the request that
    follows resolves the alias again through the resolver.
    """

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]]):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        plugin = _plugin
        if (plugin is None or scope["type"] != "http" or scope.get("method") != "POST"
                or not plugin.core.tracks_aliases()):
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        more, tail = True, None
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away: pass it on
                tail = message
                break
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        name = _model_of(body)
        if name is not None:
            await _refresh(scope, plugin.core, name)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                if tail is not None:
                    return tail
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def _model_of(body: bytes) -> str | None:
    if b'"model"' not in body:
        return None
    try:
        data = json.loads(body)
    except ValueError:
        return None  # vLLM answers the malformed request itself
    name = data.get("model") if isinstance(data, dict) else None
    return name if isinstance(name, str) else None


async def _refresh(scope: Scope, core: ServingResolver, name: str) -> None:
    app = scope.get("app")
    models = getattr(getattr(app, "state", None), "openai_serving_models", None)
    if models is None or name not in models.lora_requests:
        return
    if not await asyncio.to_thread(core.moved, name):
        return
    try:
        from vllm.entrypoints.serve.lora.protocol import UnloadLoRAAdapterRequest
    except ImportError:  # vLLM before the serve/ split
        from vllm.entrypoints.openai.protocol import UnloadLoRAAdapterRequest

    logger.info("lorahive: alias %s moved from %s; reloading", name, core.served_version(name))
    await models.unload_lora_adapter(UnloadLoRAAdapterRequest(lora_name=name))
    core.forget(name)
