"""The registry commands as a user runs them, on the embedded registry or a real server on
loopback: what they say when nothing changes, when a directory is in the way, when
interrupted, when a port is taken, and what their help promises. Errors, exit codes and
signals go through the real binary in a subprocess; the rest runs the same Typer app
in-process (``run_cli_inprocess``), which is several times faster."""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lorahive.hub.cache import PullCache
from lorahive.hub.client import HttpRegistry
from tests.registry_helpers import cli_env, run_cli, run_cli_inprocess, start_server, unique

ROOT = Path(__file__).resolve().parents[1]


def _copy(src: Path, dest: Path, **extra: bytes) -> Path:
    shutil.copytree(src, dest)
    for name, data in extra.items():
        (dest / name.replace("__", ".")).write_bytes(data)
    return dest


def _one_error_line(cp: subprocess.CompletedProcess) -> str:
    lines = cp.stderr.strip().splitlines()
    assert cp.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: "), (
        cp.returncode, cp.stdout, cp.stderr)
    return lines[0]


def test_publishing_the_same_files_again_says_unchanged(tmp_path, lora_dir):
    home = tmp_path / "home"
    first = run_cli_inprocess(home, "publish", str(lora_dir), "--name", "admin/same",
                              "--metrics", '{"acc": 0.5}')
    assert first.stdout.startswith("published admin/same@1 ")
    for extra in ((), ("--version", "1"), ("--version", "1.1")):
        again = run_cli_inprocess(home, "publish", str(lora_dir), "--name", "admin/same", *extra)
        assert again.stdout.startswith("unchanged, already admin/same@1 "), again.stdout
    listed = json.loads(run_cli_inprocess(home, "versions", "admin/same", "--json").stdout)
    assert [v["version"] for v in listed] == ["1"] and listed[0]["metrics"] == {"acc": 0.5}
    dup = run_cli_inprocess(home, "publish", str(lora_dir), "--name", "admin/same",
                            "--allow-duplicate")
    assert dup.stdout.startswith("published admin/same@2 ")
    shown = json.loads(run_cli_inprocess(home, "show", "admin/same", "--json").stdout)
    assert shown["version"]["version"] == "2"


def test_pull_to_a_non_empty_directory_refuses_or_replaces_with_force(tmp_path, lora_dir):
    home = tmp_path / "home"
    run_cli_inprocess(home, "publish", str(lora_dir), "--name", "admin/p")
    out = tmp_path / "out"
    out.mkdir()
    (out / "lorahive.json").write_text('{"lineage": {"method": "fuse:tsv"}}')
    cp = run_cli(home, "pull", "admin/p", "--to", str(out), check=False)
    line = _one_error_line(cp)
    assert str(out) in line and "another --to, or --force" in line
    assert sorted(p.name for p in out.iterdir()) == ["lorahive.json"]  # untouched
    run_cli_inprocess(home, "pull", "admin/p", "--to", str(out), "--force")
    got = sorted(p.name for p in out.iterdir())
    assert "lorahive.json" not in got and "adapter_model.safetensors" in got
    assert (out / "adapter_model.safetensors").read_bytes() == \
        (lora_dir / "adapter_model.safetensors").read_bytes()
    empty = tmp_path / "empty"
    empty.mkdir()
    run_cli_inprocess(home, "pull", "admin/p", "--to", str(empty))  # an empty one is fine
    assert (empty / "adapter_config.json").is_file()
    os.umask(old := os.umask(0o022))
    assert (empty.stat().st_mode & 0o777) == 0o777 & ~old  # as mkdir would make it


