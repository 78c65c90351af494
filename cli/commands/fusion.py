"""``lorahive fuse``, ``lorahive merge`` and ``lorahive methods``: thin wrappers over compose."""

from __future__ import annotations

import contextlib
import importlib
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from lorahive.cli.commands.registry_client import TOKEN_HELP, URL_HELP
from lorahive.cli.output import (
    Col,
    byte_progress,
    console,
    err_console,
    human_bytes,
    line,
    natural_key,
    paragraph,
    print_json,
    print_records,
    print_table,
)
from lorahive.cli.sources import (
    check_outputs,
    output_dir,
    publish_output,
    resolve_sources,
    reuse_output,
)
from lorahive.hub.errors import InvalidRequestError
from lorahive.hub.lineage import SIDECAR, Lineage, read_sidecar, sidecar_bytes


def parse_weights(text: str | None, n: int) -> list[float] | None:
    if text is None:
        return None
    try:
        w = [float(x) for x in text.replace(" ", ",").split(",") if x]
    except ValueError:
        raise InvalidRequestError(f"--weights must be numbers separated by commas; got {text!r}") \
            from None
    if len(w) != n:
        raise InvalidRequestError(f"--weights has {len(w)} numbers for {n} adapters")
    return w


def method_params(density: float | None, majority_sign: str | None,
                  extra: list[str] | None) -> dict[str, Any]:
    params: dict[str, Any] = {"density": density, "majority_sign_method": majority_sign}
    for item in extra or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise InvalidRequestError(f"--param takes KEY=VALUE; got {item!r}")
        params[key.strip().replace("-", "_")] = value.strip()
    return params


ENERGY_COLUMNS = (Col("module"), Col("rank", justify="right"),
                  Col("energy kept", justify="right"))
DENSITY = typer.Option(None, "--density", help="Share of entries kept (TIES, DARE, pruning).")
SIGN = typer.Option(None, "--majority-sign", help="TIES sign election: total or frequency.")
PARAM = typer.Option(None, "--param", help="Other method parameter, KEY=VALUE (repeatable).")
WEIGHTS = typer.Option(None, "--weights", help="One weight per adapter, comma separated "
                       "(default 1 each).")
DEVICE = typer.Option("auto", "--device", help="auto, cpu or cuda[:N].")
URL = typer.Option(None, "--url", help=URL_HELP, show_default=False)
TOKEN = typer.Option(None, "--token", help=TOKEN_HELP, show_default=False)
PRIVATE = typer.Option(None, "--private/--public", show_default=False,
                       help="Visibility of the published adapter (default: the registry decides; "
                       "a child of a private parent is private).")


@contextlib.contextmanager
def module_progress(total: Callable[[], int], show: bool
                    ) -> Iterator[Callable[[str], None] | None]:
    """A per-module progress bar on stderr when it is a terminal (nothing when piped);
    ``total`` is asked only when the bar is shown."""
    if not show or not err_console.is_terminal:
        yield None
        return
    with Progress(TextColumn("[bold]fusing"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[module]}"), console=err_console,
                  transient=True) as bar:
        task = bar.add_task("fusing", total=total(), module="")
        yield lambda name: bar.update(task, advance=1, module=name)


def module_count(dirs: list[Path]) -> int:
    """How many modules fusing ``dirs`` writes (their union; read from the headers)."""
    from lorahive.hub.peft_format import open_peft

    names: set[str] = set()
    for d in dirs:
        with open_peft(d) as f:
            names |= set(f.adapter.modules)
    return len(names)


def import_in_background(module: str) -> None:
    """Start importing ``module`` on a thread, so that a slow import (torch: a second or more)
    runs while this thread does I/O; a later ``import`` waits for it, and an import error is
    raised there, not on the thread."""
    def load() -> None:
        with contextlib.suppress(Exception):
            importlib.import_module(module)

    threading.Thread(target=load, name=f"import {module}", daemon=True).start()


def default_method(method: str | None, params: dict[str, Any], n_inputs: int
                   ) -> tuple[str, dict[str, Any], str | None]:
    """The method asked for, or the one the measured standings support (with the reason)."""
    from lorahive.compose.fusion import METHODS, standings

    if method is not None:
        note = standings.setting_note(method, params, n_inputs)
        if note:
            err_console.print(f"[dim]measured:[/dim] {note}", soft_wrap=True)
        return method, params, None
    choice = standings.choose(n_inputs, known=set(METHODS))
    return choice.method, {**params, **choice.params}, choice.reason


