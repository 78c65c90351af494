"""lorahive: an adapter hub for LoRA-family adapters.

Subpackages: ``lorahive.hub`` (the adapter object, file formats, client SDK),
``lorahive.compose`` (fusion, merging, composition), ``lorahive.registry`` (storage and
service), ``lorahive.cli`` (the ``lorahive`` command). In the source tree they live in the
top-level folders ``hub/``, ``compose/``, ``registry/`` and ``cli/``; setuptools maps them under
this package, so an installed lorahive adds one top-level name to site-packages.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("lorahive")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"
