"""Commands on local adapter directories: ``inspect`` and ``convert``."""

from __future__ import annotations

from pathlib import Path

import typer

from lorahive.cli.commands.registry_client import TokenOpt, UrlOpt
from lorahive.cli.output import Col, console, natural_key, print_json, print_table
from lorahive.cli.sources import looks_like_ref, resolve_sources

# module names always whole; figures go, rightmost first, when the terminal is narrow
MODULE_COLUMNS = (Col("module"), Col("shape", justify="right", drop=3),
                  Col("rank", justify="right"), Col("scale", justify="right", drop=4),
                  Col("norm", justify="right", drop=5),
                  Col("eff.rank 90%", justify="right", drop=6),
                  Col("eff.rank 99%", justify="right", drop=7))


def inspect(
    source: str = typer.Argument(
        ..., metavar="PATH|REF",
        help="A PEFT adapter directory, or a registry reference ns/name[@version|:alias] "
        "(pulled into the cache)."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    allow_pickle: bool = typer.Option(
        False, "--allow-pickle", help="Read adapter_model.bin with a weights-only loader."
    ),
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """Print an adapter's config summary and a per-module table (shape, rank, scale, norm,
    effective rank at 90%/99% energy)."""
    from lorahive.hub.peft_format import load_peft

    path, label = Path(source).expanduser(), source
    if not path.exists() and looks_like_ref(source):
        pulled = resolve_sources([source], url, token)[0]
        path, label = pulled.path, f"{pulled.ref} ({pulled.path})"
    adapter = load_peft(path, allow_pickle=allow_pickle)
    summary = adapter.summary()
    stats = sorted(adapter.stats(), key=lambda s: natural_key(s.name)) if adapter.is_lora else []
    if json_out:
        print_json({"path": str(path), "source": source, "summary": summary, "config": adapter.config.data,
                    "modules": [s.as_dict() for s in stats]})
        return
    console.print(f"[bold]{label}[/bold]")
    for key, value in summary.items():
        console.print(f"  {key}: {value}")
    if not adapter.is_lora:
        console.print(f"  (opaque {adapter.peft_type} adapter: {len(adapter.extra_tensors)} tensors)")
        return
    print_table(MODULE_COLUMNS, (
        (s.name + (" (DoRA)" if s.dora else ""), "x".join(map(str, s.shape)), s.rank,
         f"{s.scale:.4g}", f"{s.norm:.4g}", s.effective_rank_90, s.effective_rank_99)
        for s in stats))


def convert(
    path: Path = typer.Argument(..., help="A PEFT adapter directory (safetensors or .bin)."),
    out: Path = typer.Option(..., "--out", help="Where to write the safetensors adapter."),
    allow_pickle: bool = typer.Option(
        False, "--allow-pickle",
        help="Read a pickle adapter_model.bin with torch.load(weights_only=True).",
    ),
    initial: Path | None = typer.Option(
        None, "--initial",
        help="For PiSSA/OLoRA/CorDA adapters: the adapter as saved before training. The output "
        "is then a plain LoRA delta against the original base model (rank doubles).",
    ),
) -> None:
    """Rewrite an adapter as plain PEFT safetensors: bring in a pickle adapter safely, or turn
    a residual-base (PiSSA/OLoRA) adapter into a delta against the original base."""
    from lorahive.hub.peft_format import convert_residual, load_peft, save_peft

    adapter = load_peft(path, allow_pickle=allow_pickle)
    if initial is not None:
        adapter = convert_residual(adapter, load_peft(initial, allow_pickle=allow_pickle))
    elif adapter.config.residual_init:
        console.print(
            f"[yellow]note:[/yellow] this adapter was initialised with "
            f"{adapter.config.residual_init!r}; its delta applies to a residual base. Pass "
            "--initial DIR to convert it to a delta against the original base."
        )
    save_peft(adapter, out)
    console.print(f"wrote {out}")


def register(app: typer.Typer) -> None:
    app.command()(inspect)
    app.command()(convert)
