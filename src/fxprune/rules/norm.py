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
