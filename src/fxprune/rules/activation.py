"""Pointwise activations: channels pass through; a pruned channel holds f(0) or f(constant)."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..channels import CONST, ZERO, ChannelMap
from .common import factory_kwargs, param_function
from .registry import Rule, Unsupported, register

ACTIVATION_MODULES = (
    nn.ReLU, nn.RReLU, nn.Hardtanh, nn.ReLU6, nn.Sigmoid, nn.Hardsigmoid, nn.Tanh, nn.SiLU, nn.Mish,
    nn.Hardswish, nn.ELU, nn.CELU, nn.SELU, nn.Hardshrink, nn.LeakyReLU, nn.LogSigmoid, nn.Softplus,
    nn.Softsign, nn.Tanhshrink, nn.GELU, nn.Softshrink, nn.Threshold,
)
ACTIVATION_FUNCTIONS = (
    F.relu, F.relu_, F.rrelu, F.hardtanh, F.relu6, F.sigmoid, F.hardsigmoid, F.tanh, F.silu, F.mish,
    F.hardswish, F.elu, F.celu, F.selu, F.hardshrink, F.leaky_relu, F.logsigmoid, F.softplus,
    F.softsign, F.tanhshrink, F.gelu, F.softshrink, F.threshold,
    torch.relu, torch.relu_, torch.sigmoid, torch.tanh, torch.selu, torch.celu, torch.rrelu,
)
ACTIVATION_METHODS = ("relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_")


def maps_zero_to_zero(fn, like: torch.Tensor, *rest, **kwargs) -> bool:
    """Evaluate the op on a zero tensor (one position per channel) to learn f(0)."""
    probe = torch.zeros([1] * like.dim(), dtype=like.dtype) if like.dim() else torch.zeros((), dtype=like.dtype)
    with torch.no_grad():
        try:
            return bool((fn(probe, *rest, **kwargs) == 0).all())
        except Exception:
            return False


class PointwiseRule(Rule):
    def flow(self, ctx):
        cmap = ctx.arg_map(0, "input")
        if not isinstance(cmap, ChannelMap):  # of a parameter (x * self.gate.sigmoid()): a function of it
            return param_function(ctx)
        zero = ZERO if self.f0_is_zero(ctx) else CONST
        return cmap.map_carry(zero, CONST)

    def f0_is_zero(self, ctx) -> bool:
        x = ctx.arg(0, "input")
        if ctx.module is not None:
            return maps_zero_to_zero(ctx.module, x)
        if ctx.node.op == "call_method":
            return maps_zero_to_zero(lambda t: getattr(t, ctx.node.target)(*ctx.args[1:], **ctx.kwargs), x)
        return maps_zero_to_zero(ctx.node.target, x, *ctx.args[1:], **ctx.kwargs)

    def rewrite(self, m, keep, fold):
        return m


register(*ACTIVATION_MODULES, *ACTIVATION_FUNCTIONS, *ACTIVATION_METHODS)(PointwiseRule)


@register(nn.PReLU)
class PReLURule(PointwiseRule):
    """PReLU(0) = 0; with one slope per channel the slopes are members of the channel's group."""

    def flow(self, ctx):
        cmap = ctx.arg_map(0, "input")
        m = ctx.module
        if cmap is None:
            return None
        if m.num_parameters > 1:
            cdim = 1 if ctx.out.dim() > 1 else 0
            if cmap.dims != (cdim,):
                raise Unsupported("per-channel PReLU slopes on a dim that is not the channel dim")
            ctx.member("channels", cmap, ("weight",))
        return cmap.map_carry(ZERO, CONST)

    def rewrite(self, m, keep, fold):
        k = keep.get("channels")
        if k is None or m.num_parameters == 1:
            return m
        new = nn.PReLU(int(k.sum()), **factory_kwargs(m))
        with torch.no_grad():
            new.weight.copy_(m.weight.detach()[k])
        return new
