"""Results written by ``fuse``, ``merge`` and ``compose`` get the permissions ``cp`` would give
them under the caller's umask (a serving account can read a merged model); credentials and the
admin token stay private whatever the umask."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from lorahive.compose.composer import Example
from lorahive.compose.composer.examples import write_examples
from tests.compose_fixtures import add_tokenizer
from tests.models import make_peft_adapter
from tests.registry_helpers import run_cli_inprocess

ROOT = Path(__file__).resolve().parent.parent
UMASKS = [0o022, 0o077]


def run(umask: int, *args, home: Path | None = None):
    env = {**os.environ, "COLUMNS": "200"}
    if home is not None:
        env["LORAHIVE_HOME"] = str(home)
    return subprocess.run([sys.executable, "-m", "lorahive", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, env=env, timeout=300,
                          preexec_fn=lambda: os.umask(umask))


def modes(root: Path) -> dict[str, int]:
    out = {".": stat.S_IMODE(root.stat().st_mode)}
    for p in root.rglob("*"):
        out[str(p.relative_to(root))] = stat.S_IMODE(p.stat().st_mode)
    return out


def assert_cp_modes(root: Path, umask: int) -> None:
    """Directories 0777 & ~umask, files 0666 & ~umask, as cp and mkdir create them."""
    got = modes(root)
    assert len(got) > 2, got
    for rel, mode in got.items():
        want = (0o777 if (root / rel).is_dir() else 0o666) & ~umask
        assert mode == want, (rel, oct(mode), oct(want))


@pytest.fixture(scope="module")
def setup(tiny_llama_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("perm")
    base = add_tokenizer(tiny_llama_dir, root / "base")
    adapters = [make_peft_adapter(base, root / f"a{i}", seed=70 + i) for i in range(2)]
    shots = write_examples(root / "shots.jsonl", [Example("the cat is red ?", "yes"),
                                                  Example("the dog is blue ?", "no")])
    return base, adapters, shots


@pytest.mark.parametrize("umask", UMASKS)
@pytest.mark.parametrize("command", ["fuse", "merge", "compose"])
def test_results_honour_umask(setup, tmp_path, command, umask):
    base, (a, b), shots = setup
    out = tmp_path / "result"
    args = {
        "fuse": ["fuse", a, b, "--method", "cat"],
        "merge": ["merge", "--base", base, "--adapter", a],
        "compose": ["compose", "--lorahub", "--base", base, "-c", a, "-c", b, "--examples", shots,
                    "--budget", "2"],
    }[command]
    if command == "compose":  # the console entry point in this process, under the umask
        old = os.umask(umask)
        try:
            res = run_cli_inprocess(tmp_path / "home", *args, "--device", "cpu", "--out", out,
                                    check=False)
        finally:
            os.umask(old)
        assert res.exit_code == 0, res.stderr
    else:  # a fresh process that inherits the umask
        r = run(umask, *args, "--device", "cpu", "--out", out)
        assert r.returncode == 0, r.stderr
    assert_cp_modes(out, umask)


def test_atomic_helpers_honour_umask(tmp_path):
    from lorahive.hub.atomic import atomic_directory, atomic_file, atomic_path

    old = os.umask(0o027)
    try:
        with atomic_directory(tmp_path / "d") as d, atomic_file(d / "f.json", "w") as fh:
            fh.write("{}")
        with atomic_path(tmp_path / "p.bin") as p:
            p.write_bytes(b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o750
    assert stat.S_IMODE((tmp_path / "d" / "f.json").stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "p.bin").stat().st_mode) == 0o640


def test_secrets_stay_private_under_a_permissive_umask(tmp_path):
    home = tmp_path / "home"
    r = run(0o022, "search", home=home)  # the embedded registry creates its admin token
    assert r.returncode == 0, r.stderr
    assert stat.S_IMODE((home / "admin-token").stat().st_mode) == 0o600
    code = ("import os; os.umask(0o022);"
            "from lorahive.hub.credentials import save_credentials as s;"
            "print(s('http://127.0.0.1:9', 'lh_x'))")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       env={**os.environ, "LORAHIVE_HOME": str(home)}, check=True)
    assert stat.S_IMODE(Path(r.stdout.strip()).stat().st_mode) == 0o600
