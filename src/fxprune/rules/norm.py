"""Normalisation layers. LayerNorm over the channel dim mixes channels through its statistics: in the
masked model it normalises over the kept channels only, so removing pruned channels is exact."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..channels import CONST, VARY, ZERO
from . import Rule, Unsupported, register


class MaskedLayerNorm(nn.Module):
    """LayerNorm over the last dim that ignores removed channels: their statistics are left out and
    they output their bias (0 when ``prune_bias``). ``keep`` is updated in place by update_masks."""

    def __init__(self, ln: nn.LayerNorm, keep: torch.Tensor, prune_bias: bool):
        super().__init__()
        self.normalized_shape = tuple(ln.normalized_shape)
        self.eps = ln.eps
        self.elementwise_affine = ln.elementwise_affine
        self.weight = ln.weight
        self.bias = ln.bias
        self.prune_bias = prune_bias
        self.register_buffer("keep", keep.clone())

    def forward(self, x):
        idx = self.keep.nonzero().squeeze(1)
        w = None if self.weight is None else self.weight.index_select(0, idx)
        b = None if self.bias is None else self.bias.index_select(0, idx)
        y = F.layer_norm(x.index_select(-1, idx), (idx.numel(),), w, b, self.eps)
        if self.bias is None or self.prune_bias:
            out = x.new_zeros(x.shape)
        else:
            out = self.bias.expand(x.shape).clone()
        return out.index_copy(-1, idx, y)

    def to_layernorm(self) -> nn.LayerNorm:
        ln = nn.LayerNorm(self.normalized_shape, eps=self.eps, elementwise_affine=self.elementwise_affine,
                          bias=self.bias is not None)
        if self.weight is not None:
            ln.weight = self.weight
        if self.bias is not None:
            ln.bias = self.bias
        return ln


@register(nn.LayerNorm)
class LayerNormRule(Rule):
    def flow(self, ctx):
        cmap = ctx.arg_map(0, "input")
        if cmap is None:
            return None
        m = ctx.module
        nd = ctx.out.dim()
        normed = range(nd - len(m.normalized_shape), nd)
        has_bias = m.elementwise_affine and m.bias is not None
        if not any(d in normed for d in cmap.dims):
            # a constant channel's row normalises to 0; it then holds the bias, which varies along
            # the normalised dims
            return cmap.with_carry(VARY if has_bias else ZERO)
        if len(m.normalized_shape) != 1 or cmap.dims != (nd - 1,):
            raise Unsupported("normalised over several dims that hold channels")
        if m.elementwise_affine:
            ctx.member("channels", cmap, tuple(p for p in ("weight", "bias") if getattr(m, p) is not None))
        else:
            ctx.member("channels", cmap, ())
        return cmap.with_carry(ZERO if (not has_bias or ctx.prune_bias) else CONST)

    def masked(self, m, keep, prune_bias):
        return MaskedLayerNorm(m, keep["channels"], prune_bias)

    def rewrite(self, m, keep, fold):
        k = keep["channels"]
        new = nn.LayerNorm(int(k.sum()), eps=m.eps, elementwise_affine=m.elementwise_affine,
                           bias=m.bias is not None, device=m.weight.device if m.weight is not None else None)
        with torch.no_grad():
            if m.weight is not None:
                new.weight.copy_(m.weight.detach()[k])
            if m.bias is not None:
                new.bias.copy_(m.bias.detach()[k])
        new.train(m.training)
        return new


_BATCH = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)


@register(*_BATCH)
class ChannelNormRule(Rule):
    """BatchNorm / InstanceNorm: one scale and shift per channel (dim 1, or dim 0 unbatched).

    With ``prune_bias`` the weight and bias of pruned channels are masked, so a pruned channel is
    exactly 0 after the norm; otherwise the norm maps a constant channel to a constant (batch or
    instance statistics of a constant channel normalise it to 0, leaving the shift)."""

    def flow(self, ctx):
        cmap = ctx.arg_map(0, "input")
        if cmap is None:
            return None
        m = ctx.module
        # BatchNorm always has a batch dim; InstanceNorm also takes unbatched (C, ...) input
        unbatched = not isinstance(m, nn.modules.batchnorm._BatchNorm) and ctx.out.dim() == _unbatched_rank(m)
        cdim = 0 if unbatched else 1
        if cmap.dims != (cdim,):
            raise Unsupported("channels on a dim other than the normalised channel dim")
        params = tuple(p for p in ("weight", "bias", "running_mean", "running_var") if getattr(m, p, None) is not None)
        zeroed = tuple(p for p in ("weight", "bias") if getattr(m, p, None) is not None)
        ctx.member("channels", cmap, params, zeroed)
        if zeroed and ctx.prune_bias:
            return cmap.with_carry(ZERO)
        if not m.affine:
            # (c - mean) / std: a constant channel stays constant (eval) or becomes 0 (batch stats)
            return cmap.map_carry(CONST if _uses_running_stats(m) else ZERO, CONST if _uses_running_stats(m) else ZERO)
        return cmap.map_carry(CONST, CONST)

    def rewrite(self, m, keep, fold):
        k = keep["channels"]
        new = type(m)(int(k.sum()), eps=m.eps, momentum=m.momentum, affine=m.affine,
                      track_running_stats=m.track_running_stats)
        with torch.no_grad():
            for p in ("weight", "bias", "running_mean", "running_var"):
                src = getattr(m, p, None)
                if src is not None:
                    getattr(new, p).copy_(src.detach()[k])
            if getattr(m, "num_batches_tracked", None) is not None:
                new.num_batches_tracked.copy_(m.num_batches_tracked)
        new.train(m.training)
        return new


def _unbatched_rank(m) -> int:
    name = type(m).__name__
    return {"1": 2, "2": 3, "3": 4}[name[-2]]


def _uses_running_stats(m) -> bool:
    return (not m.training) and m.track_running_stats and m.running_mean is not None
