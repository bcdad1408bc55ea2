"""What rules share: the dtype and device of the smaller module they build, exact bias folding, and
functions of a parameter."""
from __future__ import annotations

import torch
import torch.fx as fx
import torch.nn as nn

from ..channels import ParamView
from ..graph import attr


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
    """The op applied elementwise to one parameter, with numbers or tensors (other parameters too) that
    broadcast along its sliceable dims (``1 + w``, ``w.sigmoid()``, Swin's bias table view + its shift
    mask): a function of that parameter, sliced with it (see ParamView.derived). None otherwise."""
    out = ctx.out
    operands = list(zip((*ctx.node.args, *ctx.node.kwargs.values()), (*ctx.args, *ctx.kwargs.values())))
    labels = [ctx.map_of(a) if isinstance(a, fx.Node) else None for a, _ in operands]
    if not isinstance(out, torch.Tensor) or not any(isinstance(m, ParamView) for m in labels) \
            or any(m is not None and not isinstance(m, ParamView) for m in labels):
        return None
    found = []
    for i, pv in enumerate(labels):
        if not isinstance(pv, ParamView) or out.dim() < pv.ndim:
            continue
        dims = (None,) * (out.dim() - pv.ndim) + pv.dims
        sliced = [d for d in range(out.dim()) if dims[d] is not None and pv.shape[dims[d]] > 1]
        if any(out.shape[d] != pv.shape[dims[d]] for d in sliced):
            continue
        others = [[1] * (out.dim() - v.dim()) + list(v.shape) for j, (_, v) in enumerate(operands)
                  if j != i and isinstance(v, torch.Tensor)]
        if all(len(s) == out.dim() and all(s[d] == 1 for d in sliced) for s in others):
            found.append(ParamView(pv.target, dims, pv.shape, derived=True))
    return found[0] if len(found) == 1 else None


def last_two_transposed(node) -> bool:
    """Whether ``node`` swaps the last two dims of a 3-d tensor (``transpose(-2, -1)``, ``permute(0, 2, 1)``):
    how an (experts, out, in) weight is read as (experts, in, out). The caller knows the tensor is 3-d."""
    if not isinstance(node, fx.Node) or node.op not in ("call_method", "call_function"):
        return False
    if node.target in ("transpose", torch.transpose, "swapaxes", torch.swapaxes):
        dims = tuple(node.args[1:3])
        return len(dims) == 2 and all(isinstance(d, int) for d in dims) and {d % 3 for d in dims} == {1, 2}
    if node.target in ("permute", torch.permute):
        dims = node.args[1] if len(node.args) == 2 and isinstance(node.args[1], (tuple, list)) else node.args[1:]
        return all(isinstance(d, int) for d in dims) and tuple(d % 3 for d in dims) == (0, 2, 1)
    return False


def weight_readers(gm: fx.GraphModule, fqn: str) -> list[tuple[fx.Node, bool]]:
    """(node, transposed) for every op reading the tensor ``fqn``: through its get_attr nodes, and through
    a transpose of their last two dims (see last_two_transposed)."""
    three_d = attr(gm, fqn).dim() == 3
    out = []
    for n in gm.graph.nodes:
        if n.op == "get_attr" and n.target == fqn:
            for u in n.users:
                if three_d and last_two_transposed(u):
                    out.extend((v, True) for v in u.users)
                else:
                    out.append((u, False))
    return out
