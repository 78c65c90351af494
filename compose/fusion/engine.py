"""Fuse N adapters into one: per module, gather the adapters that adapt it, run the method.

Modules may differ between adapters (a module is fused from the adapters that have it) and so
may ranks. Math runs in float32 (or ``compute_dtype``) on the chosen device; the output
adapter's factors are stored in the inputs' dtype on CPU, with scale 1 per module.

Modules stream through a pipeline: one thread reads them (from memory, or from the adapter
files with positioned reads, ``fuse_files``), workers fuse them, and results are handed on in
a fixed order (to memory, or written straight into the output file), a few modules in flight
at a time; a whole fusion never holds the inputs or the outputs at once (a rank budget, which
needs every module's spectrum, keeps the fused modules until it has shared the rank). On CPU
the workers are as many as torch's threads, each running torch on one thread: small SVDs and
QRs gain nothing from a thread team, and a team spin-waits badly on a busy machine. Dense
element-wise methods fuse one module at a time with every thread. Same-shape modules can be
prepared together (one batched QR of their stacked factors; ``batch``), which pays on a GPU;
on CPU, LAPACK works one matrix at a time whatever the batch, so the default batch there is 1.
A module's result never depends on the worker, the batch or the order.
"""

from __future__ import annotations

import contextlib
import warnings
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from lorahive.compose.fusion.budget import allocate_ranks
from lorahive.compose.fusion.core_space import prepare_bases, uses_core_space
from lorahive.compose.fusion.methods import Method, get_method
from lorahive.compose.fusion.terms import Context, Dense, Factors, Fused, Term
from lorahive.hub.adapter import Adapter, LoraModule
from lorahive.hub.devices import resolve_device
from lorahive.hub.errors import (
    BaseModelMismatchError,
    InvalidRequestError,
    ShapeMismatchError,
    UnsupportedAdapterError,
)

GPU_BATCH = 32  # same-shape modules prepared together on a GPU


@dataclass
class FusionResult:
    adapter: Adapter  # from fuse_files: the written adapter's config, tensors on "meta"
    method: str
    params: dict[str, Any]
    weights: list[float]
    ranks: dict[str, int]
    energy: dict[str, float] = field(default_factory=dict)  # rank budget: energy kept


def check_compatible(adapters: Sequence[Adapter]) -> None:
    """Same base model, LoRA-family, no DoRA, same shapes per shared module."""
    if not adapters:
        raise InvalidRequestError("give at least one adapter to fuse")
    for ad in adapters:
        ad.require_lora("fusion")
        if any(m.magnitude is not None for m in ad.modules.values()):
            raise UnsupportedAdapterError(
                "DoRA adapters cannot be fused into one LoRA adapter (their delta depends on "
                "the base weight); merge them into the base with `lorahive merge` instead"
            )
        if ad.config.residual_init:
            warnings.warn(
                f"an input was trained on a residual base ({ad.config.residual_init}); convert "
                "it with `lorahive convert --initial` first or the fused delta is wrong",
                stacklevel=2,
            )
    bases = {ad.base_model for ad in adapters if ad.base_model}
    if len(bases) > 1:
        raise BaseModelMismatchError(
            f"adapters were trained on different base models: {', '.join(sorted(bases))}"
        )
    shapes: dict[str, tuple] = {}
    for ad in adapters:
        for name, m in ad.modules.items():
            key = (m.out_features, m.in_features, m.kind, m.fan_in_fan_out, m.a_shape)
            if shapes.setdefault(name, key) != key:
                raise ShapeMismatchError(
                    f"module {name} has different shapes or layouts across adapters "
                    f"({shapes[name][:2]} vs {key[:2]}); are they for the same base model?"
                )


class ModuleSource(Protocol):
    """Where a fusion reads its inputs: an adapter's layout, and its modules one at a time."""

    adapter: Adapter  # config and modules; tensors may live on the meta device

    def module(self, name: str, device: torch.device, dtype: torch.dtype) -> LoraModule: ...


class _InMemory:
    def __init__(self, adapter: Adapter):
        self.adapter = adapter

    def module(self, name: str, device: torch.device, dtype: torch.dtype) -> LoraModule:
        return self.adapter.modules[name].to(device, dtype)


@dataclass
class _Plan:
    """What to fuse and how, checked before any module is read."""

    method: Method
    params: dict[str, Any]
    weights: list[float]
    layouts: list[Adapter]  # the inputs' configs and module shapes
    names: list[str]  # modules in the order they are fused and written
    batches: list[list[str]]
    rank: int | None
    rank_budget: int | None
    seed: int
    device: torch.device
    compute_dtype: torch.dtype
    workers: int

    @property
    def out_dtype(self) -> torch.dtype:
        first = next((m for ad in self.layouts for m in ad.modules.values()), None)
        return first.A.dtype if first is not None else torch.float32

    def layout(self, name: str) -> LoraModule:
        """The module as the first adapter that has it lays it out (kind, shapes)."""
        return next(ad.modules[name] for ad in self.layouts if name in ad.modules)

    def largest(self, name: str) -> LoraModule:
        """The module's largest possible fused shapes (what an output file reserves)."""
        src = self.layout(name)
        r = max(sum(ad.modules[name].rank for ad in self.layouts if name in ad.modules),
                min(src.out_features, src.in_features))
        return _output_module(src, torch.empty(r, src.in_features, device="meta"),
                              torch.empty(src.out_features, r, device="meta"))


