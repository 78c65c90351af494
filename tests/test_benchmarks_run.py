"""Benchmarks keep working as the code under them changes: every module imports, and the ones
cheap enough at a tiny size run end to end here (the real sizes run from docs/benchmarks.md)."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULES = sorted(p.stem for p in (ROOT / "benchmarks").glob("*.py") if p.stem != "__init__")


@pytest.mark.parametrize("name", MODULES)
def test_benchmark_module_imports(name):
    importlib.import_module(f"benchmarks.{name}")


def test_web_benchmark_runs_at_a_tiny_size():
    r = subprocess.run([sys.executable, "benchmarks/web.py", "--adapters", "60", "--requests",
                        "3"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [x for x in r.stdout.splitlines() if x.startswith("| ") and "p50" not in x]
    assert len(rows) == 10 and all(float(x.split("|")[2]) > 0 for x in rows), r.stdout
