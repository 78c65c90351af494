"""``lorahive compose``: LoRAHub-style mixing weights for a new task from a few examples."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from lorahive.cli.commands.registry_client import TOKEN_HELP, URL_HELP
from lorahive.cli.output import Col, console, err_console, print_json, print_table
from lorahive.cli.sources import (
    check_outputs,
    output_dir,
    publish_output,
    resolve_sources,
    reuse_output,
    select_refs,
)
from lorahive.hub.errors import InvalidRequestError
from lorahive.hub.lineage import read_sidecar

if TYPE_CHECKING:
    from lorahive.compose.composer import ComposeResult, SearchConfig
    from lorahive.compose.composer.policy import Policy


def _quiet_transformers() -> None:
    """Our progress bar is the one to watch; transformers' weight-loading bars are noise here."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        return
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    # the optimizers nevergrad picks warn about their own settings (COBYLA's RHOEND, cma's
    # missing matplotlib): nothing a user of the search can act on
    warnings.filterwarnings("ignore", category=UserWarning, module=r"(scipy|cma)(\.|$)")


def compose(
    base: Path = typer.Option(..., "--base", help="Base model directory (with tokenizer)."),
    candidates: list[str] = typer.Option(
        [], "--candidates", "-c",
        help="Candidate adapters: directories or registry references ns/name[@version|:alias] "
        "(repeat the option)."),
    select: str | None = typer.Option(
        None, "--select", help="Candidates from the registry: the latest version of each "
        "adapter matching KEY=VALUE pairs separated by commas (keys base_model, task, tag, "
        "text, namespace, peft_type; all of them when retrieval runs, else at most 20), e.g. "
        "task=classification,tag=en."),
    retrieve: int | None = typer.Option(
        None, "--retrieve", show_default=False,
        help="Keep the K candidates whose stored example prompts are most similar to the "
        "examples' inputs (MiniLM, mean cosine similarity), from --candidates and --select, or "
        "from the whole registry when neither is given. Default: 8 when more are given and "
        "all store example prompts; 0: no retrieval."),
    examples: Path = typer.Option(..., "--examples", help="Few-shot examples, JSONL "
                                  '{"input": ..., "output": ...}.'),
    out: Path | None = typer.Option(None, "--out", help="Directory for the composed PEFT adapter."),
    publish: str | None = typer.Option(
        None, "--publish", help="Publish the composed adapter to the registry as ns/name "
        "(with its lineage)."),
    task: str | None = typer.Option(None, "--task", help="Task recorded when publishing."),
    private: bool | None = typer.Option(
        None, "--private/--public", show_default=False,
        help="Visibility of the published adapter (default: the registry decides; a child of "
        "a private parent is private)."),
    url: str | None = typer.Option(None, "--url", help=URL_HELP, show_default=False),
    token: str | None = typer.Option(None, "--token", help=TOKEN_HELP, show_default=False),
    eval_file: Path | None = typer.Option(None, "--eval", help="Held-out JSONL for accuracy."),
    budget: int = typer.Option(40, help="Objective evaluations (nevergrad budget)."),
    optimizer: str = typer.Option("NGOpt", help="Any nevergrad optimizer by name."),
    workers: int = typer.Option(1, help="Weight vectors asked per step, scored in one batch."),
    lorahub: bool = typer.Option(
        False, "--lorahub", help="Start from LoRAHub's procedure: its answer-token objective, "
        "no retrieval, no out-of-fold check, mode ab (options given beside it still apply)."),
    mode: str | None = typer.Option(None, help="ab: mix A and B element-wise (LoRAHub; the "
                                    "default); delta: sum the deltas (exact, any ranks; "
                                    "--route arrow's)."),
    rank: int | None = typer.Option(None, help="delta: output rank (default: max candidate "
                                    "rank; with --route, the routed candidates' ranks "
                                    "summed, exact)."),
    route: str | None = typer.Option(
        None, "--route", help="arrow: no search; per module, weight the candidates by Arrow "
        "routing of the shots' tokens (training-free, gradient-free, no objective "
        "evaluations)."),
    top_k: int = typer.Option(3, "--top-k", help="--route arrow: candidates each token is "
                              "routed to (PEFT's default)."),
    temperature: float = typer.Option(1.0, help="--route arrow: softmax temperature of the "
                                      "routing scores."),
    l1: float = typer.Option(0.05, help="L1 coefficient on mean |w|."),
    lower: float = typer.Option(-1.5, help="Lower bound of each weight."),
    upper: float = typer.Option(1.5, help="Upper bound of each weight."),
    init: float = typer.Option(0.0, help="Initial weight."),
    seed: int = typer.Option(42, help="Seed of the search."),
    batch_size: int | None = typer.Option(
        None, "--batch-size", help="Examples per loss batch (LoRAHub's; default: all)."),
    objective: str | None = typer.Option(
        None, show_default=False,
        help="answer: LoRAHub's loss on the answer tokens; label: cross-entropy over the "
        "label set's sequence log-likelihoods (rank classification); or a custom "
        "module:function (LossInputs -> [K] tensor). Default: label when the examples' "
        "outputs repeat (at least two distinct, one of them seen twice), else answer."),
    labels: list[str] = typer.Option(
        [], "--labels", help="The label set of --objective label, each exactly as an output "
        "is written (repeat the option; default: the examples' distinct outputs)."),
    folds: int | None = typer.Option(
        None, "--folds", show_default=False,
        help="Check out of fold first: search on all shots but one fold, score on that fold, "
        "K times (K >= the number of shots: leave-one-out; with a label objective the folds "
        "are stratified by label and a label's only example is never held out); nothing is "
        "written when no mix beats the base model there (exit status 3). Where every "
        "example it could hold out has one label it could pass no mix: nothing is searched "
        "or written. Default: no check (5 is leave-one-out on five examples)."),
    write_anyway: bool = typer.Option(
        False, "--write-anyway", help="With --folds: write (and publish) the mix even when "
        "it does not beat the base model out of fold, or when the check could pass no mix."),
    fine_tune: int = typer.Option(
        0, "--fine-tune", metavar="STEPS", help="After the search, train the composed "
        "adapter on the examples for STEPS full-batch AdamW steps (not gradient-free; the "
        "card and lineage say so; 30 is the 5-example fine-tune of docs/benchmarks.md). "
        "Causal models in float32. Default 0: none."),
    fine_tune_lr: float | None = typer.Option(
        None, "--fine-tune-lr", show_default=False,
        help="Learning rate of --fine-tune (default 1e-3)."),
    fresh: bool = typer.Option(
        False, "--fresh", help="Search again even when an earlier run with the same "
        "candidates, examples and search settings left its search in the cache (reruns that "
        "only add --write-anyway, --fine-tune, --eval or another --out reuse it)."),
    blocks: int = typer.Option(
        1, "--blocks", help="Layer blocks with weights of their own: 1 is one weight per "
        "candidate (LoRAHub); N splits the adapted layers into N contiguous blocks, each "
        "mixed with its own weights (N times as many weights to search; still gradient-free)."),
    prescreen: int | None = typer.Option(
        None, help="Keep the K best candidates scored alone (default: all, capped at "
        "LoRAHub's maximum of 20)."),
    device: str = typer.Option("auto", help="auto, cpu or cuda[:N]."),
    dtype: str = typer.Option("float32", help="Compute dtype: float32 or bfloat16."),
    max_rows: int = typer.Option(64, help="Most sequences in one forward pass."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Find mixing weights of candidate adapters for a new task from a few examples
    (gradient-free, nevergrad; or training-free with --route arrow) and write the composed
    adapter with its lineage."""
    from lorahive.compose.composer import (
        Composer,
        SearchConfig,
        check_candidates,
        compose_params,
        compose_recipe,
        load_candidates,
        load_examples,
    )
    from lorahive.compose.composer.finetune import LR, check_fine_tune, fine_tune_recipe
    from lorahive.compose.composer.folds import blind_reason
    from lorahive.compose.composer.memo import SearchMemo
    from lorahive.compose.composer.mixing import layer_blocks
    from lorahive.compose.composer.model import load_base
    from lorahive.compose.composer.objective import load_objective
    from lorahive.compose.composer.policy import Policy, can_embed, resolve
    from lorahive.compose.composer.session import route_params, search_key

    if route and fine_tune:
        raise InvalidRequestError("--fine-tune trains a searched mix; --route arrow does not "
                                  "search", params=("route", "fine_tune"))
    if fine_tune_lr is not None and not fine_tune:
        raise InvalidRequestError("--fine-tune-lr goes with --fine-tune STEPS",
                                  params="fine_tune_lr")
    fine_tune_lr = LR if fine_tune_lr is None else fine_tune_lr
    if fine_tune < 0 or fine_tune_lr <= 0:
        raise InvalidRequestError("--fine-tune takes a number of steps (0: none) and "
                                  "--fine-tune-lr a positive rate", params="fine_tune")
    cfg = SearchConfig(optimizer=optimizer, budget=budget, workers=workers, lower=lower,
                       upper=upper, init=init, seed=seed)
    check_outputs(out, publish)
    shots = load_examples(examples)
    if route:  # no search: nothing for the policy to choose
        if retrieve is not None and retrieve < 1:
            raise InvalidRequestError("retrieve must be at least 1", params="retrieve")
        policy = Policy(_check_route(route, mode, folds, blocks, objective, prescreen,
                                     labels, lorahub), None, None, None, retrieve)
    else:
        policy = resolve(shots, lorahub=lorahub, mode=mode, objective=objective,
                         labels=labels, folds=folds, retrieve=retrieve)
    mode = policy.mode
    explicit = bool(retrieve)
    pool_all = explicit or (policy.auto_retrieve and can_embed())
    items = list(candidates) + (select_refs(select, url, token, None if pool_all else 20)
                                if select else [])
    if not items and explicit:
        items = select_refs(None, url, token, None)
    if not items:
        raise InvalidRequestError("give candidates with --candidates and/or --select")
    sources = resolve_sources(items, url, token)
    ranking = None
    if policy.retrieve is not None:
        sources, ranking = _retrieve(sources, shots, policy.retrieve, policy)
    cands = load_candidates([(s.ref, s.path, s.sha256, s.version) for s in sources])
    held_out = load_examples(eval_file) if eval_file is not None else None
    obj = load_objective(policy.objective)
    label_list = policy.labels
    folds = policy.folds  # a bad --folds was refused by resolve, before the model loads
    # before the model loads: fail fast on mismatched candidates and impossible blocks
    layer_blocks(check_candidates(cands, mode), blocks)
    record = {"base": str(base), "dtype": dtype, "device": device,
              "objective_fn": policy.objective, "select": select}
    if ranking is not None:
        # scores only: the lineage never names adapters of the pool that were not kept (the
        # registry hides parents a reader may not see, and these are not parents)
        scores = {r.ref: r.score for r in ranking}
        record.update(retrieve=policy.retrieve, retrieval_pool=len(ranking),
                      retrieval_scores=[scores[s.ref] for s in sources])
    if route:
        params = route_params(top_k, temperature, rank=rank, examples=shots,
                              held_out=held_out, record=record)
    else:
        params = compose_params(mode, cfg, l1=l1, batch_size=batch_size, rank=rank,
                                prescreen=prescreen, examples=shots, held_out=held_out,
                                record=record, folds=folds or None, labels=label_list,
                                blocks=blocks)
    recipe = compose_recipe(route or mode, cands, params)
    if fine_tune:
        recipe = fine_tune_recipe(recipe, fine_tune, fine_tune_lr)
    if reuse_output(out, recipe):
        _finish_earlier_run(out, publish, url, token, task, private, json_out)
        return
    if policy.blind_to is not None and not write_anyway and not fine_tune:
        _refuse_untested(policy, json_out, ranking)  # before the model loads: nothing to do
    memo = None if route else SearchMemo()
    earlier = None if memo is None or fresh else memo.load(search_key(mode, cands, params))
    _quiet_transformers()
    bm = load_base(base, device, dtype)
    if fine_tune:
        check_fine_tune(bm.model, fine_tune)
    if route:
        with Composer(bm, cands, shots, mode="delta", max_rows=max_rows,
                      per_module=True) as comp, err_console.status("routing"):
            result = comp.route(top_k, temperature, rank=rank, held_out=held_out,
                                record=record)
        with output_dir(out) as target:
            result.write(target)
            published = publish_output(target, publish, url, token, task=task,
                                       private=private) if publish else None
        _print_routed(result, out, published, json_out, ranking)
        return
    with Composer(bm, cands, shots, mode=mode, l1=l1, batch_size=batch_size,
                  objective=None if label_list else obj, max_rows=max_rows,
                  labels=label_list, blocks=blocks) as comp:
        for w in comp.warnings:
            err_console.print(f"[yellow]warning:[/yellow] {w}")
        for note in policy.notes:  # the settings chosen for the user, once the inputs passed
            err_console.print(f"[dim]default:[/dim] {note}", soft_wrap=True)
        if policy.blind_to is not None:
            err_console.print("[yellow]warning:[/yellow] out-of-fold check not run: "
                              + blind_reason(policy.blind_to) + "; "
                              + ("fine-tuning from the base model" if fine_tune and
                                 not write_anyway else "the mix is written unchecked, as "
                                 "asked"), soft_wrap=True)
        def run(on_eval=None) -> ComposeResult:
            return comp.run(cfg, rank=rank, prescreen=prescreen, held_out=held_out,
                            record=record, folds=folds or None, on_eval=on_eval, memo=memo,
                            reuse=not fresh)

        if earlier is not None:
            err_console.print(f"[dim]search:[/dim] reusing an earlier run's ({earlier.saved}; "
                              "same candidates, examples and settings); --fresh searches "
                              "again", soft_wrap=True)
            result = run()
        else:
            with Progress(TextColumn("[bold]search"), BarColumn(), MofNCompleteColumn(),
                          TextColumn("best {task.fields[best]}"), TimeElapsedColumn(),
                          console=err_console, transient=json_out) as bar:
                bar_id = bar.add_task("search", total=cfg.budget * (1 + policy.fold_count), best="-")
                result = run(lambda done, _v, best: bar.update(bar_id, completed=done,
                                                               best=f"{best:.4f}"))
        if policy.blind_to is not None:  # recorded on the card: why there is no check
            result.metrics["check_blind_to"] = policy.blind_to
        refused = (result.helps is False or policy.blind_to is not None) and not write_anyway
        if refused and not fine_tune:
            _refuse(result, json_out, ranking)
        if fine_tune:
            with Progress(TextColumn("[bold]fine-tune"), BarColumn(), MofNCompleteColumn(),
                          TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn(),
                          console=err_console, transient=json_out) as bar:
                bar_id = bar.add_task("fine-tune", total=fine_tune, loss="-")
                result = comp.fine_tune(result, fine_tune, fine_tune_lr, held_out=held_out,
                                        from_base=refused,
                                        on_step=lambda i, _n, loss: bar.update(
                                            bar_id, completed=i, loss=f"{loss:.4f}"))
    with output_dir(out) as target:
        result.write(target)
        published = publish_output(target, publish, url, token, task=task,
                                   private=private) if publish else None
    _print_result(result, cfg, out, published, json_out, ranking)


def _check_route(route: str, mode: str | None, folds: int | None, blocks: int,
                 objective: str | None, prescreen: int | None, labels: list[str],
                 lorahub: bool) -> str:
    """The mixing mode, refusing options that mean nothing without a search."""
    if route != "arrow":
        raise InvalidRequestError(f"unknown route {route!r}; the one choice is arrow",
                                  params="route")
    if mode not in (None, "delta"):
        raise InvalidRequestError("--route arrow mixes the deltas (mode delta); drop --mode ab",
                                  params=("route", "mode"))
    for given, name in ((folds, "--folds"), (blocks != 1, "--blocks"),
                        (objective, "--objective"), (prescreen, "--prescreen"),
                        (labels, "--labels"), (lorahub, "--lorahub")):
        if given:
            raise InvalidRequestError(f"{name} shapes a search; --route arrow does not search",
                                      params=("route", name.lstrip("-")))
    return "delta"


def _print_routed(result: ComposeResult, out: Path | None, published: str | None,
                  json_out: bool, ranking: list | None) -> None:
    m = result.metrics
    p = result.lineage.params
    if json_out:
        print_json({"out": str(out) if out else None, "published": published,
                    "retrieval": _ranking_json(ranking), "written": True,
                    "weights": result.weights,
                    "module_weights": dict(zip(p["modules"], result.block_weights,
                                               strict=True)), **m})
        return
    W = result.block_weights
    print_table((Col("candidate"), Col("mean weight", justify="right"),
                 Col("modules routed to", justify="right")), (
        (ref, f"{w:.4f}", f"{sum(1 for b in W if b[ref] > 0)} of {len(W)}")
        for ref, w in sorted(result.weights.items(), key=lambda kv: -kv[1])),
        title="Arrow weights (per module; mean over the modules)")
    _print_retrieved(result, ranking)
    console.print(f"routed without search (training-free: top-k {p['top_k']}, temperature "
                  f"{p['temperature']}, {m['route_seconds']:.2f} s); objective on the shots: "
                  f"zero-shot {result.zero_shot:.4f} -> routed {m['objective']:.4f}")
    if m["objective"] > result.zero_shot:
        console.print("[yellow]warning:[/yellow] the routed mix scores worse than the base "
                      "model on the shots; the candidates may not suit this task")
    _print_outcome(result, out, published)


def _retrieve(sources: list, shots: list, k: int, policy: Policy) -> tuple[list, list | None]:
    """The ``k`` sources whose example prompts are nearest the shots' inputs, and the
    ranking of all of them (printed and recorded). Retrieval chosen by default runs only
    where it can and narrows something: else every source is kept (ranking ``None``) and a
    note says why."""
    import json

    from lorahive.compose.composer.policy import auto_retrieval
    from lorahive.compose.composer.retrieval import MiniLM, retrieve
    from lorahive.hub.manifest import CONFIG_NAME
    from lorahive.hub.modelcard import example_prompts

    prompts = {s.ref: example_prompts(s.path) for s in sources}
    if policy.auto_retrieve:
        runs, note = auto_retrieval(k, len(sources), sum(1 for p in prompts.values() if not p))
        if note:
            policy.notes.append(note)
        if not runs:
            return sources, None

    bases = {}
    for s in sources:
        try:
            cfg = json.loads((s.path / CONFIG_NAME).read_text())
        except (OSError, json.JSONDecodeError):
            cfg = {}
        bases.setdefault(cfg.get("base_model_name_or_path"), []).append(s.ref)
    if len(bases) > 1:
        raise InvalidRequestError(
            "the candidates to retrieve from name several base models ("
            + ", ".join(sorted(str(b) for b in bases)) + "); narrow them with "
            "--select base_model=...")
    by_ref = {s.ref: s for s in sources}
    _quiet_transformers()
    with err_console.status("embedding example prompts"):
        keep, ranking = retrieve([e.input for e in shots], prompts, k, MiniLM())
    missing = [r.ref for r in ranking if r.score is None]
    if missing:
        err_console.print(f"[yellow]warning:[/yellow] {len(missing)} candidate(s) store no "
                          f"example prompts and were not ranked: {', '.join(missing[:5])}"
                          + (" ..." if len(missing) > 5 else ""))
    return [by_ref[r] for r in keep], ranking


NOT_HELPING = 3  # exit status: the out-of-fold check found no mix worth writing


def _refuse(result: ComposeResult, json_out: bool, ranking: list | None) -> None:
    """The check did not pass the mix: say why in one line, write nothing."""
    from lorahive.compose.composer.folds import blind_reason

    cv = result.cross_validation
    assert cv is not None
    if json_out:
        print_json({"out": None, "published": None, "written": False,
                    "retrieval": _ranking_json(ranking), "weights": result.weights,
                    **result.metrics})
    elif cv.blind_to is not None:
        console.print(f"the out-of-fold check cannot pass a mix: {blind_reason(cv.blind_to)}; "
                      "nothing written; --write-anyway writes the mix", soft_wrap=True)
    else:
        console.print(
            f"no mix beats the base model out of fold (loss {cv.objective_out_of_fold:.4f} "
            f"against the base model's {cv.base_objective_out_of_fold:.4f}, {len(cv.folds)} "
            "folds): nothing written; --write-anyway writes the mix", soft_wrap=True)
    raise typer.Exit(NOT_HELPING)


def _refuse_untested(policy: Policy, json_out: bool, ranking: list | None) -> None:
    """The check asked for could hold out one label only, so no mix could pass it: say so
    before searching, write nothing."""
    from lorahive.compose.composer.folds import blind_reason

    assert policy.blind_to is not None
    if json_out:
        print_json({"out": None, "published": None, "written": False,
                    "retrieval": _ranking_json(ranking), "weights": {}, "evaluations": 0,
                    "check_blind_to": policy.blind_to})
    else:
        for note in policy.notes:
            err_console.print(f"[dim]default:[/dim] {note}", soft_wrap=True)
        console.print("nothing searched or written: no mix could pass the out-of-fold check, "
                      "as " + blind_reason(policy.blind_to) + "; add an example of another "
                      "label, or --write-anyway searches and writes the mix unchecked",
                      soft_wrap=True)
    raise typer.Exit(NOT_HELPING)


def _finish_earlier_run(out: Path, publish: str | None, url: str | None, token: str | None,
                        task: str | None, private: bool | None, json_out: bool) -> None:
    """--out already holds this composition (same candidates, examples and settings): publish
    it when asked instead of searching again."""
    side = read_sidecar(out)
    published = publish_output(out, publish, url, token, task=task,
                               private=private) if publish else None
    weights = {p["ref"]: p["weight"] for p in side["lineage"]["parents"]}
    if json_out:
        print_json({"out": str(out), "published": published, "reused": True,
                    "weights": weights, **side.get("metrics", {})})
        return
    console.print(f"{out} already holds this composition (same candidates, examples and "
                  "settings); not searching again")
    if published:
        console.print(f"published {published}")


def _print_result(result: ComposeResult, cfg: SearchConfig, out: Path | None,
                  published: str | None, json_out: bool, ranking: list | None = None) -> None:
    from lorahive.compose.composer.search import KEPT_BEST, KEPT_ZERO

    metrics = result.metrics
    if json_out:
        print_json({"out": str(out) if out else None, "published": published,
                    "retrieval": _ranking_json(ranking),
                    "written": True, "weights": result.weights,
                    **({"block_weights": result.block_weights} if result.blocks > 1 else {}),
                    "trace": result.search.trace, **metrics})
        return
    blocks = result.block_weights if result.blocks > 1 else []
    print_table((Col("candidate"), Col("weight", justify="right"),
                 *(Col(f"block {b}", justify="right") for b in range(len(blocks)))), (
        (ref, f"{w:+.4f}", *(f"{b[ref]:+.4f}" for b in blocks))
        for ref, w in sorted(result.weights.items(), key=lambda kv: -abs(kv[1]))),
        title="mixing weights" + (f" (mean over {len(blocks)} layer blocks, then each "
                                  "block's)" if blocks else ""))
    _print_retrieved(result, ranking)
    best = result.search.best_trace
    marks = sorted({0, len(best) // 4, len(best) // 2, 3 * len(best) // 4, len(best) - 1})
    console.print("objective trace (best so far): " + "  ".join(
        f"#{i + 1} {best[i]:.4f}" for i in marks))
    search = result.search
    console.print(f"zero-shot objective {result.zero_shot:.4f} -> composed {search.objective:.4f} "
                  f"({search.evaluations} evaluations, {search.seconds_per_eval * 1000:.0f} ms "
                  f"each, {cfg.optimizer}, mode {result.lineage.params['mode']})")
    ft = result.lineage.params.get("fine_tune")
    if search.kept == KEPT_BEST:
        console.print(f"kept the best evaluated point (#{search.kept_evaluation}); the "
                      f"optimizer's recommendation scored {search.recommendation_objective:.4f}")
    elif search.kept == KEPT_ZERO:
        console.print("no mix beat the base model alone on the examples (best mix "
                      f"{min(search.trace):.4f}): kept all weights 0" + (
                          "" if ft else ", so the adapter written changes nothing; the "
                          "candidates may not suit this task"))
    else:
        console.print("kept the optimizer's recommendation")
    cv = result.cross_validation
    if cv is not None:
        lone = ("; never held out: the only " + ", ".join(repr(x) for x in cv.lone_labels)
                if cv.lone_labels else "")
        console.print(f"out of fold ({len(cv.folds)} folds{lone}, {cv.evaluations} "
                      "evaluations): "
                      f"composed {cv.objective_out_of_fold:.4f} against the base model's "
                      f"{cv.base_objective_out_of_fold:.4f} (in fold "
                      f"{cv.objective_in_fold:.4f})" + (
                          ("" if cv.blind_to is None else
                           f"; every held-out example is {cv.blind_to!r}, so it passes no mix")
                          + ("" if cv.passes else "; the mix was not used"
                             if ft and ft["start"] == "base" else "; written as asked")))
    if ft:
        start = "the mix" + (", all zero (A drawn afresh)," if ft["redrawn_A"] else "")
        if ft["start"] == "base":
            start = "the base model, as " + (
                "no mix could pass the out-of-fold check" if metrics.get("check_blind_to")
                else "no mix beat it out of fold")
        console.print(f"fine-tuned from {start} (not gradient-free): {ft['steps']} steps, "
                      f"loss {ft['loss_first']:.4f} -> {ft['loss_last']:.4f}; objective "
                      f"{ft['objective_start']:.4f} -> {ft['objective']:.4f}")
    _print_outcome(result, out, published)


def _ranking_json(ranking: list | None) -> list | None:
    """The retrieval ranking as ``--json`` prints it: ``[[ref, score], ...]``."""
    return None if ranking is None else [[r.ref, r.score] for r in ranking]


def _print_retrieved(result: ComposeResult, ranking: list | None) -> None:
    if ranking:
        kept = [r for r in ranking if r.ref in set(result.weights)]
        console.print(f"retrieved {len(kept)} of {len(ranking)} candidates by example-prompt "
                      "similarity: " + ", ".join(f"{r.ref} {r.score:.3f}" for r in kept))


def _print_outcome(result: ComposeResult, out: Path | None, published: str | None) -> None:
    """What every compose prints last: the truncation's energy, held-out accuracy, where the
    adapter went."""
    m = result.metrics
    if result.energy:
        console.print(f"rank {m['rank']}: energy kept min {m['energy_kept_min']:.4f}, "
                      f"mean {m['energy_kept_mean']:.4f}")
    if result.accuracy is not None:
        console.print(f"held-out accuracy ({m['eval_metric']}): {m['eval_accuracy']:.1%} of "
                      f"{m['eval_n']}")
    if out is not None:
        console.print(f"wrote {out}")
    if published:
        console.print(f"published {published}")


def register(app: typer.Typer) -> None:
    app.command()(compose)
