"""Contract tests: the same behaviour from the in-process registry and the HTTP client, on
SQLite and on PostgreSQL (a throwaway cluster), with real files and a real server."""

from __future__ import annotations

import filecmp
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from lorahive.hub.cache import PullCache
from lorahive.hub.client import HttpRegistry
from lorahive.hub.errors import (
    AdapterNotFoundError,
    AuthenticationError,
    ConflictError,
    InvalidAdapterError,
    InvalidReferenceError,
    NamespaceNotFoundError,
    PermissionDeniedError,
    UnsafeFileError,
    VersionNotFoundError,
)
from lorahive.hub.lineage import Lineage, Parent, write_sidecar
from lorahive.hub.manifest import file_sha256
from lorahive.hub.protocol import Registry
from lorahive.registry.local import LocalRegistry
from lorahive.registry.service import RegistryService
from lorahive.registry.settings import Settings
from tests.models import make_peft_adapter
from tests.registry_helpers import Server, pg, start_server, unique  # noqa: F401

BACKENDS = ["local-sqlite", "http-sqlite", "local-postgres", "http-postgres"]


@dataclass
class Backend:
    name: str
    home: Path
    admin_token: str
    service: RegistryService | None = None
    server: Server | None = None

    def client(self, token: str | None, cache: Path) -> Registry:
        """A registry acting with ``token`` (``None``: anonymous)."""
        if self.service is not None:
            return LocalRegistry(service=self.service, token=token or "", cache=PullCache(cache))
        assert self.server is not None
        return HttpRegistry(self.server.url, token, cache=PullCache(cache))

    def blob_count(self) -> int:
        return sum(1 for p in (self.home / "blobs").glob("??/??/*"))


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request, tmp_path_factory):
    kind, db = request.param.split("-")
    home = tmp_path_factory.mktemp(request.param)
    env: dict[str, str] = {}
    if db == "postgres":
        cluster = request.getfixturevalue("pg")
        env["LORAHIVE_DATABASE_URL"] = cluster.url(cluster.create_db())
    if kind == "local":
        svc = RegistryService(Settings(home=home, database_url=env.get("LORAHIVE_DATABASE_URL", "")))
        svc.bootstrap_admin()
        yield Backend(request.param, home, (home / "admin-token").read_text().strip(), service=svc)
        svc.close()
    else:
        server = start_server(home, env=env)
        try:
            yield Backend(request.param, home, server.admin_token, server=server)
        finally:
            server.stop()


@pytest.fixture()
def ctx(backend, tmp_path):
    """Per test: a fresh namespace owned by a fresh user, and clients for admin/owner/anon."""
    ns = unique("ns")
    admin = backend.client(backend.admin_token, tmp_path / "cache-admin")
    owner_token = admin.create_token("owner", "write", user=ns).token
    c = {
        "ns": ns, "admin": admin, "owner_token": owner_token,
        "owner": backend.client(owner_token, tmp_path / "cache-owner"),
        "anon": backend.client(None, tmp_path / "cache-anon"),
        "backend": backend, "tmp": tmp_path,
    }
    yield c
    for k in ("admin", "owner", "anon"):
        c[k].close()


@pytest.fixture(scope="module")
def second_adapter(tiny_llama_dir, tmp_path_factory):
    return make_peft_adapter(tiny_llama_dir, tmp_path_factory.mktemp("lora2") / "b", seed=2, r=8,
                             target_modules=["q_proj", "k_proj", "v_proj"])


def _same_files(a: Path, b: Path, names: list[str]) -> bool:
    return all(filecmp.cmp(a / n, b / n, shallow=False) for n in names)


