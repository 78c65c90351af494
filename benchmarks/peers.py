"""The peers ``python -m benchmarks.registry --peers`` measures lorahive beside, on loopback:
MLflow's tracking server (PyPI ``mlflow``, SQLite backend, ``--serve-artifacts``) holding the
same adapter as a registered model version, and nginx (Debian) serving the same weights file
with ``sendfile``. Every download is followed by a sha256 of what arrived, as lorahive's own
pull does, so the figures compare the same work.
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from benchmarks.postgres import free_port

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
MODEL = "bench-adapter"
ALIAS = "prod"  # MLflow reserves "latest"


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def wait_for(url: str, proc: subprocess.Popen, log: Path, timeout: float = 120.0) -> None:
    """Until ``url`` answers below 500 (or ``proc`` exits: its log's tail is the error)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited:\n{log.read_text()[-2000:]}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(url, timeout=1).status_code < 500:
                return
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer in {timeout:.0f} s:\n{log.read_text()[-2000:]}")


def stop_group(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    """Stop a process started with ``start_new_session`` and its children (a server's
    workers), by its id; SIGKILL after 20 s."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def nginx_exe() -> str:
    exe = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(exe).exists():
        raise RuntimeError("nginx is not installed (Debian: apt-get install -y nginx)")
    return exe


@contextlib.contextmanager
def mlflow_server(work: Path, workers: int) -> Iterator[str]:
    """``mlflow server`` with a SQLite backend and proxied artifacts under ``work``."""
    if shutil.which("mlflow") is None and not Path(sys.executable).with_name("mlflow").exists():
        raise SystemExit("error: MLflow is not installed (pip install -e '.[bench-peers]')")
    exe = shutil.which("mlflow") or str(Path(sys.executable).with_name("mlflow"))
    port = free_port()
    log = work / "mlflow.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            [exe, "server", "--host", "127.0.0.1", "--port", str(port), "--workers",
             str(workers), "--backend-store-uri", f"sqlite:///{work / 'mlflow.db'}",
             "--serve-artifacts", "--artifacts-destination", str(work / "mlartifacts")],
            cwd=work, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "MLFLOW_TRACKING_URI": ""})
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(url + "/health", proc, log)
        yield url
    finally:
        stop_group(proc)


def mlflow_publish(url: str, adapter_dir: Path) -> tuple[str, float]:
    """Log the adapter's files as a run's artifacts (through the server) and register them as
    version 1 of ``MODEL`` with the alias ``prod``; returns (run id, seconds)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=url, registry_uri=url)
    exp = client.create_experiment(f"bench-{time.time_ns()}")
    t0 = time.perf_counter()
    run = client.create_run(exp)
    client.log_artifacts(run.info.run_id, str(adapter_dir), "adapter")
    client.set_terminated(run.info.run_id)
    with contextlib.suppress(Exception):  # a second publish re-uses the registered model
        client.create_registered_model(MODEL)
    mv = client.create_model_version(MODEL, f"runs:/{run.info.run_id}/adapter",
                                     run_id=run.info.run_id)
    client.set_registered_model_alias(MODEL, ALIAS, mv.version)
    return run.info.run_id, time.perf_counter() - t0


def mlflow_pull(url: str, run_id: str, dest: Path) -> Path:
    """Download the registered files through the server's artifact proxy; returns the weights."""
    from mlflow.artifacts import download_artifacts

    out = download_artifacts(run_id=run_id, artifact_path="adapter", dst_path=str(dest),
                             tracking_uri=url)
    return Path(out) / "adapter_model.safetensors"


@contextlib.contextmanager
def nginx_server(work: Path, weights: Path) -> Iterator[str]:
    """Debian's nginx serving ``weights`` as ``/adapter_model.safetensors`` with sendfile."""
    exe = nginx_exe()
    root = work / "nginx"
    www = root / "www"
    www.mkdir(parents=True)
    shutil.copyfile(weights, www / weights.name)
    for p in (work, root, www):
        p.chmod(0o755)  # worker processes may run as another user
    (www / weights.name).chmod(0o644)
    port = free_port()
    user = f"user {getpass.getuser()};" if os.geteuid() == 0 else ""
    conf = root / "nginx.conf"
    conf.write_text(f"""{user}
daemon off;
worker_processes 2;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections 256; }}
http {{
  access_log off;
  sendfile on;
  tcp_nopush on;
  client_body_temp_path {root}/tmp-body;
  proxy_temp_path {root}/tmp-proxy;
  fastcgi_temp_path {root}/tmp-fastcgi;
  uwsgi_temp_path {root}/tmp-uwsgi;
  scgi_temp_path {root}/tmp-scgi;
  server {{ listen 127.0.0.1:{port}; root {www}; }}
}}
""")
    log = root / "stdout.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen([exe, "-c", str(conf), "-p", str(root)], stdout=fh,
                                stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(f"{url}/{weights.name}", proc, log)
        yield url
    finally:
        stop_group(proc)


def curl_pull(url: str, dest: Path) -> Path:
    """``curl -o`` then ``sha256sum``: what a script pulling from a file server does."""
    subprocess.run(["curl", "-sf", "-o", str(dest), url], check=True, timeout=600)
    subprocess.run(["sha256sum", str(dest)], check=True, capture_output=True, timeout=600)
    return dest


def hf_pull(url: str, repo: str, cache: Path) -> Path:
    """Unmodified ``hf_hub_download`` against lorahive's Hugging Face routes."""
    from huggingface_hub import constants, hf_hub_download

    constants.HF_HUB_OFFLINE = False  # loopback only; a benchmark shell may have it set
    return Path(hf_hub_download(repo, "adapter_model.safetensors", endpoint=url,
                                cache_dir=cache))
