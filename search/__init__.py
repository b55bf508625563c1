"""Which widths to pick: the subnet evaluator and the search strategies.

Strategies register by name (``bisection``, ``evolution``, ``peel``, ``relax``, ``uniform``,
``random``); :func:`get_strategy` builds one, :func:`search_widths` runs several over many
budgets and returns the :class:`SearchDocument` that ``widthsearch search`` writes as JSON
(one :class:`SearchAnswer` per strategy and budget; :func:`run_search` returns it as the
JSON dict). Budgets are MACs or predicted latencies (a :class:`LatencyTable` measured by
``widthsearch profile``), and :class:`Constraints` add limits on MACs, params and latency
that every answer keeps.
"""

from . import bisection, evolution, peel, random_search, relax, uniform  # noqa: F401 (register)
from .base import SearchResult, Strategy, get_strategy, list_strategies, register_strategy
from .bisection import Bisection, bisection_configs, group_importance
from .budgets import format_macs, make_constraints, parse_budget, resolve_budgets
from .constraints import Constraints, budget_measure, format_ms, is_latency, parse_latency
from .evaluator import SubnetEvaluator
from .evolution import Evolution, make_storage, prior_population, study_name_for
from .latency import LatencyModel, LatencyTable, LayerLatency, load_latency_table
from .peel import Peel
from .random_search import RandomSearch
from .relax import Relax, SoftMasks
from .result import SearchAnswer, SearchDocument
from .run import build_evaluator, run_search, search_options, search_widths, write_json_atomic
from .scoring import (
    ScoringData,
    ScoringSizes,
    calibration_batches,
    load_split_images,
    recipe_splits,
    scoring_data,
)
from .uniform import Uniform

__all__ = [
    "Bisection",
    "Constraints",
    "Evolution",
    "LatencyModel",
    "LatencyTable",
    "LayerLatency",
    "Peel",
    "RandomSearch",
    "Relax",
    "ScoringData",
    "ScoringSizes",
    "SearchAnswer",
    "SearchDocument",
    "SearchResult",
    "SoftMasks",
    "Strategy",
    "SubnetEvaluator",
    "Uniform",
    "bisection_configs",
    "budget_measure",
    "build_evaluator",
    "calibration_batches",
    "format_macs",
    "format_ms",
    "get_strategy",
    "group_importance",
    "is_latency",
    "list_strategies",
    "load_latency_table",
    "load_split_images",
    "make_constraints",
    "make_storage",
    "parse_budget",
    "parse_latency",
    "prior_population",
    "recipe_splits",
    "register_strategy",
    "resolve_budgets",
    "run_search",
    "scoring_data",
    "search_options",
    "search_widths",
    "study_name_for",
    "write_json_atomic",
]