def test_publish_resolve_pull_roundtrip(ctx, lora_dir):
    ns, owner = ctx["ns"], ctx["owner"]
    v = owner.publish(lora_dir, f"{ns}/qa", task="qa", tags=["en", "demo"], description="QA adapter",
                      metrics={"acc": 0.5})
    assert v.version == "1" and v.aliases == ["latest"]
    assert v.rank == 4 and v.lora_alpha == 8 and v.peft_type == "LORA"
    assert v.base_model == "lorahive-tests/tiny-llama"
    assert sorted(v.target_modules) == ["q_proj", "v_proj"]
    assert v.sha256 == file_sha256(lora_dir / "adapter_model.safetensors")
    assert len(v.stats) == v.summary["num_modules"] > 0 and v.stats[0]["norm"] > 0
    assert v.metrics == {"acc": 0.5}
    for ref in (f"{ns}/qa", f"{ns}/qa@1", f"{ns}/qa:latest"):
        assert ctx["anon"].resolve(ref).sha256 == v.sha256
    out = ctx["anon"].pull(f"{ns}/qa", to=ctx["tmp"] / "out")
    names = [f.path for f in v.files]
    assert "adapter_config.json" in names and _same_files(lora_dir, out, names)
    snap = ctx["anon"].pull(f"{ns}/qa@1")  # from the cache: not downloaded again
    assert _same_files(lora_dir, snap, names)
    assert ctx["anon"].adapter(f"{ns}/qa").downloads == 1
    fresh = ctx["backend"].client(None, ctx["tmp"] / "fresh-cache")
    assert _same_files(lora_dir, fresh.pull(f"{ns}/qa@1"), names)
    fresh.close()
    info = ctx["anon"].adapter(f"{ns}/qa")
    assert owner.resolve(f"{ns}/qa").downloads == 2
    assert info.downloads == 2 and info.task == "qa" and info.tags == ["demo", "en"]
    assert info.latest_version == "1" and info.description == "QA adapter"


def test_versions_autoincrement_latest_moves_and_immutable(ctx, lora_dir, second_adapter):
    ns, owner = ctx["ns"], ctx["owner"]
    assert owner.publish(lora_dir, f"{ns}/a").version == "1"
    v2 = owner.publish(second_adapter, f"{ns}/a")
    assert v2.version == "2" and v2.rank == 8
    assert owner.resolve(f"{ns}/a").version == "2"
    with pytest.raises(ConflictError):
        owner.publish(second_adapter, f"{ns}/a", version="1")
    again = owner.publish(lora_dir, f"{ns}/a", version="1")  # identical content: no-op
    assert again.version == "1" and again.unchanged
    assert [x.version for x in owner.versions(f"{ns}/a")] == ["2", "1"]
    dup = owner.publish(lora_dir, f"{ns}/a", version="v1.5", allow_duplicate=True)
    assert dup.version == "v1.5" and not dup.unchanged
    assert owner.resolve(f"{ns}/a:latest").version == "v1.5"
    assert owner.publish(lora_dir, f"{ns}/a", allow_duplicate=True).version == "3"


def test_search_filters_sort_and_pages(ctx, lora_dir, second_adapter):
    ns, owner, anon = ctx["ns"], ctx["owner"], ctx["anon"]
    owner.publish(lora_dir, f"{ns}/sentiment-en", task="sentiment", tags=["en"],
                  description="movie reviews")
    owner.publish(second_adapter, f"{ns}/sentiment-de", task="sentiment", tags=["de"])
    owner.publish(lora_dir, f"{ns}/summarize", task="summarization", tags=["en", "news"])
    page = anon.search(namespace=ns, sort="name")
    assert page.total == 3 and [a.name for a in page.items] == [
        "sentiment-de", "sentiment-en", "summarize"]
    assert {a.name for a in anon.search("sentiment", namespace=ns).items} == {
        "sentiment-en", "sentiment-de"}
    assert [a.name for a in anon.search("movie", namespace=ns).items] == ["sentiment-en"]
    assert anon.search(namespace=ns, task="summarization").items[0].name == "summarize"
    assert {a.name for a in anon.search(namespace=ns, tags=["en"]).items} == {
        "sentiment-en", "summarize"}
    assert [a.name for a in anon.search(namespace=ns, tags=["en", "news"]).items] == ["summarize"]
    assert anon.search(namespace=ns, base_model="lorahive-tests/tiny-llama").total == 3
    assert anon.search(namespace=ns, base_model="other/model").total == 0
    assert anon.search(namespace=ns, peft_type="lora").total == 3
    assert anon.search(f"{ns} %").total == 0  # LIKE wildcards are literal
    p1 = anon.search(namespace=ns, sort="name", limit=2)
    p2 = anon.search(namespace=ns, sort="name", limit=2, offset=2)
    assert p1.total == p2.total == 3 and len(p1.items) == 2 and len(p2.items) == 1
    assert p2.items[0].name == "summarize"
    anon.pull(f"{ns}/summarize")
    assert anon.search(namespace=ns, sort="downloads").items[0].name == "summarize"


