"""Pooling: channels pass through; padded average pooling turns a constant channel non-constant."""
from __future__ import annotations

import math
import operator

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from ..channels import CONST, VARY, ZERO, ChannelMap
from .registry import Rule, Unsupported, register

_SPATIAL = {  # op -> number of pooled (trailing) dims
    nn.MaxPool1d: 1, nn.MaxPool2d: 2, nn.MaxPool3d: 3,
    nn.AvgPool1d: 1, nn.AvgPool2d: 2, nn.AvgPool3d: 3,
    nn.AdaptiveAvgPool1d: 1, nn.AdaptiveAvgPool2d: 2, nn.AdaptiveAvgPool3d: 3,
    nn.AdaptiveMaxPool1d: 1, nn.AdaptiveMaxPool2d: 2, nn.AdaptiveMaxPool3d: 3,
    nn.LPPool1d: 1, nn.LPPool2d: 2, nn.LPPool3d: 3,
    F.max_pool1d: 1, F.max_pool2d: 2, F.max_pool3d: 3,
    F.avg_pool1d: 1, F.avg_pool2d: 2, F.avg_pool3d: 3,
    F.adaptive_avg_pool1d: 1, F.adaptive_avg_pool2d: 2, F.adaptive_avg_pool3d: 3,
    F.adaptive_max_pool1d: 1, F.adaptive_max_pool2d: 2, F.adaptive_max_pool3d: 3,
    F.lp_pool1d: 1, F.lp_pool2d: 2,
}
_AVG = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)


@register(*_SPATIAL)
class PoolRule(Rule):
    def flow(self, ctx):
        cmap = ctx.arg_map(0, "input")
        if cmap is None:
            return None
        op = type(ctx.module) if ctx.module is not None else ctx.node.target
        pooled = range(ctx.out.dim() - _SPATIAL[op], ctx.out.dim())
        if any(d in pooled for d in cmap.dims):
            raise Unsupported("channels on a pooled dim")
        if isinstance(ctx.out, tuple):  # return_indices=True
            raise Unsupported("pooling with return_indices")
        const = CONST
        if op in _AVG:
            if ctx.module is not None:
                pad, include = ctx.module.padding, ctx.module.count_include_pad
            else:
                pad, include = ctx.arg(3, "padding", 0), ctx.arg(5, "count_include_pad", True)
            pads = pad if isinstance(pad, (tuple, list)) else (pad,)
            if include and any(p > 0 for p in pads):
                const = VARY  # zero padding averaged in at the borders
        return cmap.map_carry(ZERO, const)

    def rewrite(self, m, keep, fold):
        return m


@register(torch.mean, torch.sum, torch.amax, torch.amin, torch.any, torch.all, "mean", "sum", "amax", "amin",
          "any", "all")
class ReduceRule(Rule):
    """Reductions. Over dims without channels (global average pooling as x.mean([2, 3])) channels pass.
    A sum or mean over every channel dim (RMSNorm's ``x.pow(2).mean(-1)``) reads the channels: pruned
    ones must be zero there, and a mean keeps dividing by the original width after pruning. A max or
    min over channels is a barrier. A sum or mean over some of several channel dims (the radix of split
    attention: ``x.view(b, radix, c, h, w).sum(1)``) adds channels together: they are pruned together,
    so the reduced dims keep their sizes and a mean its count."""

    def flow(self, ctx):
        cmap = ctx.arg_map(0, "input")
        if not isinstance(cmap, ChannelMap):
            return None
        dims = ctx.arg(1, "dim")
        if dims is None:
            raise Unsupported("reduction over all dims, channels included")
        dims = [dims] if isinstance(dims, int) else list(dims)
        nd = cmap.ndim
        dims = sorted(d % nd for d in dims)
        keepdim = ctx.arg(2, "keepdim", False)
        if any(d in cmap.dims for d in dims):
            if _name(ctx.node) not in ("sum", "mean"):
                raise Unsupported("reduction over a channel dim")
            if set(cmap.dims) <= set(dims):
                ctx.internal_use(cmap.ids, cmap.carry)  # zeros add nothing to a sum
                return None
            return _sum_some_channel_dims(ctx, cmap, dims, keepdim)
        out = cmap
        if not keepdim:
            for d in reversed(dims):
                out = out.drop_dim(d, 0)
        return out

    def rewrite_node(self, node, ctx):
        """A mean over pruned channels becomes sum / original count (the pruned ones were zero)."""
        src = node.args[0] if node.args else node.kwargs.get("input")
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        if _name(node) != "mean" or not isinstance(src, fx.Node) or dims is None:
            return
        old, new = ctx.old_shape(src), ctx.new_sizes(src)
        if old is None or new is None:
            return
        dims = [dims] if isinstance(dims, int) else list(dims)
        count = math.prod(old[d] for d in dims)
        if count == math.prod(new[d] for d in dims):
            return
        node.target = "sum" if node.op == "call_method" else torch.sum
        with node.graph.inserting_after(node):
            scaled = node.graph.call_function(operator.truediv, (node, float(count)))
        node.replace_all_uses_with(scaled, delete_user_cb=lambda user: user is not scaled)


