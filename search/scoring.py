"""The images subnets are scored on: one builder for search, inheritance choice and reports.

Search ranks width configs and extraction picks a weight inheritance for the chosen one; both
score on the held-out split the supernet's training left out (never the test set), each
candidate after recalibrating BN on un-augmented training images. Building those images in
one place keeps the two in agreement: the same dataset settings (from the recipe stored in
the checkpoint), the same seeded subsets, the same resize to the model's input size, the
same check that the dataset fits the model and the same choice of sides.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset
from widthsearch.supernet import SIDES, CheckpointError, DataError, get_trainer
from widthsearch.supernet.data import DataSplits, batch_resizer, data_spec, get_data
from widthsearch.supernet.recipe import DataSection, Recipe, stored_recipe

__all__ = [
    "ScoringData",
    "ScoringSizes",
    "calibration_batches",
    "load_split_images",
    "recipe_splits",
    "scoring_data",
]


def _has_section(recipe: Any, name: str) -> bool:
    return isinstance(recipe, Mapping) and isinstance(recipe.get(name), Mapping)


def _typed(recipe: Recipe | Mapping[str, Any] | None, where: str = "checkpoint") -> Recipe:
    """A recipe dict stored in a file as a :class:`Recipe` (its defaults where it has none)."""
    if isinstance(recipe, Recipe):
        return recipe
    return stored_recipe({"recipe": recipe}, where=where)


@dataclass(frozen=True)
class ScoringSizes:
    """How many images score a subnet and recalibrate its BN (the recipe's ``[search]``)."""

    heldout_images: int
    calib_batches: int
    batch_size: int
    seed: int

    def __post_init__(self) -> None:
        for name in ("heldout_images", "calib_batches", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    @classmethod
    def from_recipe(
        cls,
        recipe: Recipe | Mapping[str, Any] | None,
        *,
        heldout_images: int | None = None,
        calib_batches: int | None = None,
        batch_size: int | None = None,
        seed: int | None = None,
    ) -> ScoringSizes:
        """The recipe's ``[search]`` sizes (a stored dict or a :class:`Recipe`); arguments
        that are not ``None`` win."""
        search = _typed(recipe).search

        def pick(value: int | None, default: int) -> int:
            return int(value if value is not None else default)

        return cls(
            heldout_images=pick(heldout_images, search.heldout_images),
            calib_batches=pick(calib_batches, search.calib_batches),
            batch_size=pick(batch_size, search.eval_batch_size),
            seed=pick(seed, search.seed),
        )


@dataclass(frozen=True)
class ScoringData:
    """Held-out and calibration images of one supernet, at the model's input size.

    Attributes:
        images, labels: The scored held-out images ``(N, C, H, W)`` and labels.
        calib: BN calibration images (un-augmented training images, disjoint from the scored
            ones; the held-out split only when training used no other).
        fit: More held-out images and labels, disjoint from ``images``, for strategies that
            fit parameters on data (``None`` unless asked for).
        batch_size: Batch size of scoring and calibration.
        sides: The BCNet sides a score averages: both for a BCNet supernet, only the left
            for a sandwich-rule one (its right-aligned slices never trained).
    """

    images: Tensor
    labels: Tensor
    calib: Tensor
    fit: tuple[Tensor, Tensor] | None = None
    batch_size: int = 250
    sides: tuple[str, ...] = SIDES

    @property
    def heldout_batches(self) -> list[tuple[Tensor, Tensor]]:
        return list(
            zip(self.images.split(self.batch_size), self.labels.split(self.batch_size), strict=True)
        )

    @property
    def calib_batches(self) -> list[Tensor]:
        return list(self.calib.split(self.batch_size))


def recipe_splits(
    recipe: Any,
    meta: Mapping[str, Any],
    *,
    augment: bool = False,
    data: str | None = None,
    test_limit: int | None = None,
    where: str = "checkpoint",
) -> tuple[DataSplits, Callable[[Tensor], Tensor]]:
    """The seeded splits a checkpoint's training used, from its stored recipe dict, checked
    against the model before anything is loaded.

    Args:
        recipe: Recipe dict stored in the checkpoint (``recipe.to_dict()``).
        meta: Model meta (``in_chans``, ``num_classes``, ``input_size``).
        augment: Augment the training split.
        data: Another dataset name (its test split; the recipe's root is not used for it).
        test_limit: Override the recipe's test limit (``0``: all).
        where: Names the file in error messages.

    Returns:
        ``(splits, resize)``: ``resize`` maps a batch to the model's input size.

    Raises:
        CheckpointError: no data settings, or a dataset that does not fit the model.
        DataError: the dataset is missing.
    """
    if data is None:
        if not _has_section(recipe, "data"):
            raise CheckpointError(
                f"{where} has no recipe data settings: cannot rebuild the data splits it was "
                "trained with (save it with save_supernet(..., recipe=recipe.to_dict()))"
            )
        settings = _typed(recipe, where).data
    else:  # another dataset: only its test split matters, nothing to hold out
        theirs = _typed(recipe, where).data
        settings = theirs if theirs.name == data else DataSection(name=data, heldout_size=0)
    limit = settings.test_limit if test_limit is None else test_limit
    size = int(meta.get("input_size", 28))
    in_chans = int(meta.get("in_chans", 1))
    name = settings.name
    spec_options = {"synthetic_in_chans": in_chans, "synthetic_input_size": size}
    _check_fits(data_spec(name, **spec_options), meta)  # before loading (or downloading)
    splits = get_data(
        name,
        root=settings.root or None,
        heldout_size=settings.heldout_size,
        seed=settings.seed,
        train_limit=settings.train_limit or None,
        test_limit=int(limit or 0) or None,
        augment=augment,
        **spec_options,
    )
    _check_fits(splits.spec, meta)
    return splits, batch_resizer(splits.spec.input_size, size)


def _check_fits(spec: Any, meta: Mapping[str, Any]) -> None:
    for key in ("in_chans", "num_classes"):
        if key in meta and int(meta[key]) != int(getattr(spec, key)):
            raise CheckpointError(
                f"the model has {key}={meta[key]} but the dataset {spec.name} has "
                f"{getattr(spec, key)}"
            )


def scoring_data(
    payload: Mapping[str, Any],
    meta: Mapping[str, Any],
    *,
    sizes: ScoringSizes | None = None,
    fit: bool = False,
    where: str = "search",
) -> ScoringData:
    """The scoring images of a supernet checkpoint (its loaded payload), from its recipe.

    ``sizes`` default to the recipe's ``[search]`` settings. ``fit`` also keeps as many
    further held-out images for strategies that fit on data.

    Raises:
        CheckpointError: the checkpoint carries no recipe data settings, or they do not fit
            the model.
        DataError: the dataset is missing, training held nothing out, or the held-out split
            is not the one training left out.
    """
    recipe = payload.get("recipe")
    if not _has_section(recipe, "data"):
        raise CheckpointError(
            "checkpoint has no recipe data settings: cannot rebuild the held-out split it was "
            "trained without (save it with save_supernet(..., recipe=recipe.to_dict()))"
        )
    typed = _typed(recipe, where)
    sizes = sizes or ScoringSizes.from_recipe(typed)
    if typed.data.heldout_size < 1:
        raise DataError("the supernet was trained with heldout_size=0: no held-out split to score")
    splits, resize = recipe_splits(recipe, meta, augment=False, where=where)
    stored = payload.get("data") if isinstance(payload.get("data"), Mapping) else {}
    splits.check_heldout(stored.get("heldout_digest"), where=where)
    images, labels = load_split_images(splits.heldout, sizes.heldout_images, seed=sizes.seed)
    extra = None
    if fit and len(splits.heldout) > sizes.heldout_images:  # type: ignore[arg-type]
        fx, fy = load_split_images(
            splits.heldout, sizes.heldout_images, seed=sizes.seed, skip=sizes.heldout_images
        )
        extra = (resize(fx), fy)
    calib_source = splits.train if len(splits.train) else splits.heldout
    calib, _ = load_split_images(
        calib_source, sizes.calib_batches * sizes.batch_size, seed=sizes.seed + 1
    )
    trainer = get_trainer(typed.train.trainer)
    return ScoringData(
        images=resize(images),
        labels=labels,
        calib=resize(calib),
        fit=extra,
        batch_size=sizes.batch_size,
        sides=trainer.sides,
    )


def calibration_batches(
    train: Dataset, recipe: Any, *, resize: Callable[[Tensor], Tensor]
) -> list[Tensor]:
    """BN calibration batches for a network outside a search (a distillation teacher, the
    full width in a report): the training images and sizes search recalibrates with."""
    sizes = ScoringSizes.from_recipe(recipe)
    images, _ = load_split_images(
        train, sizes.calib_batches * sizes.batch_size, seed=sizes.seed + 1
    )
    return [resize(b) for b in images.split(sizes.batch_size)]


def load_split_images(
    dataset: Dataset, count: int, *, seed: int = 0, skip: int = 0
) -> tuple[Tensor, Tensor]:
    """A seeded random subset of ``count`` items (all if fewer) stacked as tensors.

    ``skip`` leaves out the first ``skip`` items of the same seeded order: calls with the
    same seed and ``skip`` = the other's ``count`` give disjoint subsets.
    """
    n = len(dataset)  # type: ignore[arg-type]
    if n == 0:
        raise DataError("the data split is empty (heldout_size=0 in the recipe?)")
    order = np.random.default_rng(seed).permutation(n)[skip : skip + count]
    if not len(order):
        raise DataError(f"the data split has only {n} items, none left after {skip}")
    items = [dataset[int(i)] for i in np.sort(order)]
    images = torch.stack([torch.as_tensor(x) for x, _ in items])
    labels = torch.as_tensor([int(y) for _, y in items], dtype=torch.int64)
    return images, labels
