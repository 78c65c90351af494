"""Registry commands on adapters: publish, pull, search, show, versions, alias, delete, gc."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from lorahive.cli.commands.registry_client import (
    JsonOpt,
    TokenOpt,
    UrlOpt,
    progress_bar,
    registry_session,
)
from lorahive.cli.output import (
    Col,
    console,
    human_bytes,
    line,
    print_fields,
    print_json,
    print_table,
)
from lorahive.hub.errors import InvalidRequestError, PublishInterrupted

if TYPE_CHECKING:  # pydantic models: imported by the commands that talk to a registry
    from lorahive.hub.protocol import VersionInfo

# names and versions always; the rest goes, last-listed first, when the terminal is narrow
SEARCH_COLUMNS = (Col("adapter"), Col("latest"), Col("task", drop=3), Col("base model", drop=2),
                  Col("type", drop=7), Col("tags", wrap=True, drop=4),
                  Col("downloads", justify="right", drop=6), Col("updated", drop=5))
VERSION_COLUMNS = (Col("version"), Col("aliases", wrap=True, drop=2),
                   Col("rank", justify="right", drop=3),
                   Col("size", justify="right", drop=4), Col("sha256", drop=1),
                   Col("downloads", justify="right", drop=6), Col("created", drop=5))


def _metrics(text: str | None) -> dict:
    if not text:
        return {}
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise InvalidRequestError(f"--metrics is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise InvalidRequestError("--metrics must be a JSON object, e.g. '{\"acc\": 0.91}'")
    return data


def publish(
    path: Annotated[Path, typer.Argument(help="A PEFT adapter directory.")],
    name: Annotated[str, typer.Option("--name", "-n", help="Where to publish: namespace/name.")],
    version: Annotated[str | None, typer.Option(help="Version (default: the next number).")] = None,
    task: Annotated[str | None, typer.Option(help="The task the adapter solves.")] = None,
    tag: Annotated[list[str] | None, typer.Option("--tag", "-t", help="A tag (repeatable).")] = None,
    private: Annotated[bool | None, typer.Option(
        "--private/--public", help="Hide the adapter from others (default: keep; new: public).",
        show_default=False)] = None,
    description: Annotated[str | None, typer.Option(help="One-paragraph description.")] = None,
    metrics: Annotated[str | None, typer.Option(help="Evaluation metrics as a JSON object.")] = None,
    allow_duplicate: Annotated[bool, typer.Option(
        "--allow-duplicate", help="Publish a new version even if an existing version has "
        "the same files (default: say which version has them and publish nothing).")] = False,
    url: UrlOpt = None, token: TokenOpt = None, json_out: JsonOpt = False,
) -> None:
    """Validate a PEFT adapter directory and publish it as a new immutable version.

    Files identical to an existing version publish nothing (that version is named);
    an adapter made from a private adapter is private unless --public is given."""
    try:
        with registry_session(url, token) as reg, progress_bar(not json_out) as cb:
            info = reg.publish(path, name, version, task=task, tags=tag or [],
                               private=private, description=description,
                               metrics=_metrics(metrics), progress=cb,
                               allow_duplicate=allow_duplicate)
    except PublishInterrupted as e:
        typer.echo(e.message, err=True)  # one line, never wrapped
        raise typer.Exit(130) from None
    if json_out:
        print_json(info.model_dump(mode="json"))
        return
    print(publish_line(info, private))


def publish_line(info: VersionInfo, private: bool | None = None) -> str:
    """One line for the result of a publish (also used by commands that publish)."""
    if info.unchanged:
        return (f"unchanged, already {info.ref} (the same files; nothing was published; "
                "--allow-duplicate publishes them as a new version)")
    note = ""
    if info.private:
        note = ", private" + ("" if private else ": made from an adapter others cannot see, "
                              "or private before; --public shares it")
    return (f"published {info.ref} ({len(info.files)} files, {human_bytes(info.size)}, "
            f"rank {info.rank}, base {info.base_model}{note})")


def pull(
    ref: Annotated[str, typer.Argument(help="namespace/name[@version|:alias]")],
    to: Annotated[Path | None, typer.Option(
        "--to", help="Copy the files into this directory (absent or empty).")] = None,
    force: Annotated[bool, typer.Option(
        "--force", help="Replace --to DIR and everything in it.")] = False,
    url: UrlOpt = None, token: TokenOpt = None, json_out: JsonOpt = False,
) -> None:
    """Download a version into the local cache (resumable, sha256-verified) and print its path."""
    with registry_session(url, token) as reg, progress_bar(not json_out) as cb:
        path = reg.pull(ref, to=to, progress=cb, force=force)
    if json_out:
        print_json({"ref": ref, "path": str(path)})
    else:
        print(path)


def search(
    text: Annotated[str | None, typer.Argument(
        help="Words that must each appear in the name, namespace, description, task or base "
        "model.")] = None,
    task: Annotated[str | None, typer.Option(help="Exact task.")] = None,
    base_model: Annotated[str | None, typer.Option(help="Exact base model id.")] = None,
    tag: Annotated[list[str] | None, typer.Option("--tag", "-t", help="Required tag (repeatable).")] = None,
    peft_type: Annotated[str | None, typer.Option(help="LORA, ADALORA, ...")] = None,
    namespace: Annotated[str | None, typer.Option(help="Only this namespace.")] = None,
    sort: Annotated[str, typer.Option(help="updated | created | downloads | name")] = "updated",
    limit: Annotated[int, typer.Option(help="Page size.")] = 20,
    offset: Annotated[int, typer.Option(help="Skip this many results.")] = 0,
    url: UrlOpt = None, token: TokenOpt = None, json_out: JsonOpt = False,
) -> None:
    """Search adapters (private ones only where your token may read them)."""
    with registry_session(url, token) as reg:
        page = reg.search(text, task=task, base_model=base_model, tags=tag or [],
                          peft_type=peft_type, namespace=namespace, sort=sort,  # type: ignore[arg-type]
                          offset=offset, limit=limit)
    if json_out:
        print_json(page.model_dump(mode="json"))
        return
    print_table(SEARCH_COLUMNS, (
        (a.repo + (" (private)" if a.private else ""), a.latest_version or "-", a.task or "-",
         a.base_model or "-", a.peft_type or "-", ", ".join(a.tags), a.downloads,
         a.updated_at.strftime("%Y-%m-%d %H:%M")) for a in page.items),
        title=f"{page.total} adapter(s)")


def show(
    ref: Annotated[str, typer.Argument(help="namespace/name[@version|:alias]")],
    url: UrlOpt = None, token: TokenOpt = None, json_out: JsonOpt = False,
) -> None:
    """Show an adapter and one of its versions (files, rank, metrics, lineage)."""
    with registry_session(url, token) as reg:
        info = reg.adapter(ref)
        v = reg.resolve(ref)
    if json_out:
        print_json({"adapter": info.model_dump(mode="json"), "version": v.model_dump(mode="json")})
        return
    rows = {
        "description": info.description or "-", "task": info.task or "-",
        "tags": ", ".join(info.tags) or "-", "aliases": ", ".join(f"{k}->{x}" for k, x in info.aliases.items()),
        "base model": v.base_model, "peft type": v.peft_type, "rank": v.rank,
        "lora_alpha": v.lora_alpha, "target modules": ", ".join(v.target_modules),
        "parameters": v.num_parameters, "size": human_bytes(v.size), "sha256": v.sha256,
        "downloads": f"{v.downloads} (adapter {info.downloads})",
        "created": v.created_at.isoformat(timespec="seconds"),
        "metrics": json.dumps(v.metrics) if v.metrics else "-",
        "lineage": json.dumps(v.lineage) if v.lineage else "-",
    }
    print_fields(f"{v.ref}{' (private)' if info.private else ''}", rows.items())
    for f in v.files:
        line(f"  file {f.path}  {human_bytes(f.size)}  {f.sha256[:12]}")


def versions(
    ref: Annotated[str, typer.Argument(help="namespace/name")],
    url: UrlOpt = None, token: TokenOpt = None, json_out: JsonOpt = False,
) -> None:
    """List an adapter's versions, newest first."""
    with registry_session(url, token) as reg:
        vs: list[VersionInfo] = reg.versions(ref)
    if json_out:
        print_json([v.model_dump(mode="json") for v in vs])
        return
    print_table(VERSION_COLUMNS, (
        (v.version, ", ".join(v.aliases), v.rank, human_bytes(v.size), v.sha256[:12],
         v.downloads, v.created_at.strftime("%Y-%m-%d %H:%M")) for v in vs))


