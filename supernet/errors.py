"""Exceptions with messages meant for the user: the CLI prints them as one line."""

from __future__ import annotations

__all__ = ["CheckpointError", "DataError", "UnsupportedModelError", "WidthsearchError"]


class WidthsearchError(Exception):
    """Base class: any subclass is a user-facing error printed without a traceback."""


class UnsupportedModelError(WidthsearchError):
    """The model has a channel coupling or layer that the supernet cannot slim."""


class DataError(WidthsearchError):
    """A dataset is missing or malformed."""


class CheckpointError(WidthsearchError):
    """A file is not a readable widthsearch checkpoint of the expected kind."""
