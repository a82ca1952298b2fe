"""Keep an optimizer's per-parameter state aligned with parameters that just grew.

Parameters grow in place (the same ``nn.Parameter`` object gets new ``.data``), so
``param_groups`` keep pointing at the live tensors and LR schedulers are unaffected.  What must
change is the state: every tensor shaped like the old parameter (SGD momentum, Adam's
``exp_avg``/``exp_avg_sq``/``max_exp_avg_sq``, RMSprop's ``square_avg``, Adagrad's ``sum``...) is
padded with zeros at the new positions; scalar state such as ``step`` is kept, as the authors'
code does (algorithms.md §6.6).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from archgrow.errors import GrowthError
from archgrow.surgery.tensors import Expansion, expand, new_shape


def pad_state(
    optimizer: torch.optim.Optimizer,
    param: torch.Tensor,
    old_shape: torch.Size,
    expansions: Sequence[Expansion],
) -> None:
    """Pad every state tensor of ``param`` that had the parameter's old shape."""
    if isinstance(optimizer, torch.optim.LBFGS):
        raise GrowthError(
            "torch.optim.LBFGS keeps flattened state across all parameters and cannot follow growth; "
            "use a per-parameter optimizer (SGD, Adam, AdamW, RMSprop, Adagrad, ...)"
        )
    state = optimizer.state.get(param)
    if not state:
        return
    for key, value in list(state.items()):
        if isinstance(value, torch.Tensor) and value.shape == old_shape and value.ndim > 0:
            for e in expansions:
                value = expand(value, e, value.new_zeros(new_shape(value, e.dim, len(e.new_pos))))
            state[key] = value

