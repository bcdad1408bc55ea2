"""What rules share when they build the smaller module: its dtype and device, and exact bias folding."""
from __future__ import annotations

import torch.nn as nn


def factory_kwargs(module: nn.Module) -> dict:
    """``device=`` and ``dtype=`` for building the smaller twin of ``module``: those of its first floating
    parameter or buffer (a module built without them would hold float32 on the CPU, whatever the model's
    dtype: torch.nn.BatchNorm2d(c) in a float64 model)."""
    for t in (*module.parameters(), *module.buffers()):
        if t.is_floating_point():
            return {"device": t.device, "dtype": t.dtype}
    return {}


def add_folded(bias, weight_cols, constants):
    """``bias + weight_cols @ constants`` (the constants of removed input channels, folded into the bias),
    summed in float64 and rounded once to the weight's dtype. ``bias`` may be None."""
    delta = weight_cols.double() @ constants.double()
    if bias is not None:
        delta = delta + bias.double()
    return delta.to(weight_cols.dtype)
