"""The distribution installs one top-level package, ``lorahive``, holding every package folder."""

from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = {"hub": "lorahive.hub", "compose": "lorahive.compose",
           "registry": "lorahive.registry", "cli": "lorahive.cli"}


def _declared() -> list[str]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]


def test_every_package_folder_is_declared():
    found = {"lorahive"}
    for folder, pkg in FOLDERS.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder).parts
            found.add(".".join((pkg, *rel)))
    assert sorted(found) == sorted(_declared())


def test_wheel_has_one_top_level_package(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp_path), str(ROOT)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("lorahive-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/", 1)[0] for n in names if not n.split("/", 1)[0].endswith(".dist-info")}
    assert tops == {"lorahive"}
    assert "lorahive/hub/adapter.py" in names
    assert "lorahive/registry/migrations/versions/0001_initial_schema.py" in names
    assert "lorahive/registry/web/templates/base.html" in names  # the web pages' assets
    assert "lorahive/registry/web/static/lorahive.css" in names
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    entries = zipfile.ZipFile(wheel).read(entry).decode()
    assert "lorahive = lorahive.cli.app:main" in entries
    # vLLM finds the resolver plugin by this entry point; `lorahive[vllm]` brings vLLM itself
    assert "[vllm.general_plugins]\nlorahive = lorahive.hub.vllm_plugin:register" in entries
    assert "lorahive/hub/vllm_plugin.py" in names
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    assert any(d.startswith("vllm>=") for d in extras["vllm"])
