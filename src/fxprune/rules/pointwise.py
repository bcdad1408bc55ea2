"""Pointwise math: unary functions (``exp``, ``pow``, ``erf``, ``-x``, ...), comparisons, ``where``,
``clamp``, ``maximum``.

The output at a position depends only on the operands at that position, so channels pass through and
operands that hold channels are coupled (pruned together). What a pruned channel holds afterwards
follows from what it held: where every operand holds zero, f(0, ...) - learned by running the op on
zeros: 0 stays zero, a finite value is a constant, an infinite one (``log``, ``reciprocal``) makes the
channel unremovable; where every operand holds a constant, a constant; else input-dependent. A tensor
operand without channels that broadcasts along them makes pruned channels input-dependent.
"""
from __future__ import annotations

import numbers
import operator

import torch
import torch.fx as fx

from ..channels import CONST, VARY, ZERO, ChannelMap
from .common import param_function
from .registry import Rule, Unsupported, register

_UNARY = ("abs", "neg", "exp", "expm1", "exp2", "log", "log1p", "log2", "sqrt", "rsqrt", "square",
          "reciprocal", "erf", "erfc", "sin", "cos", "sign", "floor", "ceil", "round", "trunc",
          "nan_to_num", "logical_not", "bitwise_not")
_WITH_SCALARS = ("pow", "clamp", "clip", "clamp_min", "clamp_max", "float_power", "fmod", "remainder")
_BINARY = ("maximum", "minimum", "fmax", "fmin", "gt", "lt", "ge", "le", "eq", "ne", "greater", "less",
           "greater_equal", "less_equal", "not_equal", "logical_and", "logical_or", "logical_xor")
_NAMES = _UNARY + _WITH_SCALARS + _BINARY

FUNCTIONS = tuple(getattr(torch, n) for n in _NAMES + ("where",) if hasattr(torch, n)) + (
    operator.neg, operator.abs, operator.pow, operator.gt, operator.lt, operator.ge, operator.le,
    operator.eq, operator.ne, operator.invert, operator.and_, operator.or_, operator.xor)
METHODS = _NAMES + tuple(f"{n}_" for n in _UNARY + _WITH_SCALARS) + ("where", "__neg__", "__abs__")


def _operands(ctx):
    """(node argument, value) for every positional and keyword argument."""
    nodes = list(ctx.node.args) + list(ctx.node.kwargs.values())
    values = list(ctx.args) + list(ctx.kwargs.values())
    return list(zip(nodes, values))


def _call(ctx, values):
    node = ctx.node
    n_pos = len(node.args)
    args, kwargs = values[:n_pos], dict(zip(node.kwargs, values[n_pos:]))
    if node.op == "call_method":
        return getattr(args[0], node.target)(*args[1:], **kwargs)
    return node.target(*args, **kwargs)


@register(*FUNCTIONS, *METHODS)
class PointwiseMathRule(Rule):
    def flow(self, ctx):
        out = ctx.out
        if not isinstance(out, torch.Tensor):
            return None
        nd = out.dim()
        derived = param_function(ctx)
        if derived is not None:
            return derived
        maps, untracked, probe = [], [], []
        for node_arg, value in _operands(ctx):
            cmap = ctx.map_of(node_arg) if isinstance(node_arg, fx.Node) else None
            if isinstance(cmap, ChannelMap):
                maps.append(cmap.align_to(nd))
                probe.append(torch.zeros([1] * value.dim(), dtype=value.dtype))
            elif isinstance(value, torch.Tensor):
                untracked.append(value)
                probe.append(None)
            elif isinstance(value, (numbers.Number, type(None), torch.dtype)) or isinstance(value, (list, tuple)):
                probe.append(value)
            else:
                raise Unsupported(f"operand of type {type(value).__name__}")
        if not maps:
            return None
        first = ctx.couple(maps, "operands")
        for t in untracked:
            shape = [1] * (nd - t.dim()) + list(t.shape)
            if any(shape[d] != 1 for d in first.dims):
                raise Unsupported("an operand without tracked channels spans the channel dim")
        if untracked:  # values that vary along the other dims meet every pruned channel
            return first.with_carry(VARY)
        carries = torch.stack([m.carry for m in maps])
        at_zero = self._at_zero(ctx, probe)
        carry = torch.where((carries == ZERO).all(0), at_zero,
                            torch.where((carries <= CONST).all(0), CONST, VARY))
        ids = first.ids
        for other in maps[1:]:  # a position holds the element of whichever operand has one
            ids = torch.where(ids >= 0, ids, other.ids)
        return ChannelMap(first.dims, ids, carry.to(torch.int8), nd)

    @staticmethod
    def _at_zero(ctx, probe) -> int:
        """What the op makes of channels that are zero in every operand."""
        try:
            with torch.no_grad():
                r = _call(ctx, probe)
        except Exception:
            return VARY
        if not isinstance(r, torch.Tensor):
            return VARY
        r = r.double() if not r.is_floating_point() else r
        if bool((r == 0).all()):
            return ZERO
        return CONST if bool(torch.isfinite(r).all()) else VARY
