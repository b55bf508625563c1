"""The baselines a searched subnet is compared with: the same widths from random init
trained from scratch, and Torch-Pruning (L1 magnitude or Taylor pruning to the budget).

Each baseline becomes an ordinary subnet file (:func:`baseline_subnet`), so the one
fine-tune and measuring code treats it like any extracted subnet.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from cells import log
from torch import nn
from widthsearch.evaluate import SubnetRecord, finetune_subnet
from widthsearch.evaluate.measure import counted_macs
from widthsearch.recipes.recipe import Recipe
from widthsearch.supernet.checkpoint import build_supernet

SCRATCH = "scratch-uniform"
PRUNING = "torch-pruning"


def baseline_subnet(
    module: nn.Module,
    *,
    widths: Mapping[str, int],
    meta: Mapping[str, Any],
    macs: int,
    params: int,
    full_macs: int,
    full_params: int,
    inheritance: Mapping[str, Any],
    strategy: str,
    recipe: Recipe,
    budget_macs: int | None = None,
) -> dict[str, Any]:
    """The subnet payload (:func:`~widthsearch.evaluate.save_subnet`) of a network no search
    chose: no supernet, no search score."""
    return SubnetRecord(
        module=module,
        widths=widths,
        meta=meta,
        inheritance=inheritance,
        macs=macs,
        params=params,
        full_macs=full_macs,
        full_params=full_params,
        recipe=recipe.to_dict(),
        strategy=strategy,
        budget_macs=budget_macs,
    ).to_payload()


def random_init_subnet(
    meta: Mapping[str, Any], widths: Mapping[str, int], recipe: Recipe, *, seed: int, label: str
) -> dict[str, Any]:
    """A subnet payload with fresh random weights (the from-scratch baselines)."""
    torch.manual_seed(seed)
    sn = build_supernet(dict(meta))
    cfg = sn.space.validate(widths)
    return baseline_subnet(
        sn.extract(cfg, side="left"),
        widths=cfg,
        meta=sn.meta,
        macs=sn.macs(cfg),
        params=sn.params(cfg),
        full_macs=sn.macs(),
        full_params=sn.params(),
        inheritance={"chosen": "random-init", "scores": {}},
        strategy=label,
        recipe=recipe,
    )


def train_from_scratch(
    init: Path, out: Path, *, epochs: int, lr: float, seed: int, eval_images: int = 1000
) -> dict[str, Any]:
    """Plain training through the fine-tune loop (SGD + cosine, no teacher), resumable."""
    ckpt = out.with_name(out.stem + ".ckpt.pt")
    return finetune_subnet(
        init,
        out=out,
        epochs=epochs,
        lr=lr,
        teacher=None,
        seed=seed,
        eval_images=eval_images,
        resume=ckpt.is_file(),
        progress=False,
        log=lambda line: log(f"  {out.stem}: {line}"),
    )


# ---- Torch-Pruning --------------------------------------------------------------------------


PRUNING_IMPORTANCE = ("l1", "taylor")


def prune_to_budget(
    model: nn.Module,
    meta: Mapping[str, Any],
    budget: int,
    *,
    importance: str = "l1",
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]] = (),
    global_ranking: bool = False,
) -> dict[str, Any]:
    """Torch-Pruning of ``model``, the ratio bisected to the widest net <= budget.

    ``importance``: ``"l1"``, the L1 norm of each channel's weights (``MagnitudeImportance``);
    ``"taylor"``, |weight x gradient| summed over each dependency group
    (``GroupTaylorImportance``), the gradient of the cross-entropy over ``batches`` of
    training data (``(images, labels)``, the network in eval mode). ``global_ranking``:
    channels compete across layers (``global_pruning``), so the MACs can stop nearer the
    budget (not always: the ratio is bisected and MACs do not fall evenly with it); otherwise
    every group loses the same share and the MACs move in steps.

    Returns the pruned module, the ratio, its widths per supernet group and the check that
    those widths describe it exactly (same tensor shapes as the supernet's extraction, same
    MACs and params as the cost model), which is what lets the shared fine-tune and measure
    code treat it as any other subnet.
    """
    import torch_pruning as tp

    if importance not in PRUNING_IMPORTANCE:
        raise ValueError(f"importance must be one of {PRUNING_IMPORTANCE}, not {importance!r}")
    example = torch.zeros(
        1, int(meta["in_chans"]), int(meta["input_size"]), int(meta["input_size"])
    )
    grads: list[torch.Tensor | None] = []
    if importance == "taylor":
        model = copy.deepcopy(model).eval()
        model.zero_grad()
        seen = 0
        for images, labels in batches:
            F.cross_entropy(model(images), labels, reduction="sum").backward()
            seen += len(labels)
        if not seen:
            raise ValueError("Taylor importance needs batches of training data")
        grads = [None if p.grad is None else p.grad / seen for p in model.parameters()]

    def prune(ratio: float) -> nn.Module:
        pruned = copy.deepcopy(model).eval()  # a deep copy drops .grad: put it back
        for param, grad in zip(pruned.parameters(), grads, strict=False):
            param.grad = None if grad is None else grad.clone()
        pruner = tp.pruner.BasePruner(
            pruned,
            example,
            importance=(
                tp.importance.MagnitudeImportance(p=1)
                if importance == "l1"
                else tp.importance.GroupTaylorImportance()
            ),
            pruning_ratio=ratio,
            global_pruning=global_ranking,
            ignored_layers=_classifiers(pruned, int(meta["num_classes"])),
        )
        pruner.step()
        pruned.zero_grad(set_to_none=True)
        return pruned

    # MACs fall as the ratio grows: keep MACs(hi) <= budget < MACs(lo). Not 0.99: a ratio
    # that would empty a layer makes Torch-Pruning skip it (nothing pruned at all)
    lo, hi = 0.0, 0.9
    if counted_macs(prune(hi), example) > budget:
        raise ValueError(f"Torch-Pruning cannot reach {budget} MACs")
    for _ in range(20):
        mid = (lo + hi) / 2
        if counted_macs(prune(mid), example) <= budget:
            hi = mid
        else:
            lo = mid
    pruned = prune(hi)
    sn = build_supernet(any_width(meta))
    widths = {g.name: int(pruned.get_submodule(g.name).out_channels) for g in sn.space.searchable}
    cfg = sn.space.validate(widths)
    shapes = {k: tuple(v.shape) for k, v in sn.extract(cfg).state_dict().items()}
    same_shapes = shapes == {k: tuple(v.shape) for k, v in pruned.state_dict().items()}
    macs = counted_macs(pruned, example)
    params = sum(p.numel() for p in pruned.parameters())
    verified = same_shapes and macs == sn.macs(cfg) and params == sn.params(cfg)
    return {
        "module": pruned,
        "ratio": hi,
        "widths": cfg,
        "meta": dict(sn.meta),
        "macs": int(macs),
        "params": int(params),
        "verified": bool(verified),
        "full_macs": int(sn.macs()),
        "full_params": int(sn.params()),
    }


def any_width(meta: dict[str, Any]) -> dict[str, Any]:
    """``meta`` with every channel count valid: as many bins as the widest group has
    channels."""
    probe = build_supernet({**dict(meta), "bins": 1, "min_bins": 1, "round_to": 1})
    widest = max(g.max_channels for g in probe.space.searchable)
    return {**dict(meta), "bins": widest, "min_bins": 1, "round_to": 1}


def _classifiers(model: nn.Module, num_classes: int) -> list[nn.Module]:
    """The layers that output the classes (any model's head): their outputs stay."""
    heads = [
        m
        for m in model.modules()
        if isinstance(m, nn.Linear | nn.Conv2d)
        and (m.out_features if isinstance(m, nn.Linear) else m.out_channels) == num_classes
    ]
    if not heads:
        raise ValueError(f"no layer of the model outputs its {num_classes} classes")
    return heads
