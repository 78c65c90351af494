"""lorahive: an adapter hub for LoRA-family adapters.

Subpackages: ``lorahive.hub`` (the adapter object, file formats, client SDK),
``lorahive.compose`` (fusion, merging, composition), ``lorahive.registry`` (storage and
service), ``lorahive.cli`` (the ``lorahive`` command). In the source tree they live in the
top-level folders ``hub/``, ``compose/``, ``registry/`` and ``cli/``; setuptools maps them under
this package, so an installed lorahive adds one top-level name to site-packages.
"""

from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

# In a source checkout the import system can find this folder before the installed mapping (the
# repository root is on sys.path for `python -m lorahive` run there); the subpackages are then
# its sibling folders, exactly what the mapping points at.
_root = Path(__file__).resolve().parent.parent
if (_root / "pyproject.toml").is_file() and (_root / "hub" / "__init__.py").is_file():
    __path__.append(str(_root))

try:
    __version__ = version("lorahive")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"
