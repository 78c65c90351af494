"""The rendering rules of ``lorahive.cli.output`` at exact widths, in this process."""

from __future__ import annotations

import re

import pytest
from rich.console import Console

from lorahive.cli import output
from lorahive.cli.output import Col, human_bytes, natural_key, print_table


def test_human_bytes_uses_binary_units():
    assert human_bytes(512) == "512 B"
    assert human_bytes(1536) == "1.5 KiB"
    assert human_bytes(5 * 1024**2) == "5.0 MiB"
    assert human_bytes(3 * 1024**3) == "3.0 GiB"


def test_natural_key_orders_numbers_by_value():
    names = [f"model.layers.{i}.mlp.down_proj" for i in (10, 2, 0, 1, 11)]
    assert [n.split(".")[2] for n in sorted(names, key=natural_key)] == ["0", "1", "2", "10", "11"]
    assert sorted(["b", "a10", "a9"], key=natural_key) == ["a9", "a10", "b"]


COLS = (Col("adapter"), Col("latest"), Col("base model", drop=1), Col("tags", wrap=True, drop=2),
        Col("downloads", justify="right", drop=3))
ROWS = [("acme/food-sentiment-classifier-en", "12", "HuggingFaceTB/SmolLM2-135M-Instruct",
         "english, reviews", "7")]


@pytest.fixture()
def screen(monkeypatch):
    def make(width: int, terminal: bool = True) -> Console:
        con = Console(force_terminal=terminal, width=width, soft_wrap=True, record=True,
                      color_system=None)
        monkeypatch.setattr(output, "console", con)
        return con
    return make


@pytest.mark.parametrize("width", [60, 80, 100, 140])
def test_terminal_table_drops_columns_before_splitting_names(screen, width):
    con = screen(width)
    print_table(COLS, ROWS)
    text = con.export_text()
    assert all(len(x) <= width for x in text.splitlines()), text
    assert "acme/food-sentiment-classifier-en" in text
    if "base model" in text:
        assert "HuggingFaceTB/SmolLM2-135M-Instruct" in text
    if width >= 140:
        assert "downloads" in text  # room for everything: nothing dropped
    if width <= 80:
        assert "downloads" not in text


def test_too_narrow_or_piped_gives_whole_plain_lines(screen):
    for width, terminal in ((30, True), (200, False)):
        con = screen(width, terminal)
        print_table(COLS, ROWS, title="1 adapter(s)")
        lines = con.export_text().splitlines()
        assert lines[0] == "1 adapter(s)"
        assert lines[1].split() == ["adapter", "latest", "base", "model", "tags", "downloads"]
        assert re.split(r"\s{2,}", lines[2]) == list(ROWS[0])  # one record, one line
        assert not set("│┃━─") & set("".join(lines))
