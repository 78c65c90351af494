"""Unmodified huggingface_hub / PEFT clients against a real lorahive server on loopback.

The server is the registry's own app (``registry.app.create_app``) under uvicorn in a thread;
clients are the installed ``huggingface_hub``, PEFT and the ``lorahive`` CLI, with
``HF_ENDPOINT`` pointing at the server (in subprocesses where the client reads it at import).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from huggingface_hub import HfApi, constants, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from lorahive.registry.local import LocalRegistry
from lorahive.registry.settings import Settings
from tests.models import BASE_ID, make_peft_adapter
from tests.registry_helpers import ThreadedServer as Server

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def online(tmp_path_factory) -> Iterator[None]:
    """The suite's conftest sets HF_HUB_OFFLINE=1; these tests talk to loopback only, and
    the HF cache default moves to a temp dir so nothing lands in the user's cache."""
    mp = pytest.MonkeyPatch()
    mp.setattr(constants, "HF_HUB_OFFLINE", False)
    mp.setattr(constants, "HF_HUB_CACHE", str(tmp_path_factory.mktemp("hf-cache")))
    mp.delenv("HF_HUB_OFFLINE", raising=False)
    mp.delenv("HF_TOKEN", raising=False)
    yield
    mp.undo()


@pytest.fixture(scope="module")
def server(tmp_path_factory, online) -> Iterator[Server]:
    s = Server(tmp_path_factory.mktemp("hf-server"))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def published(server, lora_dir) -> dict:
    v = server.admin.publish(lora_dir, "admin/tiny-lora", tags=["demo"], task="text-generation")
    server.admin.set_alias("admin/tiny-lora@1", "prod")
    return {"repo": "admin/tiny-lora", "version": v}


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def tree_digest(d: Path) -> dict[str, str]:
    return {str(p.relative_to(d)): sha(p) for p in sorted(d.rglob("*"))
            if p.is_file() and ".cache" not in p.parts}


def hf_env(server: Server, tmp: Path, token: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "LORAHIVE_"))}
    env.update(HF_ENDPOINT=server.url, HF_HOME=str(tmp / "hf-home"), HF_HUB_OFFLINE="0",
               HF_HUB_DISABLE_PROGRESS_BARS="1", PYTHONPATH=str(ROOT),
               TRANSFORMERS_NO_ADVISORY_WARNINGS="1")
    if token:
        env["HF_TOKEN"] = token
    return env


# ----------------------------------------------------------------------------- downloads


def test_snapshot_and_file_downloads_are_byte_identical(server, published, lora_dir, tmp_path):
    repo = published["repo"]
    path = Path(snapshot_download(repo, endpoint=server.url, cache_dir=tmp_path / "c"))
    assert tree_digest(path) == tree_digest(lora_dir)
    local = Path(snapshot_download(repo, endpoint=server.url, local_dir=tmp_path / "local",
                                   cache_dir=tmp_path / "c"))
    assert tree_digest(local) == tree_digest(lora_dir)
    v = published["version"]
    # the snapshot folder is the stable commit id, and `main` is recorded as a ref to it
    commit = path.name
    assert len(commit) == 40
    assert (tmp_path / "c" / "models--admin--tiny-lora" / "refs" / "main").read_text() == commit
    for rev in ("main", "1", "prod", "latest", commit):
        f = hf_hub_download(repo, "adapter_model.safetensors", revision=rev,
                            endpoint=server.url, cache_dir=tmp_path / f"c-{rev}")
        assert sha(Path(f)) == next(x.sha256 for x in v.files
                                    if x.path == "adapter_model.safetensors")
    info = HfApi(endpoint=server.url).model_info(repo, files_metadata=True)
    assert info.sha == commit
    assert sorted(s.rfilename for s in info.siblings) == sorted(tree_digest(lora_dir))
    assert {s.rfilename: s.lfs.sha256 for s in info.siblings} == tree_digest(lora_dir)
    assert info.library_name == "peft" and info.private is False
    assert f"base_model:adapter:{BASE_ID}" in info.tags and "demo" in info.tags
    assert info.card_data.library_name == "peft"  # the README's own front matter
    assert HfApi(endpoint=server.url).list_repo_files(repo) == sorted(tree_digest(lora_dir))
    check = HfApi(endpoint=server.url).verify_repo_checksums(repo, cache_dir=tmp_path / "c")
    assert check.checked_count == 3 and not check.mismatches and not check.missing_paths
    refs = HfApi(endpoint=server.url).list_repo_refs(repo)
    assert refs.branches[0].target_commit == commit
    assert {t.name for t in refs.tags} == {"1", "prod"}


