"""Helpers for the registry tests: a real ``lorahive serve`` subprocess on loopback, a
throwaway PostgreSQL cluster, a moto S3 server, and backends for the contract tests."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import uvicorn

from benchmarks.postgres import (  # noqa: F401 (re-exported to the tests)
    PG_BIN,
    PgCluster,
    _as_postgres,
    free_port,
    pg_cluster,
    pg_unavailable_reason,
    unique,
)
from benchmarks.scaleout import Worker, moto_s3


class Server(Worker):
    """A ``lorahive serve`` process in this process's session; stopped by pid, never by
    name."""

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


class ThreadedServer:
    """The registry's own app under uvicorn in a thread of this process (faster to start than a
    subprocess; tests can reach ``service`` directly), with an admin registry beside it."""

    def __init__(self, home: Path, **settings: object):
        from lorahive.registry.app import create_app
        from lorahive.registry.local import LocalRegistry
        from lorahive.registry.service import RegistryService
        from lorahive.registry.settings import Settings

        self.home = home
        self.service = RegistryService(Settings(home=home, **settings))
        self.admin = LocalRegistry(service=self.service)  # bootstraps user admin + token
        self.token = self.admin.token
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._server = uvicorn.Server(uvicorn.Config(
            create_app(service=self.service), host="127.0.0.1", port=self.port,
            log_level="warning"))
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)

    def client(self, **kw: object) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60, follow_redirects=False, **kw)


def cli_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("LORAHIVE_") or k == "LORAHIVE_TEST_KEEP"}
    env.update(LORAHIVE_HOME=str(home), HF_HUB_OFFLINE="1", COLUMNS="200", **extra)
    return env


def start_server(home: Path, workers: int = 1, env: dict[str, str] | None = None,
                 timeout: float = 90.0) -> Server:
    """Start ``lorahive serve`` on a free loopback port and wait for /healthz (one retry on
    another port: a free port can be taken by another process before the server binds it)."""
    try:
        return _start_server(home, workers, env, timeout)
    except RuntimeError:
        return _start_server(home, workers, env, timeout)


def _start_server(home: Path, workers: int, env: dict[str, str] | None,
                  timeout: float) -> Server:
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = home / f"serve-{port}.log"
    fh = open(log, "wb")  # noqa: SIM115 (owned by the process for its lifetime)
    proc = subprocess.Popen(
        [sys.executable, "-m", "lorahive", "serve", "--host", "127.0.0.1", "--port", str(port),
         "--workers", str(workers), "--log-level", "warning"],
        env=cli_env(home, **(env or {})), stdout=fh, stderr=subprocess.STDOUT,
        cwd=Path(__file__).resolve().parent.parent,
    )
    server = Server(home, port, proc, log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {log.read_text()[-3000:]}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(server.url + "/healthz", timeout=1).status_code == 200:
                return server
        time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"server did not start: {log.read_text()[-3000:]}")


def run_cli(home: Path, *args: str, env: dict[str, str] | None = None,
            check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run the real ``lorahive`` CLI in a subprocess."""
    cp = subprocess.run([sys.executable, "-m", "lorahive", *args], env=cli_env(home, **(env or {})),
                        capture_output=True, text=True, timeout=timeout,
                        cwd=Path(__file__).resolve().parent.parent)
    if check and cp.returncode != 0:
        raise AssertionError(f"lorahive {' '.join(args)} failed ({cp.returncode}):\n"
                             f"{cp.stdout}\n{cp.stderr}")
    return cp


def run_cli_inprocess(home: Path, *args: str, env: dict[str, str] | None = None,
                      check: bool = True):
    """Run the console entry point (``lorahive.cli.app.main``: the same argument parsing and
    error lines as the installed command) in this process, faster than a subprocess. Returns a
    click ``Result`` (``exit_code``, ``stdout``, ``stderr``); with ``check`` a non-zero exit
    raises."""
    from click.testing import CliRunner, Result

    from lorahive.cli.app import main

    args = tuple(map(str, args))
    saved = {k: v for k, v in os.environ.items() if k.startswith("LORAHIVE_")}
    for k in saved:
        del os.environ[k]
    os.environ.update({"LORAHIVE_HOME": str(home), **(env or {})})
    argv, sys.argv = sys.argv, ["lorahive", *args]
    runner = CliRunner()
    try:
        with runner.isolation() as (out, err, both):
            try:
                main()
                code: int = 0
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            sys.stdout.flush()  # print() output still in the wrappers' buffers
            sys.stderr.flush()
            result = Result(runner, out.getvalue(), err.getvalue(), both.getvalue(), None, code,
                            None)
    finally:
        sys.argv = argv
        for k in [k for k in os.environ if k.startswith("LORAHIVE_")]:
            del os.environ[k]
        os.environ.update(saved)
    if check and result.exit_code != 0:
        raise AssertionError(f"lorahive {' '.join(args)} exited {result.exit_code}: "
                             f"{result.stdout}{result.stderr}")
    return result


# -- PostgreSQL ------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def pg():
    reason = pg_unavailable_reason()
    if reason:
        print(f"skipping PostgreSQL tests: {reason}")
        pytest.skip(reason)
    with pg_cluster() as cluster:
        yield cluster


# -- S3 (moto server mode) -------------------------------------------------------------------
@pytest.fixture(scope="session")
def s3_endpoint():
    """A moto S3 server on a loopback port (threaded, in this process)."""
    with moto_s3() as url:
        yield url


@pytest.fixture()
def aws_env(monkeypatch):
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
