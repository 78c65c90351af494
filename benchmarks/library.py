"""The candidate library: one LoRA per library task on SmolLM2-135M-Instruct, published into a
lorahive registry of its own with the metadata retrieval and ``--select`` read.

    python -m benchmarks.library build [--tasks a,b] [--jobs 2]   # trains what is missing
    python -m benchmarks.library list                              # what the registry holds

Layout under ``$LORAHIVE_BENCH_CACHE/library`` (default ``~/.cache/lorahive-bench``):

- ``adapters/<task>/``: the PEFT adapter, ``train.json`` (recipe, losses, seconds),
  ``lorahive_examples.jsonl`` (example prompts, one ``{"input", "output", "template"}`` per
  line: the machine-readable copy of the card's examples, for retrieval) and ``README.md``
  (the model card: description, tags, metrics, every instruction template, example prompts);
- ``registry/``: the registry's ``LORAHIVE_HOME``; each adapter is ``library/<task>`` with
  task = the task name, tags ``domain-*``, ``format-*``, ``skill-*``, the description and the
  metrics (validation accuracy, training loss and time). All the files above are published.

Recipe (every adapter alike, fixed seeds): 192 examples of the task (fewer where the corpus
has fewer distinct inputs; then training cycles), one epoch of 24 steps of 8, AdamW lr 2e-3,
r=8, alpha 16 on q_proj and v_proj, loss on the answer tokens only; validation accuracy on 32
further examples of the same task. A finished adapter (its weights on disk) is never trained
again, and a published one (same weights) never published again, so a rerun resumes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks.library_tasks import LIBRARY, TaskSpec
from benchmarks.smollm2 import CACHE, MODEL_ID, smollm2_dir
from lorahive.hub.manifest import EXAMPLES_NAME

ROOT = CACHE / "library"
ADAPTERS = ROOT / "adapters"
HOME = ROOT / "registry"
NAMESPACE = "library"
N_TRAIN, N_VAL, N_CARD = 192, 32, 8
# 24 steps of 8 keep the whole 43-adapter build within about an hour on 2 cores (318k
# training tokens at ~48 tokens/s per worker, two side by side); 40 steps over 320 examples
# (530k tokens) would take about 90 minutes.
STEPS, BATCH, LR, RANK, SEED = 24, 8, 2e-3, 8, 0


def split(spec: TaskSpec, n_train: int = N_TRAIN):
    """(train, validation, card examples): disjoint inputs, fixed by the task's seed."""
    rows = spec.build(n_train + N_VAL + N_CARD, SEED)
    keep = len(rows) - N_VAL - N_CARD
    return rows[:min(n_train, keep)], rows[keep:keep + N_VAL], rows[keep + N_VAL:]


def labels_of(rows) -> list[str] | None:
    from lorahive.compose.composer.evaluate import label_set

    return label_set(rows)


def card(spec: TaskSpec, metrics: dict, examples) -> str:
    """The model card: lorahive's generated card plus the templates and example prompts."""
    from lorahive.hub.modelcard import render_card

    text = render_card(f"{NAMESPACE}/{spec.name}", MODEL_ID, "LORA", task=spec.name,
                       description=spec.description, tags=spec.tags, metrics=metrics)
    lines = ["## Task", "", f"- domain: {spec.domain}", f"- answer format: {spec.format}",
             f"- skill: {spec.skill}", "", "## Instruction templates", "",
             "Placeholders in braces are filled with the example's text; the answer follows "
             "the prompt after one space.", ""]
    for i, t in enumerate(spec.templates):
        lines += [f"{i + 1}.", "", "```text", t, "```", ""]
    lines += ["## Example prompts", "",
              f"Also in `{EXAMPLES_NAME}` (one JSON object per line).", ""]
    for e in examples:
        lines += ["```text", e.input + e.output, "```", ""]
    return text.rstrip() + "\n\n" + "\n".join(lines)


def train_task(name: str, base: str, threads: int) -> dict:
    """Train (if missing) and document one library adapter; runs in a worker process."""
    import torch

    from benchmarks.suite_eval import Predictor, applied, correct
    from benchmarks.train_task_adapters import train_lora
    from lorahive.hub.peft_format import load_peft

    torch.set_num_threads(threads)
    spec = LIBRARY[name]
    out = ADAPTERS / name
    train, val, shown = split(spec)
    if not (out / "adapter_model.safetensors").exists():
        train_lora(Path(base), train, out, steps=STEPS, batch=BATCH, lr=LR, rank=RANK,
                   seed=SEED, extra={"task": name})
    info = json.loads((out / "train.json").read_text())
    if "val_accuracy" not in info:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
        pred = Predictor(model, AutoTokenizer.from_pretrained(base))
        labels = labels_of(train + val)
        longest = max(len(pred.tok(e.output)["input_ids"]) for e in val)
        t0 = time.time()
        with applied(model, load_peft(out)):
            p = pred.predict([e.input for e in val], labels, longest + 2)
        info["val_accuracy"] = sum(correct(p, [e.output for e in val])) / len(val)
        info["val_metric"] = "rank" if labels else "exact"
        info["val_seconds"] = round(time.time() - t0, 1)
        (out / "train.json").write_text(json.dumps(info, indent=2))
    metrics = {"val_accuracy": info["val_accuracy"], "val_metric": info["val_metric"],
               "val_examples": len(val), "train_examples": info["examples"],
               "train_steps": info["steps"], "train_loss_first": info["loss_first"],
               "train_loss_last5": round(info["loss_last5"], 4),
               "train_seconds": info["seconds"]}
    (out / EXAMPLES_NAME).write_text("".join(
        json.dumps({"input": e.input, "output": e.output, "template": e.template}) + "\n"
        for e in shown))
    (out / "README.md").write_text(card(spec, metrics, shown))
    return {"task": name, **metrics}


