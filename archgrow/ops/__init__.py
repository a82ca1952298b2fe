"""What archgrow knows about torch ops and layers, in one registry.

:mod:`~archgrow.ops.registry` holds one :class:`OpInfo` per function, method or operator and one
:class:`LayerRule` per module type; :mod:`~archgrow.ops.families` the layout rule families;
:mod:`~archgrow.ops.tensor_ops` and :mod:`~archgrow.ops.layers` register torch's own, and
:mod:`~archgrow.ops.functional` the layer functions (``F.batch_norm`` & co.) called on a module's
own tensors.  Describe your own with :func:`register_op` / :func:`register_layer` (or per trace,
``trace(..., rules=[op(...), layer(...)])``).
"""

from archgrow.ops.context import NoRule, RuleContext
from archgrow.ops.registry import OPS, LayerRule, OpInfo, OpTable, Registration, layer, op, register_layer, register_op

# isort: off
from archgrow.ops import tensor_ops, layers, functional  # noqa: F401  (register torch's functions, methods and layers)
from archgrow.ops.layers import ChannelFollowerLayer, ElementwiseLayer, TensorLayer
from archgrow.ops import aten  # noqa: F401  (ATen ops of torch.export graphs, after the torch spellings they follow)
# isort: on

__all__ = [
    "OPS",
    "ChannelFollowerLayer",
    "ElementwiseLayer",
    "LayerRule",
    "NoRule",
    "OpInfo",
    "OpTable",
    "Registration",
    "RuleContext",
    "TensorLayer",
    "layer",
    "op",
    "register_layer",
    "register_op",
]