def test_gc_says_what_its_grace_period_kept(tmp_path, lora_dir):
    home = tmp_path / "home"
    d = _copy(lora_dir, tmp_path / "a", notes__txt=unique("orphan-to-be ").encode())
    run_cli_inprocess(home, "publish", str(d), "--name", "admin/g")
    run_cli_inprocess(home, "publish", str(lora_dir), "--name", "admin/g")
    run_cli_inprocess(home, "delete", "admin/g@1", "--yes")
    cp = run_cli_inprocess(home, "gc")
    assert "removed 0 blob(s)" in cp.stdout
    assert "1 unreferenced blob(s) younger than the 1 h grace period" in cp.stdout, cp.stdout
    assert "--grace 0" in cp.stdout
    freed = run_cli_inprocess(home, "gc", "--grace", "0")
    assert "removed 0 blob(s)" not in freed.stdout and "unreferenced" not in freed.stdout


def _interrupt_mid_staging(home: Path, proc: subprocess.Popen, low: int, full: int) -> None:
    """SIGINT ``proc`` while a staging file holds between ``low`` and ``full`` bytes: the
    process is stopped (SIGSTOP) before each look, so a busy machine cannot let the copy
    finish between the look and the signal."""
    stage = home / "blobs" / ".staging"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGSTOP)
        sizes = []
        for f in stage.glob("*") if stage.is_dir() else []:
            with contextlib.suppress(FileNotFoundError):  # moved into the store meanwhile
                sizes.append(f.stat().st_size)
        if any(low <= n < full for n in sizes):
            proc.send_signal(signal.SIGINT)  # delivered when it runs again, mid-copy
            proc.send_signal(signal.SIGCONT)
            return
        proc.send_signal(signal.SIGCONT)
        time.sleep(0.002)
    raise AssertionError("the upload was never seen in progress")


