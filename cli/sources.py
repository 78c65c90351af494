"""Where commands that consume adapters get them, and where they send their results.

``fuse``, ``merge`` and ``compose`` take either local adapter directories or registry references
(``ns/name``, ``ns/name@version``, ``ns/name:alias``); references are pulled through the
selected registry (local by default, a server with ``--url``/``LORAHIVE_URL``) into the pull
cache, and resolved to the exact version so lineage records what was really used.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lorahive.hub.atomic import require_free_dir
from lorahive.hub.errors import InvalidRequestError, LorahiveError
from lorahive.hub.lineage import read_sidecar, recorded_recipe
from lorahive.hub.manifest import CONFIG_NAME, weights_sha256
from lorahive.hub.refs import Ref, parse_ref


@dataclass(frozen=True)
class Source:
    """An input adapter on local disk, with what lineage needs to know about it."""

    path: Path
    ref: str  # ns/name@version for registry inputs, the directory otherwise
    version: str | None
    sha256: str | None


def looks_like_ref(text: str) -> bool:
    if Path(text).expanduser().exists():
        return False
    try:
        parse_ref(text)
    except Exception:
        return False
    return True


def resolve_sources(items: list[str], url: str | None = None, token: str | None = None,
                    progress: Any = None) -> list[Source]:
    """Local directories as they are; registry references pulled (one registry for all)."""
    if not items:
        raise InvalidRequestError("no adapters given")
    out: list[Source] = []
    registry = None
    dirs = [Path(i).expanduser() for i in items if Path(i).expanduser().is_dir()]
    with ThreadPoolExecutor(min(4, max(1, len(dirs)))) as pool:  # hashing releases the GIL
        hashes = dict(zip(dirs, pool.map(weights_sha256, dirs), strict=True))
    try:
        for item in items:
            path = Path(item).expanduser()
            if path.is_dir():
                if not (path / CONFIG_NAME).is_file():
                    raise InvalidRequestError(f"{item} is a directory without adapter_config.json")
                out.append(Source(path, str(path), None, hashes[path]))
                continue
            if not looks_like_ref(item):
                raise InvalidRequestError(
                    f"{item} is neither an adapter directory nor a registry reference "
                    "(ns/name, ns/name@version, ns/name:alias)"
                )
            if registry is None:
                from lorahive.cli.commands.registry_client import open_registry

                registry = open_registry(url, token)
            info = registry.resolve(item)
            local = registry.pull(info.ref, progress=progress)
            out.append(Source(Path(local), info.ref, info.version, info.sha256))
    finally:
        if registry is not None:
            from lorahive.cli.commands.registry_client import close

            close(registry)
    return out


def select_refs(filter_text: str | None, url: str | None = None, token: str | None = None,
                limit: int | None = 20) -> list[str]:
    """Registry references matching ``key=value[,key=value]`` (base_model, task, tag, text,
    namespace, peft_type) — the latest version of each, newest first, at most ``limit``
    (``None``: all of them; no filter: the whole registry)."""
    keys = {"base_model", "task", "tag", "text", "namespace", "peft_type"}
    query: dict[str, Any] = {"tags": []}
    for part in filter(None, (p.strip() for p in (filter_text or "").split(","))):
        key, sep, value = part.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in keys or not value.strip():
            raise InvalidRequestError(
                f"--select takes key=value pairs separated by commas with keys "
                f"{', '.join(sorted(keys))}; got {part!r}"
            )
        if key == "tag":
            query["tags"].append(value.strip())
        else:
            query[key] = value.strip()

    from lorahive.cli.commands.registry_client import registry_session

    refs: list[str] = []
    seen = 0
    with registry_session(url, token) as registry:
        text = query.pop("text", None)
        while True:
            size = 100 if limit is None else min(100, limit - len(refs))
            page = registry.search(text, offset=seen, limit=size, **query)
            seen += len(page.items)
            refs += [f"{a.namespace}/{a.name}@{a.latest_version}" for a in page.items
                     if a.latest_version]
            if len(page.items) < size or (limit is not None and len(refs) >= limit):
                break
    if not refs:
        where = f"matches --select {filter_text!r}" if filter_text else "is in the registry"
        raise InvalidRequestError(f"no adapter {where}")
    return refs


def check_publish_target(text: str) -> Ref:
    """``ns/name`` or ``ns/name@version`` — checked before any long work starts."""
    ref = parse_ref(text)
    if ref.alias is not None:
        raise InvalidRequestError(
            f"--publish takes ns/name or ns/name@version, not an alias ({text!r}); "
            "move aliases with `lorahive alias set`"
        )
    return ref


def check_outputs(out: Path | None, publish: str | None) -> None:
    """Fail before any long work: an output is named, ``--publish`` parses, ``--out`` is free —
    or holds an earlier run's result, which ``reuse_output`` judges once the recipe is known."""
    if out is None and publish is None:
        raise InvalidRequestError("give --out DIR, --publish ns/name, or both")
    if publish is not None:
        check_publish_target(publish)
    if out is not None and recorded_recipe(out) is None:
        require_free_dir(out)


def reuse_output(out: Path | None, recipe: str) -> bool:
    """Whether ``--out`` already holds this very result: an earlier run with the same inputs
    and parameters (its ``lorahive.json`` records the same recipe), e.g. one interrupted
    before its publish. ``False`` when ``--out`` is free; an error when it holds anything else."""
    if out is None or not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return False
    if recorded_recipe(out) != recipe:
        raise InvalidRequestError(
            f"{out} exists and is not empty (it holds another result: different inputs or "
            "parameters); choose another --out")
    from lorahive.hub.peft_format import load_peft

    try:
        load_peft(out)
    except LorahiveError as e:
        raise InvalidRequestError(
            f"{out} records this result but cannot be read ({e}); remove it or choose another "
            "--out") from None
    return True


@contextlib.contextmanager
def output_dir(out: Path | None) -> Iterator[Path]:
    """Where to write a result: ``--out`` when given, else a temporary directory that only
    lives until the result is published."""
    if out is not None:
        yield out
        return
    with tempfile.TemporaryDirectory(prefix="lorahive-out-") as tmp:
        yield Path(tmp) / "adapter"


def publish_output(path: Path, target: str, url: str | None = None, token: str | None = None,
                   task: str | None = None, tags: list[str] | None = None,
                   description: str | None = None, private: bool | None = None,
                   progress: Any = None) -> str:
    """Publish a freshly written result directory (its lorahive.json carries the lineage);
    ``private=None`` leaves visibility to the registry."""

    ref = check_publish_target(target)
    from lorahive.cli.commands.registry_client import registry_session

    sidecar = read_sidecar(path)
    with registry_session(url, token) as registry:
        info = registry.publish(path, ref.repo, ref.version, task=task, tags=tags or [],
                                description=description, metrics=sidecar.get("metrics"),
                                private=private, progress=progress)
    return info.ref