def test_aliases_and_delete(ctx, lora_dir, second_adapter):
    ns, owner, anon = ctx["ns"], ctx["owner"], ctx["anon"]
    owner.publish(lora_dir, f"{ns}/x")
    owner.publish(second_adapter, f"{ns}/x")
    assert owner.set_alias(f"{ns}/x@1", "prod").version == "1"
    assert anon.resolve(f"{ns}/x:prod").version == "1"
    assert anon.adapter(f"{ns}/x").aliases == {"latest": "2", "prod": "1"}
    owner.set_alias(f"{ns}/x:latest", "prod")  # move it
    assert anon.resolve(f"{ns}/x:prod").version == "2"
    owner.remove_alias(f"{ns}/x", "prod")
    with pytest.raises(VersionNotFoundError):
        anon.resolve(f"{ns}/x:prod")
    with pytest.raises(VersionNotFoundError):
        anon.resolve(f"{ns}/x@9")
    with pytest.raises(PermissionDeniedError):
        ctx["backend"].client(
            ctx["admin"].create_token("ro", "read", user=ns).token, ctx["tmp"] / "c").delete(
                f"{ns}/x@2")
    owner.delete(f"{ns}/x@2")
    assert anon.resolve(f"{ns}/x").version == "1"  # latest falls back
    with pytest.raises(PermissionDeniedError):
        owner.delete(f"{ns}/x")  # a whole adapter needs admin scope
    with pytest.raises(InvalidReferenceError):
        owner.delete(f"{ns}/x:latest")
    ctx["admin"].delete(f"{ns}/x")
    with pytest.raises(AdapterNotFoundError):
        anon.resolve(f"{ns}/x")


def test_private_adapters_are_invisible(ctx, lora_dir):
    ns, owner, anon, admin = ctx["ns"], ctx["owner"], ctx["anon"], ctx["admin"]
    owner.publish(lora_dir, f"{ns}/secret", private=True, task="secret-task")
    other_ns = unique("ns")
    other = ctx["backend"].client(admin.create_token("o", "write", user=other_ns).token,
                                  ctx["tmp"] / "c-other")
    for who in (anon, other):
        for call in (lambda w: w.resolve(f"{ns}/secret"), lambda w: w.adapter(f"{ns}/secret"),
                     lambda w: w.versions(f"{ns}/secret"), lambda w: w.pull(f"{ns}/secret")):
            with pytest.raises(AdapterNotFoundError):
                call(who)
        assert who.search(task="secret-task").total == 0
    with pytest.raises(AdapterNotFoundError):  # same answer as a name that does not exist
        anon.resolve(f"{ns}/nothing-here")
    assert owner.search(task="secret-task").total == 1
    assert admin.resolve(f"{ns}/secret").version == "1"
    assert owner.pull(f"{ns}/secret").is_dir()
    same = owner.publish(lora_dir, f"{ns}/secret", private=False)  # no new content
    assert same.unchanged and same.version == "1" and not same.private
    assert anon.resolve(f"{ns}/secret").version == "1"  # the explicit setting still applies
    other.close()


def test_tokens_scopes_and_auth_errors(ctx, lora_dir):
    ns, admin, anon = ctx["ns"], ctx["admin"], ctx["anon"]
    b, tmp = ctx["backend"], ctx["tmp"]
    with pytest.raises(AuthenticationError):
        anon.publish(lora_dir, f"{ns}/a")
    ro = b.client(admin.create_token("ro", "read", user=ns).token, tmp / "c1")
    with pytest.raises(PermissionDeniedError):
        ro.publish(lora_dir, f"{ns}/a")
    other_ns = unique("ns")
    other = b.client(admin.create_token("o", "write", user=other_ns).token, tmp / "c2")
    with pytest.raises(PermissionDeniedError):
        other.publish(lora_dir, f"{ns}/a")
    with pytest.raises(NamespaceNotFoundError):
        other.publish(lora_dir, f"{unique('nope')}/a")
    with pytest.raises(AuthenticationError):
        b.client("lh_not-a-real-token", tmp / "c3").search()
    owner = ctx["owner"]
    # a token cannot grant more than itself
    with pytest.raises(PermissionDeniedError):
        owner.create_token("escalate", "admin")
    with pytest.raises(PermissionDeniedError):
        owner.create_token("for-someone", "read", user=other_ns)
    scoped = owner.create_token("scoped", "write", namespaces=[ns])
    assert scoped.info.namespaces == [ns] and scoped.info.user == ns
    listed = {t.id: t for t in owner.list_tokens()}
    assert scoped.info.id in listed and all(t.user == ns for t in listed.values())
    sc = b.client(scoped.token, tmp / "c4")
    assert sc.publish(lora_dir, f"{ns}/a").version == "1"
    owner.revoke_token(scoped.info.id)
    with pytest.raises(AuthenticationError):
        sc.search()
    short = b.client(owner.create_token("short", "read", expires_in_days=1e-6).token, tmp / "c5")
    time.sleep(0.3)
    with pytest.raises(AuthenticationError):
        short.search()
    # a namespace: created by a write token, 409 when taken
    new_ns = unique("team")
    assert other.create_namespace(new_ns).owner == other_ns
    with pytest.raises(ConflictError):
        owner.create_namespace(new_ns)
    assert other.publish(lora_dir, f"{new_ns}/a").version == "1"
    for c in (ro, other, sc, short):
        c.close()