def test_resolve_headers_and_ranges(server, published):
    repo = published["repo"]
    w = next(f for f in published["version"].files if f.path == "adapter_model.safetensors")
    url = f"{server.url}/{repo}/resolve/main/adapter_model.safetensors"
    with httpx.Client() as c:
        h = c.head(url)
        assert h.status_code == 200
        assert h.headers["etag"].strip('"') == w.sha256
        assert int(h.headers["content-length"]) == w.size
        assert len(h.headers["x-repo-commit"]) == 40
        full = c.get(url).content
        assert hashlib.sha256(full).hexdigest() == w.sha256
        part = c.get(url, headers={"Range": "bytes=10-19"})
        assert part.status_code == 206 and part.content == full[10:20]
        assert part.headers["content-range"] == f"bytes 10-19/{w.size}"
        assert c.get(url, headers={"Range": "bytes=-5"}).content == full[-5:]
        assert c.get(url, headers={"Range": f"bytes={w.size}-"}).status_code == 416
        # tree pages: follow Link headers one entry at a time
        seen, nxt = [], f"{server.url}/api/models/{repo}/tree/main?recursive=true&limit=1"
        while nxt:
            page = c.get(nxt)
            seen += [e["path"] for e in page.json()]
            nxt = page.links.get("next", {}).get("url")
        assert seen == sorted(f.path for f in published["version"].files)
        miss = c.head(f"{server.url}/{repo}/resolve/main/nope.txt")
        assert miss.status_code == 404 and miss.headers["x-error-code"] == "EntryNotFound"
        assert miss.headers["x-repo-commit"] == h.headers["x-repo-commit"]


def test_errors_are_the_clients_own_types(server, published, tmp_path):
    api = HfApi(endpoint=server.url)
    repo = published["repo"]
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("admin/does-not-exist")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("admin/does-not-exist", "README.md", endpoint=server.url,
                        cache_dir=tmp_path)
    with pytest.raises(RevisionNotFoundError):
        api.model_info(repo, revision="v99")
    with pytest.raises(RevisionNotFoundError):
        snapshot_download(repo, revision="0" * 40, endpoint=server.url, cache_dir=tmp_path)
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(repo, "missing.json", endpoint=server.url, cache_dir=tmp_path)
    assert api.file_exists(repo, "adapter_config.json")
    assert not api.file_exists(repo, "missing.json")
    assert api.repo_exists(repo) and not api.repo_exists("admin/does-not-exist")
    with pytest.raises(HfHubHTTPError) as e:
        HfApi(endpoint=server.url, token="lh_not-a-real-token").model_info(repo)
    assert e.value.response.status_code == 401


def test_private_repos_answer_repo_not_found_to_others(server, lora_dir, tmp_path):
    server.admin.publish(lora_dir, "admin/secret-lora", private=True)
    bob = server.admin.create_token("bob-write", scope="write", user="bob").token
    owner = HfApi(endpoint=server.url, token=server.token)
    assert owner.model_info("admin/secret-lora").private is True
    for api in (HfApi(endpoint=server.url), HfApi(endpoint=server.url, token=bob)):
        with pytest.raises(RepositoryNotFoundError):
            api.model_info("admin/secret-lora")
        with pytest.raises(RepositoryNotFoundError):
            hf_hub_download("admin/secret-lora", "adapter_config.json", endpoint=server.url,
                            token=api.token or False, cache_dir=tmp_path)
        assert "admin/secret-lora" not in {m.id for m in api.list_models(author="admin")}
    assert "admin/secret-lora" in {m.id for m in owner.list_models(author="admin")}


def test_list_models_by_tag_and_pagination(server, published, lora_dir):
    api = HfApi(endpoint=server.url)
    by_tag = [m.id for m in api.list_models(filter=f"base_model:adapter:{BASE_ID}")]
    assert published["repo"] in by_tag
    assert [m.id for m in api.list_models(filter=["peft", "lora", "demo"])] == [published["repo"]]
    assert [m.id for m in api.list_models(filter="no-such-tag")] == []
    assert published["repo"] in [m.id for m in api.list_models(search="tiny", author="admin")]
    assert [m.id for m in api.list_models(author="nobody")] == []
    for i in range(3):
        server.admin.publish(lora_dir, f"admin/page-{i}", tags=["paged"])
    # the client follows Link headers; pages of one item must still yield everything once
    seen: list[str] = []
    url: str | None = f"{server.url}/api/models?filter=paged&limit=1"
    with httpx.Client() as c:
        while url:
            r = c.get(url)
            seen += [m["id"] for m in r.json()]
            url = r.links.get("next", {}).get("url")
    assert sorted(seen) == ["admin/page-0", "admin/page-1", "admin/page-2"]
    assert len(list(api.list_models(filter="paged", limit=2))) == 2
    me = HfApi(endpoint=server.url, token=server.token).whoami()
    assert me["name"] == "admin" and me["auth"]["accessToken"]["role"] == "write"


