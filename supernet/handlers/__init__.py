"""One handler per slimmable layer kind, and the registry that maps module types to them.

Each kind is one :class:`LayerHandler` subclass in its own module here, registered for its
module types with ``@register_layer(...)``; the imports below load (and so register) them.
A new kind (LayerNorm, attention) is one more module and one more import; tracing, the
slicing hooks, extraction, the cost model, search, the warm start and weight inheritance
reach every layer only through its handler.
"""

from . import batchnorm, conv, linear  # noqa: F401 (register)
from .base import (
    GAMMA,
    L1,
    CallWidths,
    ChannelEvidence,
    LayerCall,
    LayerHandler,
    Layout,
    SlimLayer,
    TraceStep,
    handler_for,
    positions,
    register_layer,
    registered_labels,
    registered_types,
    restore,
    span,
    unregister_layer,
)
from .batchnorm import BatchNormHandler
from .conv import ConvHandler
from .linear import LinearHandler

# What a handler author needs beyond these (CostTerms, swap, replace_param) is in `.base`.
__all__ = [
    "GAMMA",
    "L1",
    "BatchNormHandler",
    "CallWidths",
    "ChannelEvidence",
    "ConvHandler",
    "LayerCall",
    "LayerHandler",
    "Layout",
    "LinearHandler",
    "SlimLayer",
    "TraceStep",
    "handler_for",
    "positions",
    "register_layer",
    "registered_labels",
    "registered_types",
    "restore",
    "span",
    "unregister_layer",
]
