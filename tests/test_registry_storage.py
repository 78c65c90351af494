"""Blob stores (local directory and S3 via moto's server on loopback), settings, references
and file-name rules."""

from __future__ import annotations

import hashlib
import os

import pytest

from lorahive.hub.cache import PullCache
from lorahive.hub.errors import (
    EntryNotFoundError,
    IntegrityError,
    InvalidReferenceError,
    InvalidRequestError,
    PayloadTooLargeError,
    UnsafeFileError,
)
from lorahive.hub.manifest import CONFIG_NAME, WEIGHTS_NAME, check_filename
from lorahive.hub.refs import Ref, parse_ref
from lorahive.registry.blobs import LocalBlobStore, S3BlobStore, ingest, open_store
from lorahive.registry.local import LocalRegistry
from lorahive.registry.service import RegistryService
from lorahive.registry.settings import Settings
from tests.registry_helpers import aws_env, pg, s3_endpoint, unique  # noqa: F401


def _chunks(data: bytes, n: int = 7):
    for i in range(0, len(data), n):
        yield data[i:i + n]


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return LocalBlobStore(tmp_path / "blobs")
    request.getfixturevalue("aws_env")
    endpoint = request.getfixturevalue("s3_endpoint")
    return S3BlobStore(f"s3://{unique('bucket')}/reg", tmp_path / "staging", endpoint)


def _staging_empty(store) -> bool:
    return not store.stage_dir.exists() or not any(store.stage_dir.iterdir())


def test_store_verifies_before_visible(store):
    data = os.urandom(3000)
    sha = hashlib.sha256(data).hexdigest()
    with pytest.raises(IntegrityError):
        ingest(store, _chunks(data), hashlib.sha256(b"x").hexdigest(), len(data), 10**6)
    with pytest.raises(IntegrityError):  # truncated: fewer bytes than declared
        ingest(store, _chunks(data[:-1]), sha, len(data), 10**6)
    with pytest.raises(PayloadTooLargeError):
        ingest(store, _chunks(data), sha, None, 100)
    assert not store.exists(sha) and _staging_empty(store)
    ingest(store, _chunks(data), sha, len(data), 10**6)
    assert store.exists(sha) and store.size(sha) == len(data)
    assert b"".join(store.open_range(sha)) == data
    assert b"".join(store.open_range(sha, 10, 19)) == data[10:20]
    assert b"".join(store.open_range(sha, 2990)) == data[2990:]
    assert [b.sha256 for b in store.iter_blobs()] == [sha]
    store.delete(sha)
    assert not store.exists(sha)
    with pytest.raises(EntryNotFoundError):
        b"".join(store.open_range(sha))
    for bad in ("../../etc/passwd", sha + "\n", sha.upper()):
        with pytest.raises(InvalidRequestError):
            store.exists(bad)


def test_registry_on_s3_storage(tmp_path, aws_env, s3_endpoint, lora_dir):  # noqa: F811
    settings = Settings(home=tmp_path / "home", storage_url=f"s3://{unique('bucket')}/p",
                        s3_endpoint_url=s3_endpoint)
    reg = LocalRegistry(settings, cache=PullCache(tmp_path / "cache"))
    assert isinstance(reg.service.store, S3BlobStore)
    v = reg.publish(lora_dir, "admin/s3")
    out = reg.pull("admin/s3", to=tmp_path / "out")
    assert (out / WEIGHTS_NAME).read_bytes() == (lora_dir / WEIGHTS_NAME).read_bytes()
    assert {b.sha256 for b in reg.service.store.iter_blobs()} == {f.sha256 for f in v.files}
    reg.delete("admin/s3")
    assert reg.gc(0).blobs_removed == len(v.files)
    reg.close()


