"""archgrow: grow any PyTorch model's layers while it trains (NORTH* neurogenesis)."""

from archgrow.checkpoint import load, save  # noqa: E402
from archgrow.distributed import DistributedGrowingModel, distribute  # noqa: E402
from archgrow.errors import ArchgrowError, GrowthError, SpecError, TraceError, UnknownGroupError  # noqa: E402
from archgrow.graph import Member, Slot, WidthGraph, WidthGroup, trace  # noqa: E402
from archgrow.grower import GrowingModel, GrowthEvent, wrap  # noqa: E402
from archgrow.initializers import register_initializer  # noqa: E402
from archgrow.ops import register_layer, register_op  # noqa: E402
from archgrow.spec import Spec, load_spec  # noqa: E402
from archgrow.surgery import grow, register_optimizer_state  # noqa: E402
from archgrow.triggers import register_trigger  # noqa: E402
from archgrow.version import __version__  # noqa: E402,F401

__all__ = [
    "ArchgrowError",
    "DistributedGrowingModel",
    "GrowingModel",
    "GrowthError",
    "GrowthEvent",
    "Member",
    "Slot",
    "Spec",
    "SpecError",
    "TraceError",
    "UnknownGroupError",
    "WidthGraph",
    "WidthGroup",
    "distribute",
    "grow",
    "load",
    "load_spec",
    "register_initializer",
    "register_layer",
    "register_op",
    "register_optimizer_state",
    "register_trigger",
    "save",
    "trace",
    "wrap",
]
