"""Channel surgery: growing width groups in place."""

from archgrow.surgery.grow import grow
from archgrow.surgery.optim import register_optimizer_state

__all__ = ["grow", "register_optimizer_state"]
