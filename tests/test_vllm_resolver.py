"""The serving resolver and the vLLM plugin against a real ``lorahive serve`` on loopback.

``hub.serving`` needs no vLLM and always runs; the tests that use vLLM's own classes
(``LoRAResolver``, ``LoRARequest``, the resolver registry) run where vLLM is importable
(``make install-vllm``). vLLM serving for real is ``tests/test_vllm_e2e.py``.
"""

from __future__ import annotations

import asyncio
import filecmp
import importlib.util
import json

import pytest

from lorahive.hub.client import HttpRegistry
from lorahive.hub.errors import (
    BaseModelMismatchError,
    InvalidRequestError,
    OfflineError,
    UnsupportedAdapterError,
)
from lorahive.hub.serving import ServingResolver, as_reference
from tests.models import BASE_ID, make_peft_adapter
from tests.registry_helpers import run_cli_inprocess, start_server

FILES = ("adapter_config.json", "adapter_model.safetensors")


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_llama_dir):
    """A registry with acme/a (v1, v2; prod -> 1), private acme/p, acme/dora and acme/other
    (another base model); tokens for acme (write) and a reader."""
    root = tmp_path_factory.mktemp("vllm-resolver")
    server = start_server(root / "server")
    home = root / "acme"
    try:
        toks = {}
        for scope in ("write", "read"):
            out = run_cli_inprocess(home, "token", "create", f"acme-{scope}", "--scope", scope,
                                    "--user", "acme", "--url", server.url, "--token",
                                    server.admin_token, "--json")
            toks[scope] = json.loads(out.stdout)["token"]
        env = {"LORAHIVE_URL": server.url, "LORAHIVE_TOKEN": toks["write"]}
        dirs = {
            "a1": make_peft_adapter(tiny_llama_dir, root / "a1", seed=1),
            "a2": make_peft_adapter(tiny_llama_dir, root / "a2", seed=2),
            "p": make_peft_adapter(tiny_llama_dir, root / "p", seed=3),
            "dora": make_peft_adapter(tiny_llama_dir, root / "dora", seed=4, use_dora=True),
            "other": make_peft_adapter(tiny_llama_dir, root / "other", seed=5,
                                       base_id="someone/else"),
        }
        for key, name, extra in (("a1", "acme/a", ()), ("a2", "acme/a", ()),
                                 ("p", "acme/p", ("--private",)), ("dora", "acme/dora", ()),
                                 ("other", "acme/other", ())):
            run_cli_inprocess(home, "publish", str(dirs[key]), "--name", name, *extra, env=env)
        run_cli_inprocess(home, "alias", "set", "acme/a@1", "prod", env=env)
        yield {"server": server, "tokens": toks, "dirs": dirs, "home": home, "env": env}
    finally:
        server.stop()


def _resolver(world, tmp_path, token="read", **kw) -> ServingResolver:
    from lorahive.hub.cache import PullCache

    reg = HttpRegistry(world["server"].url, world["tokens"].get(token),
                       cache=PullCache(tmp_path / "cache"))
    return ServingResolver(reg, **kw)


def _set_alias(world, ref: str, alias: str) -> None:
    run_cli_inprocess(world["home"], "alias", "set", ref, alias, env=world["env"])


def test_only_registry_references_are_resolved():
    assert as_reference("acme/a@3").version == "3"
    assert as_reference("acme/a:prod").alias == "prod"
    assert as_reference("acme/a").repo == "acme/a"
    for name in ("gpt-4", "/models/base", "a/b/c", "acme/a@../x", ""):
        assert as_reference(name) is None


def test_resolves_pins_aliases_and_latest_to_verified_files(world, tmp_path):
    res = _resolver(world, tmp_path)
    pinned = res.resolve(BASE_ID, "acme/a@1")
    alias = res.resolve(BASE_ID, "acme/a:prod")
    latest = res.resolve(BASE_ID, "acme/a")
    assert (pinned.ref, alias.ref, latest.ref) == ("acme/a@1", "acme/a@1", "acme/a@2")
    assert alias is pinned  # one version, one directory
    for hit, key in ((pinned, "a1"), (latest, "a2")):
        assert hit.path == tmp_path / "cache" / "snapshots" / "acme" / "a" / hit.version
        for f in FILES:
            assert filecmp.cmp(hit.path / f, world["dirs"][key] / f, shallow=False)
    assert res.resolve(BASE_ID, "not-a-reference") is None
    assert res.resolve(BASE_ID, "acme/missing") is None
    assert res.resolve(BASE_ID, "acme/a@9") is None


