"""What commands print, at 80 columns in a terminal and piped: names never split, one result
per line, plain lines without box drawing in pipes, module names in natural order, binary
size units, and `methods` shows each paper."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.compose_fixtures import add_tokenizer
from tests.models import LLAMA_KW, make_peft_adapter
from tests.registry_helpers import run_cli_inprocess
from tests.terminal import BOX, Output, run_piped, run_tty

BASE_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
NAMES = ["acme/food-sentiment-classifier-en", "acme/customer-support-intent-de"]
LAYERS = 12


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A 12-layer tiny base (module names up to layers.11), two adapters published in an
    embedded registry under long names, with tags and a write token."""
    from transformers import LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("output")
    import torch

    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(**{**LLAMA_KW, "num_hidden_layers": LAYERS})).save_pretrained(
        root / "raw-base")
    base = add_tokenizer(root / "raw-base", root / "base")
    adapters = [make_peft_adapter(base, root / f"adapter-{i}", seed=80 + i, base_id=BASE_ID)
                for i in range(2)]
    home = root / "home"  # set-up, in this process (the tests below run the real command)
    run_cli_inprocess(home, "namespace", "create", "acme")
    for name, path in zip(NAMES, adapters, strict=True):
        run_cli_inprocess(home, "publish", path, "--name", name, "--task",
                          "text-classification", "--tag", "english", "--tag",
                          "customer-feedback", "--description", "classifies reviews")
    run_cli_inprocess(home, "token", "create", "ci-deploy-key", "--scope", "write",
                      "--namespace", "acme")
    return root, base, adapters, home


def fits(out, width: int = 80, tables_only: bool = True) -> None:
    """Table lines (or, for prose we wrap ourselves, every line) fit the terminal; messages
    are one line each, which the terminal itself folds."""
    assert out.returncode == 0, out.stderr
    too_long = [x for x in out.lines if len(x.rstrip()) > width
                and (not tables_only or BOX & set(x))]
    assert not too_long, out.stdout


def plain(out) -> None:
    assert out.returncode == 0, out.stderr
    assert not BOX & set(out.stdout), out.stdout
    assert "\x1b" not in out.stdout


def line_with(out, *parts: str) -> str:
    """The one output line that holds every part (a record printed whole on one line)."""
    hits = [x for x in out.lines if all(p in x for p in parts)]
    assert hits, (parts, out.stdout)
    return hits[0]


def layer_order(text: str) -> list[int]:
    return [int(n) for n in re.findall(r"layers\.(\d+)\.self_attn\.q_proj", text)]


# -- one-line messages ------------------------------------------------------------------------
def test_publish_message_is_one_line(world, tmp_path):
    _, _, adapters, home = world
    name = "acme/a-rather-long-adapter-name-for-the-message-test"
    # the same files again are a duplicate: one line saying so, then a new version when asked
    for runner, extra in ((run_piped, ()), (run_tty, ("--allow-duplicate",))):
        r = runner("publish", adapters[0], "--name", name, "--tag", "x", *extra, home=home)
        assert r.returncode == 0, r.stderr
        line_with(r, "published", name, f"base {BASE_ID}")
        assert "MB" not in r.stdout and "KB" not in r.stdout
        assert re.search(r"\d+\.\d (KiB|MiB)", r.stdout), r.stdout
    r = run_tty("publish", adapters[0], "--name", name, "--tag", "x", home=home)
    assert r.returncode == 0, r.stderr
    line_with(r, "unchanged, already", "-test@2", "nothing was published")


def test_fuse_and_merge_messages_are_one_line(world, tmp_path):
    _, base, adapters, _ = world
    deep = tmp_path / "a-directory-with-a-long-name" / "and-another-level-below-it"
    out = deep / "fused-adapter-output"
    r = run_piped("fuse", *adapters, "--method", "task_arithmetic", "--rank-budget", "40",
                  "--device", "cpu", "--out", out)
    line_with(r, "fused 2 adapters", str(out), "total rank")
    plain(r)
    order = layer_order(r.stdout)
    assert order == sorted(order) and len(order) == LAYERS, r.stdout
    merged = deep / "merged-model-output"
    r = run_tty("merge", "--base", base, "--adapter", adapters[0], "--device", "cpu",
                "--out", merged)
    line_with(r, "merged 1 adapter", str(merged), "shard")
    assert re.search(r"\d+\.\d (KiB|MiB)\)", r.stdout), r.stdout


def test_fuse_energy_table_at_80_columns(world, tmp_path):
    _, _, adapters, _ = world
    r = run_tty("fuse", *adapters, "--method", "task_arithmetic", "--rank-budget", "40",
                "--device", "cpu", "--out", tmp_path / "f")
    fits(r)
    for i in range(LAYERS):
        line_with(r, f"model.layers.{i}.self_attn.q_proj")
    order = layer_order(r.stdout)
    assert order == sorted(order), r.stdout


