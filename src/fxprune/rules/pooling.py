"""Pooling: channels pass through; padded average pooling turns a constant channel non-constant."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..channels import CONST, VARY, ZERO
from . import Rule, Unsupported, register

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


@register(torch.mean, torch.sum, torch.amax, torch.amin, "mean", "sum", "amax", "amin")
class ReduceRule(Rule):
    """Reductions over dims without channels (global average pooling as x.mean([2, 3])): channels pass;
    a reduction over a channel dim mixes channels and is a barrier."""

    def flow(self, ctx):
        from ..channels import ChannelMap
        cmap = ctx.arg_map(0, "input")
        if not isinstance(cmap, ChannelMap):
            return None
        dims = ctx.arg(1, "dim")
        if dims is None:
            raise Unsupported("reduction over all dims, channels included")
        dims = [dims] if isinstance(dims, int) else list(dims)
        nd = cmap.ndim
        dims = sorted(d % nd for d in dims)
        if any(d in cmap.dims for d in dims):
            raise Unsupported("reduction over a channel dim")
        keepdim = ctx.arg(2, "keepdim", False)
        out = cmap
        if not keepdim:
            for d in reversed(dims):
                out = out.drop_dim(d, 0)
        return out
