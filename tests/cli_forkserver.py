"""A ``lorahive`` command for shell lines that many tests run in a row: a small client that
hands its argv, working directory, environment and standard streams to a server which has
imported the CLI (torch, transformers, PEFT) once and forks a child per command. Each child runs
the console entry point (``lorahive.cli.app.main``) on the client's own stdin/stdout/stderr, and
the client exits with the child's status, so a shell line runs as written at a fraction of a
fresh interpreter's start-up cost.

Run as ``python -m tests.cli_forkserver SOCKET``: prints ``ready`` once listening; serves one
command at a time until killed or its parent process exits."""

from __future__ import annotations

import contextlib
import gc
import json
import os
import socket
import sys
from pathlib import Path

# The client: stdlib only, started with ``python -S`` by the shim script.
CLIENT = r'''
import json, os, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect({sock!r})
msg = json.dumps({{"argv": sys.argv[1:], "cwd": os.getcwd(), "env": dict(os.environ)}})
socket.send_fds(s, [msg.encode()], [0, 1, 2])
s.shutdown(socket.SHUT_WR)
reply = b""
while chunk := s.recv(64):
    reply += chunk
sys.exit(int(reply) if reply else 70)
'''


def write_shim(path: Path, sock: Path) -> Path:
    """An executable ``lorahive`` at ``path`` that runs its command in the server at ``sock``."""
    path.write_text(f"#!{sys.executable} -S\n" + CLIENT.format(sock=str(sock)))
    path.chmod(0o755)
    return path


def _recv_request(conn: socket.socket) -> tuple[dict, list[int]]:
    data, fds = b"", []
    while True:
        chunk, got, _flags, _addr = socket.recv_fds(conn, 1 << 20, 3)
        fds += got
        if not chunk:
            return json.loads(data), fds
        data += chunk


def _child(req: dict, fds: list[int]) -> int:
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(req["cwd"])
    os.environ.clear()
    os.environ.update(req["env"])
    sys.argv = ["lorahive", *req["argv"]]
    from lorahive.cli.app import main

    try:
        main()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:  # what an uncaught exception does to a fresh interpreter
        import traceback

        traceback.print_exc()
        code = 1
    return code


def _exit(code: int) -> None:
    """Exit as the interpreter would (join threads, atexit, flush the streams), less tearing
    down every module, which in a forked child copies most of the parent's memory (seconds)."""
    import atexit
    import threading

    threading._shutdown()  # type: ignore[attr-defined]
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)


def serve(sock: Path) -> None:
    import lorahive.cli.app  # noqa: F401  (imports every command's modules)

    for heavy in ("torch", "transformers", "peft", "nevergrad", "safetensors.torch"):
        __import__(heavy)
    gc.freeze()  # the children share the imported objects without copying them
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(sock))
    server.listen(4)
    server.settimeout(1.0)
    parent = os.getppid()
    print("ready", flush=True)
    while True:
        try:
            conn, _ = server.accept()
        except TimeoutError:
            if os.getppid() != parent:  # the test process is gone: so is its server
                return
            continue
        conn.settimeout(None)
        req, fds = _recv_request(conn)
        pid = os.fork()
        if pid == 0:
            server.close()
            conn.close()
            _exit(_child(req, fds))
        for fd in fds:
            os.close(fd)
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
        conn.sendall(str(code if code >= 0 else 128 - code).encode())
        conn.close()


if __name__ == "__main__":
    serve(Path(sys.argv[1]))
