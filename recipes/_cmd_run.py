"""`widthsearch run [RECIPE] [--out DIR]`: the whole job, one command.

Pretrain the recipe's model when ``[train] init = "pretrain"`` (or reuse ``DIR/full.pt``),
train (or reuse) the supernet, search every strategy of the recipe for every budget,
extract each answer with the best weight inheritance, fine-tune it, measure it, and write
``DIR/report.md`` and ``DIR/pareto.png``. Every stage's output stays in ``DIR`` (supernet.pt,
search.json, subnets/) so a rerun reuses what is finished: the supernet when its training
is complete, the search when that supernet and the recipe's ``[search]`` are unchanged, and
each fine-tuned subnet whose widths are still the search's answer. Answers of the same widths
(strategies often agree) are extracted, fine-tuned and measured once; the later ones' rows
name the first (``same_as``) and share its figures. Under ``torchrun`` the training stages
run data-parallel, rank 0 searches, the distinct answers are extracted and fine-tuned side
by side (one rank each, alone on its device) and rank 0 measures them all.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from widthsearch.recipes._cmd_train import apply_overrides
from widthsearch.recipes._latency_flags import (
    add_latency_flags,
    add_limit_flags,
    constraints_from_args,
)
from widthsearch.recipes._runtime_flags import runtime_options
from widthsearch.recipes.recipe import DEFAULT_RECIPE, Recipe, load_recipe
from widthsearch.supernet.checkpoint import load_checkpoint
from widthsearch.supernet.recipe import with_trained_budgets
from widthsearch.supernet.runtime import barrier, launched_rank, local_runtime, running

if TYPE_CHECKING:
    from widthsearch.search import SearchDocument

# how long the other ranks of a torchrun job wait for rank 0's search (gloo's default: 30 min)
_WAIT_FOR_SEARCH = datetime.timedelta(hours=24)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "run",
        help="train, search, extract, fine-tune, evaluate and report, from one recipe",
        description="The whole job. With no arguments: the default recipe "
        f"({DEFAULT_RECIPE!r}: resnet20 on Fashion-MNIST).",
    )
    p.add_argument("recipe", nargs="?", default=None, help="recipe name or .toml path")
    p.add_argument("--out", help="output folder (default runs/<recipe name>)")
    p.add_argument("--model", help="override [model].name")
    p.add_argument("--data", help="override [data].name")
    p.add_argument("--epochs", type=int, help="override [train].epochs (supernet)")
    p.add_argument("--finetune-epochs", type=int, help="override [finetune].epochs")
    p.add_argument("--strategy", action="append", metavar="S", help="override [search].strategies")
    p.add_argument("--budget", action="append", metavar="B", help="override [search].budgets")
    p.add_argument("--no-latency", action="store_true", help="skip CPU latency measurement")
    add_limit_flags(p)
    add_latency_flags(p)
    p.set_defaults(func=run, trainer=None, seed=None)


def _training_done(
    path: Path,
    recipe: Recipe,
    *,
    kind: str = "widthsearch.supernet",
    epochs: int | None = None,
    trust_pickle: bool = False,
) -> bool:
    """True when ``path`` holds a finished training of this very recipe."""
    if not path.is_file():
        return False
    payload = load_checkpoint(path, kind=kind, trust_pickle=trust_pickle)
    saved = payload.get("recipe") or {}
    sections = ("model", "data", "space", "train")
    if kind == "widthsearch.full" or recipe.train.init == "pretrain":
        sections += ("pretrain",)
    if kind == "widthsearch.supernet":
        recipe = with_trained_budgets(recipe)  # as train_supernet stores it
    ours = recipe.to_dict()
    same = all(saved.get(k) == v for k, v in ours.items() if k in sections)
    needed = recipe.train.epochs if epochs is None else epochs
    return same and int((payload.get("train_state") or {}).get("epoch", 0)) >= needed


def _finished_search(path: Path, settings: dict[str, Any]) -> SearchDocument | None:
    """The search document at ``path`` if it was made with these ``[search]`` settings."""
    from widthsearch.evaluate import read_search

    if not path.is_file():
        return None
    try:
        doc = read_search(path)
    except ValueError:
        return None  # unreadable or not a search document: search again and overwrite it
    return doc if doc.recipe_search == settings else None


def _same_widths(path: Path, widths: Mapping[str, int]) -> bool:
    """True when ``path`` is a subnet file of exactly these widths (a reusable result).

    Read weights-only; a file that is not (an older or foreign one) is redone and replaced.
    """
    from widthsearch.evaluate import SUBNET_FORMAT
    from widthsearch.supernet.errors import CheckpointError

    if not path.is_file():
        return False
    try:
        saved = load_checkpoint(path, kind=SUBNET_FORMAT)["widths"]
    except (CheckpointError, KeyError):
        return False
    if not isinstance(saved, dict):
        return False
    return {k: int(v) for k, v in saved.items()} == {k: int(v) for k, v in widths.items()}


def _budget(answer: Any) -> int | str:
    """An answer's budget as extraction names it: MACs, or a latency in milliseconds."""
    return answer.budget_macs if answer.budget_macs is not None else f"{answer.budget_ms:g}ms"


