"""End to end with the real CLI and a real server on loopback: publish, search, pull into a
fresh cache, byte-compare, load with PEFT; offline pulls from the cache; the embedded registry."""

from __future__ import annotations

import filecmp
import json

import pytest
import torch

from tests.models import load_base
from tests.registry_helpers import run_cli, run_cli_inprocess, start_server

FILES = ["adapter_config.json", "adapter_model.safetensors"]


@pytest.fixture()
def server(tmp_path):
    s = start_server(tmp_path / "server-home")
    yield s
    s.stop()


def test_cli_publish_search_pull_load_with_peft(server, tmp_path, lora_dir, tiny_llama_dir):
    alice_home, fresh_home = tmp_path / "alice", tmp_path / "fresh"
    url = server.url
    # set-up commands run in-process (same Typer app); the main flow runs the real binary
    created = run_cli_inprocess(alice_home, "token", "create", "alice-key", "--scope", "write",
                                "--user", "alice", "--url", url, "--token", server.admin_token,
                                "--json")
    secret = json.loads(created.stdout)["token"]
    assert secret.startswith("lh_")
    assert "as alice" in run_cli_inprocess(alice_home, "login", "--url", url, "--token",
                                           secret).stdout

    out = run_cli(alice_home, "publish", str(lora_dir), "--name", "alice/qa-en", "--task", "qa",
                  "--tag", "en", "--tag", "demo", "--description", "question answering",
                  "--metrics", '{"acc": 0.8}', "--json")
    v = json.loads(out.stdout)
    assert v["version"] == "1" and v["rank"] == 4 and v["metrics"] == {"acc": 0.8}
    same = run_cli_inprocess(alice_home, "publish", str(lora_dir), "--name", "alice/qa-en")
    assert same.stdout.startswith("unchanged, already alice/qa-en@1 ")
    again = run_cli_inprocess(alice_home, "publish", str(lora_dir), "--name", "alice/qa-en",
                              "--allow-duplicate")
    assert "alice/qa-en@2" in again.stdout
    run_cli_inprocess(alice_home, "alias", "set", "alice/qa-en@1", "prod")

    page = json.loads(run_cli(fresh_home, "search", "question", "--tag", "en", "--json",
                              "--url", url).stdout)
    assert [a["name"] for a in page["items"]] == ["qa-en"]
    assert page["items"][0]["aliases"] == {"latest": "2", "prod": "1"}
    shown = json.loads(run_cli_inprocess(fresh_home, "show", "alice/qa-en:prod", "--json",
                                         "--url", url).stdout)
    assert shown["version"]["version"] == "1" and shown["adapter"]["task"] == "qa"

    dest = tmp_path / "pulled"
    pulled = run_cli(fresh_home, "pull", "alice/qa-en:prod", "--to", str(dest), "--url", url)
    assert pulled.stdout.strip() == str(dest)
    for name in FILES:
        assert filecmp.cmp(lora_dir / name, dest / name, shallow=False)
    assert list((fresh_home / "cache" / "blobs").iterdir())  # went through the fresh cache

    from peft import PeftModel
    from safetensors.torch import load_file

    model = PeftModel.from_pretrained(load_base(tiny_llama_dir), str(dest))
    ref = load_file(str(lora_dir / "adapter_model.safetensors"))
    got = {k: v for k, v in model.state_dict().items() if "lora_" in k}
    assert len(got) == len(ref)
    for key, tensor in ref.items():
        match = [v for k, v in got.items() if k.replace(".default", "") == key]
        assert match and torch.equal(match[0], tensor)

    # errors are one line, exit 1, no traceback
    bad = run_cli(fresh_home, "pull", "alice/nope", "--url", url, check=False)
    assert bad.returncode == 1 and bad.stderr.startswith("error: adapter alice/nope not found")
    assert "Traceback" not in bad.stderr

    # offline: the server is gone, the cache still answers for what was pulled
    server.stop()
    offline = run_cli(fresh_home, "pull", "alice/qa-en:prod", "--url", url)
    assert (tmp_path / "x").exists() is False and offline.stdout.strip().endswith("/qa-en/1")
    down = run_cli_inprocess(fresh_home, "pull", "alice/qa-en@2", "--url", url, check=False)
    assert down.exit_code == 1 and "cannot reach the registry" in down.stderr
    run_cli_inprocess(alice_home, "logout")
    assert not (alice_home / "credentials.json").exists()


def test_cli_embedded_registry_zero_setup(tmp_path, lora_dir):
    home = tmp_path / "home"
    v = json.loads(run_cli(home, "publish", str(lora_dir), "--name", "admin/local", "--tag", "x",
                           "--json").stdout)
    assert v["version"] == "1"
    assert (home / "registry.db").is_file() and (home / "admin-token").is_file()
    dest = tmp_path / "out"
    run_cli(home, "pull", "admin/local", "--to", str(dest))
    assert filecmp.cmp(lora_dir / FILES[1], dest / FILES[1], shallow=False)
    run_cli_inprocess(home, "delete", "admin/local", "--yes")
    report = json.loads(run_cli_inprocess(home, "gc", "--grace", "0", "--json").stdout)
    assert report["blobs_removed"] == 3
    bad = run_cli(home, "show", "admin/local", check=False)
    assert bad.returncode == 1 and "not found" in bad.stderr
