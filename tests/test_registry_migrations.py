"""Schema migrations: an older database is upgraded on start-up with its data intact (SQLite
and PostgreSQL), and the table models match what the migrations build."""

from __future__ import annotations

import datetime as dt
import hashlib

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import MetaData
from sqlmodel import SQLModel

from lorahive.hub.protocol import FileEntry
from lorahive.registry.auth import hash_token
from lorahive.registry.blobs import ingest
from lorahive.registry.db import current_revision, head_revision, make_engine, migrate
from lorahive.registry.service import RegistryService
from lorahive.registry.settings import Settings
from tests.registry_helpers import pg  # noqa: F401


def _url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'old.db'}"
    cluster = request.getfixturevalue("pg")
    return cluster.url(cluster.create_db())


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request, tmp_path):
    return _url(request, tmp_path)


def test_upgrade_from_first_schema_keeps_data(db_url, tmp_path):
    engine = make_engine(db_url)
    migrate(engine, "0001")
    assert current_revision(engine) == "0001"
    meta = MetaData()
    meta.reflect(engine)
    assert "downloads" not in meta.tables["versions"].c  # the older schema
    t = meta.tables
    now = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    body = b"0123456789"
    sha = hashlib.sha256(body).hexdigest()
    with engine.begin() as c:
        c.execute(t["users"].insert().values(id=1, name="old", is_admin=True, created_at=now))
        c.execute(t["namespaces"].insert().values(id=1, name="old", owner_id=1, created_at=now))
        c.execute(t["tokens"].insert().values(
            id=1, user_id=1, name="t", token_hash=hash_token("lh_old"), scope="admin",
            namespaces=[], created_at=now, revoked=False))
        c.execute(t["adapters"].insert().values(
            id=1, namespace_id=1, name="legacy", description="from before", task="qa",
            base_model="b/m", peft_type="LORA", private=False, next_seq=2, created_at=now,
            updated_at=now))
        c.execute(t["adapter_tags"].insert().values(adapter_id=1, tag="old"))
        c.execute(t["versions"].insert().values(
            id=1, adapter_id=1, version="1", seq=1, created_at=now, size=10, sha256=sha,
            peft_type="LORA", base_model="b/m", rank=4, lora_alpha=8.0, num_parameters=5,
            target_modules=["q_proj"], summary={"rank": 4}, stats=[], metrics={"acc": 1},
            metadata={}, lineage=None))
        c.execute(t["files"].insert().values(id=1, version_id=1, path="adapter_model.safetensors",
                                             sha256=sha, size=10))
        c.execute(t["files"].insert().values(id=2, version_id=1, path="README.md",
                                             sha256="cd" * 32, size=3))
        c.execute(t["files"].insert().values(id=3, version_id=1, path="adapter_config.json",
                                             sha256="ef" * 32, size=2))
        c.execute(t["aliases"].insert().values(adapter_id=1, name="latest", version_id=1))
        # a fused adapter made from the legacy one: its lineage becomes an indexed edge
        c.execute(t["adapters"].insert().values(
            id=2, namespace_id=1, name="fused", description="", task="qa", base_model="b/m",
            peft_type="LORA", private=False, next_seq=2, created_at=now, updated_at=now))
        c.execute(t["versions"].insert().values(
            id=2, adapter_id=2, version="1", seq=1, created_at=now, size=10, sha256=sha,
            peft_type="LORA", base_model="b/m", rank=4, lora_alpha=8.0, num_parameters=5,
            target_modules=["q_proj"], summary={"rank": 4}, stats=[], metrics={},
            metadata={}, lineage={"method": "fuse:ties", "parents": [
                {"ref": "./a-local-dir", "weight": 0.5},
                {"ref": "old/legacy@1", "version": "1", "weight": 0.25}]}))
    engine.dispose()

    svc = RegistryService(Settings(home=tmp_path / "home", database_url=db_url))  # start-up
    assert current_revision(svc.engine) == head_revision() == "0005"
    who = svc.authenticate("lh_old")
    v = svc.resolve(who, "old/legacy")
    assert v.version == "1" and v.downloads == 0 and v.metrics == {"acc": 1}
    weights = FileEntry(path="adapter_model.safetensors", sha256=sha, size=10)
    config = FileEntry(path="adapter_config.json", sha256="ef" * 32, size=2)
    assert v.files == [FileEntry(path="README.md", sha256="cd" * 32, size=3), config, weights]
    assert v.created_at == now
    a = svc.adapter(who, "old/legacy")
    assert a.downloads == 0 and a.tags == ["old"] and a.description == "from before"
    ingest(svc.store, [body], sha, 10, 100)
    dl = svc.download(who, "old/legacy@1", "adapter_model.safetensors")
    assert b"".join(dl.body) == body and svc.adapter(who, "old/legacy").downloads == 1
    # the legacy version's digest (its files but the card it was given): the same files
    # published again are that version, not a new one
    plan = svc.preflight(who, "old/legacy", [weights, config])
    assert plan.unchanged is not None and plan.unchanged.version == "1" and plan.missing == []
    assert svc.search(who, "before").total == 1
    [child] = svc.lineage_children(who, "old/legacy")
    assert (child.namespace, child.name, child.version) == ("old", "fused", "1")
    assert child.weight == 0.25 and child.method == "fuse:ties" and child.parent_version == "1"
    assert svc.lineage_children(who, "old/fused") == []
    svc.close()


def test_tables_match_migrations(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'head.db'}")
    migrate(engine)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
    assert diff == []
    engine.dispose()


def test_downgrade_and_upgrade_roundtrip(tmp_path):
    from alembic import command

    from lorahive.registry.db import alembic_config

    engine = make_engine(f"sqlite:///{tmp_path / 'rt.db'}")
    migrate(engine)
    cfg = alembic_config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0001")
    assert current_revision(engine) == "0001"
    migrate(engine)
    assert current_revision(engine) == head_revision() == "0005"
    engine.dispose()
