"""The scale-out layout of docs/deploy.md on loopback: N ``lorahive serve`` processes sharing
one PostgreSQL database and one S3 bucket, behind nginx running ``deploy/nginx.conf``.

The config file is the one users copy; only its addresses are rewritten here (the listen port
and one ``server`` line per worker), so what is tested and measured is what is documented.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.peers import nginx_exe, stop_group, wait_for
from benchmarks.postgres import free_port

ROOT = Path(__file__).resolve().parent.parent
NGINX_CONF = ROOT / "deploy" / "nginx.conf"
_LISTEN = re.compile(r"^(\s*)listen 8000;$", re.M)
_UPSTREAM = re.compile(r"^(\s*)server 127\.0\.0\.1:800\d( [^;\n]*);\n", re.M)


def render_nginx_conf(listen_port: int, upstream_ports: list[int]) -> str:
    """``deploy/nginx.conf`` listening on ``127.0.0.1:listen_port`` in front of the given
    loopback worker ports (each ``server`` line keeps the file's options)."""
    text = NGINX_CONF.read_text()
    servers = list(_UPSTREAM.finditer(text))
    if len(_LISTEN.findall(text)) != 1 or not servers:
        raise RuntimeError(f"{NGINX_CONF}: expected one `listen 8000;` and `server "
                           "127.0.0.1:800N ...;` lines in the upstream block")
    indent, opts = servers[0].group(1), servers[0].group(2)
    lines = "".join(f"{indent}server 127.0.0.1:{p}{opts};\n" for p in upstream_ports)
    text = text[:servers[0].start()] + lines + text[servers[-1].end():]
    text = _LISTEN.sub(lambda m: f"{m.group(1)}listen 127.0.0.1:{listen_port};", text)
    if os.geteuid() == 0:  # nginx would switch its workers to `nobody`
        text = "user root;\n" + text
    return text


@dataclass
class Worker:
    """One ``lorahive serve`` process with its own data directory (nothing shared on disk)."""

    home: Path
    port: int
    proc: subprocess.Popen
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_token(self) -> str:
        """Saved by the process that bootstrapped an empty database, in its data directory."""
        return (self.home / "admin-token").read_text().strip()

    def kill(self) -> None:
        """As a crash or a lost host: no graceful shutdown."""
        stop_group(self.proc, signal.SIGKILL)

    def stop(self) -> None:
        stop_group(self.proc)


def start_worker(home: Path, env: dict[str, str], log_level: str = "warning") -> Worker:
    """``lorahive serve --workers 1`` on a free loopback port, as one line of the process
    list; returns when /healthz answers (one retry on another port: a free port can be taken
    by another process before the server binds it)."""
    try:
        return _start_worker(home, env, log_level)
    except RuntimeError:
        return _start_worker(home, env, log_level)


def _start_worker(home: Path, env: dict[str, str], log_level: str) -> Worker:
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = home / "serve.log"
    full = {k: v for k, v in os.environ.items() if not k.startswith("LORAHIVE_")}
    full.update(LORAHIVE_HOME=str(home), PYTHONUNBUFFERED="1", **env)
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "lorahive", "serve", "--host", "127.0.0.1", "--port",
             str(port), "--workers", "1", "--log-level", log_level],
            cwd=ROOT, env=full, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    worker = Worker(home, port, proc, log)
    try:
        wait_for(worker.url + "/healthz", proc, log)
    except BaseException:
        worker.stop()
        raise
    return worker


@contextlib.contextmanager
def nginx_proxy(prefix: Path, upstream_ports: list[int]) -> Iterator[str]:
    """Debian's nginx with ``deploy/nginx.conf`` (pid, logs and temp files under ``prefix``)
    on a free loopback port; yields its URL once /healthz answers through it."""
    try:
        proc, url = _start_nginx(prefix, upstream_ports)
    except RuntimeError:  # the port was taken before nginx bound it
        proc, url = _start_nginx(prefix, upstream_ports)
    try:
        yield url
    finally:
        stop_group(proc)


def _start_nginx(prefix: Path, upstream_ports: list[int]) -> tuple[subprocess.Popen, str]:
    prefix.mkdir(parents=True, exist_ok=True)
    prefix.chmod(0o755)
    port = free_port()
    conf = prefix / "nginx.conf"
    conf.write_text(render_nginx_conf(port, upstream_ports))
    log = prefix / "stdout.log"  # start-up errors; later ones go to error.log
    with open(log, "wb") as fh:
        proc = subprocess.Popen([nginx_exe(), "-p", str(prefix), "-c", str(conf),
                                 "-g", "daemon off;"], stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(url + "/healthz", proc, log, timeout=30)
    except BaseException:
        stop_group(proc)
        raise
    return proc, url


def shared_env(database_url: str, s3_endpoint: str, bucket: str) -> dict[str, str]:
    """What every worker of one deployment shares: the database, the bucket, the signing key
    (moto's fixed credentials stand in for the store's)."""
    return {"LORAHIVE_DATABASE_URL": database_url,
            "LORAHIVE_STORAGE_URL": f"s3://{bucket}/lorahive",
            "LORAHIVE_S3_ENDPOINT_URL": s3_endpoint,
            "LORAHIVE_HF_SIGNING_KEY": secrets.token_hex(32),
            "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1"}


@dataclass
class Deployment:
    url: str  # the proxy
    workers: list[Worker] = field(default_factory=list)

    @property
    def admin_token(self) -> str:
        return self.workers[0].admin_token  # the first started, on the empty database


@contextlib.contextmanager
def deployment(n: int, env: dict[str, str], work: Path | None = None,
               log_level: str = "warning") -> Iterator[Deployment]:
    """``n`` workers (the first started alone: it migrates the empty database and creates the
    admin token; the others then start) behind nginx."""
    tmp = Path(tempfile.mkdtemp(prefix="lorahive-scaleout-")) if work is None else work
    workers: list[Worker] = []
    try:
        workers.append(start_worker(tmp / "worker-1", env, log_level))
        for i in range(2, n + 1):
            workers.append(start_worker(tmp / f"worker-{i}", env, log_level))
        with nginx_proxy(tmp / "nginx", [w.port for w in workers]) as url:
            yield Deployment(url, workers)
    finally:
        for w in workers:
            w.stop()
        if work is None:
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def moto_s3() -> Iterator[str]:
    """A moto S3 server on a loopback port (threaded, in this process)."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per S3 request otherwise
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()
