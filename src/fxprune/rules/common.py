"""What rules share: the dtype and device of the smaller module they build, exact bias folding, and
functions of a parameter."""
from __future__ import annotations

import dataclasses

import torch
import torch.fx as fx
import torch.nn as nn

from ..channels import ParamView


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


def param_function(ctx) -> ParamView | None:
    """The op applied elementwise to one parameter (and numbers): a function of it, sliced with it
    (``w.exp()``, ``1 + w``; see ParamView.derived). None otherwise."""
    nodes = [a for a in (*ctx.node.args, *ctx.node.kwargs.values()) if isinstance(a, fx.Node)]
    views = [m for m in map(ctx.map_of, nodes) if m is not None]
    if len(views) != 1 or not isinstance(views[0], ParamView):
        return None
    tensors = [v for v in (*ctx.args, *ctx.kwargs.values()) if isinstance(v, torch.Tensor)]
    if len(tensors) != 1 or not isinstance(ctx.out, torch.Tensor) or ctx.out.shape != tensors[0].shape:
        return None
    return dataclasses.replace(views[0], derived=True)