def _sum_some_channel_dims(ctx, cmap, dims: list[int], keepdim: bool):
    summed = [d for d in cmap.dims if d in dims]
    ids = ctx.union_across(cmap, summed)
    rest = [a for a, d in enumerate(cmap.dims) if d not in dims]
    across = [cmap.dims.index(d) for d in summed]
    carry = cmap.carry.permute(rest + across).reshape(list(ids.shape) + [-1]).amax(-1)  # ZERO < CONST < VARY
    out_dims = tuple(cmap.dims[a] - (0 if keepdim else sum(r < cmap.dims[a] for r in dims)) for a in rest)
    return ChannelMap(out_dims, ids, carry, cmap.ndim - (0 if keepdim else len(dims)))


def _name(node) -> str:
    return node.target if isinstance(node.target, str) else node.target.__name__


@register(F.interpolate, F.upsample, F.upsample_nearest, F.upsample_bilinear,
          nn.Upsample, nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d)
class ResampleRule(Rule):
    """Resampling of the trailing spatial dims (every mode of F.interpolate): channels pass through. A
    zero channel stays zero; a constant one stays that constant (nearest modes copy values; linear,
    bicubic and area weights sum to 1, with align_corners and antialias too: to float rounding)."""

    def flow(self, ctx):
        cmap = ctx.arg_map(0, "input")
        if not isinstance(cmap, ChannelMap):
            return None
        x = ctx.arg(0, "input")
        if any(d >= 2 for d in cmap.dims) or x.dim() < 3:
            raise Unsupported("channels on a resampled dim")
        return cmap

    def rewrite(self, m, keep, fold):
        return m


_PAD_MODULES = {
    nn.ZeroPad1d: "constant", nn.ZeroPad2d: "constant", nn.ZeroPad3d: "constant",
    nn.ConstantPad1d: "constant", nn.ConstantPad2d: "constant", nn.ConstantPad3d: "constant",
    nn.ReflectionPad1d: "reflect", nn.ReflectionPad2d: "reflect", nn.ReflectionPad3d: "reflect",
    nn.ReplicationPad1d: "replicate", nn.ReplicationPad2d: "replicate", nn.ReplicationPad3d: "replicate",
    nn.CircularPad1d: "circular", nn.CircularPad2d: "circular", nn.CircularPad3d: "circular",
}


@register(F.pad, *_PAD_MODULES)
class PadRule(Rule):
    """Padding of dims without channels: channels pass through. Reflection, replication and circular
    padding copy a channel's values, so zero and constant channels keep their carry. Constant padding
    with value v puts v at the border: a constant channel (c != v) is then no longer one constant, and a
    zero channel stays zero only when v == 0. Padding (or cropping) a channel dim is a barrier."""

    def flow(self, ctx):
        cmap = ctx.arg_map(0, "input")
        if not isinstance(cmap, ChannelMap):
            return None
        if ctx.module is not None:
            m = ctx.module
            pad, mode, value = m.padding, _PAD_MODULES[type(m)], getattr(m, "value", 0.0)
        else:
            pad, mode, value = ctx.arg(1, "pad"), ctx.arg(2, "mode", "constant"), ctx.arg(3, "value", None)
        value = 0.0 if value is None else value
        nd = cmap.ndim
        padded = {nd - 1 - i // 2 for i, p in enumerate(pad) if p != 0}
        if any(d in cmap.dims for d in padded):
            raise Unsupported("padding along a channel dim")
        if mode != "constant" or not any(p > 0 for p in pad):
            return cmap  # copies of the channel's own values (or a crop)
        return cmap.map_carry(ZERO if value == 0 else VARY, VARY)

    def rewrite(self, m, keep, fold):
        return m
