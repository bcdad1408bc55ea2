"""Linear and convolution: consumers of their input channels, producers of their output channels."""
from __future__ import annotations

import copy

import torch
import torch.nn as nn

from ..channels import CONST, ZERO, ChannelMap
from . import Rule, Unsupported, register


def _producer_carry(module: nn.Module, prune_bias: bool) -> int:
    return ZERO if (getattr(module, "bias", None) is None or prune_bias) else CONST


def _bias_roles(module: nn.Module) -> dict[str, int]:
    return {"bias": 1} if getattr(module, "bias", None) is not None else {}


@register(nn.Linear)
class LinearRule(Rule):
    def flow(self, ctx):
        m = ctx.module
        ctx.consume("in", ctx.arg_map(0, "input"), dim=-1, fold=True)
        ids = ctx.produce("out", m.out_features, {"weight": 1}, _bias_roles(m))
        return ChannelMap.on_dim(-1, ctx.out.dim(), ids, _producer_carry(m, ctx.prune_bias))

    def rewrite(self, m, keep, fold):
        keep_out = keep.get("out", torch.ones(m.out_features, dtype=torch.bool))
        keep_in = keep.get("in", torch.ones(m.in_features, dtype=torch.bool))
        w = m.weight.detach()
        bias = None if m.bias is None else m.bias.detach().clone()
        c = fold.get("in")
        if c is not None:
            delta = w[:, ~keep_in] @ c[~keep_in].to(w.dtype)
            bias = delta if bias is None else bias + delta
        new = nn.Linear(int(keep_in.sum()), int(keep_out.sum()), bias=bias is not None,
                        device=w.device, dtype=w.dtype)
        with torch.no_grad():
            new.weight.copy_(w[keep_out][:, keep_in])
            if bias is not None:
                new.bias.copy_(bias[keep_out])
        new.train(m.training)
        return new


def zero_padded(m: nn.Module) -> bool:
    """Whether a conv pads with zeros somewhere (a constant input channel then varies at borders)."""
    if getattr(m, "padding_mode", "zeros") != "zeros":
        return False
    p = m.padding
    if isinstance(p, str):
        return p == "same" and any(k > 1 for k in m.kernel_size)
    return any(int(x) > 0 for x in p)


@register(nn.Conv1d, nn.Conv2d, nn.Conv3d)
class ConvRule(Rule):
    def flow(self, ctx):
        m = ctx.module
        if m.groups != 1:
            raise Unsupported(f"grouped convolution (groups={m.groups})")
        x = ctx.arg_map(0, "input")
        batched = ctx.out.dim() == len(m.kernel_size) + 2
        cdim = 1 if batched else 0
        ctx.consume("in", x, dim=cdim, fold=not zero_padded(m))
        ids = ctx.produce("out", m.out_channels, {"weight": 1}, _bias_roles(m))
        return ChannelMap.on_dim(cdim, ctx.out.dim(), ids, _producer_carry(m, ctx.prune_bias))

    def rewrite(self, m, keep, fold):
        keep_out = keep.get("out", torch.ones(m.out_channels, dtype=torch.bool))
        keep_in = keep.get("in", torch.ones(m.in_channels, dtype=torch.bool))
        w = m.weight.detach()
        bias = None if m.bias is None else m.bias.detach().clone()
        c = fold.get("in")
        if c is not None:
            # a constant input channel adds c * (sum of its kernel) to every output position
            delta = w[:, ~keep_in].flatten(2).sum(2) @ c[~keep_in].to(w.dtype)
            bias = delta if bias is None else bias + delta
        new = copy.copy(m)  # keeps stride, padding, dilation, padding_mode, hooks-free attrs
        new._parameters = dict(m._parameters)
        new._buffers = dict(m._buffers)
        new._modules = dict(m._modules)
        new.in_channels, new.out_channels = int(keep_in.sum()), int(keep_out.sum())
        new.weight = nn.Parameter(w[keep_out][:, keep_in].clone(), requires_grad=m.weight.requires_grad)
        new.bias = None if bias is None else nn.Parameter(bias[keep_out].clone())
        return new