# ------------------------------------------------------------------------------- uploads


def test_upload_folder_publishes_a_version_pull_returns(server, lora_dir, tmp_path):
    api = HfApi(endpoint=server.url, token=server.token)
    url = api.create_repo("admin/pushed", private=True)
    assert url.repo_id == "admin/pushed"
    api.create_repo("admin/pushed", exist_ok=True)
    # an empty repo exists (private) before its first commit, like on the Hub
    assert api.list_repo_files("admin/pushed") == []
    with pytest.raises(RepositoryNotFoundError):
        HfApi(endpoint=server.url).model_info("admin/pushed")
    ci = api.upload_folder(folder_path=str(lora_dir), repo_id="admin/pushed",
                           commit_message="first")
    pulled = server.admin.pull("admin/pushed", to=tmp_path / "pulled")
    assert tree_digest(Path(pulled)) == tree_digest(lora_dir)
    assert api.model_info("admin/pushed").sha == ci.oid
    assert server.admin.resolve("admin/pushed").version == "1"
    # a second commit keeps the files it does not touch (git semantics) -> version 2
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "notes.txt").write_text("trained for 3 epochs\n")
    (extra / "data").mkdir()
    (extra / "data" / "eval.dat").write_bytes(os.urandom(3 * 1024 * 1024))  # a multi-MB line
    ci2 = api.upload_folder(folder_path=str(extra), repo_id="admin/pushed")
    v2 = server.admin.resolve("admin/pushed")
    assert v2.version == "2" and ci2.oid != ci.oid
    assert {f.path: f.sha256 for f in v2.files} == {**tree_digest(lora_dir), **tree_digest(extra)}
    got = hf_hub_download("admin/pushed", "data/eval.dat", endpoint=server.url,
                          token=server.token, cache_dir=tmp_path / "c2")
    assert sha(Path(got)) == sha(extra / "data" / "eval.dat")
    # re-uploading identical content is a no-op on the client side: no version 3
    api.upload_folder(folder_path=str(extra), repo_id="admin/pushed")
    assert server.admin.resolve("admin/pushed").version == "2"
    api.delete_file("notes.txt", "admin/pushed")
    api.delete_folder("data", "admin/pushed")
    assert sorted(f.path for f in server.admin.resolve("admin/pushed").files) == \
        sorted(tree_digest(lora_dir))
    # versions stay addressable by revision
    assert hf_hub_download("admin/pushed", "notes.txt", revision="2", endpoint=server.url,
                           token=server.token, cache_dir=tmp_path / "c")


def test_upload_refusals(server, lora_dir, tmp_path):
    bob = server.admin.create_token("bob-w2", scope="write", user="bob2").token
    with pytest.raises(HfHubHTTPError) as e:
        HfApi(endpoint=server.url, token=bob).create_repo("admin/bobs")
    assert e.value.response.status_code == 403
    with pytest.raises(HfHubHTTPError):
        HfApi(endpoint=server.url).upload_folder(folder_path=str(lora_dir), repo_id="admin/x")
    # a pickle file is refused and nothing is published
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in lora_dir.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    (bad / "adapter_model.bin").write_bytes(b"\x80\x04K\x01.")
    api = HfApi(endpoint=server.url, token=server.token)
    api.create_repo("admin/pickled")
    with pytest.raises(HfHubHTTPError) as e:
        api.upload_folder(folder_path=str(bad), repo_id="admin/pickled")
    assert e.value.response.status_code == 422
    assert api.list_repo_files("admin/pickled") == []