def registry():
    from lorahive.registry.local import LocalRegistry
    from lorahive.registry.settings import Settings

    HOME.mkdir(parents=True, exist_ok=True)
    return LocalRegistry(Settings(home=HOME))


def publish(reg, name: str, metrics: dict) -> str:
    """Publish ``adapters/<name>`` unless the registry's latest version has the same weights."""
    from lorahive.hub.errors import NotFoundError
    from lorahive.hub.manifest import weights_sha256

    spec = LIBRARY[name]
    path = ADAPTERS / name
    repo = f"{NAMESPACE}/{name}"
    try:
        info = reg.resolve(repo)
        if info.sha256 == weights_sha256(path):
            return f"{info.ref} (already published)"
    except NotFoundError:
        pass
    v = reg.publish(path, repo, task=name, tags=spec.tags, description=spec.description,
                    metrics=metrics)
    return f"{repo}@{v.version}"


def ensure_namespace(reg) -> None:
    from lorahive.hub.errors import ConflictError

    with contextlib.suppress(ConflictError):
        reg.create_namespace(NAMESPACE)


def cost(name: str) -> int:
    """A task's training work, in characters: the longest first keeps both workers busy to
    the end (news articles take four times a word rule's time)."""
    train, _, _ = split(LIBRARY[name])
    return sum(len(e.input) + len(e.output) for e in train[:STEPS * BATCH])


def build(tasks: list[str], jobs: int, threads: int) -> None:
    base = str(smollm2_dir())
    reg = registry()
    ensure_namespace(reg)
    t0 = time.time()
    try:
        with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as pool:
            futures = {pool.submit(train_task, name, base, threads): name
                       for name in sorted(tasks, key=cost, reverse=True)}
            for fut in as_completed(futures):
                name = futures[fut]
                m = fut.result()
                ref = publish(reg, name, {k: v for k, v in m.items() if k != "task"})
                print(f"{name}: val {m['val_metric']} {m['val_accuracy']:.0%}, loss "
                      f"{m['train_loss_first']:.2f} -> {m['train_loss_last5']:.2f}, "
                      f"{m['train_seconds']:.0f} s  -> {ref}  [{time.time() - t0:.0f} s]",
                      flush=True)
    finally:
        reg.close()


def library_dirs() -> list[Path]:
    """The trained library adapters (directories), in task order."""
    return [ADAPTERS / n for n in LIBRARY if (ADAPTERS / n / "adapter_model.safetensors").exists()]


N_TEST = 100


def unseen_split(spec: TaskSpec, n: int = N_TEST) -> list:
    """``n`` test examples of a library task whose inputs are in none of its training,
    validation or card examples (drawn with another seed, then filtered), for the fusion
    curve."""
    train, val, shown = split(spec)
    seen = {e.input for e in train + val + shown}
    return [e for e in spec.build(4 * n + len(seen), SEED + 1) if e.input not in seen][:n]


def curve_tasks(threads: int = 2) -> list:
    """The trained library as ``benchmarks.fusion_curve`` takes it: per task its adapter, its
    validation split and a disjoint test split, scored by one shared SmolLM2 (rank
    classification over the task's labels, else greedy exact match)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from benchmarks.fusion_curve import CurveTask
    from benchmarks.suite_eval import Predictor, applied, correct

    torch.set_num_threads(threads)
    base = smollm2_dir()
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
    pred = Predictor(model, AutoTokenizer.from_pretrained(base))
    out = []
    for d in library_dirs():
        spec = LIBRARY[d.name]
        train, val, _ = split(spec)
        test = unseen_split(spec)
        labels = labels_of(train + val)
        longest = max(len(pred.tok(e.output)["input_ids"]) for e in val + test)

        def scorer(adapter, examples, labels=labels, longest=longest) -> float:
            with applied(model, adapter):
                got = pred.predict([e.input for e in examples], labels, longest + 2)
            return sum(correct(got, [e.output for e in examples])) / len(examples)

        out.append(CurveTask(d.name, d, val, test, scorer))
    return out


def show() -> None:
    reg = registry()
    try:
        page = reg.search(namespace=NAMESPACE, limit=100)
        print(f"{page.total} adapters in {HOME}")
        for a in sorted(page.items, key=lambda a: a.name):
            v = reg.resolve(a.repo)
            acc = v.metrics.get("val_accuracy")
            print(f"{v.ref:40s} {', '.join(a.tags[-3:]):55s}"
                  + (f" val {v.metrics.get('val_metric')} {acc:.0%}" if acc is not None else ""))
    finally:
        reg.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="train what is missing and publish it")
    b.add_argument("--tasks", default=",".join(LIBRARY), help="comma-separated library tasks")
    b.add_argument("--jobs", type=int, default=2, help="adapters trained at once (processes)")
    b.add_argument("--threads", type=int, default=1, help="torch threads per process")
    sub.add_parser("list", help="the published library")
    args = ap.parse_args()
    if args.cmd == "build":
        tasks = [t for t in args.tasks.split(",") if t]
        unknown = sorted(set(tasks) - set(LIBRARY))
        if unknown:
            raise SystemExit(f"unknown library tasks: {', '.join(unknown)}")
        build(tasks, args.jobs, args.threads)
    else:
        show()


if __name__ == "__main__":
    main()