def test_bad_adapters_leave_no_trace(ctx, lora_dir, tmp_path):
    ns, owner = ctx["ns"], ctx["owner"]
    b = ctx["backend"]
    blobs_before = b.blob_count()
    pickled = tmp_path / "pickled"
    shutil.copytree(lora_dir, pickled)
    (pickled / "adapter_model.safetensors").rename(pickled / "adapter_model.bin")
    with pytest.raises(UnsafeFileError):
        owner.publish(pickled, f"{ns}/bad")
    extra_pickle = tmp_path / "extra"
    shutil.copytree(lora_dir, extra_pickle)
    (extra_pickle / "training_args.bin").write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(UnsafeFileError):
        owner.publish(extra_pickle, f"{ns}/bad")
    broken = tmp_path / "broken"
    shutil.copytree(lora_dir, broken)
    cfg = (broken / "adapter_config.json").read_text().replace('"r": 4', '"r": 5')
    (broken / "adapter_config.json").write_text(cfg)
    with pytest.raises(InvalidAdapterError):
        owner.publish(broken, f"{ns}/bad")
    with pytest.raises(InvalidReferenceError):
        owner.publish(lora_dir, "no-namespace")
    with pytest.raises(InvalidReferenceError):
        owner.publish(lora_dir, f"{ns}/../etc")
    with pytest.raises(AdapterNotFoundError):
        owner.resolve(f"{ns}/bad")
    assert owner.search(namespace=ns).total == 0
    assert b.blob_count() == blobs_before


def test_identical_content_is_not_published_twice(ctx, lora_dir, second_adapter):
    """Publishing files identical to an existing version creates nothing: the answer is that
    version (``unchanged``), its metadata kept, ``latest`` not moved; ``allow_duplicate``
    publishes it anyway."""
    ns, owner, anon = ctx["ns"], ctx["owner"], ctx["anon"]
    v1 = owner.publish(lora_dir, f"{ns}/d", metrics={"acc": 0.9}, task="qa")
    assert v1.version == "1" and not v1.unchanged
    again = owner.publish(lora_dir, f"{ns}/d")
    assert again.unchanged and again.version == "1" and again.metrics == {"acc": 0.9}
    assert again.files == v1.files
    assert [v.version for v in owner.versions(f"{ns}/d")] == ["1"]
    for version in ("1", "1.0"):  # the version, or a new name for the same content
        same = owner.publish(lora_dir, f"{ns}/d", version=version, metrics={"acc": 0.1})
        assert same.unchanged and same.version == "1" and same.metrics == {"acc": 0.9}
    assert owner.publish(second_adapter, f"{ns}/d").version == "2"
    back = owner.publish(lora_dir, f"{ns}/d")
    assert back.unchanged and back.version == "1"
    assert anon.resolve(f"{ns}/d").version == "2"  # latest did not move
    dup = owner.publish(lora_dir, f"{ns}/d", allow_duplicate=True)
    assert dup.version == "3" and not dup.unchanged and anon.resolve(f"{ns}/d").version == "3"
    assert [v.version for v in owner.versions(f"{ns}/d")] == ["3", "2", "1"]


def test_a_publish_the_commit_would_refuse_uploads_nothing(ctx, lora_dir, tmp_path):
    """Everything a commit would refuse that can be known before uploading is refused before
    the first byte: an existing version with other content, a bad config or sidecar, a
    missing namespace, no access."""
    ns, owner, anon, b = ctx["ns"], ctx["owner"], ctx["anon"], ctx["backend"]
    owner.publish(lora_dir, f"{ns}/r")

    def variant(name: str, config: dict | None = None, sidecar: str | None = None) -> Path:
        d = tmp_path / name
        shutil.copytree(lora_dir, d)
        (d / "notes.txt").write_text(unique("new content "))  # a blob the server lacks
        if config is not None:
            cfg = json.loads((d / "adapter_config.json").read_text())
            cfg.update(config)
            (d / "adapter_config.json").write_text(json.dumps(cfg))
        if sidecar is not None:
            (d / "lorahive.json").write_text(sidecar)
        return d

    before = b.blob_count()
    with pytest.raises(ConflictError):
        owner.publish(variant("other"), f"{ns}/r", version="1")
    with pytest.raises(InvalidAdapterError, match="base_model"):
        owner.publish(variant("nobase", {"base_model_name_or_path": None}), f"{ns}/x")
    with pytest.raises(InvalidAdapterError, match="target_modules"):
        owner.publish(variant("targets", {"target_modules": ["k_proj"]}), f"{ns}/x")
    with pytest.raises(InvalidAdapterError, match="lineage"):
        owner.publish(variant("side", sidecar='{"lineage": [1, 2]}'), f"{ns}/x")
    with pytest.raises(NamespaceNotFoundError):
        owner.publish(variant("nons"), f"{unique('nope')}/x")
    with pytest.raises(AuthenticationError):
        anon.publish(variant("anon"), f"{ns}/x")
    assert b.blob_count() == before
    with pytest.raises(AdapterNotFoundError):
        owner.resolve(f"{ns}/x")