def _plan(adapters: Sequence[Adapter], method: str | Method, weights: Sequence[float] | None,
          params: dict[str, Any] | None, rank: int | None, rank_budget: int | None, seed: int,
          device: str | torch.device, compute_dtype: torch.dtype, workers: int | None,
          batch: int | None) -> _Plan:
    m = method if isinstance(method, Method) else get_method(method)
    check_compatible(adapters)
    w = [1.0] * len(adapters) if weights is None else [float(x) for x in weights]
    if len(w) != len(adapters):
        raise InvalidRequestError(f"{len(w)} weights for {len(adapters)} adapters")
    if rank is not None and rank_budget is not None:
        raise InvalidRequestError("give rank or rank_budget, not both",
                                  params=("rank", "rank_budget"))
    if (rank is not None and rank < 1) or (rank_budget is not None and rank_budget < 1):
        raise InvalidRequestError("ranks must be at least 1")
    bound = m.bind(params or {})
    dev = resolve_device(device)
    names = list(dict.fromkeys(n for ad in adapters for n in ad.modules))
    dense = m.dense or bound.get("space") == "dense"
    if workers is None:
        workers = torch.get_num_threads() if dev.type == "cpu" and not dense else 1
    if batch is None:
        batch = GPU_BATCH if dev.type == "cuda" and uses_core_space(m.family, bound) else 1
    batches = [[n] for n in names]
    if batch > 1:  # same shapes and ranks together, in order of first appearance
        groups: dict[tuple, list[str]] = {}
        for n in names:
            key = tuple((i, tuple(ad.modules[n].A.shape), tuple(ad.modules[n].B.shape))
                        for i, ad in enumerate(adapters) if n in ad.modules)
            groups.setdefault(key, []).append(n)
        batches = [g[i:i + batch] for g in groups.values() for i in range(0, len(g), batch)]
        names = [n for b in batches for n in b]
    return _Plan(m, bound, w, list(adapters), names, batches, rank, rank_budget, seed, dev,
                 compute_dtype, max(1, workers))


def _output_module(src: LoraModule, A: torch.Tensor, B: torch.Tensor) -> LoraModule:
    rank = int(A.shape[0])
    return LoraModule(
        A=A, B=B, scale=1.0, kind=src.kind, fan_in_fan_out=src.fan_in_fan_out,
        a_shape=((rank, *src.a_shape[1:]) if src.a_shape is not None else None),
        b_shape=((src.b_shape[0], rank, *src.b_shape[2:]) if src.b_shape is not None else None),
    )


def output_adapter(modules: dict[str, LoraModule], base: Adapter) -> Adapter:
    """The fused adapter around its modules: the first input's config, plain LoRA, scale 1."""
    cfg = base.config.copy()
    for key in ("rank_pattern", "alpha_pattern", "modules_to_save", "layers_to_transform"):
        cfg.data.pop(key, None)
    cfg.data["target_modules"] = sorted({n.rsplit(".", 1)[-1] for n in modules})
    cfg.data["init_lora_weights"] = True
    return Adapter.from_factors(modules, base_model=base.base_model,
                                task_type=base.config.task_type, base_config=cfg)


def _pipeline(batches: list[list[str]], read: Callable[[list[str]], Any],
              compute: Callable[[Any], Any], workers: int) -> Iterator[Any]:
    """``compute(read(batch))`` for every batch, yielded in order. One thread reads ahead;
    ``workers`` threads compute (the caller's thread when 1); a few batches are in flight."""
    window = 2 * workers + 1
    with contextlib.ExitStack() as stack:
        rd = stack.enter_context(ThreadPoolExecutor(1, thread_name_prefix="lorahive-read"))
        cp = (stack.enter_context(ThreadPoolExecutor(workers, thread_name_prefix="lorahive-fuse"))
              if workers > 1 else None)
        todo = iter(batches)
        inflight: deque[Future] = deque()

        def submit() -> bool:
            b = next(todo, None)
            if b is None:
                return False
            r = rd.submit(read, b)
            inflight.append(r if cp is None else cp.submit(lambda r=r: compute(r.result())))
            return True

        try:
            while len(inflight) < window and submit():
                pass
            while inflight:
                f = inflight.popleft()
                out = compute(f.result()) if cp is None else f.result()
                submit()
                yield out
        except BaseException:
            for f in inflight:
                f.cancel()
            raise


