"""What the network can be: width space, slimmable supernet, cost model, extraction."""

from ._counting import counted_macs
from .cost import CostModel, GatedQuadraticForm, QuadraticForm
from .data import DataSpec, DataSplits, get_data, make_loader
from .errors import CheckpointError, DataError, UnsupportedModelError, WidthsearchError
from .handlers import ChannelEvidence, LayerHandler, SlimLayer, handler_for, register_layer
from .models import create_model, list_models
from .runtime import Runtime, init_runtime, resolve_device, shutdown_runtime
from .space import Group, WidthConfig, WidthSpace
from .spec import SupernetSpec
from .supernet import SIDES, LayerEntry, Side, Supernet
from .trainer_kinds import TrainerKind, get_trainer, list_trainers, register_trainer
from .warmstart import load_weights, read_state_dict, reorder_channels, trained_network

__all__ = [
    "SIDES",
    "ChannelEvidence",
    "CheckpointError",
    "CostModel",
    "DataError",
    "DataSpec",
    "DataSplits",
    "GatedQuadraticForm",
    "Group",
    "LayerEntry",
    "LayerHandler",
    "QuadraticForm",
    "Runtime",
    "Side",
    "SlimLayer",
    "Supernet",
    "SupernetSpec",
    "TrainerKind",
    "UnsupportedModelError",
    "WidthConfig",
    "WidthSpace",
    "WidthsearchError",
    "counted_macs",
    "create_model",
    "get_data",
    "get_trainer",
    "handler_for",
    "init_runtime",
    "list_models",
    "list_trainers",
    "load_weights",
    "make_loader",
    "read_state_dict",
    "register_layer",
    "register_trainer",
    "reorder_channels",
    "resolve_device",
    "shutdown_runtime",
    "trained_network",
]
