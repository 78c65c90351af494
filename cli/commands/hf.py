"""``lorahive import-hf`` and ``export-hf``: move adapters between lorahive and any Hugging
Face-compatible hub (the Hub itself, a mirror, or another lorahive server's HF endpoint).

Both go through ``huggingface_hub``, so ``HF_ENDPOINT``, ``HF_TOKEN``, ``HF_HUB_OFFLINE`` and the
HF cache behave as they do for every other HF tool.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer

from lorahive.cli.commands.registry_client import (
    JsonOpt,
    UrlOpt,
    progress_bar,
    registry_session,
)
from lorahive.cli.output import console, print_json
from lorahive.hub.errors import (
    AdapterNotFoundError,
    EntryNotFoundError,
    InvalidAdapterError,
    InvalidReferenceError,
    OfflineError,
    PermissionDeniedError,
    ServiceUnavailableError,
    UnsafeFileError,
    VersionNotFoundError,
)
from lorahive.hub.manifest import (
    CONFIG_NAME,
    PICKLE_NAMES,
    PICKLE_SUFFIXES,
    WEIGHTS_NAME,
    is_pickle_name,
)
from lorahive.hub.refs import check_name, parse_ref

_DERIVED_TAG = re.compile(r"^(peft|lora|safetensors|transformers|base_model:.*|license:.*|region:.*)$")


@contextmanager
def _hf_errors(what: str) -> Iterator[None]:
    """``huggingface_hub`` exceptions as lorahive errors with one-line, actionable messages."""
    from huggingface_hub import errors as hfe
    from huggingface_hub.utils import OfflineModeIsEnabled

    try:
        yield
    except hfe.RepositoryNotFoundError:
        raise AdapterNotFoundError(
            f"{what}: repository not found (or private); check the id, HF_ENDPOINT and HF_TOKEN"
        ) from None
    except hfe.RevisionNotFoundError:
        raise VersionNotFoundError(f"{what}: no such revision; check --revision") from None
    except hfe.EntryNotFoundError:
        raise EntryNotFoundError(f"{what}: a file is missing from the repository") from None
    except (hfe.LocalEntryNotFoundError, OfflineModeIsEnabled):
        raise OfflineError(
            f"{what}: the hub cannot be reached (or HF_HUB_OFFLINE=1) and the HF cache does not "
            "hold this revision"
        ) from None
    except hfe.HfHubHTTPError as e:
        status = e.response.status_code if e.response is not None else None
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        if status in (401, 403):
            raise PermissionDeniedError(f"{what}: {first}; check HF_TOKEN / --token") from None
        raise ServiceUnavailableError(f"{what}: {first}") from None


def _clean_tags(tags: Any) -> list[str]:
    """Tags publish accepts, minus the ones lorahive derives itself (peft, base_model:...)."""
    out = []
    for t in tags or []:
        if isinstance(t, str) and not _DERIVED_TAG.match(t):
            try:
                out.append(check_name(t, "tag"))
            except InvalidReferenceError:
                continue
    return out


def _hub_metadata(repo_id: str, revision: str | None) -> dict[str, Any]:
    """Tags, task and (from a lorahive source) description from the hub's model info; empty
    when offline, since the card in the cache is then all there is."""
    from huggingface_hub import HfApi, constants

    if constants.is_offline_mode():
        return {}
    with _hf_errors(f"import {repo_id}"):
        info = HfApi().model_info(repo_id, revision=revision)
    out: dict[str, Any] = {"tags": _clean_tags(info.tags)}
    if info.pipeline_tag:
        out["task"] = info.pipeline_tag
    extra = getattr(info, "lorahive", None)
    if isinstance(extra, dict):
        if extra.get("task"):
            out["task"] = extra["task"]
        if extra.get("description"):
            out["description"] = str(extra["description"])
    return out


def _card_metadata(readme: Path) -> dict[str, Any]:
    """Task, tags and description from a model card, in the forms publish accepts."""
    if not readme.is_file():
        return {}
    text = readme.read_text(encoding="utf-8", errors="replace")
    from lorahive.hub.modelcard import parse_card

    front = parse_card(text)
    tags = _clean_tags(front.get("tags"))
    task = front.get("lorahive_task") or front.get("pipeline_tag")
    body = re.sub(r"\A---\s*\n.*?\n---\s*\n", "", text, flags=re.S)
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", body) if p.strip()]
    description = next((p for p in paragraphs if not p.startswith(("#", "<!--", "```", "|", "-"))
                        and "More Information Needed" not in p), None)
    out: dict[str, Any] = {"tags": tags}
    if isinstance(task, str):
        out["task"] = task
    if description:
        out["description"] = description[:1000]
    return out


def _stage(snapshot: Path, dest: Path, allow_pickle: bool) -> None:
    """Copy an adapter out of the HF cache (symlinks resolved), converting a pickle-only
    adapter to safetensors when allowed; nothing else from the repo is unpickled."""
    if not (snapshot / CONFIG_NAME).is_file():
        raise InvalidAdapterError(f"the repository has no {CONFIG_NAME}; is it a PEFT adapter?")
    for src in sorted(snapshot.rglob("*")):
        rel = src.relative_to(snapshot)
        if src.is_dir() or rel.parts[0] == ".cache" or rel.name == ".gitattributes":
            continue
        if is_pickle_name(rel.name):
            continue
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest / rel)
    if not (dest / WEIGHTS_NAME).is_file():
        pickles = [n for n in PICKLE_NAMES if (snapshot / n).is_file()]
        if not pickles:
            raise InvalidAdapterError(f"the repository has no {WEIGHTS_NAME}")
        if not allow_pickle:
            raise UnsafeFileError(
                f"the repository holds {pickles[0]} (pickle, can run code when loaded) and no "
                f"{WEIGHTS_NAME}; rerun with --allow-pickle to convert it with a weights-only load"
            )
        from lorahive.hub.peft_format import load_peft, save_peft

        adapter = load_peft(snapshot, allow_pickle=True)
        conv = dest.parent / "converted"
        extra = {str(p.relative_to(dest)): p.read_bytes() for p in dest.rglob("*")
                 if p.is_file() and p.name != CONFIG_NAME}
        save_peft(adapter, conv, extra_files=extra)
        shutil.rmtree(dest)
        conv.rename(dest)


def import_hf(
    repo_id: Annotated[str, typer.Argument(help="Hugging Face repo id, e.g. org/my-lora.")],
    revision: Annotated[str | None, typer.Option(help="Branch, tag or commit (default main).")] = None,
    name: Annotated[str | None, typer.Option(
        "--name", help="lorahive name namespace/name (default: the repo id).")] = None,
    allow_pickle: Annotated[bool, typer.Option(
        "--allow-pickle", help="Convert a pickle-only adapter (adapter_model.bin) to "
        "safetensors with a weights-only load.")] = False,
    task: Annotated[str | None, typer.Option(help="Task (default: from the model card).")] = None,
    tag: Annotated[list[str] | None, typer.Option(help="Extra tag (repeatable).")] = None,
    private: Annotated[bool | None, typer.Option("--private/--public",
                                                 help="Visibility in lorahive.")] = None,
    url: UrlOpt = None,
    token: Annotated[str | None, typer.Option(
        "--token", help="lorahive token (default: LORAHIVE_TOKEN or the saved login); the "
        "Hugging Face token comes from HF_TOKEN.", show_default=False)] = None,
    json_out: JsonOpt = False,
) -> None:
    """Fetch a PEFT adapter with huggingface_hub (honours HF_ENDPOINT, HF_TOKEN, HF_HUB_OFFLINE
    and the HF cache), validate it and publish it as a new lorahive version."""
    from huggingface_hub import snapshot_download

    target = name or repo_id
    parse_ref(target)  # fail on a name lorahive cannot hold before downloading anything
    with _hf_errors(f"import {repo_id}"):
        snapshot = Path(snapshot_download(
            repo_id, revision=revision,
            ignore_patterns=None if allow_pickle else [f"*{s}" for s in PICKLE_SUFFIXES],
        ))
    with tempfile.TemporaryDirectory(prefix="lorahive-import-") as tmp:
        staged = Path(tmp) / "adapter"
        staged.mkdir()
        _stage(snapshot, staged, allow_pickle)
        meta = _card_metadata(staged / "README.md")
        hub_meta = _hub_metadata(repo_id, revision)
        tags = sorted({*meta.get("tags", []), *hub_meta.get("tags", []), *(tag or [])})
        meta.update({k: v for k, v in hub_meta.items() if k != "tags"})
        with registry_session(url, token) as reg, progress_bar(not json_out) as cb:
            info = reg.publish(staged, target, task=task or meta.get("task"), tags=tags,
                               private=private, description=meta.get("description"),
                               progress=cb)
    if json_out:
        print_json({"source": repo_id, "revision": revision or "main", "snapshot": snapshot.name,
                    "ref": info.ref, "files": [f.model_dump() for f in info.files]})
    else:
        console.print(f"imported [bold]{repo_id}[/bold]@{revision or 'main'} as "
                      f"[bold]{info.ref}[/bold] ({len(info.files)} files)")


def export_hf(
    ref: Annotated[str, typer.Argument(help="lorahive reference ns/name[@version|:alias].")],
    repo_id: Annotated[str, typer.Argument(help="Destination repo id on the HF-compatible hub.")],
    endpoint: Annotated[str | None, typer.Option(
        help="Hub URL (default: HF_ENDPOINT or huggingface.co).")] = None,
    token: Annotated[str | None, typer.Option(
        "--token", help="Hub token (default: HF_TOKEN or the saved HF login).",
        show_default=False)] = None,
    private: Annotated[bool, typer.Option("--private", help="Create the repo private.")] = False,
    message: Annotated[str | None, typer.Option(help="Commit message.")] = None,
    url: UrlOpt = None,
    registry_token: Annotated[str | None, typer.Option(
        "--registry-token", help="lorahive token (default: LORAHIVE_TOKEN or the saved login).",
        show_default=False)] = None,
    json_out: JsonOpt = False,
) -> None:
    """Push a lorahive version to any HF-compatible hub with HfApi (creates the repo if
    needed; adds a model card when the version has none)."""
    from huggingface_hub import HfApi

    with registry_session(url, registry_token) as reg:
        info = reg.resolve(ref)
        with progress_bar(not json_out) as cb:
            path = Path(reg.pull(ref, progress=cb))
    with tempfile.TemporaryDirectory(prefix="lorahive-export-") as tmp:
        folder = path
        if not (path / "README.md").is_file():
            from lorahive.hub.modelcard import render_card

            folder = Path(tmp) / "adapter"
            shutil.copytree(path, folder)
            (folder / "README.md").write_text(render_card(
                repo_id, info.base_model, info.peft_type or "LORA", metrics=info.metrics,
                lineage=info.lineage, summary=info.summary))
        api = HfApi(endpoint=endpoint, token=token)
        with _hf_errors(f"export to {repo_id}"):
            api.create_repo(repo_id, private=private, exist_ok=True)
            commit = api.upload_folder(folder_path=str(folder), repo_id=repo_id,
                                       commit_message=message or f"Export {info.ref} from lorahive")
    if json_out:
        print_json({"ref": info.ref, "repo_id": repo_id, "commit": commit.oid,
                    "url": commit.commit_url})
    else:
        console.print(f"exported [bold]{info.ref}[/bold] to {repo_id} (commit {commit.oid[:12]})")


def register(app: typer.Typer) -> None:
    app.command("import-hf")(import_hf)
    app.command("export-hf")(export_hf)
