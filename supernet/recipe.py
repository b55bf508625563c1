"""Recipes as data: the sections of a whole job (model, data, space, pretrain, train, search,
fine-tune, eval, run) with their defaults, written once.

Every stage reads settings from a :class:`Recipe`: the CLI builds one from a TOML file
(:func:`widthsearch.recipes.load_recipe`), and a recipe stored in a checkpoint comes back with
:meth:`Recipe.from_dict`, so a default lives here and nowhere else.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .runtime import AMP_MODES
from .trainer_kinds import list_trainers

__all__ = [
    "DEFAULT_RECIPE",
    "FINETUNE_INITS",
    "DataSection",
    "EvalSection",
    "FinetuneSection",
    "ModelSection",
    "PretrainSection",
    "Recipe",
    "RunSection",
    "SearchSection",
    "SpaceSection",
    "TrainSection",
    "check_train",
    "stored_recipe",
    "trained_budgets",
    "validate",
    "with_trained_budgets",
]

DEFAULT_RECIPE = "quick"
FINETUNE_INITS = ("inherit", "random")  # where fine-tuning starts from


@dataclass
class ModelSection:
    name: str = "resnet20"  # built-in name, "tv:NAME" or "timm:NAME"
    input_size: int = 0  # square input side; 0 = the dataset's own size


@dataclass
class DataSection:
    name: str = "fashion-mnist"  # fashion-mnist | cifar10 | cifar100 | imagefolder:PATH | synthetic
    root: str = ""  # dataset folder; "" = $WIDTHSEARCH_DATA or the dataset's default place
    heldout_size: int = 5000  # images carved from the training set for search scores
    train_limit: int = 0  # use only this many training images (0 = all)
    test_limit: int = 0  # use only this many test images (0 = all)
    batch_size: int = 128  # training batch size (per process under torchrun)
    workers: int = 0  # DataLoader worker processes
    seed: int = 0  # seeds the held-out split and the loaders


@dataclass
class SpaceSection:
    bins: int = 8  # width steps per group (BCNet: 20 on ImageNet)
    min_bins: int = 1  # smallest bin a group may shrink to
    round_to: int = 1  # channel multiple (8 for hardware-friendly widths)


@dataclass
class _TrainingSchedule:
    """What every training stage has: SGD + cosine schedule, seed, per-epoch evaluation."""

    epochs: int = 3  # training epochs
    lr: float = 0.1  # peak SGD learning rate (cosine schedule)
    momentum: float = 0.9  # SGD momentum
    weight_decay: float = 5e-4  # SGD weight decay
    nesterov: bool = True  # Nesterov momentum
    label_smoothing: float = 0.0  # cross-entropy label smoothing
    warmup_epochs: float = 0.0  # linear warm-up before the cosine schedule
    seed: int = 0  # seeds initialisation, data order (and width sampling)
    eval_batches: int = 10  # held-out batches for the per-epoch top-1


@dataclass
class PretrainSection(_TrainingSchedule):
    epochs: int = 8  # plain full-width training epochs (`widthsearch pretrain`)


@dataclass
class TrainSection(_TrainingSchedule):
    init: str = "scratch"  # scratch | pretrain (OUT/full.pt) | path of a trained network
    channel_order: str = "auto"  # warm start: auto | ends | front | none (auto: ends for
    # trainers of both BCNet sides, front for left-only ones such as budgets)
    importance: str = "gamma"  # warm start: channel importance, gamma (|BN gamma|) | taylor
    importance_batches: int = 16  # warm start: training batches for taylor importance
    teacher_alpha: float = 0.7  # warm start: weight of distillation from the trained network
    teacher_temperature: float = 4.0  # warm start: distillation temperature
    trainer: str = "bcnet"  # bcnet | sandwich | budgets (slimmable training of known budgets)
    distill: bool = False  # in-place distillation from the full width (AutoSlim)
    full_every: int = 2  # BCNet: one full-width step after every this many sampled steps
    coverage: str = "levels"  # BCNet: levels (pairs spread over all MACs) | independent
    level_spread: int = 1  # BCNet levels: bins a group may stray from the pair's level
    sandwich_random: int = 2  # sandwich rule: random widths per step besides max and min
    budgets: list[float] = field(
        default_factory=list
    )  # budgets trainer: MACs fractions trained each step ([] = [search].budgets' fractions)
    budget_window: float = 0.9  # budgets trainer: trained MACs lie in [window * b, b]


@dataclass
class SearchSection:
    strategies: list[str] = field(
        default_factory=lambda: ["bisection", "evolution", "peel", "relax", "uniform", "random"]
    )  # strategy names from the registry
    budgets: list[float | str] = field(
        default_factory=lambda: [0.25, 0.5, 0.75]
    )  # MACs budgets (0.5, "20M"), or latencies ("12ms") with latency_table
    latency_table: str = ""  # latency table from `widthsearch profile` ("": none)
    max_macs: str = ""  # MACs limit besides each budget: "0.5" (of full) or "20M" ("": none)
    max_params: str = ""  # parameter limit: "0.5" (of full) or "1M" ("": none)
    max_latency: str = ""  # predicted-latency limit, "8ms" (needs latency_table; "": none)
    score: str = "top1"  # subnet score: top1 | ce (cross-entropy) | kd (vs the trained network)
    heldout_images: int = 1000  # held-out images per subnet score
    calib_batches: int = 4  # BN recalibration batches per subnet score
    eval_batch_size: int = 250  # batch size for scoring and calibration
    evolution_trials: int = 150  # Optuna trials of the evolutionary search
    random_samples: int = 40  # configs tried by the random baseline
    relax_steps: int = 200  # gradient steps of the continuous relaxation
    seed: int = 0  # seeds every strategy


@dataclass
class FinetuneSection:
    epochs: int = 2  # fine-tuning epochs of each extracted subnet
    lr: float = 0.02  # peak SGD learning rate (cosine schedule)
    weight_decay: float = 5e-4  # SGD weight decay
    distill: bool = True  # distil from the trained network (warm start), else the supernet
    init: str = "inherit"  # inherit (the supernet's weights) | random (retrain the widths)
    inheritance: list[str] = field(
        default_factory=lambda: ["left", "right", "l1", "bn"]
    )  # weight-inheritance candidates; the best by held-out score is kept


@dataclass
class EvalSection:
    latency: bool = True  # measure CPU latency (batch 1 and 64)
    latency_seconds: float = 0.5  # minimum measuring time per latency figure


@dataclass
class RunSection:
    device: str = "auto"  # auto (CUDA when present, else CPU) | cpu | cuda | cuda:N
    amp: str = "off"  # mixed precision of forward passes: off | bf16 | fp16 (gradient scaler)
    # | auto (bf16 where the device computes it natively, else off)
    channels_last: bool = False  # channels-last memory format for weights and batches


@dataclass
class Recipe:
    """A whole job. ``source`` is where it was read from (for logs and reports)."""

    name: str = DEFAULT_RECIPE
    description: str = ""
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    space: SpaceSection = field(default_factory=SpaceSection)
    pretrain: PretrainSection = field(default_factory=PretrainSection)
    train: TrainSection = field(default_factory=TrainSection)
    search: SearchSection = field(default_factory=SearchSection)
    finetune: FinetuneSection = field(default_factory=FinetuneSection)
    eval: EvalSection = field(default_factory=EvalSection)
    run: RunSection = field(default_factory=RunSection)
    source: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], *, source: str = "", strict: bool = True) -> Recipe:
        """A recipe from its tables (a TOML file, or ``to_dict()`` stored in a checkpoint),
        every missing value at its default, validated.

        ``strict=False`` (a recipe stored by another version of widthsearch) skips the
        sections and keys this version does not know instead of refusing them.

        Raises:
            ValueError: an unknown section or key (strict), a wrong value type, or settings
                that do not go together.
        """
        kwargs: dict[str, Any] = {"source": source or str(raw.get("source", "") or "")}
        for key, value in raw.items():
            if key in _SECTION_TYPES:
                kwargs[key] = _section(_SECTION_TYPES[key], value, key, strict=strict)
            elif key in ("name", "description"):
                kwargs[key] = str(value)
            elif key != "source" and strict:
                raise ValueError(f"unknown recipe section or key {key!r} in {source}")
        recipe = cls(**kwargs)
        validate(recipe)
        return recipe


_SECTION_TYPES = {
    "model": ModelSection,
    "data": DataSection,
    "space": SpaceSection,
    "pretrain": PretrainSection,
    "train": TrainSection,
    "search": SearchSection,
    "finetune": FinetuneSection,
    "eval": EvalSection,
    "run": RunSection,
}


def _section(cls: type, values: Any, where: str, *, strict: bool = True) -> Any:
    if not isinstance(values, Mapping):
        raise ValueError(f"recipe section [{where}] must be a table")
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [key for key in values if key not in known]
    if unknown and strict:
        raise ValueError(
            f"unknown key {unknown[0]!r} in recipe section [{where}] (known: {', '.join(known)})"
        )
    values = {key: value for key, value in values.items() if key in known}
    defaults = cls()
    for key, value in values.items():
        expected = getattr(defaults, key)
        ok = (
            isinstance(value, type(expected))
            or (isinstance(expected, float) and isinstance(value, int))
        ) and not (isinstance(value, bool) and not isinstance(expected, bool))
        if not ok:
            raise ValueError(
                f"recipe key [{where}].{key} must be {type(expected).__name__}, got {value!r}"
            )
    return cls(**values)


def validate(recipe: Recipe) -> None:
    """Check the settings that must go together (also after CLI overrides).

    Raises:
        ValueError: naming the section, the key and what is allowed.
    """
    supernet_trainers = [name for name in list_trainers() if name != "plain"]  # plain: pretrain
    if recipe.train.trainer not in supernet_trainers:
        raise ValueError(
            f"[train].trainer must be one of {', '.join(supernet_trainers)}, "
            f"got {recipe.train.trainer!r}"
        )
    if recipe.space.bins < 2 or not 1 <= recipe.space.min_bins <= recipe.space.bins // 2:
        raise ValueError("[space] needs bins >= 2 and 1 <= min_bins <= bins / 2")
    check_train(recipe)


def check_train(recipe: Recipe) -> None:
    """Validate the warm-start and sampling settings (also after CLI overrides)."""
    t = recipe.train
    if not t.init:
        raise ValueError("[train].init must be 'scratch', 'pretrain' or a file path")
    if t.channel_order not in ("auto", "ends", "front", "none"):
        raise ValueError(
            "[train].channel_order must be 'auto', 'ends', 'front' or 'none', "
            f"got {t.channel_order!r}"
        )
    if t.importance not in ("gamma", "taylor") or t.importance_batches < 1:
        raise ValueError(
            "[train].importance must be 'gamma' or 'taylor' and importance_batches >= 1, "
            f"got {t.importance!r} and {t.importance_batches}"
        )
    if t.coverage not in ("levels", "independent"):
        raise ValueError(f"[train].coverage must be 'levels' or 'independent', got {t.coverage!r}")
    if not 0.0 <= t.teacher_alpha <= 1.0 or t.teacher_temperature <= 0:
        raise ValueError("[train] needs 0 <= teacher_alpha <= 1 and teacher_temperature > 0")
    if recipe.finetune.init not in FINETUNE_INITS:
        raise ValueError(
            f"[finetune].init must be one of {', '.join(FINETUNE_INITS)}, "
            f"got {recipe.finetune.init!r}"
        )
    if recipe.search.score not in ("top1", "ce", "kd"):
        raise ValueError(f"[search].score must be top1, ce or kd, got {recipe.search.score!r}")
    if recipe.run.amp not in AMP_MODES:
        raise ValueError(f"[run].amp must be one of {', '.join(AMP_MODES)}, got {recipe.run.amp!r}")
    if any(isinstance(b, bool) or not isinstance(b, (int, float)) for b in t.budgets) or any(
        not 0.0 < b <= 1.0 for b in t.budgets
    ):
        raise ValueError(f"[train].budgets must be MACs fractions in (0, 1], got {t.budgets!r}")
    if not 0.0 < t.budget_window <= 1.0:
        raise ValueError(f"[train].budget_window must be in (0, 1], got {t.budget_window}")
    if t.trainer == "budgets" and not trained_budgets(recipe):
        raise ValueError(
            "the budgets trainer needs MACs fractions in [train].budgets or [search].budgets"
        )
    if t.level_spread < 0 or recipe.pretrain.epochs < 0:
        raise ValueError("[train].level_spread and [pretrain].epochs must be >= 0")


def trained_budgets(recipe: Recipe) -> list[float]:
    """The MACs fractions the ``budgets`` trainer trains: ``[train].budgets``, else those of
    ``[search].budgets`` that are fractions (MACs counts and latencies need the model)."""
    if recipe.train.budgets:
        return [float(b) for b in recipe.train.budgets]
    return [
        float(b)
        for b in recipe.search.budgets
        if not isinstance(b, (bool, str)) and 0.0 < float(b) <= 1.0
    ]


def with_trained_budgets(recipe: Recipe) -> Recipe:
    """``recipe`` with a ``budgets`` trainer's ``[train].budgets`` filled in (see
    :func:`trained_budgets`): what a checkpoint stores, so that a rerun or a resume can tell
    whether the same budgets were trained. Other trainers: ``recipe`` itself."""
    if recipe.train.trainer != "budgets":
        return recipe
    train = dataclasses.replace(recipe.train, budgets=trained_budgets(recipe))
    return dataclasses.replace(recipe, train=train)


def stored_recipe(payload: Mapping[str, Any], *, where: str = "checkpoint") -> Recipe:
    """The recipe a checkpoint or subnet file was made with (defaults where it has none).

    Raises:
        CheckpointError: a stored recipe that is not valid (one line, naming the file).
    """
    from .errors import CheckpointError

    raw = payload.get("recipe")
    try:
        return Recipe.from_dict(raw if isinstance(raw, Mapping) else {}, strict=False)
    except ValueError as exc:
        raise CheckpointError(f"{where}: its stored recipe is not valid: {exc}") from None
