"""``lorahive fuse``, ``lorahive merge`` and ``lorahive methods``: thin wrappers over compose."""

from __future__ import annotations

import contextlib
import importlib
import json
import threading
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from lorahive.cli.output import byte_progress, console, human_bytes, print_json
from lorahive.cli.sources import Source, check_outputs, output_dir, publish_output, resolve_sources
from lorahive.hub.errors import InvalidRequestError
from lorahive.hub.lineage import SIDECAR, Lineage, Parent


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


def _sidecar(lineage: Lineage, metrics: dict[str, Any] | None = None) -> bytes:
    data: dict[str, Any] = {"lineage": lineage.as_dict()}
    if metrics:
        data["metrics"] = metrics
    return json.dumps(data, indent=2, sort_keys=True, default=str).encode()


DENSITY = typer.Option(None, "--density", help="Share of entries kept (TIES, DARE, pruning).")
SIGN = typer.Option(None, "--majority-sign", help="TIES sign election: total or frequency.")
PARAM = typer.Option(None, "--param", help="Other method parameter, KEY=VALUE (repeatable).")
WEIGHTS = typer.Option(None, "--weights", help="One weight per adapter, comma separated "
                       "(default 1 each).")
DEVICE = typer.Option("auto", "--device", help="auto, cpu or cuda[:N].")
URL = typer.Option(None, "--url", envvar="LORAHIVE_URL",
                   help="Registry server for references (default: the local registry).")
TOKEN = typer.Option(None, "--token", envvar="LORAHIVE_TOKEN", help="Registry token.")


def _parents(sources: list[Source], weights: list[float] | None) -> list[Parent]:
    return [Parent(ref=s.ref, version=s.version, sha256=s.sha256,
                   weight=None if weights is None else float(weights[i]))
            for i, s in enumerate(sources)]


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
    if method is not None:
        return method, params, None
    from lorahive.compose.fusion import METHODS, standings

    choice = standings.choose(n_inputs, known=set(METHODS))
    return choice.method, {**params, **choice.params}, choice.reason


def fuse_cmd(
    adapters: list[str] = typer.Argument(
        ..., help="Adapters to fuse: directories or registry references ns/name[@version]."),
    out: Path | None = typer.Option(None, "--out", help="Directory for the fused PEFT adapter."),
    publish: str | None = typer.Option(
        None, "--publish", help="Publish the fused adapter as ns/name[@version], with lineage."),
    task: str | None = typer.Option(None, "--task", help="Task recorded when publishing."),
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
    w = parse_weights(weights, len(dirs))
    method, params, why = default_method(method, params, len(adapters))
    if why and not json_out:
        console.print(f"method: {why}", soft_wrap=True)

    def sidecar(res: Any) -> dict[str, bytes]:
        lineage = Lineage(
            method=f"fuse:{res.method}",
            parents=_parents(sources, res.weights),
            params={**res.params, "rank": rank, "rank_budget": rank_budget, "seed": seed},
        )
        return {SIDECAR: _sidecar(lineage, {"energy_kept": res.energy} if res.energy else None)}

    from lorahive.compose.fusion import fuse_files

    published = None
    with output_dir(out) as target:
        res = fuse_files(dirs, target, method, w, params, rank=rank, rank_budget=rank_budget,
                         seed=seed, device=device, extra_files=sidecar)
        if publish is not None:
            published = publish_output(target, publish, url, token, task=task)
    summary = {"out": str(out) if out else None, "published": published,
               "method": res.method, "params": res.params,
               "weights": res.weights, "modules": len(res.ranks),
               "max_rank": max(res.ranks.values(), default=0),
               "total_rank": sum(res.ranks.values()), "method_choice": why}
    if json_out:
        print_json({**summary, "ranks": res.ranks, "energy_kept": res.energy})
        return
    console.print(f"fused {len(dirs)} adapters with {res.method} -> {published or out} "
                  f"({summary['modules']} modules, max rank {summary['max_rank']}, "
                  f"total rank {summary['total_rank']})")
    if res.energy:
        table = Table("module", "rank", "energy kept")
        for n, e in res.energy.items():
            table.add_row(n, str(res.ranks[n]), f"{e:.4f}")
        console.print(table)


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
                                     "(default: as stored)."),
    url: str | None = URL,
    token: str | None = TOKEN,
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Merge adapters into a base model's weights, streaming its shards tensor by tensor."""
    from lorahive.compose.merge import merge_into_base
    from lorahive.hub.peft_format import load_peft

    sources = resolve_sources(adapter, url, token)
    dirs = [s.path for s in sources]
    loaded = [load_peft(d) for d in dirs]
    w = parse_weights(weights, len(dirs))
    params = method_params(density, majority_sign, param)
    if method is None and any(v is not None for v in params.values()):
        raise InvalidRequestError("method parameters need --method")
    lineage = Lineage(
        method=f"merge:{method or 'sum'}",
        parents=_parents(sources, w if w else [1.0] * len(sources)),
        params={k: v for k, v in {**params, "rank": rank, "seed": seed, "base": str(base),
                                  "dtype": dtype}.items() if v is not None},
    )
    with byte_progress() as bar:
        task = bar.add_task("merging", total=None)
        report = merge_into_base(
            base, loaded, out, weights=w, method=method, params=params if method else None,
            rank=rank, seed=seed, device=device, dtype=dtype,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
            extra_files={SIDECAR: _sidecar(lineage)},
        )
    if json_out:
        print_json({"out": str(report.out), "shards": report.shards, "merged": report.merged,
                    "bytes_read": report.bytes_read, "bytes_written": report.bytes_written,
                    "copied": report.copied})
        return
    console.print(f"merged {len(dirs)} adapter(s) into {len(report.merged)} weights -> "
                  f"{report.out} ({len(report.shards)} shard(s), "
                  f"{human_bytes(report.bytes_written)})")


def methods_cmd(
    json_out: bool = typer.Option(False, "--json", help="Print the registry as JSON."),
) -> None:
    """List fusion methods: name, what it does, parameters with defaults, paper, and the
    measured standing that picks `fuse`'s default method."""
    from lorahive.compose.fusion import all_methods, standings

    ms = all_methods()
    table_of = standings.load()
    if json_out:
        print_json([{"name": m.name, "family": m.family, "description": m.description,
                     "paper": m.paper, "note": m.note,
                     "params": [{"name": p.name, "type": p.type.__name__,
                                 "choices": list(p.choices) if p.choices else None,
                                 "required": p.required,
                                 "default": None if p.required else p.default}
                                for p in m.params],
                     "standings": [{**r.__dict__, "ci95": list(r.ci95) if r.ci95 else None}
                                   for r in table_of.of(m.name)]} for m in ms])
        return
    table = Table("method", "description", "parameters", "measured", show_lines=False)
    for m in ms:
        desc = m.description + (f"\n[dim]{m.note}[/dim]" if m.note else "")
        measured = "\n".join(f"{r.setting}: {r.describe()}" for r in table_of.of(m.name))
        table.add_row(m.name, desc, "\n".join(p.describe() for p in m.params) or "-",
                      measured or "-")
    console.print(table)
    console.print("Every method also takes --weights, --rank or --rank-budget, --seed, --device.")
    console.print(f"measured: {table_of.metric} [95% interval]; evidence: {table_of.evidence}. "
                  "`lorahive fuse` without --method takes the best default-setting method at "
                  "the measured input count nearest to its number of inputs.")


def register(app: typer.Typer) -> None:
    app.command("fuse")(fuse_cmd)
    app.command("merge")(merge_cmd)
    app.command("methods")(methods_cmd)
