"""Linear and convolution: consumers of their input channels, producers of their output channels."""
from __future__ import annotations

import copy

import torch
import torch.nn as nn

from ..channels import CONST, VARY, ZERO, ChannelMap
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
        return ChannelMap.on_dim(-1, ctx.out.dim(), ids, ctx.producer_carry("out", _producer_carry(m, ctx.prune_bias)))

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
    """groups == 1: consumer of input channels, producer of output channels.
    Depthwise (groups == in_channels): channels pass through, each with its filter(s) and bias as members.
    Grouped: each group must keep as many channels as the others, so channel j of every group is pruned
    together, on the input and on the output side."""

    def flow(self, ctx):
        m = ctx.module
        x = ctx.arg_map(0, "input")
        batched = ctx.out.dim() == len(m.kernel_size) + 2
        cdim = 1 if batched else 0
        nd = ctx.out.dim()
        g = m.groups
        if g > 1 and g == m.in_channels:
            return self._depthwise(ctx, x, cdim)
        if x is not None and g > 1:
            if x.dims != (cdim,):
                raise Unsupported("grouped convolution over channels spread on several dims")
            per = x.ids.reshape(g, -1)
            for G in range(1, g):
                ctx.union_ids(per[0], per[G])
        ctx.consume("in", x, dim=cdim, fold=not zero_padded(m))
        ids = ctx.produce("out", m.out_channels, {"weight": 1}, _bias_roles(m))
        if g > 1:
            per = ids.reshape(g, -1)
            for G in range(1, g):
                ctx.union_ids(per[0], per[G])
        return ChannelMap.on_dim(cdim, nd, ids, ctx.producer_carry("out", _producer_carry(m, ctx.prune_bias)))

    def _depthwise(self, ctx, x, cdim):
        m = ctx.module
        if x is None:
            return None
        if x.dims != (cdim,):
            raise Unsupported("depthwise convolution over channels spread on several dims")
        mult = m.out_channels // m.in_channels
        params = ("weight", "bias") if m.bias is not None else ("weight",)
        ctx.member("channels", x, params, zeroed=params)
        zero_after = CONST if m.bias is not None else ZERO
        out = ctx.affine_carry(x, params, x.map_carry(zero_after, VARY if zero_padded(m) else CONST))
        return ChannelMap.on_dim(cdim, x.ndim, out.ids.repeat_interleave(mult), out.carry.repeat_interleave(mult))

    def rewrite(self, m, keep, fold):
        if "channels" in keep:  # depthwise
            k = keep["channels"]
            mult = m.out_channels // m.in_channels
            keep_out = k.repeat_interleave(mult)
            new = _conv_like(m, m.weight.detach()[keep_out], None if m.bias is None else m.bias.detach()[keep_out])
            new.in_channels, new.out_channels, new.groups = int(k.sum()), int(keep_out.sum()), int(k.sum())
            return new
        keep_out = keep.get("out", torch.ones(m.out_channels, dtype=torch.bool))
        keep_in = keep.get("in", torch.ones(m.in_channels, dtype=torch.bool))
        g = m.groups
        per_group = keep_in.reshape(g, -1)
        if not bool((per_group == per_group[0]).all()):
            raise AssertionError("grouped conv: groups keep different input channels")
        w = m.weight.detach()
        bias = None if m.bias is None else m.bias.detach().clone()
        c = fold.get("in")
        if c is not None:
            # a constant input channel adds c * (sum of its kernel) to every output position of its group
            cin = c.reshape(g, -1)
            wsum = w.flatten(2).sum(2).reshape(g, -1, w.shape[1])          # (g, out/g, in/g)
            removed = ~per_group[0]
            delta = torch.einsum("goi,gi->go", wsum[:, :, removed], cin[:, removed].to(w.dtype)).reshape(-1)
            bias = delta if bias is None else bias + delta
        new = _conv_like(m, w[keep_out][:, per_group[0]], None if bias is None else bias[keep_out])
        new.in_channels, new.out_channels = int(keep_in.sum()), int(keep_out.sum())
        return new


def _conv_like(m, weight, bias):
    """A copy of conv ``m`` (stride, padding, dilation, groups, padding_mode) with new parameters."""
    new = copy.copy(m)
    new._parameters = dict(m._parameters)
    new._buffers = dict(m._buffers)
    new._modules = dict(m._modules)
    new.weight = nn.Parameter(weight.clone(), requires_grad=m.weight.requires_grad)
    new.bias = None if bias is None else nn.Parameter(bias.clone())
    return new


@register(nn.Embedding)
class EmbeddingRule(Rule):
    """An embedding table produces embedding_dim channels: its weight's columns."""

    def flow(self, ctx):
        m = ctx.module
        if m.max_norm is not None:
            raise Unsupported("max_norm renormalises rows over all channels")
        ids = ctx.produce("out", m.embedding_dim, {"weight": 1}, axes={"weight": 1})
        return ChannelMap.on_dim(-1, ctx.out.dim(), ids, ctx.producer_carry("out", ZERO))

    def rewrite(self, m, keep, fold):
        k = keep["out"]
        new = copy.copy(m)
        new._parameters = dict(m._parameters)
        new.weight = nn.Parameter(m.weight.detach()[:, k].clone(), requires_grad=m.weight.requires_grad)
        new.embedding_dim = int(k.sum())
        return new


@register(nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
class ConvTransposeRule(Rule):
    """Transposed convolution: weight (in, out / groups, *kernel). Its input channels are the weight's
    rows, its output channels the weight's dim 1. A constant input channel spreads unevenly over the
    output, so only zero channels are removed on the input side."""

    def flow(self, ctx):
        m = ctx.module
        if m.groups != 1:
            raise Unsupported(f"grouped transposed convolution (groups={m.groups})")
        batched = ctx.out.dim() == len(m.kernel_size) + 2
        cdim = 1 if batched else 0
        ctx.consume("in", ctx.arg_map(0, "input"), dim=cdim, fold=False)
        ids = ctx.produce("out", m.out_channels, {"weight": 1}, _bias_roles(m), axes={"weight": 1})
        return ChannelMap.on_dim(cdim, ctx.out.dim(), ids, ctx.producer_carry("out", _producer_carry(m, ctx.prune_bias)))

    def rewrite(self, m, keep, fold):
        keep_out = keep.get("out", torch.ones(m.out_channels, dtype=torch.bool))
        keep_in = keep.get("in", torch.ones(m.in_channels, dtype=torch.bool))
        w = m.weight.detach()[keep_in][:, keep_out]
        new = _conv_like(m, w, None if m.bias is None else m.bias.detach()[keep_out])
        new.in_channels, new.out_channels = int(keep_in.sum()), int(keep_out.sum())
        return new
