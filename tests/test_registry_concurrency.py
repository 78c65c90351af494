"""Parallel publishes and pulls against a two-worker server on the embedded SQLite database:
bounded in count and time, no errors, no lost or duplicated versions, every pull intact."""

from __future__ import annotations

import filecmp
from concurrent.futures import ThreadPoolExecutor

import pytest

from lorahive.hub.cache import PullCache
from lorahive.hub.client import HttpRegistry
from tests.registry_helpers import start_server

PUBLISHES = 6
PULLS = 6


@pytest.fixture()
def server(tmp_path):
    s = start_server(tmp_path / "home", workers=2)
    yield s
    s.stop()


def test_parallel_publishes_and_pulls(server, tmp_path, lora_dir):
    admin = HttpRegistry(server.url, server.admin_token, cache=PullCache(tmp_path / "c-admin"))
    token = admin.create_token("w", "write", user="team").token
    admin.publish(lora_dir, "team/base")

    def publish(i: int) -> str:
        with HttpRegistry(server.url, token, cache=PullCache(tmp_path / f"cp{i}")) as c:
            explicit = c.publish(lora_dir, "team/tagged", version=f"r{i}",
                                 allow_duplicate=True).version
            auto = c.publish(lora_dir, "team/auto", allow_duplicate=True).version
            once = c.publish(lora_dir, "team/once")  # the same files, all at once
            return f"{explicit},{auto},{once.version},{once.unchanged}"

    def pull(i: int) -> bool:
        with HttpRegistry(server.url, None, cache=PullCache(tmp_path / f"cc{i}")) as c:
            out = c.pull("team/base", to=tmp_path / f"out{i}")
        return all(filecmp.cmp(lora_dir / n, out / n, shallow=False)
                   for n in ("adapter_config.json", "adapter_model.safetensors"))

    with ThreadPoolExecutor(max_workers=PUBLISHES + PULLS) as pool:
        pubs = [pool.submit(publish, i) for i in range(PUBLISHES)]
        pulls = [pool.submit(pull, i) for i in range(PULLS)]
        results = [f.result(timeout=120) for f in pubs]
        assert all(f.result(timeout=120) for f in pulls)

    assert sorted(r.split(",")[0] for r in results) == [f"r{i}" for i in range(PUBLISHES)]
    autos = sorted(int(r.split(",")[1]) for r in results)
    assert autos == list(range(1, PUBLISHES + 1))  # each number handed out exactly once
    assert {v.version for v in admin.versions("team/tagged")} == {f"r{i}" for i in range(PUBLISHES)}
    assert len(admin.versions("team/auto")) == PUBLISHES
    assert admin.resolve("team/auto").version == str(PUBLISHES)
    assert admin.adapter("team/base").downloads == PULLS
    # racing publishes of identical files: one version, every other answer is "unchanged"
    assert [v.version for v in admin.versions("team/once")] == ["1"]
    assert {r.split(",")[2] for r in results} == {"1"}
    assert sorted(r.split(",")[3] for r in results) == ["False"] + ["True"] * (PUBLISHES - 1)
    admin.close()
