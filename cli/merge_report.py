"""What ``lorahive merge`` says about a 4-bit base: per-module delta survival and gap."""

from __future__ import annotations

from typing import Any

from rich import box
from rich.table import Table

from lorahive.cli.output import console, err_console


def quant_json(report: Any) -> dict[str, Any]:
    """Extra keys of ``merge --json`` for a 4-bit base (none for a float base)."""
    if report.quant is None:
        return {}
    return {"quant": report.quant.summary(), "modules": [r.as_dict() for r in report.modules],
            "warnings": report.warnings}


def print_warnings(report: Any) -> None:
    for w in report.warnings:
        err_console.print(f"[yellow]warning:[/yellow] {w}")


def print_quant_report(report: Any) -> None:
    """One row per adapted weight: the delta's norm, the quantization gap when an original
    base was given, and what survived re-quantization."""
    if report.quant is None or not report.modules:
        return
    rows = report.modules
    gap = any(r.gap_norm is not None for r in rows)
    rq = any(r.rel_error is not None for r in rows)
    codes = any(r.codes_changed is not None for r in rows)
    notes = ["delta: ||delta||", "delta/W: ||delta|| / ||W||"]
    table = Table(title=f"4-bit base -> {report.quant.summary()['output']}, deltas added to the "
                  f"{report.quant.against} weights", box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("module", no_wrap=True)
    table.add_column("delta", justify="right", min_width=5)
    table.add_column("delta/W", justify="right", min_width=7)
    if gap:
        table.add_column("gap/delta", justify="right", min_width=9)
        notes.append("gap: ||W_original - W_4bit||")
    if rq:
        table.add_column("rel.err", justify="right", min_width=7)
        notes.append("rel.err: ||delta as written - delta|| / ||delta||")
    if codes:
        table.add_column("codes", justify="right", min_width=5)
        notes.append("codes: 4-bit codes changed")
    for r in rows:
        cells = [r.key.removeprefix("model.").removesuffix(".weight"), f"{r.delta_norm:.3g}",
                 f"{r.delta_norm / r.weight_norm:.3g}" if r.weight_norm else "-"]
        if gap:
            cells.append(f"{r.gap_to_delta:.3g}" if r.gap_to_delta is not None else "-")
        if rq:
            cells.append(f"{r.rel_error:.3g}" if r.rel_error is not None else "-")
        if codes:
            cells.append(f"{r.codes_changed:.2%}" if r.codes_changed is not None else "-")
        table.add_row(*cells)
    table.caption = "; ".join(notes)
    console.print(table)
    s = report.quant.summary()
    parts = []
    if s["median_rel_error"] is not None:
        parts.append(f"median relative error of the delta as written "
                     f"{s['median_rel_error']:.3f} ({s['modules_mostly_lost']} of {s['modules']} "
                     "modules lose more than half)")
    if s["median_gap_to_delta"] is not None:
        parts.append(f"median quantization gap / delta {s['median_gap_to_delta']:.2f}")
    if parts:
        console.print("; ".join(parts))
