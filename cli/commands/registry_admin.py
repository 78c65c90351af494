"""Registry administration: serve, login/logout, whoami, tokens and namespaces."""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from lorahive.cli.commands.registry_client import (
    JsonOpt,
    TokenOpt,
    UrlOpt,
    registry_session,
)
from lorahive.cli.output import Col, console, err_console, print_json, print_table
from lorahive.hub.credentials import credentials_file, save_credentials
from lorahive.hub.errors import InvalidRequestError


def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    workers: Annotated[int, typer.Option(help="Worker processes.")] = 1,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
) -> None:
    """Run the registry server (embedded SQLite + blob directory under LORAHIVE_HOME unless
    LORAHIVE_DATABASE_URL / LORAHIVE_STORAGE_URL say otherwise)."""
    from lorahive.registry.resilience import startup_cleanup
    from lorahive.registry.service import RegistryService
    from lorahive.registry.settings import Settings

    _check_port(host, port)  # fail in one line, before announcing anything
    settings = Settings()
    svc = RegistryService(settings)  # migrations run here, once, before workers start
    startup_cleanup(svc)  # temp files of a killed previous run; no worker is up yet
    secret = svc.bootstrap_admin()
    svc.close()
    token_file = settings.admin_token_file
    if secret:
        err_console.print(f"created user 'admin'; admin token (shown once, also saved to "
                          f"{token_file}):\n{secret}", markup=False, highlight=False)
    elif token_file.is_file():
        err_console.print(f"admin token: in {token_file} (created on the first start)",
                          markup=False, highlight=False)
    else:
        err_console.print(f"no admin token file at {token_file}: it was removed; create "
                          "tokens with another admin token", markup=False, highlight=False)
    err_console.print(f"lorahive registry on http://{host}:{port} "
                      f"(db {settings.public_dict()['database_url']}, storage {settings.storage_url})",
                      markup=False, highlight=False)
    # Replace this process with uvicorn: its workers are spawned from a small main module and
    # do not re-import the whole CLI (torch included); the pid stays the same for supervisors.
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [
        sys.executable, "-m", "uvicorn", "lorahive.registry.app:app_factory", "--factory",
        "--host", host, "--port", str(port), "--workers", str(workers),
        "--log-level", log_level, "--timeout-graceful-shutdown", "5",
    ])


def _check_port(host: str, port: int) -> None:
    """Bind and release the address uvicorn is about to bind, so a port in use is one error
    line instead of a start-up banner followed by uvicorn's failure."""
    import socket

    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except OSError as e:
        raise InvalidRequestError(f"cannot listen on {host!r}: {e}", params="host") from None
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        try:
            sock.bind(addr)
        except OSError as e:
            raise InvalidRequestError(f"cannot listen on {host}:{port}: {e.strerror}; choose "
                                      "another port", params="port") from None


def login(
    url: Annotated[str, typer.Option("--url", help="Registry server URL.")],
    token: Annotated[str, typer.Option("--token", prompt=True, hide_input=True,
                                       help="An API token (from `lorahive token create`).")],
) -> None:
    """Check a token against a server and save both as the default registry."""
    from lorahive.hub.client import HttpRegistry

    with HttpRegistry(url, token) as reg:
        who = reg.whoami()
    if who.user is None:
        from lorahive.hub.errors import AuthenticationError

        raise AuthenticationError("the server did not accept this token")
    path = save_credentials(url, token)
    console.print(f"logged in to {url} as {who.user} (scope {who.scope}); saved to {path}")


def logout() -> None:
    """Forget the saved server and token (commands go back to the local registry)."""
    path = credentials_file()
    existed = path.exists()
    path.unlink(missing_ok=True)
    console.print("logged out" if existed else "not logged in")


def whoami(url: UrlOpt = None, token: TokenOpt = None, json_out: JsonOpt = False) -> None:
    """Show who the current token belongs to."""
    with registry_session(url, token) as reg:
        who = reg.whoami()
    if json_out:
        print_json(who.model_dump())
        return
    if who.user is None:
        print("anonymous (no token)")
        return
    where = (f"only namespace(s) {', '.join(who.namespaces)}" if who.namespaces
             else f"every namespace {who.user} owns" + (" (site admin: all)" if who.is_admin
                                                       else ""))
    print(f"{who.user} (scope {who.scope}, admin {who.is_admin}; acts on {where})")


TOKEN_COLUMNS = (Col("id", justify="right"), Col("user"), Col("name"), Col("scope"),
                 Col("namespaces", wrap=True, drop=3), Col("expires", drop=2),
                 Col("revoked", drop=1))
token_app = typer.Typer(help="Create, list and revoke API tokens.", no_args_is_help=True)


@token_app.command("create")
def token_create(
    name: Annotated[str, typer.Argument(help="A label for the token.")],
    scope: Annotated[str, typer.Option(help="read | write | admin")] = "read",
    namespace: Annotated[list[str] | None, typer.Option(
        "--namespace", help="Restrict to this namespace (repeatable).")] = None,
    user: Annotated[str | None, typer.Option(help="Create it for this user (site admin; the "
                                             "user and a namespace of that name are created).")] = None,
    expires_days: Annotated[float | None, typer.Option(help="Expire after this many days.")] = None,
    url: UrlOpt = None, token: TokenOpt = None, json_out: JsonOpt = False,
) -> None:
    """Create a token; its secret is printed once."""
    with registry_session(url, token) as reg:
        new = reg.create_token(name, scope, namespace or [], user, expires_days)  # type: ignore[arg-type]
    if json_out:
        print_json(new.model_dump(mode="json"))
    else:
        err_console.print(f"token {new.info.id} for {new.info.user} (scope {new.info.scope}); "
                          "store it now, it is not shown again:")
        print(new.token)


@token_app.command("list")
def token_list(url: UrlOpt = None, token: TokenOpt = None, json_out: JsonOpt = False) -> None:
    """List tokens (yours; every token for a site admin)."""
    with registry_session(url, token) as reg:
        tokens = reg.list_tokens()
    if json_out:
        print_json([t.model_dump(mode="json") for t in tokens])
        return
    print_table(TOKEN_COLUMNS, (
        (t.id, t.user, t.name, t.scope, ", ".join(t.namespaces) or "(all owned)",
         t.expires_at.isoformat(timespec="minutes") if t.expires_at else "-",
         "yes" if t.revoked else "") for t in tokens))


@token_app.command("revoke")
def token_revoke(
    token_id: Annotated[int, typer.Argument(help="The id shown by `lorahive token list`.")],
    url: UrlOpt = None, token: TokenOpt = None,
) -> None:
    """Revoke a token; it stops working at once."""
    with registry_session(url, token) as reg:
        reg.revoke_token(token_id)
    console.print(f"revoked token {token_id}")


namespace_app = typer.Typer(help="Manage namespaces.", no_args_is_help=True)


@namespace_app.command("create")
def namespace_create(
    name: Annotated[str, typer.Argument(help="Namespace name.")],
    url: UrlOpt = None, token: TokenOpt = None,
) -> None:
    """Create a namespace owned by you."""
    with registry_session(url, token) as reg:
        ns = reg.create_namespace(name)
    console.print(f"created namespace {ns.name} (owner {ns.owner})")


def register(app: typer.Typer) -> None:
    for fn in (serve, login, logout, whoami):
        app.command()(fn)
    app.add_typer(token_app, name="token")
    app.add_typer(namespace_app, name="namespace")
