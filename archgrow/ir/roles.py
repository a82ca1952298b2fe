"""What the new entries of a bound tensor dimension hold when its group grows.

Every tensor bound to a width group says, per bound dimension, which *role* its new entries play;
surgery fills them from the role alone, with no per-layer code.
"""

from __future__ import annotations

FAN_IN = "fan_in"  # a new unit's incoming weights (random, rescaled to the mean norm)
FAN_OUT = "fan_out"  # weights reading a new unit (zero: function-preserving)
ZERO = "zero"  # biases, BN shift and running mean, additive parameters
ONE = "one"  # norm scales, running variance
MEAN = "mean"  # multiplicative parameters (layer scale, PReLU slopes): mean of existing entries

ROLES = (FAN_IN, FAN_OUT, ZERO, ONE, MEAN)

__all__ = ["FAN_IN", "FAN_OUT", "MEAN", "ONE", "ROLES", "ZERO"]
