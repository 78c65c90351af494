"""Which registry a command talks to: a server (``--url``/``LORAHIVE_URL``/``lorahive login``)
or, by default, the embedded local registry; plus shared options and progress bars."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Annotated, Any

import typer

from lorahive.cli.output import byte_progress, err_console
from lorahive.hub.credentials import server_selection

if TYPE_CHECKING:  # annotations only: pydantic loads when a registry is opened
    from lorahive.hub.protocol import ProgressFn, Registry

URL_HELP = ("Registry server URL. Without it: LORAHIVE_URL, else the server saved by "
            "`lorahive login`, else the embedded registry in LORAHIVE_HOME.")
TOKEN_HELP = ("API token. Without it: LORAHIVE_TOKEN, else the token saved by `lorahive login` "
              "for that server; the embedded registry uses its admin token.")
UrlOpt = Annotated[str | None, typer.Option("--url", help=URL_HELP, show_default=False)]
TokenOpt = Annotated[str | None, typer.Option("--token", help=TOKEN_HELP, show_default=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


def open_registry(url: str | None = None, token: str | None = None) -> Registry:
    """The registry selected by flags, environment and saved login (in that order)."""
    url, token = server_selection(url, token)
    if url:
        from lorahive.hub.client import HttpRegistry

        return HttpRegistry(url, token)
    from lorahive.registry.local import LocalRegistry

    return LocalRegistry(token=token)


@contextlib.contextmanager
def progress_bar(enabled: bool = True) -> Iterator[ProgressFn | None]:
    """A byte progress bar on stderr fed by the registry's progress callback."""
    if not enabled or not err_console.is_terminal:  # no bar (nor stray newline) in pipes
        yield None
        return
    with byte_progress() as prog:
        task = prog.add_task("transfer", total=None)

        def update(advance: int, total: int, label: str) -> None:
            if total:
                prog.update(task, total=total, description=label)
            elif not advance:
                prog.update(task, description=label)
            if advance:
                prog.advance(task, advance)

        yield update


def close(reg: Any) -> None:
    with contextlib.suppress(Exception):
        reg.close()


@contextlib.contextmanager
def registry_session(url: str | None = None, token: str | None = None) -> Iterator[Registry]:
    """The selected registry for the length of one command, closed afterwards."""
    reg = open_registry(url, token)
    try:
        yield reg
    finally:
        close(reg)