def fuse_cmd(
    adapters: list[str] = typer.Argument(
        ..., help="Adapters to fuse: directories or registry references ns/name[@version]."),
    out: Path | None = typer.Option(None, "--out", help="Directory for the fused PEFT adapter."),
    publish: str | None = typer.Option(
        None, "--publish", help="Publish the fused adapter as ns/name[@version], with lineage."),
    task: str | None = typer.Option(None, "--task", help="Task recorded when publishing."),
    private: bool | None = PRIVATE,
    url: str | None = URL,
    token: str | None = TOKEN,
    method: str | None = typer.Option(
        None, "--method", "-m", help="Fusion method (`lorahive methods` lists them; default: "
        "the best measured for this many inputs, named with the reason)."),
    weights: str | None = WEIGHTS,
    density: float | None = DENSITY,
    majority_sign: str | None = SIGN,
    param: list[str] | None = PARAM,
    rank: int | None = typer.Option(None, "--rank", help="Rank of every fused module."),
    rank_budget: int | None = typer.Option(
        None, "--rank-budget", help="Total rank shared across modules by singular-value energy."),
    seed: int = typer.Option(0, "--seed", help="Seed of random pruning (DARE)."),
    device: str = DEVICE,
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Fuse several adapters into one adapter; its lineage is written to lorahive.json (and
    stored in the registry with --publish)."""
    check_outputs(out, publish)
    import_in_background("lorahive.compose.fusion")  # torch loads while the inputs are hashed
    params = method_params(density, majority_sign, param)
    if method is None and any(v is not None for v in params.values()):
        raise InvalidRequestError("method parameters need --method")
    sources = resolve_sources(adapters, url, token)
    dirs = [s.path for s in sources]
    w = parse_weights(weights, len(dirs)) or [1.0] * len(dirs)
    method, params, why = default_method(method, params, len(dirs))
    if why and not json_out:
        console.print(f"method: {why}", soft_wrap=True)
    from lorahive.compose.fusion import fuse_files, get_method
    from lorahive.hub.peft_format import load_peft

    m = get_method(method)
    bound = m.bind(params)
    lineage = Lineage.of(f"fuse:{m.name}", sources,
                         {**bound, "rank": rank, "rank_budget": rank_budget, "seed": seed}, w)
    reused = reuse_output(out, lineage.recipe)
    published = None
    with output_dir(out) as target:
        if reused:
            adapter = load_peft(out)
            metrics = read_sidecar(out).get("metrics") or {}
            energy = metrics.get("energy_kept") or {}
            if not json_out:
                console.print(f"{out} already holds this fusion (same inputs and parameters); "
                              "not fusing again")
        else:
            def sidecar(res: Any) -> dict[str, bytes]:
                return {SIDECAR: sidecar_bytes(
                    lineage, {"energy_kept": res.energy} if res.energy else None)}

            with module_progress(lambda: module_count(dirs), not json_out) as on_module:
                res = fuse_files(dirs, target, m, w, bound, rank=rank, rank_budget=rank_budget,
                                 seed=seed, device=device, progress=on_module,
                                 extra_files=sidecar)
            adapter, energy = res.adapter, res.energy
        if publish is not None:
            published = publish_output(target, publish, url, token, task=task, private=private)
    ranks = adapter.ranks
    summary = {"out": str(out) if out else None, "published": published,
               "method": m.name, "params": bound,
               "weights": w, "modules": len(ranks),
               "max_rank": max(ranks.values(), default=0),
               "total_rank": sum(ranks.values()), "method_choice": why}
    if json_out:
        print_json({**summary, "ranks": ranks, "energy_kept": energy})
        return
    console.print(f"fused {len(sources)} adapters with {m.name} -> {published or out} "
                  f"({summary['modules']} modules, max rank {summary['max_rank']}, "
                  f"total rank {summary['total_rank']})")
    if energy:
        print_table(ENERGY_COLUMNS, ((n, ranks[n], f"{energy[n]:.4f}")
                                     for n in sorted(energy, key=natural_key)))


def merge_cmd(
    base: Path = typer.Option(..., "--base", help="Base model directory (safetensors)."),
    adapter: list[str] = typer.Option(
        ..., "--adapter", "-a",
        help="Adapter directory or registry reference ns/name[@version] (repeat for several)."),
    out: Path = typer.Option(..., "--out", help="Directory for the merged model."),
    method: str | None = typer.Option(
        None, "--method", "-m", help="Fuse the adapters first with this method (default: add "
        "each adapter's exact delta, weighted; DoRA and rsLoRA merge as PEFT does)."),
    weights: str | None = WEIGHTS,
    density: float | None = DENSITY,
    majority_sign: str | None = SIGN,
    param: list[str] | None = PARAM,
    rank: int | None = typer.Option(None, "--rank", help="Truncate the fused delta to a rank."),
    seed: int = typer.Option(0, "--seed", help="Seed of random pruning (DARE)."),
    device: str = DEVICE,
    dtype: str | None = typer.Option(None, "--dtype", help="Output dtype of floating weights "
                                     "(default: as stored; a 4-bit base: the dtype it was "
                                     "quantized from)."),
    requantize: str | None = typer.Option(
        None, "--requantize", help="4-bit base: write 4-bit again (nf4 or fp4) and report how "
        "much of each delta survives the rounding (default: 16-bit output)."),
    original: Path | None = typer.Option(
        None, "--original", help="4-bit base: the 16-bit model it was quantized from; reports "
        "the quantization gap beside each delta."),
    against: str | None = typer.Option(
        None, "--against", help="4-bit base: add the deltas to the 'dequantized' weights (what "
        "a QLoRA adapter was trained on; default) or the 'original' ones (needs --original)."),
    url: str | None = URL,
    token: str | None = TOKEN,
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Merge adapters into a base model's weights, streaming its shards tensor by tensor
    (a bitsandbytes 4-bit base is dequantized weight by weight)."""
    from lorahive.cli.merge_report import print_quant_report, print_warnings, quant_json
    from lorahive.compose.merge import merge_into_base
    from lorahive.hub.peft_format import load_peft

    sources = resolve_sources(adapter, url, token)
    dirs = [s.path for s in sources]
    loaded = [load_peft(d) for d in dirs]
    w = parse_weights(weights, len(dirs))
    params = method_params(density, majority_sign, param)
    if method is None and any(v is not None for v in params.values()):
        raise InvalidRequestError("method parameters need --method")
    lineage = Lineage.of(
        f"merge:{method or 'sum'}", sources,
        {k: v for k, v in {**params, "rank": rank, "seed": seed, "base": str(base),
                           "dtype": dtype, "requantize": requantize,
                           "original": str(original) if original else None,
                           "against": against}.items() if v is not None},
        w if w else [1.0] * len(sources),
    )
    with byte_progress() as bar:
        task = bar.add_task("merging", total=None)
        report = merge_into_base(
            base, loaded, out, weights=w, method=method, params=params if method else None,
            rank=rank, seed=seed, device=device, dtype=dtype,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
            extra_files={SIDECAR: sidecar_bytes(lineage)},
            requantize=requantize, original=original, against=against,
        )
    print_warnings(report)
    if json_out:
        print_json({"out": str(report.out), "shards": report.shards, "merged": report.merged,
                    "bytes_read": report.bytes_read, "bytes_written": report.bytes_written,
                    "copied": report.copied, **quant_json(report)})
        return
    console.print(f"merged {len(dirs)} adapter(s) into {len(report.merged)} weights -> "
                  f"{report.out} ({len(report.shards)} shard(s), "
                  f"{human_bytes(report.bytes_written)})")
    print_quant_report(report)


def methods_cmd(
    json_out: bool = typer.Option(False, "--json", help="Print the methods as JSON."),
) -> None:
    """List fusion methods: name, what it does, parameters with defaults, paper, and the
    measured standing that picks `fuse`'s default method."""
    from lorahive.compose.fusion import all_methods, standings

    ms = all_methods()
    table_of = standings.load()
    known = {m.name for m in ms}
    chosen = {n: standings.choose(n, table_of, known) for n in table_of.input_counts if n > 1}

    def is_chosen(r: standings.Standing) -> bool:
        return r.inputs in chosen and chosen[r.inputs].picks(r)

    def measured(name: str) -> list[tuple[str, str]]:
        rows = table_of.of(name)
        return [(f"at {n} inputs", "; ".join(
            f"{r.setting_text()} {r.describe(count=False)}" + (" - fuse's choice" if is_chosen(r) else "")
            for r in rows if r.inputs == n)) for n in sorted({r.inputs for r in rows})]

    if json_out:
        print_json([{"name": m.name, "family": m.family, "description": m.description,
                     "paper": m.paper, "note": m.note,
                     "params": [{"name": p.name, "type": p.type.__name__,
                                 "choices": list(p.choices) if p.choices else None,
                                 "required": p.required,
                                 "default": None if p.required else p.default}
                                for p in m.params],
                     "standings": [{**r.__dict__, "ci95": list(r.ci95) if r.ci95 else None,
                                    "chosen": is_chosen(r)}
                                   for r in table_of.of(m.name)]} for m in ms])
        return
    print_records((f"{m.name} ({m.family})", [
        ("", m.description), ("parameters", "; ".join(p.describe() for p in m.params) or "-"),
        *(measured(m.name) or [("measured", "-")]),
        ("paper", m.paper), ("note", m.note)]) for m in ms)
    line()
    paragraph("Set a parameter with --density, --majority-sign or --param NAME=VALUE; every method "
              "also takes --weights, --rank or --rank-budget, --seed, --device.")
    paragraph(f"at N inputs: per setting, {table_of.metric} [95% interval] (n: the task "
              f"scores behind it); evidence: {table_of.evidence}. "
              "`lorahive fuse` without --method takes the best method, with its default "
              "setting or a fixed one scored on every task subset, at the measured input "
              "count nearest to its number of inputs; tuned settings were chosen per subset "
              "and are shown, not chosen.")


def register(app: typer.Typer) -> None:
    app.command("fuse")(fuse_cmd)
    app.command("merge")(merge_cmd)
    app.command("methods")(methods_cmd)
