"""Shared plumbing of the evaluate stage: subnet files, atomic writes, data from recipes."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset
from widthsearch.supernet.checkpoint import (
    atomic_save,
    load_checkpoint,
    write_text_atomic,
)
from widthsearch.supernet.errors import CheckpointError, DataError

SUBNET_FORMAT = "widthsearch.subnet"
SUBNET_VERSION = 1
SUBNET_KEYS = ("module", "state_dict", "widths", "meta")


# ---- files ------------------------------------------------------------------------------


def write_jsonl_atomic(entries: Iterable[Mapping[str, Any]], path: str | os.PathLike[str]) -> Path:
    return write_text_atomic("".join(json.dumps(dict(e)) + "\n" for e in entries), path)


def output_path(path: str | os.PathLike[str], *, flag: str = "--out") -> Path:
    """Check an output file path before any work is done (not a folder)."""
    out = Path(path)
    if out.is_dir():
        raise ValueError(f"{flag} {out} is a directory, expected a file path")
    return out


def save_subnet(payload: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write a subnet payload atomically (``state_dict`` refreshed from ``module``)."""
    doc = dict(payload)
    doc.update(format=SUBNET_FORMAT, version=SUBNET_VERSION)
    doc["state_dict"] = doc["module"].state_dict()
    atomic_save(doc, path)
    return Path(path)


def load_subnet(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a subnet file (``extract`` or ``finetune`` output): the payload, module in eval mode.

    Raises:
        CheckpointError: missing, corrupt or foreign file, or one whose weights do not fit
            its module.
    """
    payload = load_checkpoint(path, kind=SUBNET_FORMAT)
    missing = [k for k in SUBNET_KEYS if k not in payload]
    if missing:
        raise CheckpointError(f"{path}: subnet file lacks {', '.join(missing)}")
    module = payload["module"]
    if not isinstance(module, nn.Module):
        raise CheckpointError(f"{path}: 'module' is not a torch module")
    try:
        module.load_state_dict(payload["state_dict"])
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise CheckpointError(f"{path}: weights do not fit the saved module ({first})") from None
    module.eval()
    return payload


# ---- data -------------------------------------------------------------------------------


def recipe_data(recipe: Any, *, where: str = "checkpoint") -> Mapping[str, Any]:
    """The ``[data]`` section of a recipe dict, or a clear error."""
    data = recipe.get("data") if isinstance(recipe, Mapping) else None
    if not isinstance(data, Mapping):
        raise CheckpointError(
            f"{where} has no recipe data settings: cannot rebuild the data splits it was "
            "trained with (save it with save_supernet(..., recipe=recipe.to_dict()))"
        )
    return data


def load_splits(
    recipe: Any,
    meta: Mapping[str, Any],
    *,
    augment: bool = False,
    data: str | None = None,
    test_limit: int | None = None,
    where: str = "checkpoint",
):
    """The seeded splits training used (from the recipe dict), checked against the model.

    Args:
        recipe: Recipe dict stored in the checkpoint (``recipe.to_dict()``).
        meta: Model meta (``in_chans``, ``num_classes``, ``input_size``).
        augment: Augment the training split.
        data: Another dataset name (its test split; the recipe's root is not used for it).
        test_limit: Override the recipe's test limit (``0``: all).

    Returns:
        ``(splits, resize)``: ``resize`` maps a batch to the model's input size.

    Raises:
        CheckpointError: no data settings, or a dataset that does not fit the model.
        DataError: the dataset is missing.
    """
    from widthsearch.supernet.data import data_spec, get_data

    if data is None:
        settings = dict(recipe_data(recipe, where=where))
    else:  # another dataset: only its test split matters, nothing to hold out
        theirs = recipe.get("data") if isinstance(recipe, Mapping) else None
        same = isinstance(theirs, Mapping) and str(theirs.get("name", "")) == data
        settings = dict(theirs) if same else {"name": data, "heldout_size": 0}
    limit = settings.get("test_limit") if test_limit is None else test_limit
    size = int(meta.get("input_size", 28))
    name = str(settings.get("name", "fashion-mnist"))
    # check the shape before loading (or downloading) anything
    _check_spec(
        data_spec(name, synthetic_in_chans=int(meta.get("in_chans", 1)), synthetic_input_size=size),
        meta,
    )
    splits = get_data(
        name,
        root=settings.get("root") or None,
        heldout_size=int(settings.get("heldout_size", 0) or 0),
        seed=int(settings.get("seed", 0) or 0),
        train_limit=int(settings.get("train_limit") or 0) or None,
        test_limit=int(limit or 0) or None,
        augment=augment,
        synthetic_in_chans=int(meta.get("in_chans", 1)),
        synthetic_input_size=size,
    )
    _check_spec(splits.spec, meta)
    return splits, make_resize(splits.spec.input_size, size)


def _check_spec(spec: Any, meta: Mapping[str, Any]) -> None:
    for key in ("in_chans", "num_classes"):
        if key in meta and int(meta[key]) != int(getattr(spec, key)):
            raise CheckpointError(
                f"the model has {key}={meta[key]} but the dataset {spec.name} has "
                f"{getattr(spec, key)}"
            )


def make_resize(data_size: int, model_size: int) -> Callable[[Tensor], Tensor]:
    """Batch transform to the model's input size (identity when they agree)."""
    if data_size == model_size:
        return lambda x: x

    def resize(x: Tensor) -> Tensor:
        return F.interpolate(x, size=(model_size, model_size), mode="bilinear", align_corners=False)

    return resize


def subset_tensors(dataset: Dataset, count: int, *, seed: int = 0) -> tuple[Tensor, Tensor]:
    """A seeded random subset of ``count`` items (all if fewer), stacked as tensors.

    Same selection rule as the search evaluator (``default_rng(seed).permutation``), so with
    the same settings inheritance is scored on the same held-out images as search scores.
    """
    n = len(dataset)  # type: ignore[arg-type]
    if n == 0:
        raise DataError("the data split is empty (heldout_size=0 in the recipe?)")
    order = np.sort(np.random.default_rng(seed).permutation(n)[: min(count, n)])
    items = [dataset[int(i)] for i in order]
    images = torch.stack([torch.as_tensor(x) for x, _ in items])
    labels = torch.as_tensor([int(y) for _, y in items], dtype=torch.int64)
    return images, labels


@torch.no_grad()
def top1(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]]) -> float:
    """Top-1 accuracy of ``model`` (eval mode) over ``(images, labels)`` batches."""
    model.eval()
    correct = total = 0
    for x, y in batches:
        correct += int((model(x).argmax(1) == y).sum())
        total += len(y)
    return correct / total if total else 0.0


def model_input(meta: Mapping[str, Any], batch: int = 1) -> Tensor:
    """A zero input of the model's shape (for tracing, counting and timing)."""
    size = int(meta.get("input_size", 28))
    return torch.zeros(batch, int(meta.get("in_chans", 3)), size, size)


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def plain_widths(widths: Mapping[str, Any]) -> dict[str, int]:
    """Widths as a JSON-able ``{str: int}`` (no numpy ints)."""
    return {str(k): int(v) for k, v in widths.items()}


def human(n: float | None) -> str:
    """``31021952 -> '31.02M'`` (tables)."""
    if n is None:
        return "—"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(int(n))
