"""Usage errors and help through the real console entry point: one line, no traceback; help
that reads as paragraphs at any width."""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import lorahive
from lorahive.cli.commands.registry_client import URL_HELP

ROOT = Path(__file__).resolve().parent.parent


def run(*args, columns: int = 80, stdin: str | None = None):
    env = {**os.environ, "COLUMNS": str(columns)}
    return subprocess.run([sys.executable, "-m", "lorahive", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, env=env, input=stdin, timeout=120)


def one_error_line(r) -> str:
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("error: "), r.stderr
    assert r.returncode == 2, (r.returncode, r.stderr)  # click's convention for usage errors
    return lines[0]


def test_no_arguments_prints_help():
    r = run()
    assert r.returncode in (0, 2) and "Traceback" not in r.stderr + r.stdout
    assert "Usage: lorahive" in r.stdout and "publish" in r.stdout and r.stderr == ""


def test_group_without_subcommand_prints_help():
    r = run("token")
    assert r.returncode in (0, 2) and "Traceback" not in r.stderr + r.stdout
    assert "create" in r.stdout and "revoke" in r.stdout


def test_version():
    r = run("--version")
    assert r.returncode == 0 and r.stderr == ""
    assert r.stdout.strip() == f"lorahive {lorahive.__version__}"


def test_misspelt_command_suggests_first():
    line = one_error_line(run("pubish", "./x"))
    assert line.startswith("error: did you mean 'publish'?"), line
    assert "'pubish'" in line
    line = one_error_line(run("token", "lst"))
    assert line.startswith("error: did you mean 'list'?"), line
    line = one_error_line(run("zzzzzz"))
    assert "zzzzzz" in line and "lorahive --help" in line


@pytest.mark.parametrize(("args", "words"), [
    (("publish", "."), ["--name"]),
    (("search", "--limit", "abc"), ["--limit", "integer"]),
    (("search", "--token"), ["--token", "argument"]),
    (("pull",), ["argument", "ref"]),
    (("search", "--no-such-flag"), ["--no-such-flag"]),
    (("methods", "extra"), ["extra"]),
])
def test_usage_errors_are_one_line(args, words):
    line = one_error_line(run(*args))
    for w in words:
        assert w in line.lower(), line
    assert f"lorahive {args[0]} --help" in line  # where to read more


def test_library_error_still_exit_1():
    r = run("inspect", "/nonexistent/adapter")
    assert r.returncode == 1 and r.stderr.startswith("error: ") and "Traceback" not in r.stderr


# -- help reads as paragraphs ------------------------------------------------------------------
def _commands():
    """(argv, click command) for every command and group, from the real app."""
    import typer

    from lorahive.cli.app import app

    root = typer.main.get_command(app)
    out = []

    def walk(cmd, path):
        out.append((path, cmd))
        for name, sub in getattr(cmd, "commands", {}).items():
            walk(sub, [*path, name])

    walk(root, [])
    return out


def _flat(text: str) -> str:
    """Help output without box drawing, joined into one line of single spaces."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)
    text = re.sub(r"[│╭╮╰╯─]", " ", text)
    return " ".join(text.split())


def _help(path: list[str], columns: int) -> str:
    """``lorahive PATH --help`` rendered in this process (the same app, much faster)."""
    from typer.testing import CliRunner

    from lorahive.cli.app import app

    r = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": str(columns)},
                           prog_name="lorahive")
    assert r.exit_code == 0, r.output
    return r.output


def _source_help(cmd) -> list[str]:
    """A command's help as written in its source (docstring or help=), as paragraphs."""
    text = cmd.help or ""
    return [" ".join(p.replace("\\[", "[").split()) for p in inspect.cleandoc(text).split("\n\n")
            if p.strip()]


def test_help_is_reflowed_paragraphs():
    """Every command's and option's help: each paragraph appears whole at 80 columns (wrapped
    only between words), and at 200 columns a paragraph that fits is on one line."""
    cmds = _commands()
    assert len(cmds) > 20
    for path, cmd in cmds:
        wide = _help(path, 200)
        lines = [" ".join(x.replace("│", " ").split()) for x in wide.splitlines()]
        narrow = _help(path, 80)
        assert max(len(x) for x in narrow.splitlines()) <= 80, narrow
        flat = _flat(narrow)
        texts = _source_help(cmd) + [" ".join(p.help.replace("\\[", "[").split())
                                     for p in cmd.params if getattr(p, "help", None)]
        for text in texts:
            assert text in flat, (path, text, narrow)
        for text in _source_help(cmd):
            if len(text) < 150:
                assert any(text in x for x in lines), (path, text, wide)


def test_top_level_help_lists_each_command_on_one_line():
    wide = run("--help", columns=200)
    lines = [" ".join(x.replace("│", " ").split()) for x in wide.stdout.splitlines()]
    for path, cmd in _commands():
        if len(path) != 1 or not cmd.help:
            continue
        first = _source_help(cmd)[0]
        first = first if len(first) < 150 else first[:60]
        assert any(x.startswith(f"{path[0]} ") and first in x for x in lines), (path, first)


def test_option_help_keeps_square_brackets():
    """Help text such as ns/name[@version|:alias] is shown, not eaten as markup."""
    r = run("pull", "--help", columns=120)
    assert "namespace/name[@version|:alias]" in _flat(r.stdout)
    r = run("fuse", "--help", columns=120)
    assert "ns/name[@version]" in _flat(r.stdout)


def test_url_help_says_what_the_default_is():
    """Every --url defaults to the logged-in server before the local registry (open_registry);
    no command's help may say the local registry alone."""
    seen = 0
    for path, cmd in _commands():
        for p in cmd.params:
            if "--url" in getattr(p, "opts", []) and path != ["login"]:
                seen += 1
                assert p.help == URL_HELP and "lorahive login" in p.help, (path, p.help)
    assert seen > 15
    assert "LORAHIVE_URL" in URL_HELP and URL_HELP.index("login") < URL_HELP.index("embedded")


def test_cli_start_up_imports_no_torch_or_protocol_models():
    """Every command pays for what ``lorahive.cli.app`` imports: torch (seconds) and the
    registry's pydantic models load inside the commands that need them."""
    code = ("import sys, lorahive.cli.app; "
            "heavy = sorted({'torch', 'pydantic', 'transformers', 'lorahive.hub.protocol'} "
            "& set(sys.modules)); "
            "assert not heavy, heavy")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
