"""Channel surgery: growing width groups in place."""

from archgrow.surgery.grow import grow

__all__ = ["grow"]