def _widths_key(answer: Any) -> tuple[tuple[str, int], ...]:
    return tuple(sorted((k, int(v)) for k, v in answer.widths.items()))


def _distinct_answers(doc: SearchDocument) -> dict[str, Any]:
    """One answer per distinct widths, under the tag (file stem) of the first answer that
    has them (strategies often agree: those widths are extracted, fine-tuned and measured
    once)."""
    first: dict[tuple[tuple[str, int], ...], tuple[str, Any]] = {}
    for answer in doc.results:
        first.setdefault(_widths_key(answer), (f"{answer.strategy}-{_budget(answer)}", answer))
    return dict(first.values())


def _search(
    recipe: Recipe,
    args: argparse.Namespace,
    sn: Any,
    payload: Mapping[str, Any],
    checkpoint: Path,
    search_path: Path,
    reused: bool,
    where: Mapping[str, Any],
) -> SearchDocument:
    """Every strategy for every budget, written to ``search_path``; a finished search of the
    same supernet and ``[search]`` settings is reused as it is (searches are seeded)."""
    from widthsearch.search import (
        build_evaluator,
        resolve_budgets,
        search_options,
        search_widths,
    )
    from widthsearch.supernet.checkpoint import write_json_atomic

    settings = recipe.to_dict()["search"]
    doc = _finished_search(search_path, settings) if reused else None
    if doc is not None:
        print(f"[2/4] search: reusing {search_path}")
        return doc
    constraints = constraints_from_args(args, sn, recipe.search.budgets, settings)
    budgets = resolve_budgets(sn, recipe.search.budgets, constraints=constraints)
    options = search_options(settings, recipe.search.strategies, payload.get("loss_records"))
    evaluator = build_evaluator(sn, payload, runtime=local_runtime(**where))
    print(f"[2/4] search: {', '.join(recipe.search.strategies)} x {len(budgets)} budgets")
    doc = search_widths(
        sn,
        evaluator,
        strategies=recipe.search.strategies,
        budgets=budgets,
        seed=recipe.search.seed,
        options=options,
        supernet_path=str(checkpoint),
        constraints=constraints,
    )
    doc = dataclasses.replace(doc, recipe_search=settings)
    write_json_atomic(doc.to_dict(), search_path)
    return doc


