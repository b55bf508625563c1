"""Extraction: a searched width config becomes a plain dense model with inherited weights.

The output file (``SUBNET.pt``) is self-contained and weights-only loadable: the module's
``state_dict``, the widths, the model's registered name and arguments (``meta``), how the
weights were inherited, and where they came from (supernet, strategy, budget, recipe).
``widthsearch.evaluate.load_subnet(path)`` rebuilds the plain module (its own class, no
widthsearch hooks) from them; TorchScript/ONNX exports run without widthsearch.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from widthsearch.search import (
    ScoringData,
    ScoringSizes,
    SearchAnswer,
    SearchDocument,
    scoring_data,
)
from widthsearch.supernet import Supernet
from widthsearch.supernet.checkpoint import load_supernet
from widthsearch.supernet.recipe import stored_recipe
from widthsearch.supernet.runtime import local_runtime

from ._common import SubnetRecord, output_path, save_subnet
from .inheritance import INHERITANCE, choose_inheritance

__all__ = [
    "BUDGET_TOLERANCE",
    "extract_subnet",
    "find_search_result",
    "read_search",
    "read_widths",
]

BUDGET_TOLERANCE = 0.005  # a --budget matches a search result within 0.5 %


# ---- search results and widths files ------------------------------------------------------


def _read_json(path: str | os.PathLike[str], what: str) -> Any:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{what} {path}: no such file")
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{what} {path}: not valid JSON ({type(exc).__name__})") from None


def read_search(path: str | os.PathLike[str]) -> SearchDocument:
    """Load a search JSON (``widthsearch search`` output), checked key by key.

    Raises:
        ValueError: no such file, not JSON, or not a search document (the bad key named).
    """
    return SearchDocument.from_dict(_read_json(path, "search file"), source=f"search file {path}")


def find_search_result(
    doc: SearchDocument,
    *,
    strategy: str,
    budget: str | float | int,
    full_macs: int | None = None,
    source: str = "search file",
) -> SearchAnswer:
    """The answer of ``strategy`` whose ``budget_macs`` matches ``budget`` (within 0.5 %).

    ``budget`` is parsed like the search CLI (``0.5``, ``50%``, ``20M``, ``123456``), as a
    fraction of the document's ``full_macs`` (or ``full_macs``); a latency (``12ms``) matches
    an answer's ``budget_ms`` instead.

    Raises:
        ValueError: no such strategy or budget in the document (the message lists what is).
    """
    from widthsearch.search.budgets import format_macs, parse_budget
    from widthsearch.search.constraints import parse_latency

    mine = doc.answers(strategy)
    if not mine:
        have = ", ".join(doc.strategies) or "none"
        raise ValueError(f"{source} has no results for strategy {strategy!r} (has: {have})")
    ms = parse_latency(budget)
    if ms is not None:  # a latency budget matches budget_ms
        target: float = ms
        wanted = f"latency budget {budget}"

        def value(answer: SearchAnswer) -> float | None:
            return answer.budget_ms

        def label(value: float) -> str:
            return f"{value:.4g}ms"
    else:
        full = int(doc.full_macs or full_macs or 0)
        if full <= 0:
            raise ValueError(f"{source} has no full_macs to read budget {budget!r} against")
        target = parse_budget(budget, full)
        wanted = f"budget {budget} = {target} MACs"

        def value(answer: SearchAnswer) -> float | None:
            return answer.budget_macs

        def label(value: float) -> str:
            return f"{format_macs(int(value))} ({value / full:.1%})"

    candidates = [(float(v), answer) for answer in mine if (v := value(answer)) is not None]
    best = min(candidates, key=lambda c: abs(c[0] - target), default=None)
    if best is None or abs(best[0] - target) > BUDGET_TOLERANCE * target:
        have = ", ".join(label(v) for v, _ in candidates) or "none"
        kind = "latency budgets" if ms is not None else "budgets"
        raise ValueError(f"{source} has no {strategy!r} result at {wanted} (its {kind}: {have})")
    return best[1]


def read_widths(path: str | os.PathLike[str]) -> dict[str, int]:
    """A widths JSON: ``{group: channels}`` or any object with such a ``"widths"`` member."""
    doc = _read_json(path, "widths file")
    if isinstance(doc, Mapping) and isinstance(doc.get("widths"), Mapping):
        doc = doc["widths"]
    if not isinstance(doc, Mapping):
        raise ValueError(f"widths file {path}: expected a JSON object group -> channels")
    return dict(doc)


# ---- extraction ---------------------------------------------------------------------------


def extract_subnet(
    supernet: str | os.PathLike[str] | tuple[Supernet, Mapping[str, Any]],
    *,
    widths: Mapping[str, int] | None = None,
    search: str | os.PathLike[str] | SearchDocument | Mapping[str, Any] | None = None,
    strategy: str | None = None,
    budget: str | float | int | None = None,
    out: str | os.PathLike[str] | None = None,
    candidates: Sequence[str] | None = None,
    data: ScoringData | None = None,
    heldout_images: int | None = None,
    calib_batches: int | None = None,
    batch_size: int | None = None,
    seed: int | None = None,
    supernet_path: str | None = None,
    export_dir: str | os.PathLike[str] | None = None,
    progress: bool | None = None,
    log: Callable[[str], Any] | None = None,
    trust_pickle: bool = False,
    device: str = "auto",
    amp: str = "off",
    channels_last: bool = False,
) -> dict[str, Any]:
    """Extract the subnet of a search result (or of explicit ``widths``) with the best
    weight inheritance, and optionally write it.

    Args:
        supernet: Supernet checkpoint path, or an already loaded ``(supernet, payload)``.
        widths: The width config (instead of ``search``/``strategy``/``budget``).
        search: Search JSON path, :class:`~widthsearch.search.SearchDocument` or its dict;
            with ``strategy`` and ``budget`` picks the answer (budget within 0.5 % of an
            answer's ``budget_macs``).
        strategy: Strategy name in ``search`` (recorded; with ``widths`` just a label).
        budget: Budget as in the search CLI (``0.5``, ``50%``, ``20M``, absolute int).
        out: Write the subnet file here (atomically).
        candidates: Inheritance candidates (default: the recipe's ``[finetune].inheritance``,
            else all of ``left, right, l1, bn``).
        data: Pre-built scoring images (:func:`widthsearch.search.scoring_data`; reuse
            them across many extractions).
        heldout_images, calib_batches, batch_size, seed: Override the recipe's ``[search]``
            scoring sizes.
        supernet_path: Path to record when ``supernet`` is given loaded.
        export_dir: Also export the subnet there (:func:`export_subnet`); the written paths
            are added to the returned dict as ``"exports"`` (not to the file).
        progress: tqdm bars (``None``: only on a terminal).
        log: Called with one line per candidate.
        trust_pickle: Accept a supernet file that needs unpickling (an older file).
        device, amp, channels_last: Where and how the candidates are scored; the supernet
            goes back to its device afterwards and the subnet is returned on the CPU.

    Returns:
        The subnet payload (as written, plus the in-memory ``module``): ``format``,
        ``state_dict``, ``widths``,
        ``inheritance`` ``{"chosen", "scores"}``, ``meta``, ``macs``, ``params``, ...

    Raises:
        CheckpointError: missing/corrupt/foreign/pickled supernet.
        ValueError: strategy/budget not in the search file, widths that do not fit the
            supernet, bad options. All raised before any data is loaded.
    """
    if isinstance(supernet, tuple):
        sn, payload = supernet
        path = str(supernet_path or payload.get("path", ""))
    else:
        path = str(supernet)
        sn, payload = load_supernet(supernet, trust_pickle=trust_pickle)
    meta = dict(sn.meta)
    answer: SearchAnswer | None = None
    if widths is None:
        if search is None or strategy is None or budget is None:
            raise ValueError("give widths, or a search file with a strategy and a budget")
        where = "search results"
        if isinstance(search, SearchDocument):
            doc = search
        elif isinstance(search, Mapping):  # the JSON dict of one
            doc = SearchDocument.from_dict(search, source=where)
        else:
            where = f"search file {search}"
            doc = read_search(search)
        if doc.model and meta.get("model") and doc.model != meta["model"]:
            raise ValueError(
                f"{where} is for model {doc.model!r}, the supernet is {meta['model']!r}"
            )
        answer = find_search_result(
            doc, strategy=strategy, budget=budget, full_macs=sn.macs(), source=where
        )
        widths = answer.widths
        budget_macs: int | None = answer.budget_macs
    else:
        budget_macs = None
        from widthsearch.search.constraints import is_latency

        if budget is not None and not is_latency(budget):
            from widthsearch.search.budgets import parse_budget

            budget_macs = parse_budget(budget, sn.macs())
    try:
        cfg = sn.space.validate(widths)
    except ValueError as exc:
        raise ValueError(f"widths do not fit the supernet: {exc}") from None
    recipe = payload.get("recipe") if isinstance(payload.get("recipe"), Mapping) else {}
    defaulted = candidates is None
    if candidates is None:
        inheritance = stored_recipe(payload, where=path or "supernet").finetune.inheritance
        candidates = list(inheritance or INHERITANCE)
    for name in candidates:
        if name not in INHERITANCE:
            raise ValueError(
                f"unknown weight inheritance {name!r}; valid: {', '.join(INHERITANCE)}"
            )
    runtime = local_runtime(device, amp=amp, channels_last=channels_last)
    if out is not None:
        out = output_path(out)
    if data is None:
        sizes = ScoringSizes.from_recipe(
            recipe,
            heldout_images=heldout_images,
            calib_batches=calib_batches,
            batch_size=batch_size,
            seed=seed,
        )
        data = scoring_data(payload, meta, sizes=sizes, where="extract")
    if defaulted and "right" not in data.sides and len(candidates) > 1:
        # a sandwich-rule supernet never trained its right-aligned slices: no subnet there
        candidates = [name for name in candidates if name != "right"]
    home = next(sn.parameters()).device
    sn.eval()
    try:
        module, inheritance = choose_inheritance(
            runtime.module(sn),
            cfg,
            calib=data.calib_batches,
            heldout=data.heldout_batches,
            candidates=candidates,
            progress=progress,
            log=log,
            runtime=runtime,
        )
    finally:
        sn.to(home, memory_format=torch.contiguous_format)
    module = module.to("cpu", memory_format=torch.contiguous_format)
    result = SubnetRecord(
        module=module,
        widths=cfg,
        meta=meta,
        inheritance=inheritance,
        macs=sn.macs(cfg),
        params=sn.params(cfg),
        full_macs=sn.macs(),
        full_params=sn.params(),
        recipe=recipe,
        supernet=path,
        strategy=strategy if strategy is not None else "widths",
        budget_macs=budget_macs,
        score=None if answer is None else answer.score,
        budget_ms=None if answer is None else answer.budget_ms,
        predicted_latency_ms=None if answer is None else answer.latency_ms,
    ).to_payload()
    if out is not None:
        save_subnet(result, out)
    if export_dir is not None:
        from .export import export_subnet

        result["exports"] = export_subnet(result, export_dir, stem=Path(out).stem if out else None)
    return result