def test_publish_interrupted_says_what_it_left_and_exits_130(tmp_path, lora_dir):
    home = tmp_path / "home"
    big = random.Random(3).randbytes(64 * 1024**2)
    d = _copy(lora_dir, tmp_path / "a", a_notes__txt=unique("small ").encode(),
              z_big__data=big)
    run_cli_inprocess(home, "whoami")  # the embedded registry exists before the timed run
    # `python -m lorahive` with Ctrl-C's default handling, as a shell starts it: a test
    # runner's worker may ignore SIGINT, and an ignored signal stays ignored across exec
    main = ("import runpy, signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
            "runpy.run_module('lorahive', run_name='__main__', alter_sys=True)")
    proc = subprocess.Popen([sys.executable, "-c", main, "publish", str(d), "--name",
                             "admin/cut"], env=cli_env(home), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _interrupt_mid_staging(home, proc, 1024**2, len(big))
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("interrupted: nothing was committed; ")
    assert "uploaded" in lines[0] and "lorahive gc" in lines[0] and "grace" in lines[0]
    assert " of " in lines[0]
    assert not [p for p in home.rglob(".lorahive-tmp*")], "a staging file was left"
    gone = run_cli_inprocess(home, "versions", "admin/cut", check=False)
    assert gone.exit_code == 1 and "admin/cut not found" in gone.stderr  # nothing committed
    again = run_cli_inprocess(home, "publish", str(d), "--name", "admin/cut")
    assert again.stdout.startswith("published admin/cut@1 ")


def test_http_publish_interrupted_mid_upload_reports_and_resumes(tmp_path, lora_dir):
    """Over HTTP with parallel uploads: an interrupt in the middle of the big file stops the
    uploads, reports the finished ones, and a second publish uploads only what is missing."""
    from lorahive.hub.publishing import PublishInterrupted

    server = start_server(tmp_path / "srv")
    try:
        big = random.Random(5).randbytes(48 * 1024**2)
        d = _copy(lora_dir, tmp_path / "a", a_notes__txt=unique("small ").encode(),
                  z_big__data=big)
        with HttpRegistry(server.url, server.admin_token,
                          cache=PullCache(tmp_path / "c")) as reg:
            reg.upload_workers = 1  # the small file first, then the big one

            def stop(advance: int, total: int, label: str) -> None:
                if label == "z_big.data" and advance:
                    stop.sent += advance  # type: ignore[attr-defined]
                    if stop.sent > 8 * 1024**2:  # type: ignore[attr-defined]
                        raise KeyboardInterrupt

            stop.sent = 0  # type: ignore[attr-defined]
            with pytest.raises(PublishInterrupted) as e:
                reg.publish(d, "admin/cut", progress=stop)
            assert e.value.stage == "upload" and e.value.uploaded >= 1
            assert e.value.to_upload >= 2 and e.value.uploaded < e.value.to_upload
            assert "nothing was committed" in str(e.value)
            plan = reg._json("POST", "/adapters/admin/cut/preflight", json={
                "files": [{"path": p.name, "sha256": __import__("hashlib").sha256(
                    p.read_bytes()).hexdigest(), "size": p.stat().st_size}
                    for p in sorted(d.iterdir())]})
            assert len(plan["missing"]) == e.value.to_upload - e.value.uploaded
            assert reg.publish(d, "admin/cut").version == "1"
    finally:
        server.stop()


def test_serve_on_a_busy_port_fails_in_one_line_before_announcing(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        cp = run_cli(tmp_path / "home", "serve", "--port", str(port), check=False, timeout=60)
    line = _one_error_line(cp)
    assert f"127.0.0.1:{port}" in line and "--port" in line
    assert "lorahive registry on" not in cp.stdout + cp.stderr


def test_serve_points_to_the_admin_token_on_every_start(tmp_path):
    home = tmp_path / "home"
    for start in range(2):
        server = start_server(home)
        server.stop()
        log = server.log.read_text()
        if start == 0:
            assert "admin token (shown once" in log and server.admin_token in log
        else:
            assert f"admin token: in {home / 'admin-token'}" in log
            assert server.admin_token not in log


def test_whoami_shows_a_tokens_namespace_restriction_and_bad_tokens_say_where(tmp_path):
    home = tmp_path / "home"
    assert "acts on every namespace admin owns" in run_cli_inprocess(home, "whoami").stdout
    tok = run_cli_inprocess(home, "token", "create", "scoped", "--scope", "read",
                            "--namespace", "admin").stdout.strip().splitlines()[-1]
    who = run_cli_inprocess(home, "whoami", "--token", tok).stdout
    assert "scope read" in who and "only namespace(s) admin" in who
    bad = run_cli_inprocess(home, "whoami", "--token", "lh_" + "x" * 43, check=False)
    assert bad.exit_code == 1 and bad.stderr.startswith("error: ")
    assert "LORAHIVE_TOKEN" in bad.stderr and "lorahive login" in bad.stderr


def test_inspect_resolves_a_registry_reference(tmp_path, lora_dir):
    home = tmp_path / "home"
    run_cli_inprocess(home, "publish", str(lora_dir), "--name", "admin/insp")
    cp = run_cli_inprocess(home, "inspect", "admin/insp@1", "--json")
    data = json.loads(cp.stdout)
    assert data["source"] == "admin/insp@1" and data["summary"]["rank"] == 4
    assert Path(data["path"]).is_relative_to(home / "cache")
    nope = run_cli_inprocess(home, "inspect", "admin/nope", check=False)
    assert nope.exit_code == 1 and "admin/nope" in nope.stderr
    missing = run_cli_inprocess(home, "inspect", str(tmp_path / "no" / "dir"), check=False)
    assert missing.exit_code == 1 and "does not exist" in missing.stderr


@pytest.mark.parametrize("command", ["publish", "pull", "search", "show", "versions", "gc",
                                     "whoami", "inspect", "delete"])
def test_url_and_token_help_say_the_real_order(tmp_path, command):
    cp = run_cli_inprocess(tmp_path / "home", command, "--help")
    text = " ".join(cp.stdout.replace("│", " ").split())  # the words, across wrapped lines
    assert "default: the local registry" not in text
    assert "LORAHIVE_URL, else the server saved by `lorahive login`, else the embedded " \
           "registry" in text
    assert "LORAHIVE_TOKEN, else the token saved by `lorahive login`" in text
