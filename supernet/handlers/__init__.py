"""One handler per slimmable layer kind, and the registry that maps module types to them.

Each kind is one :class:`LayerHandler` subclass in its own module here, registered for its
module types with ``@register_layer(...)``; the imports below load (and so register) them.
A new kind is one more module and one more import; tracing, the slicing hooks,
extraction, the cost model, search, the warm start and weight inheritance reach every layer
only through its handler. Layers with a weight and a bias (conv, linear) share
:class:`~.weighted.WeightedHandler`, normalisers (BN, LayerNorm)
:class:`~.normaliser.NormaliserHandler`. A parameter or buffer used directly in a forward
(ConvNeXt's ``layer_scale``) is no module: tracing asks :data:`~.attribute.ATTRIBUTE` for it.
"""

from . import attention, attribute, base, batchnorm, conv, layernorm, linear, normaliser  # noqa: F401
from .attention import AttentionHandler, MultiheadAttentionHandler
from .attribute import ATTRIBUTE, AttributeHandler
from .base import *  # noqa: F403 (the handler interface is re-exported here)
from .batchnorm import BatchNormHandler
from .conv import ConvHandler
from .layernorm import LayerNormHandler
from .linear import LinearHandler

# base.__all__ is the interface a handler author needs (swap, replace_param, CostTerms too)
__all__ = [
    *base.__all__,
    "ATTRIBUTE",
    "AttentionHandler",
    "AttributeHandler",
    "BatchNormHandler",
    "ConvHandler",
    "LayerNormHandler",
    "LinearHandler",
    "MultiheadAttentionHandler",
]
