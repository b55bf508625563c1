"""Recipes: one TOML file describes a whole job (model, data, space, train, search, finetune).

Recipes ship as package data in ``widthsearch/recipes/configs``; a recipe is named by its
file stem (``quick``) or given as a path. CLI flags override recipe values. The sections and
their defaults are :mod:`widthsearch.supernet.recipe` (every stage reads them); this module
finds and reads the files.
"""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

from widthsearch.supernet import recipe as _sections
from widthsearch.supernet.recipe import *  # noqa: F403 (the sections are re-exported here)
from widthsearch.supernet.recipe import DEFAULT_RECIPE, Recipe

__all__ = [*_sections.__all__, "list_recipes", "load_recipe"]


def list_recipes() -> list[str]:
    """Names of the recipes shipped with the package."""
    folder = resources.files("widthsearch.recipes") / "configs"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".toml"))


def _read(name_or_path: str) -> tuple[dict[str, Any], str]:
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise ValueError(f"recipe file {path} does not exist")
        text, source = path.read_text(), str(path)
    else:
        resource = resources.files("widthsearch.recipes") / "configs" / f"{name_or_path}.toml"
        if not resource.is_file():
            raise ValueError(
                f"unknown recipe {name_or_path!r}; shipped recipes: {', '.join(list_recipes())} "
                "(or give a path to a .toml file)"
            )
        text, source = resource.read_text(), f"widthsearch:{name_or_path}"
    try:
        return tomllib.loads(text), source
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"recipe {source} is not valid TOML: {exc}") from None


def load_recipe(name_or_path: str | None = None) -> Recipe:
    """Load and validate a recipe (default: :data:`DEFAULT_RECIPE`).

    Raises:
        ValueError: unknown recipe, invalid TOML, unknown section or key, wrong value type.
    """
    raw, source = _read(name_or_path or DEFAULT_RECIPE)
    return Recipe.from_dict(raw, source=source)