def test_alias_moves_are_seen_pinned_versions_never_asked_again(world, tmp_path):
    now = [0.0]
    res = _resolver(world, tmp_path, alias_ttl=5.0, clock=lambda: now[0])
    assert res.resolve(BASE_ID, "acme/a:prod").version == "1"
    res.resolve(BASE_ID, "acme/a@1")
    assert res.tracks_aliases()
    try:
        _set_alias(world, "acme/a@2", "prod")
        assert not res.moved("acme/a:prod")  # within the TTL the registry is not asked
        now[0] = 6.0
        assert res.moved("acme/a:prod") and not res.moved("acme/a@1")
        res.forget("acme/a:prod")
        assert res.resolve(BASE_ID, "acme/a:prod").version == "2"
        assert not res.moved("acme/a:prod")
        # an exact version is served from memory: no registry round trip at all
        res.registry.url = "http://127.0.0.1:9"
        res.registry.http = __import__("httpx").Client(base_url="http://127.0.0.1:9")
        assert res.resolve(BASE_ID, "acme/a@1").version == "1"
        # an alias with the registry down: what the cache last saw, and it is not "moved"
        now[0] = 20.0
        assert not res.moved("acme/a:prod")
        assert res.resolve(BASE_ID, "acme/a:prod").version == "2"
        with pytest.raises(OfflineError):
            res.resolve(BASE_ID, "acme/p")
    finally:
        _set_alias(world, "acme/a@1", "prod")


def test_a_removed_alias_counts_as_moved(world, tmp_path):
    res = _resolver(world, tmp_path)
    _set_alias(world, "acme/a@2", "canary")
    assert res.resolve(BASE_ID, "acme/a:canary").version == "2"
    run_cli_inprocess(world["home"], "alias", "rm", "acme/a", "canary", env=world["env"])
    assert res.moved("acme/a:canary")
    res.forget("acme/a:canary")
    assert res.resolve(BASE_ID, "acme/a:canary") is None


def test_private_adapters_need_a_token_that_may_read_them(world, tmp_path):
    assert _resolver(world, tmp_path / "anon", token="none").resolve(BASE_ID, "acme/p") is None
    assert _resolver(world, tmp_path, token="read").resolve(BASE_ID, "acme/p").version == "1"


def test_refuses_another_base_model_and_what_lora_servers_cannot_apply(world, tmp_path):
    res = _resolver(world, tmp_path)
    with pytest.raises(BaseModelMismatchError) as e:
        res.resolve(BASE_ID, "acme/other")
    assert "trained on base model 'someone/else'" in str(e.value)
    assert BASE_ID in str(e.value) and "LORAHIVE_BASE_MODEL" in str(e.value)
    with pytest.raises(BaseModelMismatchError):
        res.resolve("/srv/models/tiny", "acme/a@1")  # a local copy, not declared
    with pytest.raises(UnsupportedAdapterError, match="DoRA"):
        res.resolve(BASE_ID, "acme/dora")
    assert not (tmp_path / "cache" / "snapshots" / "acme" / "other").exists()  # nothing pulled
    declared = _resolver(world, tmp_path, base_models=[BASE_ID])
    assert declared.resolve("/srv/models/tiny", "acme/a@1").version == "1"


