"""Normalisation layers. LayerNorm over the channel dim mixes channels through its statistics: in the
masked model it normalises over the kept channels only, so removing pruned channels is exact."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils import parametrize

from ..channels import CONST, VARY, ZERO, ChannelMap, ParamView
from ..graph import MASK_TAG, RESTORE_TAG, attr
from .common import factory_kwargs
from .linear import _sole_user
from .registry import Rule, Unsupported, register


def masked_layer_norm(x, normalized_shape, weight, bias, eps, keep, zero_pruned: bool):
    """layer_norm over the last dim's ``keep`` channels only; the others hold their bias (0 when
    ``zero_pruned``)."""
    idx = keep.nonzero().squeeze(1)
    w = None if weight is None else weight.index_select(0, idx)
    b = None if bias is None else bias.index_select(0, idx)
    y = F.layer_norm(x.index_select(-1, idx), (idx.numel(),), w, b, eps)
    out = x.new_zeros(x.shape) if (bias is None or zero_pruned) else bias.expand(x.shape).clone()
    return out.index_copy(-1, idx, y)


def masked_rms_norm(x, normalized_shape, weight, eps, keep, zero_pruned: bool = True):
    """rms_norm over the last dim's ``keep`` channels only; the others are 0."""
    idx = keep.nonzero().squeeze(1)
    w = None if weight is None else weight.index_select(0, idx)
    y = F.rms_norm(x.index_select(-1, idx), (idx.numel(),), w, eps)
    return x.new_zeros(x.shape).index_copy(-1, idx, y)


def masked_group_norm(x, num_groups, weight, bias, eps, keep, zero_pruned: bool):
    """group_norm with one group over dim 1's ``keep`` channels only; the others hold their bias (0
    when ``zero_pruned``)."""
    idx = keep.nonzero().squeeze(1)
    w = None if weight is None else weight.index_select(0, idx)
    b = None if bias is None else bias.index_select(0, idx)
    y = F.group_norm(x.index_select(1, idx), 1, w, b, eps)
    shape = [1, -1] + [1] * (x.dim() - 2)
    out = x.new_zeros(x.shape) if (bias is None or zero_pruned) else bias.reshape(shape).expand(x.shape).clone()
    return out.index_copy(1, idx, y)


def _call_masked(gm, node, keep: torch.Tensor, prune_bias: bool, fn, args) -> None:
    """The function op ``node`` becomes ``fn(*args, keep, prune_bias)`` in the masked model, ``keep`` a
    buffer (updated in place by update_masks)."""
    buf = f"_fxprune_keep_{node.name}"
    if hasattr(gm, buf):
        getattr(gm, buf).copy_(keep)
        return
    gm.register_buffer(buf, keep.clone())
    with gm.graph.inserting_before(node):
        k = gm.graph.get_attr(buf)
    k.meta[MASK_TAG] = True
    # restore information without Node references (node meta is deep-copied with the graph)
    node.meta[RESTORE_TAG] = (node.target, len(args))
    node.target = fn
    node.args, node.kwargs = (*args, k, prune_bias), {}


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
        return masked_layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps, self.keep,
                                 self.prune_bias)

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
        if ctx.flow.dead:
            raise Unsupported("its statistics include every channel, zero or not")
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
                           bias=m.bias is not None, **factory_kwargs(m))
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
        if not m.affine:
            # (c - mean) / std: a constant channel stays constant (eval) or becomes 0 (batch stats)
            c = CONST if _uses_running_stats(m) else ZERO
            return cmap.map_carry(c, c)
        return ctx.affine_carry(cmap, zeroed, cmap.map_carry(CONST, CONST))

    def rewrite(self, m, keep, fold):
        # a copy of the module, not a new type(m)(...): a subclass that computes what the norm computes
        # may take other constructor arguments or hold more attributes; a parametrization of the
        # user's own is sliced as its value, a plain tensor
        k = keep["channels"]
        cls = type(m).__bases__[0] if parametrize.is_parametrized(m) else type(m)
        new = cls.__new__(cls)
        new.__dict__.update(m.__dict__)
        new._parameters, new._buffers, new._modules = dict(m._parameters), dict(m._buffers), dict(m._modules)
        new._modules.pop("parametrizations", None)
        for p in ("weight", "bias"):
            src = getattr(m, p, None)
            if src is not None:
                new._parameters[p] = nn.Parameter(src.detach()[k], requires_grad=src.requires_grad)
        for p in ("running_mean", "running_var"):
            src = m._buffers.get(p)
            if src is not None:
                new._buffers[p] = src.detach()[k]   # boolean indexing copies
        new.num_features = int(k.sum())
        return new


