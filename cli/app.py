"""The ``lorahive`` command: assembles the command groups and turns every error a user can
cause, usage errors included, into one line."""

from __future__ import annotations

import difflib
import importlib
import inspect
import re
import sys
from typing import Any, NoReturn

import typer
from rich.markup import escape
from typer.core import TyperGroup

from lorahive import __version__
from lorahive.hub.errors import LorahiveError, PublishInterrupted

PROG = "lorahive"


def help_text(text: str | None) -> str | None:
    """Help as Rich shows it: paragraphs joined into lines the console wraps at its own width
    (a docstring's hard line breaks would otherwise break sentences mid-line), and square
    brackets kept as text (``ns/name[@version]`` is not markup)."""
    if not text:
        return text
    paras = [" ".join(p.split()) for p in inspect.cleandoc(text).split("\n\n")]
    return escape("\n\n".join(p for p in paras if p))


class Group(TyperGroup):
    """A command group whose help reads as paragraphs and whose unknown-command error leads
    with the closest command."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        for cmd in [self, *self.commands.values()]:
            if isinstance(cmd, Group) and cmd is not self:
                continue  # tidied by its own constructor
            cmd.help = help_text(cmd.help)
            for param in cmd.params:
                if getattr(param, "help", None):
                    param.help = help_text(param.help)  # type: ignore[attr-defined]

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        name = args[0] if args else ""
        if name and not name.startswith("-") and self.get_command(ctx, name) is None \
                and not ctx.resilient_parsing:
            close = difflib.get_close_matches(name, self.list_commands(ctx), n=1, cutoff=0.6)
            where = f"'{ctx.command_path} --help' lists the commands"
            ctx.fail(f"did you mean {close[0]!r}? {name!r} is not a command ({where})" if close
                     else f"{name!r} is not a command; {where}")
        return super().resolve_command(ctx, args)


app = typer.Typer(
    name=PROG,
    help="An adapter hub for LoRA-family adapters: publish, pull, fuse, merge and compose.",
    cls=Group,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode="rich",
)


def _show_version(value: bool) -> None:
    if value:
        print(f"{PROG} {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_show_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    pass


# Each module registers its commands on `app`; one line per command group.
COMMAND_MODULES = [
    "lorahive.cli.commands.files",
    "lorahive.cli.commands.compose",
    "lorahive.cli.commands.fusion",
    "lorahive.cli.commands.registry",
    "lorahive.cli.commands.registry_admin",
    "lorahive.cli.commands.fsck",
    "lorahive.cli.commands.hf",
]

for _mod in COMMAND_MODULES:
    importlib.import_module(_mod).register(app)


def _set_group_class(typer_app: typer.Typer) -> None:
    for group in typer_app.registered_groups:
        group.cls = Group
        if group.typer_instance is not None:
            _set_group_class(group.typer_instance)


_set_group_class(app)


def as_flags(e: LorahiveError) -> str:
    """The error's message with the library parameters it names written as this CLI's flags
    (``rank`` -> ``--rank``, ``rank_budget`` -> ``--rank-budget``)."""
    msg = e.message
    for p in e.params:
        flag = "--" + p.replace("_", "-")
        msg = re.sub(rf"(?<![\w-]){re.escape(p)}(?![\w-])", flag, msg)
    return msg


def _click_errors() -> tuple[type[Exception], ...]:
    """Click's exception base: typer vendors click in recent releases, used click before."""
    found: list[type[Exception]] = []
    for name in ("typer._click.exceptions", "click.exceptions"):
        try:
            found.append(importlib.import_module(name).ClickException)
        except (ImportError, AttributeError):
            continue
    return tuple(found)


def command_path(argv: list[str]) -> str:
    """The command an argument list names (``lorahive token create``), for errors raised
    before click knows it (an option that lacks its value)."""
    cmd: Any = typer.main.get_command(app)
    path = [PROG]
    for arg in argv:
        sub = getattr(cmd, "commands", {}).get(arg)
        if sub is None:
            break
        path.append(arg)
        cmd = sub
    return " ".join(path)


def usage_line(e: Any) -> str:
    """A click usage error as one line: the message, then where to read the command's help."""
    msg = " ".join(e.format_message().split()).rstrip(".")
    msg = msg[:1].lower() + msg[1:]
    if "--help" not in msg:
        ctx = getattr(e, "ctx", None)
        path = ctx.command_path if ctx is not None else command_path(sys.argv[1:])
        msg += f"; see '{path} --help'"
    return msg


def error(msg: str, code: int) -> NoReturn:
    typer.secho(f"error: {msg}", err=True, fg=typer.colors.RED)
    sys.exit(code)


def main() -> None:
    """Console entry point: user errors print one line and exit non-zero (1 for errors from
    the library, 2 for usage errors as click does), never a traceback."""
    click_errors = _click_errors()
    try:
        rv = app(prog_name=PROG, standalone_mode=False)
        if isinstance(rv, int) and rv:
            sys.exit(rv)
    except LorahiveError as e:
        error(as_flags(e), 1)
    except PublishInterrupted as e:  # fuse/compose --publish: says what the publish left
        typer.echo(f"error: {e.message}", err=True)
        sys.exit(130)
    except (typer.Abort, KeyboardInterrupt):
        # every result (adapter, merged model, cache entry) is written under a temporary name
        # and renamed when whole, so an interrupted command leaves nothing half-written
        typer.echo("interrupted: nothing half-written was left; run the command again", err=True)
        sys.exit(130)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except SystemExit:
        raise
    except click_errors as e:
        if type(e).__name__ == "NoArgsIsHelpError":
            # the group's help (already printed by Rich's formatter, or carried as text)
            text = e.format_message()  # type: ignore[attr-defined]
            if text.strip():
                print(text)
            sys.exit(0)
        if hasattr(e, "ctx"):  # a usage error: bad or missing option, unknown command
            error(usage_line(e), getattr(e, "exit_code", 2))
        error(" ".join(e.format_message().split()), getattr(e, "exit_code", 1))  # type: ignore[attr-defined]
    except OSError as e:
        error(f"{e.strerror or e}: {getattr(e, 'filename', '')}", 1)


if __name__ == "__main__":
    main()