def test_from_environment_uses_the_cli_registry_selection(world, monkeypatch, tmp_path):
    monkeypatch.setenv("LORAHIVE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("LORAHIVE_URL", raising=False)
    assert ServingResolver.from_environment() is None
    run_cli_inprocess(tmp_path / "home", "login", "--url", world["server"].url, "--token",
                      world["tokens"]["read"])
    monkeypatch.setenv("LORAHIVE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("LORAHIVE_BASE_MODEL", "x/y, " + BASE_ID)
    res = ServingResolver.from_environment()
    assert res.registry.token == world["tokens"]["read"] and res.base_models == ("x/y", BASE_ID)
    assert res.resolve("/local/copy", "acme/p").version == "1"  # the saved login's token
    res.close()
    monkeypatch.setenv("LORAHIVE_ALIAS_TTL", "soon")
    with pytest.raises(InvalidRequestError, match="LORAHIVE_ALIAS_TTL"):
        ServingResolver.from_environment()


# -- with vLLM's own classes ----------------------------------------------------------------
@pytest.fixture(scope="module")
def vllm_plugin():
    """Only tests marked ``vllm`` use it: `make test` deselects them, `make test-vllm` runs
    them where vLLM is installed."""
    if importlib.util.find_spec("vllm") is None:
        pytest.fail("vLLM is not installed here (make install-vllm)", pytrace=False)
    from lorahive.hub import vllm_plugin

    return vllm_plugin


@pytest.mark.vllm
def test_plugin_registers_with_vllm_only_when_a_registry_is_configured(
        world, vllm_plugin, monkeypatch, tmp_path):
    from importlib.metadata import entry_points

    from vllm.lora.resolver import LoRAResolverRegistry

    (ep,) = [e for e in entry_points(group="vllm.general_plugins") if e.name == "lorahive"]
    assert ep.load() is vllm_plugin.register
    monkeypatch.setenv("LORAHIVE_HOME", str(tmp_path / "empty"))
    monkeypatch.delenv("LORAHIVE_URL", raising=False)
    LoRAResolverRegistry.resolvers.pop("lorahive", None)
    vllm_plugin.register()
    assert "lorahive" not in LoRAResolverRegistry.get_supported_resolvers()
    monkeypatch.setenv("LORAHIVE_URL", world["server"].url)
    monkeypatch.setenv("LORAHIVE_TOKEN", world["tokens"]["read"])
    monkeypatch.setenv("LORAHIVE_CACHE", str(tmp_path / "cache"))
    vllm_plugin.register()
    resolver = LoRAResolverRegistry.get_resolver("lorahive")
    assert resolver is vllm_plugin.active_resolver()
    req = asyncio.run(resolver.resolve_lora(BASE_ID, "acme/p"))
    assert req.lora_name == "acme/p" and req.lora_int_id > 0
    assert req.lora_path == str(tmp_path / "cache" / "snapshots" / "acme" / "p" / "1")
    assert asyncio.run(resolver.resolve_lora(BASE_ID, "some-local-name")) is None
    with pytest.raises(ValueError, match="someone/else"):  # vLLM answers a ValueError with 400
        asyncio.run(resolver.resolve_lora(BASE_ID, "acme/other"))
    LoRAResolverRegistry.resolvers.pop("lorahive", None)


@pytest.mark.vllm
def test_alias_refresh_unloads_a_moved_alias_and_replays_the_body(
        world, vllm_plugin, tmp_path, monkeypatch):
    """The middleware around a minimal ASGI app whose state holds vLLM's adapter table."""
    from vllm.lora.request import LoRARequest

    core = _resolver(world, tmp_path)
    monkeypatch.setattr(vllm_plugin, "_plugin", vllm_plugin.LorahiveResolver(core))
    unloaded, seen = [], []

    class Models:  # the two members of vLLM's OpenAIServingModels the middleware uses
        def __init__(self):
            self.lora_requests = {"acme/a:prod": LoRARequest("acme/a:prod", 1, "/x")}

        async def unload_lora_adapter(self, request):
            unloaded.append(request.lora_name)
            del self.lora_requests[request.lora_name]

    class State:
        openai_serving_models = Models()

    class App:
        state = State()

    async def inner(scope, receive, send):
        seen.append((await receive())["body"])

    mw = vllm_plugin.AliasRefresh(inner)

    async def call(body: bytes):
        parts = [body[:7], body[7:]]

        async def receive():
            chunk = parts.pop(0)
            return {"type": "http.request", "body": chunk, "more_body": bool(parts)}

        await mw({"type": "http", "method": "POST", "app": App()}, receive, None)

    body = json.dumps({"model": "acme/a:prod", "prompt": "hi"}).encode()
    assert core.resolve(BASE_ID, "acme/a:prod").version == "1"
    asyncio.run(call(body))
    assert unloaded == [] and seen == [body]
    try:
        _set_alias(world, "acme/a@2", "prod")
        asyncio.run(call(body))
        assert unloaded == ["acme/a:prod"] and seen[-1] == body
        assert core.served_version("acme/a:prod") is None  # resolved afresh next time
    finally:
        _set_alias(world, "acme/a@1", "prod")