def test_settings_env_and_config_file(tmp_path, monkeypatch):
    home = tmp_path / "h"
    home.mkdir()
    monkeypatch.setenv("LORAHIVE_HOME", str(home))
    s = Settings()
    assert s.database_url == f"sqlite:///{home / 'registry.db'}"
    assert s.storage_url == f"file://{home / 'blobs'}"
    (home / "config.toml").write_text('max_files = 7\nstorage_url = "/srv/blobs"\n')
    s = Settings()
    assert s.max_files == 7 and s.storage_url == "/srv/blobs"
    monkeypatch.setenv("LORAHIVE_MAX_FILES", "9")
    assert Settings().max_files == 9  # env wins over the file
    monkeypatch.setenv("LORAHIVE_DATABASE_URL", "postgresql://u:secret@db/x")
    assert "secret" not in Settings().public_dict()["database_url"]
    with pytest.raises(InvalidRequestError):
        open_store("ftp://x", home)


def test_service_start_is_zero_setup(tmp_path):
    svc = RegistryService(Settings(home=tmp_path / "fresh"))
    secret = svc.bootstrap_admin()
    assert secret and svc.bootstrap_admin() is None  # only once
    assert oct((tmp_path / "fresh" / "admin-token").stat().st_mode & 0o777) == "0o600"
    assert svc.authenticate(secret).is_admin
    svc.close()


@pytest.mark.parametrize("text,expected", [
    ("ns/name", Ref("ns", "name")),
    ("ns/name@3", Ref("ns", "name", version="3")),
    ("ns/name@v1.2.0+cu", Ref("ns", "name", version="v1.2.0+cu")),
    ("my-org/a.b_c:prod", Ref("my-org", "a.b_c", alias="prod")),
])
def test_parse_ref(text, expected):
    assert parse_ref(text) == expected and str(expected) == text


@pytest.mark.parametrize("text", [
    "", "name", "a/b/c", "ns/", "/name", "ns/na me", "ns/..", "ns/a..b", "../x/y", "ns/name@",
    "ns/name:", "ns/name@../1", "ns/name:a/b", "ns/-x", "ns/x\n", "n" * 70 + "/x",
])
def test_parse_ref_rejects(text):
    with pytest.raises(InvalidReferenceError):
        parse_ref(text)


def test_filename_rules():
    for ok in ("adapter_config.json", "sub/dir/file.txt", "README.md", "a.safetensors"):
        assert check_filename(ok) == ok
    for bad in ("", "/abs", "..", "a/../b", "a\\b", "C:x", "~/x", "a\tb", "a\u202eb", ".git/x",
                "x/.cache/y", "a//b", "./a", "x" * 256):
        with pytest.raises(InvalidRequestError):
            check_filename(bad)
    for pickled in ("adapter_model.bin", "x.PT", "a/b.pkl", "model.ckpt"):
        with pytest.raises(UnsafeFileError):
            check_filename(pickled)


def test_light_constants_match_peft_format():
    from lorahive.hub import peft_format

    assert (CONFIG_NAME, WEIGHTS_NAME) == (peft_format.CONFIG_NAME, peft_format.WEIGHTS_NAME)


def test_shared_deployment_postgres_s3_two_workers(tmp_path, aws_env, s3_endpoint, pg, lora_dir):  # noqa: F811
    """The production layout: PostgreSQL + S3 behind two workers, used through the SDK."""
    import filecmp

    from lorahive.hub.client import HttpRegistry
    from tests.registry_helpers import start_server

    env = {"LORAHIVE_DATABASE_URL": pg.url(pg.create_db()),
           "LORAHIVE_STORAGE_URL": f"s3://{unique('bucket')}/lorahive",
           "LORAHIVE_S3_ENDPOINT_URL": s3_endpoint, "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    server = start_server(tmp_path / "home", workers=2, env=env)
    try:
        with HttpRegistry(server.url, server.admin_token, cache=PullCache(tmp_path / "c1")) as admin:
            v = admin.publish(lora_dir, "admin/shared", task="qa")
            assert not (tmp_path / "home" / "blobs").exists()  # bodies went to S3
        with HttpRegistry(server.url, None, cache=PullCache(tmp_path / "c2")) as anon:
            out = anon.pull("admin/shared", to=tmp_path / "out")
            assert anon.search(task="qa").items[0].latest_version == v.version
        for f in ("adapter_config.json", WEIGHTS_NAME):
            assert filecmp.cmp(lora_dir / f, out / f, shallow=False)
    finally:
        server.stop()