@contextlib.contextmanager
def _torch_threads(n: int | None) -> Iterator[None]:
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _run(plan: _Plan, sources: Sequence[ModuleSource], emit: Callable[[str, LoraModule], None],
         progress: Callable[[str], None] | None) -> dict[str, float]:
    """Fuse every module of the plan; ``emit`` gets each output module in plan order."""
    m, dev, dt = plan.method, plan.device, plan.compute_dtype
    budget = plan.rank_budget is not None
    core = uses_core_space(m.family, plan.params)
    out_dtype = plan.out_dtype

    def read(batch: list[str]) -> list[tuple[str, list[Term]]]:
        return [(name, [Term(src.module(name, dev, dt), w, dev, dt)
                        for src, w in zip(sources, plan.weights, strict=True)
                        if name in src.adapter.modules]) for name in batch]

    def finish(name: str, f: Fused) -> LoraModule:
        fac = f if isinstance(f, Factors) else f.truncated(max(1, min(f.delta.shape)))
        return _output_module(plan.layout(name), fac.A.to("cpu", out_dtype).contiguous(),
                              fac.B.to("cpu", out_dtype).contiguous())

    def compute(items: list[tuple[str, list[Term]]]) -> list[tuple[str, Fused | LoraModule]]:
        bases = (prepare_bases([terms for _, terms in items]) if core and len(items) > 1
                 else [None] * len(items))
        out: list[tuple[str, Fused | LoraModule]] = []
        for (name, terms), b in zip(items, bases, strict=True):
            ctx = Context(name, dev, dt, rank=plan.rank, seed=plan.seed,
                          defer_truncation=budget, n_adapters=len(sources), bases=b)
            f = m.fn(terms, ctx, **plan.params)
            if plan.rank is not None and not budget and (
                    isinstance(f, Dense) or f.rank > plan.rank):
                f = f.truncated(plan.rank)  # --rank applies to every method, not only *svd
            out.append((name, f if budget else finish(name, f)))
        return out

    fused: dict[str, Fused] = {}
    threads = 1 if plan.workers > 1 else None
    with _torch_threads(threads):
        for items in _pipeline(plan.batches, read, compute, plan.workers):
            for name, res in items:
                if budget:
                    fused[name] = res  # type: ignore[assignment]
                else:
                    emit(name, res)  # type: ignore[arg-type]
                if progress:
                    progress(name)
    if not budget:
        return {}
    kept, energy = allocate_ranks(fused, plan.rank_budget or 0)
    for name in plan.names:
        emit(name, finish(name, kept[name]))
    return energy


def fuse(
    adapters: Sequence[Adapter],
    method: str | Method = "task_arithmetic",
    weights: Sequence[float] | None = None,
    params: dict[str, Any] | None = None,
    rank: int | None = None,
    rank_budget: int | None = None,
    seed: int = 0,
    device: str | torch.device = "auto",
    compute_dtype: torch.dtype = torch.float32,
    progress: Callable[[str], None] | None = None,
    workers: int | None = None,
    batch: int | None = None,
) -> FusionResult:
    """Fuse ``adapters`` with a registered method into one plain-LoRA adapter (scale 1)."""
    plan = _plan(adapters, method, weights, params, rank, rank_budget, seed, device,
                 compute_dtype, workers, batch)
    modules: dict[str, LoraModule] = {}
    energy = _run(plan, [_InMemory(a) for a in adapters], modules.__setitem__, progress)
    order = dict.fromkeys(n for ad in adapters for n in ad.modules)  # the inputs' order
    modules = {n: modules[n] for n in order}
    out = output_adapter(modules, adapters[0])
    return FusionResult(out, plan.method.name, plan.params, plan.weights,
                        {n: mo.rank for n, mo in modules.items()}, energy)


def fuse_files(
    paths: Sequence[str | Path],
    out: str | Path,
    method: str | Method = "task_arithmetic",
    weights: Sequence[float] | None = None,
    params: dict[str, Any] | None = None,
    rank: int | None = None,
    rank_budget: int | None = None,
    seed: int = 0,
    device: str | torch.device = "auto",
    compute_dtype: torch.dtype = torch.float32,
    progress: Callable[[str], None] | None = None,
    extra_files: Callable[[FusionResult], dict[str, bytes]] | None = None,
    workers: int | None = None,
    batch: int | None = None,
) -> FusionResult:
    """Fuse the PEFT adapter directories ``paths`` into a new one at ``out``, streaming.

    Each module is read from the inputs when it is fused and written to ``out`` when it is
    done, so memory holds a few modules, never the adapters. ``out`` appears whole or not at
    all; ``extra_files`` (given the result) adds files to it, such as the lineage sidecar.
    The returned adapter has the written config and shapes, its tensors on ``meta``.
    """
    from lorahive.hub.peft_format import open_peft, peft_writer

    with contextlib.ExitStack() as stack:
        files = [stack.enter_context(open_peft(p)) for p in paths]
        layouts = [f.adapter for f in files]
        plan = _plan(layouts, method, weights, params, rank, rank_budget, seed, device,
                     compute_dtype, workers, batch)
        base = layouts[0]
        largest = {n: plan.largest(n) for n in plan.names}
        with peft_writer(out, largest, plan.out_dtype,
                         config=lambda mods: output_adapter(mods, base).config) as w:
            energy = _run(plan, files, w.add, progress)
            adapter = output_adapter(w.modules, base)
            res = FusionResult(adapter, plan.method.name, plan.params, plan.weights,
                               adapter.ranks, energy)
            if extra_files is not None:
                w.extra_files = extra_files(res)
    return res
