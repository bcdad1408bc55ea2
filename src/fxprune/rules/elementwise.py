"""Elementwise binary ops. Two operands that both hold channels couple them (a residual add prunes the
same channels on both sides); an operand without channels decides what a pruned channel holds."""
from __future__ import annotations

import numbers
import operator

import torch

from ..channels import CONST, VARY, ZERO, ChannelMap
from . import Rule, Unsupported, register

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
        ma = ma.align_to(nd) if ma is not None else None
        mb = mb.align_to(nd) if mb is not None else None
        if ma is not None and mb is not None:
            if ma.dims != mb.dims or ma.shape != mb.shape:
                raise Unsupported("operands hold channels on different dims")
            ctx.union(ma, mb)
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
            return None
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
        # the other operand is a tensor without tracked channels
        shape = [1] * (nd - other.dim()) + list(other.shape)
        if any(shape[d] != 1 for d in cmap.dims):
            raise Unsupported("an operand without tracked channels spans the channel dim")
        # broadcast along the channels: a pruned channel combines with values that vary
        if kind == "add":
            return cmap.map_carry(VARY, VARY)
        if kind == "mul":
            return cmap.map_carry(ZERO, VARY)
        return cmap.map_carry(ZERO, VARY) if first else cmap.map_carry(VARY, VARY)