def test_lfs_protocol_when_xet_is_off(server, lora_dir, tmp_path, monkeypatch):
    """Files over the inline limit go through LFS batch + signed PUT + verify (clients with
    HF_HUB_DISABLE_XET=1); the commit then references them by sha256."""
    monkeypatch.setenv("LORAHIVE_HF_INLINE_MAX_BYTES", "2000")  # the safetensors is bigger
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    api = HfApi(endpoint=server.url, token=server.token)
    api.create_repo("admin/via-lfs")
    ci = api.upload_folder(folder_path=str(lora_dir), repo_id="admin/via-lfs")
    v = server.admin.resolve("admin/via-lfs")
    assert {f.path: f.sha256 for f in v.files} == tree_digest(lora_dir)
    assert api.model_info("admin/via-lfs").sha == ci.oid
    # the signed upload URL is bound to its object: tampering is refused
    w = next(f for f in v.files if f.path == "adapter_model.safetensors")
    with httpx.Client() as c:
        batch = c.post(f"{server.url}/admin/via-lfs.git/info/lfs/objects/batch",
                       headers={"Authorization": f"Bearer {server.token}"},
                       json={"operation": "upload", "transfers": ["basic"], "hash_algo": "sha256",
                             "objects": [{"oid": "ab" * 32, "size": 4},
                                         {"oid": w.sha256, "size": w.size}]}).json()
        new, known = batch["objects"]
        assert "actions" not in known  # already stored: nothing to upload
        href = new["actions"]["upload"]["href"]
        assert c.put(href.replace("size=4", "size=5"), content=b"abcde").status_code == 403
        r = c.put(href, content=b"abcd")  # wrong content for the oid: refused, nothing stored
        assert r.status_code == 422
        assert c.post(new["actions"]["verify"]["href"], json={"oid": "ab" * 32, "size": 4},
                      headers={"Authorization": f"Bearer {server.token}"}).status_code == 404
        anon = c.post(f"{server.url}/admin/via-lfs.git/info/lfs/objects/batch",
                      json={"operation": "upload", "objects": []})
        assert anon.status_code == 401
    # a commit naming an LFS object that was never uploaded is refused
    body = "\n".join(json.dumps(x) for x in [
        {"key": "header", "value": {"summary": "x"}},
        {"key": "lfsFile", "value": {"path": "adapter_model.safetensors", "algo": "sha256",
                                     "oid": "cd" * 32, "size": 3}}]) + "\n"
    r = httpx.post(f"{server.url}/api/models/admin/via-lfs/commit/main", content=body,
                   headers={"Authorization": f"Bearer {server.token}",
                            "Content-Type": "application/x-ndjson"})
    assert r.status_code == 404 and r.headers["x-error-code"] == "EntryNotFound"
    assert server.admin.resolve("admin/via-lfs").version == "1"


# ---------------------------------------------------------- PEFT / CLI in subprocesses


# One interpreter (torch + PEFT import once) does both: load an adapter from lorahive through
# HF_ENDPOINT and compare with loading it from disk, then push a new adapter with push_to_hub.
PEFT_SCRIPT = r"""
import json, sys, torch
from peft import LoraConfig, PeftModel, get_peft_model
from tests.models import BASE_ID, load_base
base_dir, repo, local, push_repo, out = sys.argv[1:6]
x = torch.arange(12).reshape(1, 12) % 100
logits = {}
for src in (repo, local):
    model = PeftModel.from_pretrained(load_base(base_dir), src).eval()
    with torch.no_grad():
        logits[src] = model(x).logits.flatten().tolist()
base_logits = load_base(base_dir)(x).logits.flatten().tolist()
torch.manual_seed(7)
cfg = LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"], init_lora_weights=False)
cfg.base_model_name_or_path = BASE_ID
pushed = get_peft_model(load_base(base_dir), cfg)
pushed.push_to_hub(push_repo, private=False)
pushed.save_pretrained(out)
print(json.dumps({"same": logits[repo] == logits[local], "n": len(logits[repo]),
                  "differs_from_base": logits[repo] != base_logits}))
"""


def _run(args: list[str], env: dict[str, str], cwd: Path = ROOT) -> subprocess.CompletedProcess:
    r = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=100)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    return r


