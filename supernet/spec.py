"""The one recipe for building a supernet: model, its arguments and the width-space settings.

A supernet file stores these as its ``meta``; training (from a recipe), loading (from a
file), the baselines and the tests all build through :meth:`SupernetSpec.build`, so a
supernet rebuilt from a file is the one that was trained.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch

from .errors import CheckpointError

__all__ = ["SupernetSpec"]


@dataclass(frozen=True)
class SupernetSpec:
    """What rebuilds a supernet (a supernet file's ``meta``).

    Attributes:
        model: Registered model name (``resnet20``, ``tv:NAME``, ``timm:NAME``).
        num_classes, in_chans: The model's arguments (from the dataset).
        input_size: Side of the square input the graph is traced (and costed) at.
        bins, min_bins, round_to: The width space (see :class:`~widthsearch.supernet.Group`).
    """

    model: str
    num_classes: int
    in_chans: int
    input_size: int
    bins: int = 8
    min_bins: int = 1
    round_to: int = 1

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any], *, where: str = "checkpoint") -> SupernetSpec:
        """The spec in a file's ``meta``; a missing or malformed entry is one clear error."""
        values: dict[str, Any] = {}
        for field in fields(cls):  # all of them: a file names its whole space
            if field.name not in meta:
                raise CheckpointError(f"{where}: meta has no {field.name!r}: not a supernet file")
            kind = str if field.name == "model" else int
            try:
                values[field.name] = kind(meta[field.name])
            except (TypeError, ValueError):
                raise CheckpointError(
                    f"{where}: meta {field.name}={meta[field.name]!r} is not valid"
                ) from None
        return cls(**values)

    def to_meta(self) -> dict[str, Any]:
        return asdict(self)

    def build(self):
        """A fresh supernet of this spec (the model's own initialisation: seed before)."""
        from .models import create_model
        from .supernet import Supernet

        model = create_model(
            self.model,
            num_classes=self.num_classes,
            in_chans=self.in_chans,
            input_size=self.input_size,
        )
        example = torch.zeros(1, self.in_chans, self.input_size, self.input_size)
        return Supernet.from_model(
            model,
            example,
            bins=self.bins,
            min_bins=self.min_bins,
            round_to=self.round_to,
            meta={
                "model": self.model,
                "num_classes": self.num_classes,
                "in_chans": self.in_chans,
                "input_size": self.input_size,
            },
        )
