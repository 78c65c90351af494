"""How every command prints: one stdout console, tables, record blocks, JSON, sizes, progress.

Output is read by people at any terminal width and by ``grep`` in pipes, so the rules live here
once: a message is one line (never wrapped by us: the terminal folds it, a pipe keeps it whole);
reference and module names are never split (other columns are dropped first); tables become
plain aligned lines when stdout is not a terminal; module names sort naturally (layer 2 before
layer 10); sizes use binary units with their binary names (KiB, MiB, GiB).
"""

from __future__ import annotations

import json
import re
import textwrap
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from rich import box
from rich.cells import cell_len
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

# soft_wrap: a long message is one line of output; only the terminal may fold it on screen
console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)


def print_json(data: Any) -> None:
    """Machine-readable output: plain JSON on stdout, nothing else."""
    print(json.dumps(data, indent=2, default=str))


def line(text: str = "") -> None:
    """One line of output, printed as given: no markup, emoji codes, highlighting or wrapping."""
    console.print(text, markup=False, highlight=False, emoji=False, soft_wrap=True)


# -- sizes and ordering ------------------------------------------------------------------------
_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def human_bytes(n: float) -> str:
    """A size in binary units, named as such (1536 -> '1.5 KiB')."""
    for unit in _UNITS:
        if abs(n) < 1024 or unit == _UNITS[-1]:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def natural_key(text: str) -> tuple:
    """Sort key that orders the numbers inside names by value: layers 0, 1, 2, 10."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part)
                 for part in re.split(r"(\d+)", text) if part)


# -- tables ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Col:
    """A table column. Cells are never split (names, references, paths, numbers) unless
    ``wrap`` allows free text (descriptions, tag lists) to wrap between words. ``drop``: when
    the terminal is too narrow, columns with the highest ``drop`` go first; 0 means always.
    """

    header: str
    wrap: bool = False
    drop: int = 0
    justify: Literal["left", "right"] = "left"


def _min_width(col: Col, cells: list[str]) -> int:
    texts = [col.header, *cells]
    if col.wrap:
        return max((cell_len(w) for t in texts for w in t.split()), default=1)
    return max(cell_len(t) for t in texts)


def table_fits(cols: Sequence[Col], rows: Sequence[Sequence[str]], width: int) -> bool:
    """Whether a boxed table of these columns can be drawn in ``width`` cells without
    splitting a word (every cell but ``wrap`` ones on one line)."""
    need = sum(_min_width(c, [r[i] for r in rows]) for i, c in enumerate(cols))
    return need + 3 * len(cols) + 1 <= width  # padding 1+1 per column, n+1 rules


def plain_lines(cols: Sequence[Col], rows: Sequence[Sequence[str]]) -> list[str]:
    """Header and rows as aligned plain lines (two spaces between columns)."""
    widths = [max(cell_len(t) for t in [c.header, *(r[i] for r in rows)])
              for i, c in enumerate(cols)]
    out = []
    for cells in [[c.header for c in cols], *rows]:
        parts = [(cell.rjust(w) if c.justify == "right" else cell.ljust(w))
                 for c, w, cell in zip(cols, widths, cells, strict=True)]
        out.append("  ".join(parts).rstrip())
    return out


def print_table(cols: Sequence[Col], rows: Iterable[Sequence[Any]],
                title: str | None = None) -> None:
    """Print rows under ``cols``: a box table on a terminal (dropping the most droppable
    columns until whole names fit), plain aligned lines otherwise."""
    data = [[str(v) for v in r] for r in rows]
    keep = list(range(len(cols)))
    if console.is_terminal:
        width = console.width
        while not table_fits([cols[i] for i in keep], [[r[i] for i in keep] for r in data],
                             width):
            droppable = [i for i in keep if cols[i].drop > 0]
            if not droppable:
                break
            keep.remove(max(droppable, key=lambda i: (cols[i].drop, i)))
        shown = [cols[i] for i in keep]
        cells = [[r[i] for i in keep] for r in data]
        if table_fits(shown, cells, width):
            table = Table(title=title, box=box.HEAVY_HEAD)
            for j, c in enumerate(shown):
                table.add_column(c.header, justify=c.justify, no_wrap=not c.wrap,
                                 overflow="fold" if c.wrap else "ellipsis",
                                 min_width=_min_width(c, [r[j] for r in cells]))
            for r in cells:
                table.add_row(*(Text(v) for v in r))
            console.print(table, soft_wrap=False)
            return
    # a pipe, or a terminal too narrow for even the names: whole lines, every column
    if title:
        line(title)
    for text in plain_lines(cols, data):
        line(text)


def print_fields(heading: str | None, fields: Iterable[tuple[str, Any]],
                 indent: str = "  ") -> None:
    """A record as ``label: value`` lines under an optional heading, one line each."""
    if heading is not None:
        line(heading)
    for label, value in fields:
        line(f"{indent}{label}: {value}")


def paragraph(text: str, indent: str = "", hanging: str = "") -> None:
    """Prose: on a terminal wrapped between words at its width (URLs and names stay whole),
    in a pipe one line."""
    if not console.is_terminal:
        line(indent + text)
        return
    for part in textwrap.fill(text, width=max(console.width, 40), initial_indent=indent,
                              subsequent_indent=indent + hanging, break_long_words=False,
                              break_on_hyphens=False).splitlines():
        line(part)


def print_records(records: Iterable[tuple[str, Sequence[tuple[str, Any]]]],
                  indent: str = "  ") -> None:
    """Records as blocks: a heading line, then one indented line per field (``label: value``,
    or the bare value for an empty label; fields whose value is None are left out). On a
    terminal a long field wraps between words under its indent (URLs stay whole); in a pipe
    each field is one line."""
    for i, (heading, fields) in enumerate(records):
        if i:
            line()
        line(heading)
        for label, value in fields:
            if value is None:
                continue
            paragraph(f"{label}: {value}" if label else str(value), indent, indent)


# -- progress ----------------------------------------------------------------------------------
class BinarySpeedColumn(ProgressColumn):
    """Transfer speed in the binary units the sizes use (MiB/s)."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("?" if speed is None else f"{human_bytes(speed)}/s", style="progress.data.speed")


def byte_progress(transient: bool = True) -> Progress:
    """A progress bar over bytes (uploads, downloads, merges), drawn on stderr."""
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(binary_units=True),
        BinarySpeedColumn(), TimeRemainingColumn(), console=err_console, transient=transient,
    )
