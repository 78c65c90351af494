"""The ``lorahive`` command: assembles the command groups and turns user errors into one line."""

from __future__ import annotations

import importlib
import re
import sys

import typer

from lorahive.hub.errors import LorahiveError

app = typer.Typer(
    name="lorahive",
    help="An adapter hub for LoRA-family adapters: publish, pull, fuse, merge and compose.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

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


def as_flags(e: LorahiveError) -> str:
    """The error's message with the library parameters it names written as this CLI's flags
    (``rank`` -> ``--rank``, ``rank_budget`` -> ``--rank-budget``)."""
    msg = e.message
    for p in e.params:
        flag = "--" + p.replace("_", "-")
        msg = re.sub(rf"(?<![\w-]){re.escape(p)}(?![\w-])", flag, msg)
    return msg


def main() -> None:
    """Console entry point: user errors print one line and exit 1, never a traceback."""
    try:
        rv = app(standalone_mode=False)
        if isinstance(rv, int) and rv:
            sys.exit(rv)
    except LorahiveError as e:
        typer.secho(f"error: {as_flags(e)}", err=True, fg=typer.colors.RED)
        sys.exit(1)
    except (typer.Abort, KeyboardInterrupt):
        typer.echo("aborted", err=True)
        sys.exit(130)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except SystemExit:
        raise
    except Exception as e:  # click usage errors and similar
        import click

        if isinstance(e, click.ClickException):
            e.show()
            sys.exit(e.exit_code)
        if isinstance(e, OSError):
            typer.secho(f"error: {e.strerror or e}: {getattr(e, 'filename', '')}", err=True,
                        fg=typer.colors.RED)
            sys.exit(1)
        raise


if __name__ == "__main__":
    main()
