"""QLoRA on SmolLM2-135M-Instruct: a LoRA trained on the NF4 base, merged and composed.

1. The base: SmolLM2 in bfloat16, quantized by transformers with bitsandbytes (NF4, double
   quantization: the QLoRA recipe; compute dtype float32, as bf16 matmuls are slow on CPUs
   without bf16 units) and saved.
2. The adapter: LoRA r=8 on every Linear layer, trained with PEFT on that 4-bit model (CPU) on
   the ``uppercase`` task for ``--steps`` steps; loss on the output tokens.
3. Merge, each contender in its own process (peak RSS is its own): lorahive to bf16,
   lorahive re-quantized to NF4, PEFT's 4-bit path (load with bitsandbytes, ``PeftModel``,
   ``merge_and_unload``, save) and PEFT on the dequantized model (``model.dequantize()``
   first). Outputs are compared tensor by tensor.
4. What survives: per projection type, the relative error of the delta after re-quantization
   and the quantization gap against the original weights (the float32 SmolLM2 the bf16 base
   was cast from), and the task loss of each merged model (also one merged into the original
   weights) on held-out examples beside the unmerged adapter's.
5. Composing: ``load_base`` + ``Composer`` on the float base and on the 4-bit base, resident
   model bytes, peak RSS and seconds per objective evaluation.

    python -m benchmarks.qlora                       # quiet machine: 60 steps, 3 reps
    python -m benchmarks.qlora --steps 3 --n-eval 16 --reps 1 --evals 2   # smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks.smollm2 import CACHE, MODEL_ID, smollm2_dir

ROOT = CACHE / "qlora"
WORK = Path(os.environ.get("LORAHIVE_BENCH_TMP", "/tmp/lorahive-bench-qlora"))
TASK = "uppercase"
CONTENDERS = ("import", "lorahive-bf16", "lorahive-nf4", "peft-nf4", "peft-dequantized")


def nf4_dir() -> Path:
    """SmolLM2 NF4 from bf16 weights (double quantization, compute float32), made once with
    bitsandbytes."""
    out = ROOT / "smollm2-nf4"
    if (out / "model.safetensors").exists():
        return out
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    from lorahive.hub.atomic import atomic_directory

    src = smollm2_dir()
    cfg = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                             bnb_4bit_use_double_quant=True,
                             bnb_4bit_compute_dtype=torch.float32)
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.bfloat16,
                                                 quantization_config=cfg, device_map="cpu")
    with atomic_directory(out, overwrite=True) as tmp:
        model.save_pretrained(tmp)
        AutoTokenizer.from_pretrained(src).save_pretrained(tmp)
    return out


def _loss(model, tok, examples, batch: int = 8) -> float:
    """Mean output-token loss of ``model`` on ``examples``."""
    from lorahive.compose.composer.examples import encode_causal
    from lorahive.compose.composer.finetune import output_token_loss

    total, n = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(examples), batch):
            enc = encode_causal(tok, examples[i:i + batch], max_length=96)
            total += float(output_token_loss(model, enc.input_ids, enc.attention_mask,
                                             enc.labels)) * len(examples[i:i + batch])
            n += len(examples[i:i + batch])
    return total / n


def train_adapter(base: Path, steps: int, batch: int, lr: float, seed: int = 0) -> Path:
    """LoRA r=8 on all Linear layers of the 4-bit model (QLoRA), trained as the composer's
    task adapters are (``train_task_adapters.fit``), cached per step count."""
    out = ROOT / f"adapter-{TASK}-{steps}"
    if (out / "adapter_model.safetensors").exists():
        return out
    import random

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from benchmarks.tasks import build
    from lorahive.compose.composer.finetune import fit

    tok = AutoTokenizer.from_pretrained(base)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32, device_map="cpu")
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0,
                                             target_modules="all-linear", task_type="CAUSAL_LM"))
    model.train()
    examples = build(TASK, steps * batch, seed)
    random.Random(seed).shuffle(examples)
    losses, seconds = fit(model, tok, examples, batch, lr, max_length=96,
                          on_step=lambda i, n, loss: print(f"  step {i}/{n} loss {loss:.3f}",
                                                           flush=True))
    model.peft_config["default"].base_model_name_or_path = MODEL_ID
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    (tmp / "train.json").write_text(json.dumps(
        {"task": TASK, "steps": steps, "batch": batch, "lr": lr, "seconds": round(seconds, 1),
         "losses": losses}, indent=2))
    tmp.rename(out)
    return out


# merge contenders, one process each -----------------------------------------------------
def _merge(kind: str, base: Path, adapter: Path, out: Path) -> None:
    if kind == "lorahive-bf16":
        from lorahive.compose.merge import merge_into_base
        from lorahive.hub.peft_format import load_peft

        merge_into_base(base, [load_peft(adapter)], out, device="cpu")
    elif kind == "lorahive-nf4":
        from lorahive.compose.merge import merge_into_base
        from lorahive.hub.peft_format import load_peft

        merge_into_base(base, [load_peft(adapter)], out, device="cpu", requantize="nf4")
    elif kind in ("peft-nf4", "peft-dequantized"):
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(base, device_map="cpu")
        if kind == "peft-dequantized":
            model = model.dequantize()
        merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
        # transformers 5.24 cannot revert the bitsandbytes loading conversion on save
        # (NotImplementedError); there is nothing to revert for Llama's key names
        merged.save_pretrained(out, save_original_format=False)


def peak_rss_mb() -> float:
    """This process's own peak RSS. ``getrusage``'s ``ru_maxrss`` survives ``exec`` on Linux,
    so a child started by a large parent would report the parent's size; ``VmHWM`` is the
    high-water mark of the child's own memory."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def merge_child(kind: str, base: Path, adapter: Path, out: Path) -> None:
    import peft  # noqa: F401  (same imports for every contender: RSS compares work)
    import transformers  # noqa: F401

    import lorahive.compose.merge  # noqa: F401

    t = time.perf_counter()
    if kind != "import":
        _merge(kind, base, adapter, out)
    wall = time.perf_counter() - t
    print(json.dumps({"wall": wall, "rss_mb": peak_rss_mb()}))


