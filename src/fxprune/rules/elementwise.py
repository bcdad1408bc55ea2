"""Elementwise binary ops. Two operands that both hold channels couple them (a residual add prunes the
same channels on both sides); an operand without channels decides what a pruned channel holds."""
from __future__ import annotations

import numbers
import operator

import torch
import torch.fx as fx

from ..channels import CONST, VARY, ZERO, ChannelMap, ParamView
from .common import param_function
from .registry import Rule, Unsupported, register

ADD = (operator.add, operator.sub, operator.iadd, operator.isub, torch.add, torch.sub,
       "add", "sub", "add_", "sub_")
MUL = (operator.mul, operator.imul, torch.mul, "mul", "mul_")
DIV = (operator.truediv, operator.itruediv, torch.div, torch.true_divide, "div", "div_", "true_divide")


def _kind(target):
    if target in ADD:
        return "add"
    if target in MUL:
        return "mul"
    return "div"


@register(*ADD, *MUL, *DIV)
class BinaryRule(Rule):
    def flow(self, ctx):
        ma, mb = ctx.arg_map(0, "input"), ctx.arg_map(1, "other")
        a, b = ctx.arg(0, "input"), ctx.arg(1, "other")
        out = ctx.out
        if not isinstance(out, torch.Tensor):
            return None
        kind = _kind(ctx.node.target)
        nd = out.dim()
        pa, pb = (m if isinstance(m, ParamView) else None for m in (ma, mb))
        ma, mb = (m if isinstance(m, ChannelMap) else None for m in (ma, mb))
        ma = ma.align_to(nd) if ma is not None else None
        mb = mb.align_to(nd) if mb is not None else None
        if ma is not None and mb is not None:
            if ma.dims != mb.dims:   # a per-head value (Qwen3's q_norm scale) against the head's channels
                ma, mb = _broadcast_heads(ctx, ma, mb, a, b, nd)
            ctx.couple([ma, mb], "operands")
            ca, cb = ma.carry, mb.carry
            if kind == "add":
                carry = torch.maximum(ca, cb)
            elif kind == "mul":  # 0 * anything = 0
                carry = torch.where((ca == ZERO) | (cb == ZERO), ZERO, torch.maximum(ca, cb))
            else:
                carry = torch.where(cb == ZERO, VARY, torch.where(ca == ZERO, ZERO, torch.maximum(ca, cb)))
            return ma.with_carry(carry.to(torch.int8))
        cmap, other, first = (ma, b, True) if ma is not None else (mb, a, False)
        if cmap is None:
            return param_function(ctx)   # 1 + w: a function of a parameter
        pv = pb if first else pa
        if pv is not None:
            return _with_param(ctx, cmap, pv, other, kind, first)
        if isinstance(other, numbers.Number):
            if kind == "add":
                return cmap if other == 0 else cmap.map_carry(CONST, CONST)
            if kind == "mul":
                return cmap.map_carry(ZERO, CONST) if other == other else cmap.map_carry(VARY, VARY)
            # div
            if first:
                return cmap.map_carry(ZERO, CONST) if other != 0 else cmap.map_carry(VARY, VARY)
            return cmap.map_carry(VARY, CONST)
        if not isinstance(other, torch.Tensor):
            raise Unsupported(f"operand of type {type(other).__name__}")
        in_place = ctx.node.target in INPLACE and not first   # the untracked operand is the one written
        return with_untracked(ctx, cmap, other, 1 if first else 0, kind, first, in_place)


INPLACE = (operator.iadd, operator.isub, operator.imul, operator.itruediv, "add_", "sub_", "mul_", "div_")


