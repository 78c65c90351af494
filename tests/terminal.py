"""Run the real ``lorahive`` command as a user sees it: in a pseudo-terminal of a given width,
or piped. Used by the output tests."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")
BOX = set("│┃┆┊║─━┄┈═┏┓┗┛┡┩╇╈┠┨┯┷┳┻╋╭╮╰╯┌┐└┘├┤┬┴┼")


@dataclass
class Output:
    returncode: int
    stdout: str
    stderr: str

    @property
    def lines(self) -> list[str]:
        return self.stdout.splitlines()


def cli_env(home: Path | None, columns: int) -> dict[str, str]:
    env = {**os.environ, "COLUMNS": str(columns), "TERM": "xterm-256color"}
    env.pop("NO_COLOR", None)
    if home is not None:
        env["LORAHIVE_HOME"] = str(home)
    return env


def run_piped(*args, home: Path | None = None, columns: int = 80, timeout: float = 300) -> Output:
    cp = subprocess.run([sys.executable, "-m", "lorahive", *map(str, args)], cwd=ROOT,
                        capture_output=True, text=True, env=cli_env(home, columns),
                        timeout=timeout)
    return Output(cp.returncode, cp.stdout, cp.stderr)


def run_tty(*args, home: Path | None = None, columns: int = 80, timeout: float = 300) -> Output:
    """stdout is a pseudo-terminal ``columns`` wide; escapes are removed from what it shows."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    proc = subprocess.Popen([sys.executable, "-m", "lorahive", *map(str, args)], cwd=ROOT,
                            stdin=subprocess.DEVNULL, stdout=slave, stderr=subprocess.PIPE,
                            env=cli_env(home, columns))
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    stderr = proc.stderr.read().decode() if proc.stderr else ""
    proc.wait(timeout=timeout)
    text = ANSI.sub("", b"".join(chunks).decode()).replace("\r\n", "\n")
    return Output(proc.returncode, text, stderr)