def _child(args: list[str], threads: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    r = subprocess.run([sys.executable, "-m", "benchmarks.qlora", *args], capture_output=True,
                       text=True, env=env)
    if r.returncode:
        raise SystemExit(f"{' '.join(args)} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def _dir_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.iterdir() if f.is_file()) / 1e6


def compare(a: Path, b: Path) -> tuple[int, int, float]:
    """(identical tensors, tensors, max |a - b| over float tensors of equal shape)."""
    from safetensors.torch import load_file

    x, y = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    same, worst = 0, 0.0
    for k in x.keys() & y.keys():
        if torch.equal(x[k], y[k]):
            same += 1
        elif x[k].is_floating_point() and x[k].shape == y[k].shape:
            worst = max(worst, float((x[k].float() - y[k].float()).abs().max()))
    return same, len(x.keys() | y.keys()), worst


# composing --------------------------------------------------------------------------------
def compose_child(base: Path, cands: list[str], evals: int) -> None:
    import numpy as np

    from benchmarks.tasks import few_shot_split
    from lorahive.compose.composer import Composer, resolve_candidates
    from lorahive.compose.composer.linear4 import resident_bytes
    from lorahive.compose.composer.model import load_base

    shots, _ = few_shot_split(TASK, 5, 0)
    t = time.perf_counter()
    bm = load_base(base, "cpu", "float32")
    load_s = time.perf_counter() - t
    comp = Composer(bm, resolve_candidates(cands), shots, mode="delta")
    W = np.random.default_rng(0).uniform(-1.5, 1.5, (evals, len(cands)))
    t = time.perf_counter()
    for w in W:
        comp.score(w[None])
    per_eval = (time.perf_counter() - t) / evals
    print(json.dumps({"resident_mb": resident_bytes(bm.model) / 1e6, "load_s": load_s,
                      "s_per_eval": per_eval, "rss_mb": peak_rss_mb()}))


def random_candidates(base: Path, n: int) -> list[Path]:
    """Further candidates of the trained adapter's shape (random factors: memory only)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    outs = []
    for i in range(n):
        out = ROOT / f"random-{i}"
        if not (out / "adapter_model.safetensors").exists():
            torch.manual_seed(100 + i)
            model = AutoModelForCausalLM.from_pretrained(base, device_map="cpu")
            model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16,
                                                     target_modules="all-linear",
                                                     init_lora_weights=False))
            model.peft_config["default"].base_model_name_or_path = MODEL_ID
            model.save_pretrained(out)
        outs.append(out)
    return outs


# report -----------------------------------------------------------------------------------
def survival_table(report) -> None:
    groups: dict[str, list] = defaultdict(list)
    for r in report.modules:
        groups[r.key.removesuffix(".weight").rsplit(".", 1)[-1]].append(r)
    print("\n| module type | n | ‖Δ‖/‖W‖ | gap/‖Δ‖ | rel. error of Δ after NF4 "
          "(median, min-max) | codes changed | modules > 0.5 |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"):
        rows = groups.get(name)
        if not rows:
            continue
        err = [r.rel_error for r in rows]
        print(f"| {name} | {len(rows)} | "
              f"{statistics.median(r.delta_norm / r.weight_norm for r in rows):.4f} | "
              f"{statistics.median(r.gap_to_delta for r in rows):.1f} | "
              f"{statistics.median(err):.3f} ({min(err):.3f}-{max(err):.3f}) | "
              f"{statistics.median(r.codes_changed for r in rows):.2%} | "
              f"{sum(e > 0.5 for e in err)} |")
    s = report.quant.summary()
    print(f"\nall {s['modules']} modules: median relative error {s['median_rel_error']:.3f}, "
          f"{s['modules_mostly_lost']} lose more than half; median gap/delta "
          f"{s['median_gap_to_delta']:.1f}")
    for w in report.warnings:
        print(f"warning: {w}")


def task_losses(base: Path, adapter: Path, merged: dict[str, Path], n_eval: int) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from benchmarks.tasks import build

    tok = AutoTokenizer.from_pretrained(base)
    held = build(TASK, n_eval, seed=1)  # another seed than training
    rows = [("4-bit base", lambda: AutoModelForCausalLM.from_pretrained(base, device_map="cpu")),
            ("4-bit base + adapter, unmerged", lambda: PeftModel.from_pretrained(
                AutoModelForCausalLM.from_pretrained(base, device_map="cpu"), str(adapter)))]
    for name, path in merged.items():
        rows.append((f"merged: {name}", lambda p=path: AutoModelForCausalLM.from_pretrained(
            p, device_map="cpu")))
    print(f"\n| model | {TASK} loss on {n_eval} held-out examples |")
    print("|---|---:|")
    for name, make in rows:
        model = make().eval()
        print(f"| {name} | {_loss(model, tok, held):.4f} |", flush=True)
        del model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=60, help="training steps of the adapter")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--reps", type=int, default=3, help="runs per merge contender (best kept)")
    p.add_argument("--evals", type=int, default=10, help="objective evaluations when composing")
    p.add_argument("--n-eval", type=int, default=64, help="held-out examples for task loss")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--merge-child", nargs=4, default=None)
    p.add_argument("--compose-child", nargs="+", default=None)
    a = p.parse_args()
    if a.merge_child:
        kind, base, adapter, out = a.merge_child
        merge_child(kind, Path(base), Path(adapter), Path(out))
        return
    if a.compose_child:
        torch.set_num_threads(a.threads)
        compose_child(Path(a.compose_child[0]), a.compose_child[2:], int(a.compose_child[1]))
        return
    torch.set_num_threads(a.threads)
    import bitsandbytes
    import peft
    import transformers

    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"{a.threads} thread(s); torch {torch.__version__}, transformers "
          f"{transformers.__version__}, peft {peft.__version__}, bitsandbytes "
          f"{bitsandbytes.__version__}")
    base = nf4_dir()
    print(f"base: {base} ({_dir_mb(base):.0f} MB on disk; float32 original "
          f"{_dir_mb(smollm2_dir()):.0f} MB)", flush=True)
    adapter = train_adapter(base, a.steps, a.batch, a.lr)
    info = json.loads((adapter / "train.json").read_text())
    print(f"adapter: {adapter.name}, {info['steps']} steps in {info['seconds']} s, loss "
          f"{info['losses'][0]:.3f} -> {info['losses'][-1]:.3f}", flush=True)

    WORK.mkdir(parents=True, exist_ok=True)
    outs = {k: WORK / k for k in CONTENDERS}
    print("\n| merge | wall (s) | peak RSS (MiB) | output (MB) |")
    print("|---|---:|---:|---:|")
    for kind in CONTENDERS:
        best = None
        for _ in range(1 if kind == "import" else a.reps):
            shutil.rmtree(outs[kind], ignore_errors=True)
            r = _child(["--merge-child", kind, str(base), str(adapter), str(outs[kind])],
                       a.threads)
            best = r if best is None or r["wall"] < best["wall"] else best
        assert best is not None
        wall = "-" if kind == "import" else f"{best['wall']:.2f}"
        size = "-" if kind == "import" else f"{_dir_mb(outs[kind]):.0f}"
        print(f"| {kind} | {wall} | {best['rss_mb']:.0f} | {size} |", flush=True)
    same, total, _ = compare(outs["lorahive-nf4"], outs["peft-nf4"])
    print(f"\nlorahive-nf4 vs peft-nf4: {same} of {total} tensors identical")
    same, total, worst = compare(outs["lorahive-bf16"], outs["peft-dequantized"])
    print(f"lorahive-bf16 vs peft-dequantized: {same} of {total} tensors identical, "
          f"max |diff| {worst:.2e}")

    from lorahive.compose.merge import merge_into_base
    from lorahive.hub.peft_format import load_peft

    report = merge_into_base(base, [load_peft(adapter)], WORK / "report", device="cpu",
                             requantize="nf4", original=smollm2_dir(), overwrite=True)
    survival_table(report)
    orig, f32 = WORK / "against-original", WORK / "float32"
    merge_into_base(base, [load_peft(adapter)], orig, device="cpu", original=smollm2_dir(),
                    against="original", dtype="bfloat16", overwrite=True)
    r32 = merge_into_base(base, [load_peft(adapter)], f32, device="cpu", dtype="float32",
                          overwrite=True)
    r16 = merge_into_base(base, [load_peft(adapter)], WORK / "bf16-report", device="cpu",
                          overwrite=True)
    for name, rep in (("bf16", r16), ("float32", r32)):
        print(f"16-bit merge to {name}: median relative error of the delta as written "
              f"{rep.quant.summary()['median_rel_error']:.3g}")
    task_losses(base, adapter, {"lorahive float32 (onto the dequantized weights)": f32,
                                "lorahive bf16 (onto the dequantized weights)":
                                outs["lorahive-bf16"],
                                "lorahive bf16, against the original weights": orig,
                                "lorahive nf4": outs["lorahive-nf4"],
                                "peft nf4": outs["peft-nf4"]}, a.n_eval)

    cands = [str(adapter), *map(str, random_candidates(base, 2))]
    print(f"\n| compose base (3 candidates, mode delta, {a.evals} evals) | resident model "
          "(MB) | peak RSS (MiB) | load (s) | s / eval |")
    print("|---|---:|---:|---:|---:|")
    for name, path in (("float32 SmolLM2", smollm2_dir()),
                       ("NF4 SmolLM2, dequantized per layer", base)):
        r = _child(["--compose-child", str(path), str(a.evals), *cands], a.threads)
        print(f"| {name} | {r['resident_mb']:.0f} | {r['rss_mb']:.0f} | {r['load_s']:.1f} | "
              f"{r['s_per_eval']:.2f} |", flush=True)
    shutil.rmtree(WORK, ignore_errors=True)


if __name__ == "__main__":
    main()