alias_app = typer.Typer(help="Move or remove aliases (latest moves by itself).",
                        no_args_is_help=True)


@alias_app.command("set")
def alias_set(
    ref: Annotated[str, typer.Argument(help="namespace/name@version (or :alias) to point at")],
    alias: Annotated[str, typer.Argument(help="Alias name, e.g. prod")],
    url: UrlOpt = None, token: TokenOpt = None,
) -> None:
    """Point ALIAS at a version."""
    with registry_session(url, token) as reg:
        v = reg.set_alias(ref, alias)
    console.print(f"{v.namespace}/{v.name}:{alias} -> {v.version}")


@alias_app.command("rm")
def alias_rm(
    repo: Annotated[str, typer.Argument(help="namespace/name")],
    alias: Annotated[str, typer.Argument(help="Alias to remove")],
    url: UrlOpt = None, token: TokenOpt = None,
) -> None:
    """Remove an alias."""
    with registry_session(url, token) as reg:
        reg.remove_alias(repo, alias)
    console.print(f"removed {repo}:{alias}")


def delete(
    ref: Annotated[str, typer.Argument(help="namespace/name@version, or namespace/name for all")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    url: UrlOpt = None, token: TokenOpt = None,
) -> None:
    """Delete one version, or a whole adapter; blobs are freed by `lorahive gc`."""
    if not yes:
        typer.confirm(f"delete {ref}?", abort=True)
    with registry_session(url, token) as reg:
        reg.delete(ref)
    console.print(f"deleted {ref}")


def gc(
    grace: Annotated[float, typer.Option(help="Keep unreferenced blobs younger than this "
                                         "many seconds (uploads in progress).")] = 3600.0,
    url: UrlOpt = None, token: TokenOpt = None, json_out: JsonOpt = False,
) -> None:
    """Delete blobs that no version references (site admin)."""
    with registry_session(url, token) as reg:
        report = reg.gc(grace)
    if json_out:
        print_json(report.model_dump())
        return
    line = (f"removed {report.blobs_removed} blob(s), {human_bytes(report.bytes_removed)}; "
            f"kept {report.blobs_kept}")
    if report.unreferenced_kept:
        line += (f", of which {report.unreferenced_kept} unreferenced blob(s) younger than the "
                 f"{_duration(report.grace_seconds)} grace period (uploads that may still be "
                 "committed; --grace 0 removes them)")
    print(line)


def _duration(seconds: float) -> str:
    for unit, n in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= n and seconds % n == 0:
            return f"{int(seconds // n)} {unit}"
    return f"{seconds:g} s"


def register(app: typer.Typer) -> None:
    for fn in (publish, pull, search, show, versions, delete, gc):
        app.command()(fn)
    app.add_typer(alias_app, name="alias")

