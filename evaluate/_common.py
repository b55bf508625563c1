"""Shared plumbing of the evaluate stage: subnet files, data from recipes."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

# top1 and write_jsonl_atomic are written once, in the supernet; the evaluate modules get them here
from widthsearch.supernet.accuracy import top1  # noqa: F401
from widthsearch.supernet.checkpoint import (
    atomic_save,
    build_supernet,
    load_checkpoint,
    write_jsonl_atomic,  # noqa: F401
)
from widthsearch.supernet.errors import CheckpointError, DataError, WidthsearchError

SUBNET_FORMAT = "widthsearch.subnet"
# 2: no pickled module; the module is rebuilt from meta (model, arguments, space) + widths
SUBNET_VERSION = 2
SUBNET_KEYS = ("state_dict", "widths", "meta")
_NOT_SAVED = ("module", "exports")  # in-memory only: the module is rebuilt on loading


# ---- files ------------------------------------------------------------------------------


def output_path(path: str | os.PathLike[str], *, flag: str = "--out") -> Path:
    """Check an output file path before any work is done (not a folder)."""
    out = Path(path)
    if out.is_dir():
        raise ValueError(f"{flag} {out} is a directory, expected a file path")
    return out


def save_subnet(payload: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write a subnet payload atomically, weights-only loadable.

    The module itself is not saved: its ``state_dict`` (refreshed from ``module`` when the
    payload has one), ``widths`` and ``meta`` (model name, arguments, width-space settings)
    rebuild it (:func:`build_subnet`).
    """
    doc = {k: v for k, v in payload.items() if k not in _NOT_SAVED}
    doc.update(format=SUBNET_FORMAT, version=SUBNET_VERSION)
    if payload.get("module") is not None:
        doc["state_dict"] = payload["module"].state_dict()
    missing = [k for k in SUBNET_KEYS if k not in doc]
    if missing:
        raise ValueError(f"subnet payload lacks {', '.join(missing)}")
    doc["widths"] = plain_widths(doc["widths"])
    atomic_save(doc, path)
    return Path(path)


def build_subnet(meta: Mapping[str, Any], widths: Mapping[str, Any]) -> nn.Module:
    """The architecture of a subnet, untrained: the model of ``meta`` (its registered name,
    arguments and the supernet's space settings) extracted at ``widths``.

    The global RNG is left as it was (building initialises weights).

    Raises:
        KeyError, ValueError, WidthsearchError: ``meta`` or ``widths`` do not describe a model.
    """
    with torch.random.fork_rng(devices=[]):
        sn = build_supernet(dict(meta))
        return sn.extract(sn.space.validate(dict(widths)), side="left")


def read_subnet(path: str | os.PathLike[str], *, trust_pickle: bool = False) -> dict[str, Any]:
    """Load a subnet file (``extract`` or ``finetune`` output): its payload, with ``"module"``
    rebuilt from the description (:func:`build_subnet`) and loaded with the saved weights, in
    eval mode.

    Weights-only: nothing in the file runs. ``trust_pickle`` accepts a file that needs
    unpickling (an older widthsearch file, whose pickled module is then used as it is).

    Raises:
        CheckpointError: missing, corrupt, foreign or (without ``trust_pickle``) pickled
            file, a model that cannot be rebuilt, or weights that do not fit it.
    """
    payload = load_checkpoint(path, kind=SUBNET_FORMAT, trust_pickle=trust_pickle)
    missing = [k for k in SUBNET_KEYS if k not in payload]
    if missing:
        raise CheckpointError(f"{path}: subnet file lacks {', '.join(missing)}")
    module = payload.get("module")
    if module is not None and not isinstance(module, nn.Module):  # only from a trusted pickle
        raise CheckpointError(f"{path}: 'module' is not a torch module")
    if module is None:
        meta = payload["meta"] if isinstance(payload["meta"], Mapping) else {}
        try:
            module = build_subnet(meta, payload["widths"])
        except (KeyError, TypeError, ValueError, WidthsearchError) as exc:
            detail = f"missing {exc}" if isinstance(exc, KeyError) else str(exc)
            raise CheckpointError(
                f"{path}: cannot rebuild its model {meta.get('model')!r} from the file's "
                f"description ({detail})"
            ) from None
    try:
        module.load_state_dict(payload["state_dict"])
    except (RuntimeError, TypeError, AttributeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: weights do not fit its model ({first})") from None
    payload["module"] = module.eval()
    return payload


def load_subnet(path: str | os.PathLike[str], *, trust_pickle: bool = False) -> nn.Module:
    """Open a subnet file safely: the plain module of the original class, weights loaded, in
    eval mode. Nothing in the file runs: it holds weights, widths and the model's registered
    name and arguments, and the module is rebuilt from them.

    Args:
        path: ``extract`` or ``finetune`` output.
        trust_pickle: Also accept a file that needs unpickling (older widthsearch files);
            prints one warning line naming it. Only for files you trust.

    Raises:
        CheckpointError: see :func:`read_subnet`.
    """
    return read_subnet(path, trust_pickle=trust_pickle)["module"]


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


def model_input(meta: Mapping[str, Any], batch: int = 1) -> Tensor:
    """A zero input of the model's shape (for tracing, counting and timing)."""
    size = int(meta.get("input_size", 28))
    return torch.zeros(batch, int(meta.get("in_chans", 3)), size, size)


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def plain_widths(widths: Mapping[str, Any]) -> dict[str, int]:
    """Widths as a JSON-able ``{str: int}`` (no numpy ints)."""
    return {str(k): int(v) for k, v in widths.items()}
