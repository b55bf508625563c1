"""What the network can be: width space, slimmable supernet, cost model, extraction."""

from .errors import CheckpointError, DataError, UnsupportedModelError, WidthsearchError
from .space import Group, WidthConfig, WidthSpace
from .supernet import SIDES, Side, Supernet

__all__ = [
    "SIDES",
    "CheckpointError",
    "DataError",
    "Group",
    "Side",
    "Supernet",
    "UnsupportedModelError",
    "WidthConfig",
    "WidthSpace",
    "WidthsearchError",
]