def _unbatched_rank(m) -> int:
    name = type(m).__name__
    return {"1": 2, "2": 3, "3": 4}[name[-2]]


def _uses_running_stats(m) -> bool:
    return (not m.training) and m.track_running_stats and m.running_mean is not None


@register(nn.GroupNorm)
class GroupNormRule(Rule):
    """GroupNorm normalises over groups of channels: whole norm groups are pruned (their statistics
    are their own, so the others do not change), and num_groups shrinks with them."""

    def flow(self, ctx):
        cmap = ctx.arg_map(0, "input")
        if cmap is None:
            return None
        m = ctx.module
        if cmap.dims != (1,):
            raise Unsupported("channels on a dim other than dim 1")
        per = cmap.ids.reshape(m.num_groups, -1)
        for g in range(m.num_groups):
            ctx.union_ids(per[g, :1].expand(per.shape[1]), per[g])
        params = tuple(p for p in ("weight", "bias") if getattr(m, p, None) is not None)
        ctx.member("channels", cmap, params, zeroed=params)
        # a zero group normalises to 0, then holds its shift; a group of constants (one per channel, not
        # all equal) normalises to constants, not to 0
        return ctx.affine_carry(cmap, params, cmap.map_carry(CONST if m.affine else ZERO, CONST))

    def rewrite(self, m, keep, fold):
        k = keep["channels"]
        per_group = m.num_channels // m.num_groups
        kept = int(k.sum())
        new = nn.GroupNorm(kept // per_group, kept, eps=m.eps, affine=m.affine, **factory_kwargs(m))
        if m.affine:
            with torch.no_grad():
                new.weight.copy_(m.weight.detach()[k])
                new.bias.copy_(m.bias.detach()[k])
        return new


@register(F.layer_norm)
class FunctionalLayerNormRule(Rule):
    """F.layer_norm(x, shape, weight, bias, eps) with parameters from get_attr (nanoGPT's LayerNorm):
    as nn.LayerNorm; in the masked model the call becomes :func:`masked_layer_norm`."""

    ARGS = ("input", "normalized_shape", "weight", "bias", "eps")
    EPS = 1e-5
    masked_fn = staticmethod(masked_layer_norm)

    def _args(self, node):
        n = len(self.ARGS)
        vals = list(node.args) + [None] * (n - len(node.args))
        for i, name in enumerate(self.ARGS):
            if name in node.kwargs:
                vals[i] = node.kwargs[name]
        vals[n - 1] = vals[n - 1] if vals[n - 1] is not None else self.EPS
        return vals

    def flow(self, ctx):
        cmap = ctx.arg_map(0, "input")
        if cmap is None:
            return None
        shape = ctx.arg(1, "normalized_shape")
        nd = cmap.ndim
        normed = range(nd - len(shape), nd)
        if not any(d in normed for d in cmap.dims):
            has_bias = "bias" in self.ARGS and ctx.arg(3, "bias") is not None
            return cmap.with_carry(VARY if has_bias else ZERO)
        if len(shape) != 1 or cmap.dims != (nd - 1,):
            raise Unsupported("normalised over several dims that hold channels")
        if ctx.flow.dead:
            raise Unsupported("its statistics include every channel, zero or not")
        has_bias = False
        for i, name in ((2, "weight"), (3, "bias")):
            if name not in self.ARGS:
                continue
            pv = ctx.arg_map(i, name)
            if ctx.arg(i, name) is None:
                continue
            if not isinstance(pv, ParamView):
                raise Unsupported(f"layer_norm {name} that is not a parameter")
            ctx.param_member(pv, 0, cmap, zeroed=False)
            has_bias |= name == "bias"
        ctx.member("channels", cmap, ())  # the masked model normalises over kept channels only
        return cmap.with_carry(ZERO if (not has_bias or ctx.prune_bias) else CONST)

    def masked_node(self, gm, node, keep, prune_bias):
        _call_masked(gm, node, keep["channels"], prune_bias, self.masked_fn, self._args(node))

    def rewrite_node(self, node, ctx):
        shape = node.args[1] if len(node.args) > 1 else node.kwargs.get("normalized_shape")
        if isinstance(shape, (tuple, list)) and all(isinstance(s, int) for s in shape):
            new = ctx.new_sizes(node.args[0])
            if new is not None and new[-1] != shape[-1]:
                node.args = (node.args[0], (new[-1],), *node.args[2:])


@register(F.rms_norm)
class FunctionalRMSNormRule(FunctionalLayerNormRule):
    """F.rms_norm(x, shape, weight, eps) (nn.RMSNorm traced): F.layer_norm's rule without a bias; in
    the masked model, :func:`masked_rms_norm` leaves pruned channels out of the statistics."""

    ARGS = ("input", "normalized_shape", "weight", "eps")
    EPS = None
    masked_fn = staticmethod(masked_rms_norm)


@register(nn.RMSNorm)
class TracedThrough(Rule):
    """Modules of torch.nn that are traced into their functional call (whose rule applies) rather
    than kept as leaves, as torch.fx keeps torch.nn modules."""

    leaf = False


def _get_attr_params(ctx, names: dict[int, str]) -> dict:
    """{name: ParamView} of the per-channel tensors given (argument index -> name); each must be a
    1-d get_attr tensor."""
    out = {}
    for i, name in names.items():
        if ctx.arg(i, name) is None:
            continue
        pv = ctx.arg_map(i, name)
        if not isinstance(pv, ParamView) or pv.ndim != 1:
            raise Unsupported(f"{name} that is not a 1-d get_attr tensor")
        out[name] = pv
    _sole_user(ctx, [pv.target for pv in out.values()])  # sliced: no other op may read them
    return out


def _functional_affine(ctx, cmap, norm, params: dict):
    """Carry after ``norm * weight + bias`` (per-channel get_attr ``params``): with ``prune_bias`` they are
    masked, so a pruned channel with a weight is 0; in dead-channel mode, channels whose weight and bias
    are zero are 0."""
    w, b = "weight" in params, "bias" in params
    if ctx.prune_bias and w:
        return cmap.with_carry(ZERO)
    carry = norm.carry
    if b and not ctx.prune_bias:  # the shift of a pruned channel
        carry = torch.where(carry == ZERO, torch.tensor(CONST, dtype=torch.int8), carry)
    if ctx.flow.dead and w:
        zero = attr(ctx.flow.module, params["weight"].target).detach() == 0
        if b:
            zero &= attr(ctx.flow.module, params["bias"].target).detach() == 0
        carry = torch.where(zero, torch.tensor(ZERO, dtype=torch.int8), carry)
    return cmap.with_carry(carry.to(torch.int8))


@register(F.batch_norm, F.instance_norm)
class FunctionalChannelNormRule(Rule):
    """F.batch_norm(x, running_mean, running_var, weight, bias, training, ...) and
    F.instance_norm(x, running_mean, running_var, weight, bias, use_input_stats, ...) on get_attr
    tensors, as the modules: channels on dim 1, the statistics and affine parameters are members of the
    channel's group (sliced on rewrite); with ``prune_bias`` weight and bias are masked too."""

    PARAMS = {1: "running_mean", 2: "running_var", 3: "weight", 4: "bias"}

    def flow(self, ctx):
        cmap = ctx.arg_map(0, "input")
        if not isinstance(cmap, ChannelMap):
            return None
        if cmap.dims != (1,):
            raise Unsupported("channels on a dim other than the normalised channel dim")
        params = _get_attr_params(ctx, self.PARAMS)
        for name, pv in params.items():
            ctx.param_member(pv, 0, cmap, zeroed=name in ("weight", "bias"))
        if ctx.node.target is F.batch_norm:
            batch_stats = bool(ctx.arg(5, "training", False)) or "running_mean" not in params
        else:
            batch_stats = bool(ctx.arg(5, "use_input_stats", True)) or "running_mean" not in params
        # statistics of the batch (instance) normalise a constant channel to 0; running ones keep it constant
        norm = cmap.map_carry(ZERO, ZERO) if batch_stats else cmap.map_carry(CONST, CONST)
        return _functional_affine(ctx, cmap, norm, params)


@register(F.group_norm)
class FunctionalGroupNormRule(Rule):
    """F.group_norm(x, num_groups, weight, bias, eps) on get_attr tensors, as nn.GroupNorm: whole norm
    groups are pruned, ``num_groups`` is rewritten to the kept count."""

    def flow(self, ctx):
        cmap = ctx.arg_map(0, "input")
        if not isinstance(cmap, ChannelMap):
            return None
        if cmap.dims != (1,):
            raise Unsupported("channels on a dim other than dim 1")
        groups = ctx.node.args[1] if len(ctx.node.args) > 1 else ctx.node.kwargs.get("num_groups")
        if not isinstance(groups, int):
            raise Unsupported("num_groups that is not a literal")
        if groups == 1 and not ctx.flow.dead:
            # one group (timm's GroupNorm1, a LayerNorm over (C, H, W)): in the masked model the
            # statistics leave pruned channels out, as for layer_norm, so channels prune one by one
            params = _get_attr_params(ctx, {2: "weight", 3: "bias"})
            for pv in params.values():
                ctx.param_member(pv, 0, cmap, zeroed=False)
            ctx.member("channels", cmap, ())
            return cmap.with_carry(ZERO if ("bias" not in params or ctx.prune_bias) else CONST)
        per = cmap.ids.reshape(groups, -1)
        for g in range(groups):
            ctx.union_ids(per[g, :1].expand(per.shape[1]), per[g])
        params = _get_attr_params(ctx, {2: "weight", 3: "bias"})
        for pv in params.values():
            ctx.param_member(pv, 0, cmap, zeroed=True)
        # a pruned group is all zero (normalised: 0) or holds constants (normalised: constants)
        return _functional_affine(ctx, cmap, cmap.map_carry(ZERO, CONST), params)

    def masked_node(self, gm, node, keep, prune_bias):
        args = [node.args[i] if i < len(node.args) else node.kwargs.get(name, default) for i, (name, default)
                in enumerate((("input", None), ("num_groups", 1), ("weight", None), ("bias", None), ("eps", 1e-5)))]
        _call_masked(gm, node, keep["channels"], prune_bias, masked_group_norm, args)

    def rewrite_node(self, node, ctx):
        groups = node.args[1] if len(node.args) > 1 else node.kwargs.get("num_groups")
        old = ctx.old_shape(node.args[0])
        new = ctx.new_sizes(node.args[0])
        if not isinstance(groups, int) or groups == 1 or old is None or new is None or new[1] == old[1]:
            return
        kept = new[1] // (old[1] // groups)
        if len(node.args) > 1:
            node.args = (node.args[0], kept, *node.args[2:])
        else:
            node.kwargs = {**node.kwargs, "num_groups": kept}