def with_untracked(ctx, cmap: ChannelMap, other: torch.Tensor, arg: int, kind: str, first: bool,
                   in_place: bool = False) -> ChannelMap:
    """Channels meet argument ``arg``, a tensor without tracked channels (``kind``: add, mul or div;
    ``first``: the channels are the left operand). Broadcast along the channels, each channel meets the
    same values. Spanning every channel dim (ALiBi's per-head bias added to the scores), the operand is
    sliced with the channels in the rewrite. Spanning some of several channel dims (RoPE's cos and sin
    over head_dim of (heads, head_dim)), it keeps its size there, so a head is pruned whole."""
    nd = cmap.ndim
    shape = [1] * (nd - other.dim()) + list(other.shape)
    spanned = [d for d in cmap.dims if shape[d] != 1]
    if len(spanned) == len(cmap.dims):
        node = ctx.node.args[arg] if arg < len(ctx.node.args) else None
        if in_place or not isinstance(node, fx.Node):
            raise Unsupported("an operand without tracked channels spans the channel dim")
        ctx.slices_operand(arg, spanned)
    elif spanned:
        ctx.union_across(cmap, spanned)
    # a pruned channel combines with values that vary (or that are not the same for every channel)
    if kind == "add":
        return cmap.map_carry(VARY, VARY)
    if kind == "mul":
        return cmap.map_carry(ZERO, VARY)
    return cmap.map_carry(ZERO, VARY) if first else cmap.map_carry(VARY, VARY)


def _broadcast_heads(ctx, ma: ChannelMap, mb: ChannelMap, a, b, nd: int):
    """Operands whose channel dims differ, one holding size 1 on the dims it lacks (``x * s`` with x
    on (heads, head_dim) and s on (heads,), broadcast over head_dim): the channels along those dims are
    pruned together, so each of the smaller operand's channels meets whole slices. Returns the two maps
    on the same dims (the smaller one broadcast)."""
    for big, small, t in ((ma, mb, b), (mb, ma, a)):
        missing = [d for d in big.dims if d not in small.dims]
        shape = [1] * (nd - t.dim()) + list(t.shape)
        if set(small.dims) < set(big.dims) and all(shape[d] == 1 for d in missing):
            reps = ctx.union_across(big, missing)   # big's ids with the missing dims dropped
            ctx.union_ids(reps, small.ids)
            view = [big.ids.shape[i] if d in small.dims else 1 for i, d in enumerate(big.dims)]
            wide = ChannelMap(big.dims, big.ids, small.carry.reshape(view).expand(big.ids.shape), big.ndim)
            return (big, wide) if big is ma else (wide, big)
    raise Unsupported("operands hold channels on different dims")


def _with_param(ctx, cmap: ChannelMap, pv: ParamView, value: torch.Tensor, kind: str, first: bool):
    """A parameter (layer scale, position embedding, bias) meets channels: it is sliced with them."""
    offset = cmap.ndim - value.dim()
    spans = [d for d in cmap.dims if d - offset >= 0 and value.shape[d - offset] > 1]
    # does the parameter vary along any dim other than the channel dims? then it is no per-channel constant
    per_channel = all(value.shape[i] == 1 for i in range(value.dim()) if i + offset not in cmap.dims)
    for d in spans:
        if pv.param_dim(d - offset) is None:
            raise Unsupported(f"{pv.target}, gathered by an index, spans the channel dim")
        ctx.param_member(pv, d - offset, cmap, zeroed=(kind == "add" and not pv.derived))
    if not spans:  # broadcast along the channels: the same constant for every channel
        const = CONST if per_channel else VARY
        if kind == "add":
            return cmap.map_carry(const, const)
        return cmap.map_carry(ZERO, const) if first or kind == "mul" else cmap.map_carry(VARY, VARY)
    const = CONST if per_channel else VARY
    if kind == "add":
        if ctx.prune_bias and not pv.derived:  # the parameter's entries of pruned channels are masked too
            return cmap.map_carry(ZERO, const)
        return cmap.map_carry(const, const)
    if kind == "mul" or first:
        return cmap.map_carry(ZERO, const)
    return cmap.map_carry(VARY, VARY)  # parameter / channels