@pytest.fixture(scope="module")
def peft_run(server, published, tiny_llama_dir, lora_dir, tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("peft")
    out = tmp / "saved"
    r = _run([sys.executable, "-c", PEFT_SCRIPT, str(tiny_llama_dir), published["repo"],
              str(lora_dir), "admin/peft-pushed", str(out)], hf_env(server, tmp, server.token))
    return {"result": json.loads(r.stdout.strip().splitlines()[-1]), "saved": out, "tmp": tmp}


def test_peft_from_pretrained_through_hf_endpoint(peft_run):
    res = peft_run["result"]
    assert res["same"] and res["n"] > 0 and res["differs_from_base"]


def test_peft_push_to_hub_then_lorahive_pull(server, peft_run):
    """The version push_to_hub created, pulled with the real ``lorahive pull`` CLI from the
    server's own REST API, is byte-identical to what PEFT saved locally."""
    out = peft_run["saved"]
    v = server.admin.resolve("admin/peft-pushed")
    pulled = peft_run["tmp"] / "pulled"
    env = {k: val for k, val in os.environ.items() if not k.startswith("LORAHIVE_")}
    env.update(LORAHIVE_HOME=str(peft_run["tmp"] / "client-home"), PYTHONPATH=str(ROOT))
    _run([sys.executable, "-m", "lorahive", "pull", "admin/peft-pushed", "--url", server.url,
          "--token", server.token, "--to", str(pulled), "--json"], env)
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        assert sha(pulled / name) == sha(out / name)
    assert (pulled / "README.md").is_file()
    assert v.base_model == json.loads((out / "adapter_config.json").read_text())[
        "base_model_name_or_path"]


def test_import_hf_round_trip_between_two_instances(server, published, lora_dir, tmp_path):
    env = hf_env(server, tmp_path)
    env["LORAHIVE_HOME"] = str(tmp_path / "second")
    lh = [sys.executable, "-m", "lorahive"]
    r = _run([*lh, "import-hf", published["repo"], "--revision", "prod", "--name",
              "admin/imported", "--json"], env)
    info = json.loads(r.stdout)
    assert info["ref"] == "admin/imported@1"
    second = LocalRegistry(Settings(home=tmp_path / "second"))
    try:
        back = Path(second.pull("admin/imported", to=tmp_path / "back"))
        a = second.adapter("admin/imported")
    finally:
        second.close()
    assert tree_digest(back) == tree_digest(lora_dir)
    assert "demo" in a.tags and a.task == "text-generation"
    # and back: export the imported version to the first instance under a new name
    env["HF_TOKEN"] = server.token
    r = _run([*lh, "export-hf", "admin/imported@1", "admin/exported", "--json"], env)
    assert len(json.loads(r.stdout)["commit"]) == 40
    assert {f.path: f.sha256 for f in server.admin.resolve("admin/exported").files} == \
        tree_digest(lora_dir)
    # a private repo without HF_TOKEN: the client's RepositoryNotFoundError becomes a one-line
    # error (the offline import from the HF cache is covered by the pickle test below)
    server.admin.publish(lora_dir, "admin/secret-src", private=True)
    del env["HF_TOKEN"]
    bad = subprocess.run([*lh, "import-hf", "admin/secret-src"], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and bad.stderr.startswith("error:")
    assert "HF_TOKEN" in bad.stderr and "Traceback" not in bad.stderr


def test_import_hf_pickle_needs_opt_in_from_the_offline_cache(server, tiny_llama_dir, tmp_path):
    """A pickle-only adapter sitting in the HF cache (HF_HUB_OFFLINE=1): refused by default,
    converted to safetensors with --allow-pickle, and the result loads with the same tensors."""
    import torch
    from safetensors.torch import load_file

    d = make_peft_adapter(tiny_llama_dir, tmp_path / "pkl", seed=3)
    tensors = load_file(d / "adapter_model.safetensors")
    env = hf_env(server, tmp_path)
    env.update(HF_HUB_OFFLINE="1", LORAHIVE_HOME=str(tmp_path / "third"))
    commit = "1" * 40
    repo_dir = Path(env["HF_HOME"]) / "hub" / "models--someorg--pickled-lora"
    snap = repo_dir / "snapshots" / commit
    snap.mkdir(parents=True)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(commit)
    (snap / "adapter_config.json").write_bytes((d / "adapter_config.json").read_bytes())
    torch.save(tensors, snap / "adapter_model.bin")
    lh = [sys.executable, "-m", "lorahive", "import-hf", "someorg/pickled-lora", "--name",
          "admin/pickled-lora"]
    bad = subprocess.run(lh, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "--allow-pickle" in bad.stderr
    assert "Traceback" not in bad.stderr
    r = _run([*lh, "--allow-pickle", "--json"], env)
    files = {f["path"] for f in json.loads(r.stdout)["files"]}
    assert files == {"adapter_config.json", "adapter_model.safetensors", "README.md"}
    third = LocalRegistry(Settings(home=tmp_path / "third"))
    try:
        pulled = Path(third.pull("admin/pickled-lora", to=tmp_path / "out"))
    finally:
        third.close()
    got = load_file(pulled / "adapter_model.safetensors")
    assert got.keys() == tensors.keys()
    assert all(torch.equal(got[k], tensors[k]) for k in got)


def test_every_version_has_a_model_card(server, lora_dir, tmp_path):
    """A version published without README.md gets a generated card with the Hub's adapter
    front matter; re-publishing the same content is still idempotent."""
    from lorahive.hub.modelcard import parse_card

    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        (bare / name).write_bytes((lora_dir / name).read_bytes())
    kw = dict(task="summarization", tags=["news"], description="Summarises news.",
              metrics={"rouge": 0.3})
    v = server.admin.publish(bare, "admin/carded", version="1.0", **kw)
    assert server.admin.publish(bare, "admin/carded", version="1.0", **kw).files == v.files
    assert sorted(f.path for f in v.files) == ["README.md", *sorted(tree_digest(bare))]
    card = Path(hf_hub_download("admin/carded", "README.md", endpoint=server.url,
                                cache_dir=tmp_path / "c")).read_text()
    front = parse_card(card)
    assert front["library_name"] == "peft" and front["base_model"] == BASE_ID
    assert front["base_model_relation"] == "adapter"
    assert {"lora", "peft", f"base_model:adapter:{BASE_ID}", "news"} <= set(front["tags"])
    assert front["pipeline_tag"] == "summarization" and front["lorahive_metrics"] == {"rouge": 0.3}
    assert "Summarises news." in card
    info = HfApi(endpoint=server.url).model_info("admin/carded")
    assert info.pipeline_tag == "summarization" and info.card_data.base_model == BASE_ID


def test_commit_preconditions(server, published):
    """A stale parentCommit is refused (412) and pull requests are not a lorahive concept."""
    from huggingface_hub import CommitOperationAdd

    api = HfApi(endpoint=server.url, token=server.token)
    op = CommitOperationAdd(path_in_repo="notes.md", path_or_fileobj=b"hello")
    with pytest.raises(HfHubHTTPError) as e:
        api.create_commit(published["repo"], [op], commit_message="x", parent_commit="0" * 40)
    assert e.value.response.status_code == 412
    with pytest.raises(HfHubHTTPError) as e:
        api.create_commit(published["repo"], [op], commit_message="x", create_pr=True)
    assert e.value.response.status_code == 400
    assert server.admin.resolve(published["repo"]).version == published["version"].version


def test_history_and_paths_info(server, lora_dir, tmp_path):
    api = HfApi(endpoint=server.url, token=server.token)
    server.admin.publish(lora_dir, "admin/history")
    sub = tmp_path / "more"
    (sub / "docs").mkdir(parents=True)
    (sub / "docs" / "eval.md").write_text("scores\n")
    head = api.upload_folder(folder_path=str(sub), repo_id="admin/history").oid
    log = api.list_repo_commits("admin/history")
    assert log[0].commit_id == head and len(log) == 2
    assert [c.commit_id for c in api.list_repo_commits("admin/history", revision="1")] == \
        [log[1].commit_id]
    info = {e.path: e for e in api.get_paths_info(
        "admin/history", ["docs", "docs/eval.md", "adapter_config.json", "nope"])}
    assert set(info) == {"docs", "docs/eval.md", "adapter_config.json"}
    assert info["docs/eval.md"].lfs.sha256 == sha(sub / "docs" / "eval.md")
    assert [e.path for e in api.list_repo_tree("admin/history", "docs")] == ["docs/eval.md"]


def test_upload_file_of_a_card_updates_task_and_tags(server, lora_dir, tmp_path):
    """``upload_file`` goes through create_commit (validate-yaml, preupload, commit); the new
    README's front matter sets the adapter's task and tags for search."""
    api = HfApi(endpoint=server.url, token=server.token)
    server.admin.publish(lora_dir, "admin/recarded")
    card = ("---\nlibrary_name: peft\npipeline_tag: summarization\ntags:\n- peft\n- legal\n---\n"
            "# recarded\n\nSummaries of contracts.\n")
    ci = api.upload_file(path_or_fileobj=card.encode(), path_in_repo="README.md",
                         repo_id="admin/recarded", commit_message="new card")
    a = server.admin.adapter("admin/recarded")
    assert a.latest_version == "2" and a.task == "summarization" and "legal" in a.tags
    assert [m.id for m in api.list_models(filter="legal")] == ["admin/recarded"]
    got = hf_hub_download("admin/recarded", "README.md", revision=ci.oid, endpoint=server.url,
                          cache_dir=tmp_path)
    assert Path(got).read_text() == card