def test_gc_reports_what_its_grace_period_kept(ctx, lora_dir, tmp_path):
    ns, owner, admin = ctx["ns"], ctx["owner"], ctx["admin"]
    d = tmp_path / "g"
    shutil.copytree(lora_dir, d)
    (d / "notes.txt").write_text(unique("orphan soon "))
    owner.publish(d, f"{ns}/g")
    owner.publish(lora_dir, f"{ns}/g", allow_duplicate=True)
    owner.delete(f"{ns}/g@1")  # its notes.txt is referenced by nothing now
    kept = admin.gc(3600)
    assert kept.grace_seconds == 3600 and kept.unreferenced_kept >= 1
    assert kept.blobs_kept >= kept.unreferenced_kept
    freed = admin.gc(0)
    assert freed.blobs_removed >= 1 and freed.unreferenced_kept == 0


def test_lineage_and_metrics_from_sidecar(ctx, lora_dir, tmp_path):
    ns, owner = ctx["ns"], ctx["owner"]
    owner.publish(lora_dir, f"{ns}/p")  # a public parent: the lineage may name it
    d = tmp_path / "fused"
    shutil.copytree(lora_dir, d)
    sha = file_sha256(lora_dir / "adapter_model.safetensors")
    write_sidecar(d, Lineage("fuse:ties", [Parent(f"{ns}/p@1", "1", sha, 0.7)], {"density": 0.5}),
                  metrics={"loss": 1.25})
    v = owner.publish(d, f"{ns}/fused", metrics={"acc": 0.9})
    assert not v.private and not v.unchanged
    assert v.lineage is not None and v.lineage["method"] == "fuse:ties"
    assert v.lineage["parents"][0]["sha256"] == sha and v.lineage["parents"][0]["weight"] == 0.7
    assert v.metrics == {"loss": 1.25, "acc": 0.9}
    assert owner.resolve(f"{ns}/fused").lineage == v.lineage


def test_gc_removes_only_unreferenced_blobs(ctx, lora_dir, second_adapter, tmp_path):
    ns, owner, admin = ctx["ns"], ctx["owner"], ctx["admin"]
    owner.publish(lora_dir, f"{ns}/keep")
    drop = tmp_path / "drop"
    shutil.copytree(second_adapter, drop)
    (drop / "notes.txt").write_text(unique("only in this version "))  # a blob no one else has
    owner.publish(drop, f"{ns}/drop")
    with pytest.raises(PermissionDeniedError):
        owner.gc(0)
    admin.delete(f"{ns}/drop")
    report = admin.gc(0)
    assert report.blobs_removed >= 1 and report.bytes_removed > 0
    assert report.blobs_kept >= 3
    assert admin.gc(0).blobs_removed == 0
    out = ctx["anon"].pull(f"{ns}/keep", to=ctx["tmp"] / "after-gc")
    assert _same_files(lora_dir, out, ["adapter_model.safetensors", "adapter_config.json"])


def test_publish_in_memory_adapter(ctx, lora_dir):
    from lorahive.hub.peft_format import load_peft

    ns, owner = ctx["ns"], ctx["owner"]
    adapter = load_peft(lora_dir)
    v = owner.publish(adapter, f"{ns}/mem", task="qa")
    assert v.rank == 4 and v.base_model == "lorahive-tests/tiny-llama"
    back = load_peft(owner.pull(f"{ns}/mem@{v.version}"))
    assert set(back.modules) == set(adapter.modules)
    for name, m in adapter.modules.items():
        assert torch.equal(back.modules[name].A, m.A) and torch.equal(back.modules[name].B, m.B)
    with pytest.raises(InvalidAdapterError):
        owner.publish(object(), f"{ns}/mem")