def run(args: argparse.Namespace) -> int:
    from widthsearch.evaluate import (
        evaluate_model,
        extract_subnet,
        finetune_subnet,
        read_search,
        write_report,
    )
    from widthsearch.search import (
        budget_measure,
        get_strategy,
        load_latency_table,
        scoring_data,
    )
    from widthsearch.supernet.checkpoint import load_supernet, write_json_atomic
    from widthsearch.supernet.train import PRETRAIN_NAME, pretrain_network, train_supernet

    recipe = apply_overrides(load_recipe(args.recipe), args)
    if args.finetune_epochs is not None:
        if args.finetune_epochs < 0:
            raise ValueError("--finetune-epochs must be >= 0")
        recipe.finetune.epochs = args.finetune_epochs
    if args.strategy:
        recipe.search.strategies = list(args.strategy)
    if args.budget:
        recipe.search.budgets = list(args.budget)
    for flag in ("latency_table", "max_macs", "max_params", "max_latency"):
        if getattr(args, flag) is not None:  # into the recipe: a reused search must match them
            setattr(recipe.search, flag, getattr(args, flag))
    for name in recipe.search.strategies:
        get_strategy(name)  # unknown names fail before hours of training
    budget_measure(recipe.search.budgets)  # so do bad or mixed budgets and a missing table
    if recipe.search.latency_table:
        load_latency_table(recipe.search.latency_table)
    where = runtime_options(args, recipe.run)
    out = Path(args.out) if args.out else Path("runs") / recipe.name
    checkpoint = out / "supernet.pt"
    started = time.perf_counter()

    # 1. trained network (init = "pretrain") and supernet: reuse finished ones, continue
    #    unfinished ones, or train them
    trust = args.trust_pickle
    say = print if launched_rank() == 0 else lambda *_: None  # once per torchrun job
    reused = pretrain_unchanged = True
    if recipe.train.init == "pretrain":
        full_path = out / PRETRAIN_NAME
        epochs = recipe.pretrain.epochs
        done = _training_done(
            full_path, recipe, kind="widthsearch.full", epochs=epochs, trust_pickle=trust
        )
        if done:
            say(f"[0/4] trained network: reusing {full_path}")
        else:
            reused = pretrain_unchanged = False  # then a supernet of the old one is stale
            say(f"[0/4] trained network: pretraining {recipe.model.name} -> {full_path}")
            pretrain_network(
                recipe, out_dir=out, resume=full_path.is_file(), trust_pickle=trust, **where
            )
    reused = reused and _training_done(checkpoint, recipe, trust_pickle=trust)
    if reused:
        say(f"[1/4] supernet: reusing {checkpoint}")
    else:
        say(f"[1/4] supernet: training {recipe.model.name} on {recipe.data.name} -> {checkpoint}")
        train_supernet(
            recipe,
            out_dir=out,
            resume=checkpoint.is_file() and pretrain_unchanged,
            trust_pickle=trust,
            **where,
        )
    # 2. search (rank 0; the other ranks of a torchrun job wait), then 3. extract and
    #    fine-tune the distinct answers, spread over the ranks (each alone, on its device)
    search_path = out / "search.json"
    with running(**where, timeout=_WAIT_FOR_SEARCH) as job:
        sn, payload = load_supernet(checkpoint, trust_pickle=trust)
        if job.is_main:
            doc = _search(recipe, args, sn, payload, checkpoint, search_path, reused, where)
        barrier(job)
        if not job.is_main:
            doc = read_search(search_path)
        else:
            spread = f", spread over {job.world_size} processes" if job.distributed else ""
            print(
                f"[3/4] extract, fine-tune ({recipe.finetune.epochs} epochs{spread}) and "
                f"evaluate {len(doc.results)} subnets"
            )
        data = scoring_data(payload, sn.meta, where="extract")
        mine = list(_distinct_answers(doc).items())[job.rank :: job.world_size]
        on_my_device = {**where, "device": str(job.device)}
        for tag, answer in mine:
            extracted, tuned = out / "subnets" / f"{tag}.pt", out / "subnets" / f"{tag}-ft.pt"
            if _same_widths(tuned, answer.widths):
                continue  # finished by an earlier run
            extract_subnet(
                (sn, payload),
                search=doc,
                strategy=answer.strategy,
                budget=_budget(answer),
                out=extracted,
                candidates=recipe.finetune.inheritance,
                data=data,
                supernet_path=str(checkpoint),
                log=None,
                **on_my_device,
            )
            finetune_subnet(
                extracted,
                out=tuned,
                epochs=recipe.finetune.epochs,
                lr=recipe.finetune.lr,
                weight_decay=recipe.finetune.weight_decay,
                teacher=checkpoint if recipe.finetune.distill else None,
                seed=recipe.search.seed,
                init=recipe.finetune.init,
                log=None,
                trust_pickle=trust,
                data_parallel=False,
                **on_my_device,
            )
            if job.distributed:
                print(f"      {tag}: fine-tuned by process {job.rank}", flush=True)
        barrier(job)
    if job.rank != 0:
        return 0

    # 3. (cont.) measure every answer on rank 0 alone: latency on an otherwise idle machine
    rows: list[dict[str, Any]] = []
    full: dict[str, Any] | None = None
    measured: dict[str, dict[str, Any]] = {}
    twins = {_widths_key(a): tag for tag, a in _distinct_answers(doc).items()}
    for answer in doc.results:
        tag, twin = f"{answer.strategy}-{_budget(answer)}", twins[_widths_key(answer)]
        figures = measured.get(twin)
        if figures is None:
            figures = evaluate_model(
                out / "subnets" / f"{twin}-ft.pt",
                latency=recipe.eval.latency and not args.no_latency,
                latency_seconds=recipe.eval.latency_seconds,
                full=full is None,
                supernet=checkpoint,
                trust_pickle=trust,
                **where,
            )
            measured[twin] = figures
        full = full or figures.get("full")
        rows.append(
            {
                "strategy": answer.strategy,
                "budget_macs": answer.budget_macs,
                "budget_ms": answer.budget_ms,
                "predicted_latency_ms": answer.latency_ms,
                "score": answer.score,
                "top1": figures["top1"],
                "macs": figures["macs"],
                "params": figures["params"],
                "latency_ms": figures.get("latency_ms"),
                "inheritance": figures.get("inheritance"),
                "evaluations": answer.evaluations,
                "search_seconds": answer.seconds,
                "same_as": twin if twin != tag else None,  # whose files and figures these are
            }
        )
        same = f" (same widths as {twin})" if twin != tag else ""
        print(f"      {tag}: top1 {figures['top1']:.4f}, MACs {figures['macs']}{same}")
    write_json_atomic(rows, out / "results.json")

    # 4. report
    minutes = (time.perf_counter() - started) / 60
    paths = write_report(
        rows,
        out_dir=out,
        title=f"widthsearch: {recipe.name} ({recipe.model.name} on {recipe.data.name})",
        full=full,
        notes=[
            f"recipe {recipe.source}; supernet {recipe.train.trainer}, {recipe.train.epochs} "
            f"epochs; fine-tune {recipe.finetune.epochs} epochs; total {minutes:.1f} min",
            "score = supernet held-out top-1 (mean of left/right, BN recalibrated); "
            "top1 = fine-tuned subnet on the test split",
        ],
    )
    print(f"[4/4] report: {paths['report']} (plot: {paths.get('pareto', 'none')})")
    print(json.dumps({"report": str(paths["report"]), "minutes": round(minutes, 1)}))
    return 0