# -- registry listings ------------------------------------------------------------------------
def test_search(world):
    *_, home = world
    r = run_tty("search", home=home)
    fits(r)
    for name in NAMES:
        line_with(r, name)  # whole, never folded
    r = run_piped("search", home=home)
    plain(r)
    for name in NAMES:
        line_with(r, name, BASE_ID, "text-classification", "english", "customer-feedback")


def test_versions(world):
    *_, home = world
    r = run_tty("versions", NAMES[0], home=home)
    fits(r)
    line_with(r, "1", "latest")
    r = run_piped("versions", NAMES[0], home=home)
    plain(r)
    row = line_with(r, "latest")
    assert re.search(r"\d+\.\d (KiB|MiB)", row) and re.search(r"\b[0-9a-f]{12}\b", row)


def test_show(world):
    *_, home = world
    for runner in (run_tty, run_piped):
        r = runner("show", NAMES[1], home=home)
        fits(r) if runner is run_tty else plain(r)
        line_with(r, f"{NAMES[1]}@1")
        sha = line_with(r, "sha256:").split("sha256:")[1].strip()
        assert re.fullmatch(r"[0-9a-f]{64}", sha), r.stdout
        line_with(r, "file adapter_model.safetensors")
        assert "MiB" in r.stdout or "KiB" in r.stdout


def test_token_list(world):
    *_, home = world
    r = run_tty("token", "list", home=home)
    fits(r)
    line_with(r, "ci-deploy-key")
    r = run_piped("token", "list", home=home)
    plain(r)
    line_with(r, "ci-deploy-key", "write", "acme")


# -- adapters on disk -------------------------------------------------------------------------
def test_inspect_keeps_module_names_whole_and_sorted(world):
    _, _, adapters, _ = world
    r = run_tty("inspect", adapters[0])
    fits(r)
    rows = [x for x in r.lines if "model.layers." in x]
    assert len(rows) == 2 * LAYERS, r.stdout
    for i in range(LAYERS):
        for m in ("q_proj", "v_proj"):
            line_with(r, f"model.layers.{i}.self_attn.{m}")
    assert layer_order(r.stdout) == list(range(LAYERS))
    r = run_piped("inspect", adapters[0])
    plain(r)
    assert layer_order(r.stdout) == list(range(LAYERS))
    header = line_with(r, "module", "eff.rank 90%", "eff.rank 99%")
    assert header.split()[0] == "module"
    r = run_piped("inspect", adapters[0], "--json")
    names = [m["name"] for m in json.loads(r.stdout)["modules"]]
    assert layer_order(" ".join(names)) == list(range(LAYERS))


def test_methods_show_papers_at_80_columns():
    from lorahive.compose.fusion import all_methods

    papers = {m.name: m.paper for m in all_methods()}
    for runner in (run_tty, run_piped):
        r = runner("methods")
        fits(r, tables_only=runner is run_piped)
        if runner is run_piped:
            plain(r)
        for name, paper in papers.items():
            assert re.search(rf"^{name}\b", r.stdout, re.M), (name, r.stdout)
            if paper:
                line_with(r, paper)  # the whole URL on one line
        assert r.stdout.count("paper:") == sum(1 for p in papers.values() if p)


# -- compose ----------------------------------------------------------------------------------
def test_compose_weights_table_at_80_columns(world, tmp_path):
    from lorahive.compose.composer import Example
    from lorahive.compose.composer.examples import write_examples

    root, base, adapters, _ = world
    shots = write_examples(tmp_path / "shots.jsonl", [Example("the cat is red ?", "yes"),
                                                      Example("the dog is blue ?", "no")])
    far = [Path(root) / "cands" / f"candidate-{i}"
           for i in range(2)]
    for src, dst in zip(adapters, far, strict=True):
        dst.parent.mkdir(exist_ok=True)
        if not dst.exists():
            dst.symlink_to(src, target_is_directory=True)
    args = ["compose", "--base", base, "-c", far[0], "-c", far[1], "--examples", shots,
            "--budget", "2", "--device", "cpu"]
    r = run_tty(*args, "--out", tmp_path / "c1")
    fits(r)
    for f in far:
        line_with(r, str(f))
    # piped: the same entry point in this process, its stdout not a terminal
    res = run_cli_inprocess(tmp_path / "home", *args, "--out", tmp_path / "c2", check=False)
    r = Output(res.exit_code, res.stdout, res.stderr)
    plain(r)
    for f in far:
        line_with(r, str(f))
    line_with(r, "zero-shot objective", "composed", "evaluations")
