"""Ops that move channels without computing on them: reshapes, permutes, indexing, identity, dropout."""
from __future__ import annotations

import math
import operator

import torch.fx as fx

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..channels import VARY, ZERO, ChannelMap, ParamView
from ..graph import attr
from .registry import Rule, Unsupported, register


def _map(ctx):
    return ctx.arg_map(0, "input")


@register(nn.Identity, "contiguous", "clone", "detach", "float", "double", "half", "to", "type_as",
          torch.clone, torch.detach)
class IdentityRule(Rule):
    def flow(self, ctx):
        return _map(ctx)

    def rewrite(self, m, keep, fold):
        return m


@register(torch.full_like, torch.zeros_like, torch.ones_like)
class FilledLikeRule(Rule):
    """A tensor of one value shaped like its input (the NaN guard of decomposed attention,
    ``where(fully_masked, full_like(p, 0), p)``): the input's channel layout, every channel that value
    (its shape follows the pruned input)."""

    def flow(self, ctx):
        cmap = _map(ctx)
        if not isinstance(cmap, ChannelMap):
            return None
        name = ctx.node.target.__name__
        value = 0 if name == "zeros_like" else 1 if name == "ones_like" else ctx.arg(1, "fill_value")
        carry = ZERO if value == 0 else CONST
        return cmap.with_carry(torch.full_like(cmap.carry, carry))

    def rewrite(self, m, keep, fold):
        return m


@register(nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout,
          F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout)
class DropoutRule(Rule):
    """Identity in eval mode; in training mode a constant channel is randomly zeroed (not constant)."""

    def flow(self, ctx):
        cmap = _map(ctx)
        if cmap is None:
            return None
        training = ctx.module.training if ctx.module is not None else ctx.arg(2, "training", True)
        p = ctx.module.p if ctx.module is not None else ctx.arg(1, "p", 0.5)
        if training and p > 0:
            return cmap.map_carry(0, VARY)
        return cmap

    def rewrite(self, m, keep, fold):
        return m


@register("torchvision.ops.stochastic_depth.stochastic_depth")
class StochasticDepthRule(Rule):
    """torchvision's stochastic_depth(input, p, mode, training): identity in eval mode (or p == 0); in
    training mode each row (or the whole batch) is zeroed or scaled: zero stays zero, a constant varies."""

    def flow(self, ctx):
        cmap = _map(ctx)
        if not isinstance(cmap, ChannelMap):
            return None
        if ctx.arg(3, "training", True) and ctx.arg(1, "p", 0.0) > 0:
            return cmap.map_carry(ZERO, VARY)
        return cmap


@register(nn.Flatten, nn.Unflatten, torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze,
          "flatten", "unflatten", "view", "reshape", "squeeze", "unsqueeze")
class ReshapeRule(Rule):
    """Any reshape: channels follow the runs of dims whose products match (see ChannelMap.reshape)."""

    def flow(self, ctx):
        cmap = _map(ctx)
        if cmap is None:
            return None
        x = ctx.arg(0, "input")
        out = cmap.reshape(tuple(x.shape), tuple(ctx.out.shape))
        if isinstance(cmap, ParamView):
            return out
        if out is None:
            raise Unsupported(f"cannot follow channels through reshape {tuple(x.shape)} -> {tuple(ctx.out.shape)}")
        if len(out.dims) > len(cmap.dims):
            # channels split over several dims: the kept ones must form a product (a rectangle), or
            # the pruned tensor's layout would not match the masked one's
            ctx.require_product(out)
        elif len(out.dims) == 1 < len(cmap.dims):
            found = _channel_permutation(ctx.node, out.dims[0], ctx.flow.labels)
            if found is not None:
                ctx.permutes_channels(*found)
        return out

    def rewrite(self, m, keep, fold):
        return m

    def rewrite_node(self, node, ctx):
        """view/reshape with literal sizes: a literal on a dim whose width changed gets the new width."""
        if node.op == "call_module" or node.target in (torch.flatten, torch.squeeze, torch.unsqueeze,
                                                         "flatten", "squeeze", "unsqueeze"):
            return
        if node.target == "unflatten":  # x.unflatten(dim, sizes): the sizes of the new dims
            self._rewrite_unflatten(node, ctx)
            return
        _rewrite_sizes(node, ctx)

    def _rewrite_unflatten(self, node, ctx):
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        sizes = node.args[2] if len(node.args) > 2 else node.kwargs.get("sizes")
        new = ctx.new_sizes(node)
        if new is None or not isinstance(dim, int) or not isinstance(sizes, (tuple, list)):
            return
        dim %= len(ctx.old_shape(node.args[0]))
        fixed = tuple(s if s == -1 or not ctx.width_changed(node, dim + i) else new[dim + i]
                      for i, s in enumerate(sizes))
        if fixed != tuple(sizes):
            node.args, node.kwargs = (node.args[0], dim, fixed), {}


_RESHAPES = {torch.reshape, torch.flatten, "view", "reshape", "flatten", "unflatten"}
_LAYOUT = {torch.permute, torch.transpose, torch.t, torch.movedim, torch.clone,
           "permute", "transpose", "t", "movedim", "contiguous", "clone"}


def _channel_permutation(merge: fx.Node, dim: int, labels):
    """``merge`` ends a chain split-reshape -> layout ops -> merge-reshape, each node used only by the
    next (channel shuffle: view(b, g, c // g, h, w) -> transpose(1, 2) -> view(b, c, h, w)). If the
    chain only reorders its source's channels on ``dim``, return (split node, source node, dim, perm),
    output channel j being source channel perm[j]; else None. Checked by running the chain on a tensor
    that numbers every element of the source."""
    chain, node = [merge], merge.args[0] if merge.args else None
    while isinstance(node, fx.Node) and node.target in _LAYOUT and len(node.users) == 1:
        chain.append(node)
        node = node.args[0]
    if not (isinstance(node, fx.Node) and node.target in _RESHAPES and len(node.users) == 1 and len(chain) > 1):
        return None
    split, source = node, node.args[0]
    source_map = labels.get(source) if isinstance(source, fx.Node) else None
    if not isinstance(source_map, ChannelMap) or source_map.dims != (dim,) or "tensor_meta" not in source.meta:
        return None
    shape = tuple(source.meta["tensor_meta"].shape)
    numbered = torch.arange(math.prod(shape)).reshape(shape)
    out = numbered
    try:
        for n in [split, *reversed(chain)]:
            rest = (n.args[1:], n.kwargs)
            if n.target in _RESHAPES:   # sizes may be read at run time: use the recorded shape
                out = out.reshape(tuple(n.meta["tensor_meta"].shape))
            elif _has_node(rest):
                return None
            elif isinstance(n.target, str):
                out = getattr(out, n.target)(*n.args[1:], **n.kwargs)
            else:
                out = n.target(out, *n.args[1:], **n.kwargs)
    except (RuntimeError, TypeError, ValueError, KeyError, IndexError):
        return None
    if tuple(out.shape) != shape:
        return None
    stride = math.prod(shape[dim + 1:])
    perm = (out.movedim(dim, 0).reshape(shape[dim], -1)[:, 0] // stride) % shape[dim]
    if not torch.equal(out, numbered.index_select(dim, perm)):
        return None
    return split, source, dim, perm


def _has_node(tree) -> bool:
    found = []
    fx.node.map_arg(tree, found.append)
    return bool(found)


def _rewrite_sizes(node, ctx):
    """Sizes given as arguments (view, reshape, expand): a literal on a dim whose width changed gets the
    new width; others keep their argument (-1, run-time batch sizes); sizes read at run time from
    pruned widths hold their original values."""
    shape_args = list(node.args[1:])
    if len(shape_args) == 1 and isinstance(shape_args[0], (tuple, list)):
        sizes, packed = list(shape_args[0]), True
    else:
        sizes, packed = shape_args, False
    new_sizes = ctx.new_sizes(node)
    if new_sizes is None:
        return
    changed = False
    old_sizes = ctx.old_shape(node)
    for d, s in enumerate(sizes):
        if s != -1 and ctx.width_changed(node, d):
            sizes[d] = ctx.size_argument(node, s, old_sizes[d], new_sizes[d])
            changed = True
    if changed:
        node.args = (node.args[0], tuple(sizes)) if packed else (node.args[0], *sizes)


@register(torch.permute, torch.transpose, "permute", "transpose", "t", torch.t, torch.movedim, "movedim")
class PermuteRule(Rule):
    def flow(self, ctx):
        cmap = _map(ctx)
        if cmap is None:
            return None
        nd = cmap.ndim
        name = ctx.node.target if isinstance(ctx.node.target, str) else ctx.node.target.__name__
        rest = list(ctx.args[1:])
        if name == "permute":
            perm = list(rest[0]) if len(rest) == 1 and isinstance(rest[0], (tuple, list)) else rest
            if not perm:
                perm = list(ctx.kwargs.get("dims", []))
        elif name in ("transpose", "t"):
            a, b = (rest + [0, 1])[:2] if name == "transpose" else (0, 1)
            a, b = ctx.kwargs.get("dim0", a), ctx.kwargs.get("dim1", b)
            perm = list(range(nd))
            perm[a % nd], perm[b % nd] = perm[b % nd], perm[a % nd]
        else:  # movedim
            src, dst = rest[0], rest[1]
            src = [src] if isinstance(src, int) else list(src)
            dst = [dst] if isinstance(dst, int) else list(dst)
            perm = [None] * nd
            for s, d in zip(src, dst):
                perm[d % nd] = s % nd
            others = iter(i for i in range(nd) if i not in [s % nd for s in src])
            perm = [p if p is not None else next(others) for p in perm]
        return cmap.permute([p % nd for p in perm])

    def rewrite(self, m, keep, fold):
        return m


@register(torch.index_select, "index_select")
class IndexSelectRule(Rule):
    """index_select(x, dim, index). Along a dim without channels they pass. Along the channel dim the
    index must be a constant (a buffer, as the index_select fxprune writes for a channel shuffle): the
    output holds the channels it picks, and after pruning the index picks the kept ones in the pruned
    input. An index computed at run time is a barrier."""

    def flow(self, ctx):
        cmap = _map(ctx)
        if not isinstance(cmap, ChannelMap):
            return None
        dim = ctx.arg(1, "dim") % cmap.ndim
        if dim not in cmap.dims:
            return cmap
        if len(cmap.dims) != 1:
            raise Unsupported("selecting along one of several channel dims")
        index = ctx.constant(2, "index")
        if index is None:
            raise Unsupported("an index computed at run time picks channels")
        index = index.reshape(-1).long()
        return ChannelMap(cmap.dims, cmap.ids[index], cmap.carry[index], cmap.ndim)

    def rewrite_node(self, node, ctx):
        src, index_node = node.args[0], node.args[2] if len(node.args) > 2 else node.kwargs.get("index")
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        if not isinstance(src, fx.Node) or ctx.old_shape(src) is None or not isinstance(index_node, fx.Node):
            return
        dim %= len(ctx.old_shape(src))
        _pick_kept(ctx, node, src, dim, dim, index_node)


def _pick_kept(ctx, node: fx.Node, src: fx.Node, in_dim: int, out_dim: int, index_node: fx.Node) -> None:
    """``node`` picks channels of ``src`` (dim ``in_dim``) by a buffer index into its dim ``out_dim``:
    after pruning the buffer picks the kept ones from the pruned input, in the same order."""
    if index_node.op != "get_attr":
        return
    kept_in, kept_out = ctx.kept_along(src, in_dim), ctx.kept_along(node, out_dim)
    if kept_in is None or kept_out is None or (bool(kept_in.all()) and bool(kept_out.all())):
        return
    index = attr(ctx.gm, index_node.target)
    new = (kept_in.cumsum(0) - 1)[index.reshape(-1).long()[kept_out]].to(index.dtype)
    ctx.set_constant(node, index_node, new, "fxprune_channel_index")


@register(operator.getitem)
class GetItemRule(Rule):
    """Tuple outputs (LSTM's (out, (h, c)), split) are indexed; tensors take basic indexing: slices of a
    channel dim keep their channels (and get new bounds after pruning), an integer picks one channel
    (which then cannot be removed) or one row of a multi-dim map (an LSTM state's layer)."""

    def flow(self, ctx):
        src = ctx.arg_map(0)
        idx = ctx.args[1]
        if isinstance(src, (tuple, list)):
            return src[idx]
        if src is None or not isinstance(ctx.args[0], torch.Tensor):
            return None
        if isinstance(src, ParamView):
            return _index_param(src, idx)
        items, _ = _expand_index(idx, ctx.args[0].dim())
        if any(isinstance(i, torch.Tensor) for i in items):
            return _advanced_index(src, items, ctx)
        return _walk_index(src, idx, tuple(ctx.args[0].shape), ctx)

    def rewrite_node(self, node, ctx):
        src = node.args[0]
        if not isinstance(src, fx.Node) or ctx.old_shape(src) is None:
            return
        items, old_shape = _expand_index(node.args[1], len(ctx.old_shape(src)))
        if any(isinstance(i, fx.Node) for i in items):
            _rewrite_channel_index(node, src, items, ctx)
            return
        new_items, pos, out_pos, changed = [], 0, 0, False
        for i in items:
            kept = ctx.kept_along(src, pos) if i is not None else None
            if kept is not None and bool(kept.all()):
                kept = None
            if kept is not None and isinstance(i, int):
                i = int(kept[: i % len(kept)].sum())
                changed = True
            elif kept is not None and isinstance(i, slice) and i != slice(None):
                if _has_node((i.start, i.stop, i.step)):
                    # bounds computed at run time (x[..., : x.shape[-1] // 2]) from sizes that keep their
                    # original values: the channel maps say which positions the slice took
                    start, stop = _slice_taken(ctx, src, node, pos, out_pos)
                else:
                    start, stop, _ = i.indices(len(kept))
                i = slice(int(kept[:start].sum()), int(kept[:stop].sum()))
                changed = True
            new_items.append(i)
            if i is not None:
                pos += 1           # an index or slice consumes a dim of the source
            if not isinstance(i, int):
                out_pos += 1       # None and slices make a dim of the result
        if changed:
            node.args = (src, tuple(new_items) if isinstance(node.args[1], tuple) else new_items[0])


def _advanced_index(cmap: ChannelMap, items: list, ctx) -> ChannelMap | None:
    """Indexing with tensors (``x[torch.arange(b), last]`` picks a token per row, CLIP's pooling).
    On dims without channels the channels pass, to the place numpy's rules give them; one 1-D index
    held in a buffer on the only channel dim picks channels (as index_select does); anything else on a
    channel dim is a barrier."""
    items = items + [slice(None)] * (cmap.ndim - sum(i is not None for i in items))   # trailing dims
    tensors = [k for k, i in enumerate(items) if isinstance(i, torch.Tensor)]
    src_dim, pos = [], 0
    for i in items:
        src_dim.append(None if i is None else pos)
        pos += i is not None
    on_channels = [k for k in tensors if src_dim[k] in cmap.dims]
    if on_channels:
        k = on_channels[0]
        index = _constant_item(ctx, k)
        if len(tensors) > 1 or len(cmap.dims) > 1 or index is None or index.dim() != 1 \
                or index.dtype == torch.bool or any(
                i is not None and not isinstance(i, torch.Tensor) and i != slice(None) for i in items):
            raise Unsupported("advanced indexing of a channel dim (only one 1-D index held in a buffer is followed)")
        dim = cmap.dims[0] + sum(1 for i in items[:k] if i is None)
        return ChannelMap((dim,), cmap.ids[index], cmap.carry[index], cmap.ndim + sum(i is None for i in items))
    if any(items[k].dtype == torch.bool for k in tensors):
        raise Unsupported("a boolean mask index next to channels")
    shape = torch.broadcast_shapes(*[items[k].shape for k in tensors])
    adjacent = tensors == list(range(tensors[0], tensors[-1] + 1))
    out_of, out = {}, (0 if adjacent else len(shape))   # numpy: separated index dims go first
    for k, i in enumerate(items):
        if isinstance(i, torch.Tensor):
            out += len(shape) if adjacent and k == tensors[0] else 0
        elif i is None:
            out += 1
        elif isinstance(i, slice):
            if src_dim[k] in cmap.dims and i != slice(None):
                raise Unsupported("a channel dim sliced next to advanced indexing")
            out_of[src_dim[k]] = out
            out += 1
        elif src_dim[k] in cmap.dims:
            raise Unsupported("an integer index of a channel dim next to advanced indexing")
    return ChannelMap(tuple(out_of[d] for d in cmap.dims), cmap.ids, cmap.carry, out)


def _constant_item(ctx, k: int) -> torch.Tensor | None:
    """The real value of index item ``k`` of a getitem when it is a ``get_attr`` (a buffer)."""
    raw = ctx.node.args[1]
    raw_items = list(raw) if isinstance(raw, tuple) else [raw]
    if Ellipsis in raw_items or k >= len(raw_items):
        return None
    return ctx.constant_of(raw_items[k])


def _rewrite_channel_index(node: fx.Node, src: fx.Node, items: list, ctx) -> None:
    """x[..., index] with a buffer index on the channel dim (see _pick_kept)."""
    for k, item in enumerate(items):
        if isinstance(item, fx.Node):
            pos = sum(1 for i in items[:k] if i is not None)
            _pick_kept(ctx, node, src, pos, pos + sum(1 for i in items[:k] if i is None), item)


def _slice_taken(ctx, src: fx.Node, node: fx.Node, pos: int, out_pos: int) -> tuple[int, int]:
    """(start, stop) of the positions of ``src``'s dim ``pos`` that ``node``'s dim ``out_pos`` holds."""
    src_map, out_map = ctx.labels[src.name], ctx.labels[node.name]
    a, b = src_map.dims.index(pos), out_map.dims.index(out_pos)
    lines = src_map.ids.movedim(a, 0).reshape(src_map.ids.shape[a], -1)
    first = out_map.ids.movedim(b, 0).reshape(out_map.ids.shape[b], -1)[:, 0]
    where = [int((lines == e).any(1).nonzero()[0]) for e in first[[0, -1]].tolist()]
    return where[0], where[1] + 1


def _index_param(pv: ParamView, idx) -> ParamView | None:
    items, _ = _expand_index(idx, pv.ndim)
    if sum(isinstance(i, torch.Tensor) for i in items) > 1:
        return None
    dims, pos = [], 0
    for i in items:
        if i is None:
            dims.append(None)
        elif isinstance(i, torch.Tensor):
            # gathered by an index (Swin's relative_position_bias_table[index]): the index's dims take
            # this dim's place and hold no parameter dim; the other dims are still the parameter's
            if i.dtype == torch.bool:
                return None
            dims.extend([None] * i.dim())
            pos += 1
        elif isinstance(i, int) and not isinstance(i, bool):
            pos += 1
        elif i == slice(None):
            dims.append(pv.dims[pos])
            pos += 1
        else:
            return None  # a partial view of the parameter is not tracked
    return ParamView(pv.target, tuple(dims) + pv.dims[pos:], pv.shape, pv.derived)


@register(torch.roll, "roll", torch.flip, "flip", torch.cumsum, "cumsum", torch.cumprod, "cumprod")
class AlongDimRule(Rule):
    """Ops that move or accumulate values along some dims and leave the others alone. Along dims
    without channels, channels pass: zeros stay zero; a constant stays constant under roll and flip,
    while a cumulative sum or product of one varies along the dim. flip along a channel dim reverses
    the channels (the pruned tensor reverses the kept ones alike); roll or a cumulative op along it,
    or roll over the flattened tensor, is a barrier."""

    def flow(self, ctx):
        cmap = _map(ctx)
        if not isinstance(cmap, ChannelMap):
            return None
        name = ctx.node.target if isinstance(ctx.node.target, str) else ctx.node.target.__name__
        dims = {"roll": lambda: ctx.arg(2, "dims"), "flip": lambda: ctx.arg(1, "dims")}.get(
            name, lambda: ctx.arg(1, "dim"))()
        if dims is None:
            raise Unsupported("roll over the flattened tensor")
        dims = {d % cmap.ndim for d in ([dims] if isinstance(dims, int) else dims)}
        on = [cmap.dims.index(d) for d in dims if d in cmap.dims]
        if on and name != "flip":
            raise Unsupported(f"{name} along a channel dim")
        if on:
            return ChannelMap(cmap.dims, cmap.ids.flip(on), cmap.carry.flip(on), cmap.ndim)
        return cmap.map_carry(ZERO, VARY) if name.startswith("cum") else cmap


def _target_map(ctx):
    """The channel map of the tensor whose shape a ``*_as`` op takes (``x.view_as(other)``), or None."""
    t = ctx.arg_map(1, "other")
    return t if isinstance(t, ChannelMap) else None


def _take_target_shape(ctx, out):
    """``x.reshape_as(other)`` / ``x.view_as(other)`` / ``x.expand_as(other)`` take ``other``'s shape at
    run time, in the pruned model too: the result must have the pruned widths ``other`` has. So where
    both hold channels they are coupled (pruned together, on the same dims); where only one does, its
    width would change and the other's not, and the op is a barrier (Unsupported keeps both)."""
    target = _target_map(ctx)
    tracked = isinstance(out, ChannelMap)
    if target is None:
        if tracked:
            raise Unsupported("takes the shape of a tensor whose channels are not tracked")
        return out
    if not tracked:
        raise Unsupported("takes the shape of a tensor with channels that it does not hold itself")
    ctx.couple([out, target], "the tensor and the one whose shape it takes")
    return out


@register("reshape_as", "view_as")
class ReshapeAsRule(ReshapeRule):
    """``x.reshape_as(other)``, ``x.view_as(other)``: :class:`ReshapeRule` to ``other``'s shape, read at
    run time (nothing to rewrite); see _take_target_shape."""

    def flow(self, ctx):
        src = _map(ctx)
        if src is None and _target_map(ctx) is None:
            return None
        out = None if src is None else super().flow(ctx)
        if isinstance(out, ParamView):
            if _target_map(ctx) is not None:
                raise Unsupported("a parameter takes the shape of a tensor with channels")
            return out
        return _take_target_shape(ctx, out)

    def rewrite_node(self, node, ctx):
        return None


@register("expand_as")
class ExpandAsRule(Rule):
    """``x.expand_as(other)``: :class:`ExpandRule` to ``other``'s shape. Where ``x`` broadcasts (size 1)
    along dims on which ``other`` holds channels, the result holds ``other``'s channels there, each with
    ``x``'s values: input-dependent (a gate expanded over the channels it multiplies)."""

    def flow(self, ctx):
        src, target = _map(ctx), _target_map(ctx)
        nd = ctx.out.dim()
        if isinstance(src, ParamView):
            if target is not None:
                raise Unsupported("a parameter takes the shape of a tensor with channels")
            return ParamView(src.target, (None,) * (nd - src.ndim) + src.dims, src.shape, src.derived)
        out = src.align_to(nd) if isinstance(src, ChannelMap) else None
        if target is not None:
            x = ctx.arg(0, "input")
            shape = [1] * (nd - x.dim()) + list(x.shape)
            if all(shape[d] == 1 for d in target.dims) and (out is None or set(out.dims) <= set(target.dims)):
                # broadcast along the channels (a gate): x's values at every channel; a channel x holds
                # there (a 1-wide producer) is copied to all of them and stays
                if out is not None:
                    ctx.flow.pin(ctx.node, out.ids, f"{ctx.node.name}: a single channel broadcast by expand_as")
                return target.with_carry(VARY)
        return _take_target_shape(ctx, out)


@register("expand", "broadcast_to", torch.broadcast_to)
class ExpandRule(Rule):
    """Broadcasting a tensor: only size-1 dims grow, and new dims come first."""

    def flow(self, ctx):
        src = _map(ctx)
        if src is None:
            return None
        nd = ctx.out.dim()
        if isinstance(src, ParamView):
            return ParamView(src.target, (None,) * (nd - src.ndim) + src.dims, src.shape, src.derived)
        return src.align_to(nd)

    def rewrite_node(self, node, ctx):
        if node.target == "expand":
            _rewrite_sizes(node, ctx)


@register("repeat")
class RepeatRule(Rule):
    """x.repeat(r0, r1, ...) tiles the tensor: along a dim with channels, position p holds the channel of
    p % width (heads repeated for every batch entry: DeBERTa's relative position projections). The
    arguments stay: the pruned tensor is tiled as often."""

    def flow(self, ctx):
        cmap = _map(ctx)
        if not isinstance(cmap, ChannelMap):
            return None
        reps = list(ctx.args[1]) if len(ctx.args) == 2 and isinstance(ctx.args[1], (tuple, list)) else list(ctx.args[1:])
        cmap = cmap.align_to(len(reps))
        ids, carry = cmap.ids, cmap.carry
        for axis, d in enumerate(cmap.dims):
            tiles = [reps[d] if i == axis else 1 for i in range(ids.dim())]
            ids, carry = ids.repeat(*tiles), carry.repeat(*tiles)
        return ChannelMap(cmap.dims, ids, carry, len(reps))


@register(torch.gather, "gather")
class GatherRule(Rule):
    """gather(x, dim, index) along a dim without channels (DeBERTa's relative positions): each output
    entry is an entry of x from the same channels, so a channel keeps what it holds; the index (a tensor
    without tracked channels) is sliced with the channels."""

    def flow(self, ctx):
        cmap = _map(ctx)
        if not isinstance(cmap, ChannelMap):
            return None
        if isinstance(ctx.arg_map(2, "index"), (ChannelMap, ParamView)):
            raise Unsupported("gather with an index that holds channels or parameters")
        dim = ctx.arg(1, "dim") % cmap.ndim
        x, index = ctx.arg(0, "input"), ctx.arg(2, "index")
        if dim in cmap.dims:
            raise Unsupported("gather along a channel dim")
        if any(index.shape[d] != x.shape[d] for d in cmap.dims) or len(ctx.node.args) < 3:
            raise Unsupported("gather with an index that does not span the channels")
        ctx.slices_operand(2, list(cmap.dims))
        return cmap


def _expand_index(idx, ndim):
    items = list(idx) if isinstance(idx, tuple) else [idx]
    specified = sum(1 for i in items if i is not None and i is not Ellipsis)
    out = []
    for i in items:
        if i is Ellipsis:
            out.extend([slice(None)] * (ndim - specified))
        else:
            out.append(i)
    return out, ndim


def _walk_index(cmap: ChannelMap, idx, shape, ctx) -> ChannelMap | None:
    items, _ = _expand_index(idx, len(shape))
    pos = 0
    for i in items:
        if cmap is None:
            return None
        if i is None:
            cmap = cmap.insert_dim(pos)
            pos += 1
        elif isinstance(i, bool) or not isinstance(i, (int, slice)):
            raise Unsupported("advanced indexing")
        elif isinstance(i, int):
            if pos in cmap.dims and len(cmap.dims) == 1:
                # one channel is picked: it must stay, and the others do not pass
                ctx.block(cmap.select(pos, slice(i % cmap.ids.shape[0], i % cmap.ids.shape[0] + 1)),
                          f"{ctx.node.name}: picks channel {i}")
                return None
            cmap = cmap.drop_dim(pos, i)
        else:
            if pos in cmap.dims:
                if i.step not in (None, 1):
                    raise Unsupported("strided slice of a channel dim")
                cmap = cmap.select(pos, i)
            pos += 1
    return cmap


@register("size", "dim", "numel", builtins_getattr := getattr)
class NoChannelsRule(Rule):
    """Results that are not tensors of channels (sizes, dims). A size read from a dim whose width is
    pruned keeps its original value, so arithmetic on it (C // heads, a 1/sqrt(C) scale) does not
    change; shape arguments of reshapes get the new widths from their own rule."""

    def flow(self, ctx):
        return None

    def rewrite_node(self, node, ctx):
        src = node.args[0] if node.args else None
        if not isinstance(src, fx.Node) or ctx.old_shape(src) is None:
            return
        if node.op == "call_function" and node.args[1:] != ("shape",):
            return
        if node.op == "call_method" and node.target != "size":
            return
        old = ctx.old_shape(src)
        changed = [d for d in range(len(old)) if ctx.width_changed(src, d)]
        if not changed:
            return
        dim = node.args[1] if node.op == "call_method" and len(node.args) > 1 else node.kwargs.get("dim")
        if dim is not None:  # x.size(d)
            if dim % len(old) in changed:
                ctx.replace_with_constant(node, old[dim])
            return
        for user in list(node.users):  # x.size() / x.shape, unpacked by getitem
            if user.op == "call_function" and user.target is operator.getitem and isinstance(user.args[1], int) \
                    and user.args[1] % len(old) in changed:
                ctx.replace_with_constant(user, old[user.args[1]])


@register(nn.PixelShuffle, F.pixel_shuffle)
class PixelShuffleRule(Rule):
    """(C * r * r, H, W) -> (C, H * r, W * r): output channel c is made of the r * r input channels
    c * r * r ... c * r * r + r * r - 1, which are pruned together (whole blocks). A block of zero channels
    gives a zero channel; constants (one per input channel) give an r x r pattern, not one constant."""

    def flow(self, ctx):
        cmap = _map(ctx)
        if not isinstance(cmap, ChannelMap):
            return None
        r = ctx.module.upscale_factor if ctx.module is not None else ctx.arg(1, "upscale_factor")
        cdim = cmap.ndim - 3
        if cmap.dims != (cdim,):
            raise Unsupported("channels on a dim other than the one shuffled into space")
        blocks = cmap.ids.reshape(-1, r * r)
        for k in range(1, r * r):
            ctx.union_ids(blocks[:, 0], blocks[:, k])
        zero = (cmap.carry.reshape(-1, r * r) == 0).all(1)
        carry = torch.where(zero, 0, VARY).to(torch.int8)
        return ChannelMap.on_dim(cdim, ctx.out.dim(), blocks[:, 0].clone(), carry)

    def rewrite(self, m, keep, fold):
        return m


@register(nn.PixelUnshuffle, F.pixel_unshuffle)
class PixelUnshuffleRule(Rule):
    """(C, H * r, W * r) -> (C * r * r, H, W): input channel c becomes the r * r output channels
    c * r * r ... , which hold its values (a constant channel gives r * r times that constant)."""

    def flow(self, ctx):
        cmap = _map(ctx)
        if not isinstance(cmap, ChannelMap):
            return None
        r = ctx.module.downscale_factor if ctx.module is not None else ctx.arg(1, "downscale_factor")
        cdim = cmap.ndim - 3
        if cmap.dims != (cdim,):
            raise Unsupported("channels on a dim other than the one space is shuffled into")
        return ChannelMap.on_dim(cdim, ctx.out.dim(), cmap.ids.repeat_interleave(r * r),
                                 cmap.carry.repeat_interleave(r * r))

    def rewrite(self, m, keep, fold):
        return m


@register(nn.ChannelShuffle, F.channel_shuffle)
class ChannelShuffleRule(Rule):
    """(N, g * k, ...) viewed as (g, k), transposed to (k, g): channel j of every group is pruned together,
    so each group keeps the same positions and the shuffle of the kept channels is the masked one's."""

    def flow(self, ctx):
        cmap = _map(ctx)
        if not isinstance(cmap, ChannelMap):
            return None
        g = ctx.module.groups if ctx.module is not None else ctx.arg(1, "groups")
        if cmap.dims != (1,):
            raise Unsupported("channels on a dim other than dim 1")
        per = cmap.ids.reshape(g, -1)
        for G in range(1, g):
            ctx.union_ids(per[0], per[G])
        return ChannelMap.on_dim(1, cmap.ndim, per.t().reshape(-1), cmap.carry.reshape(g, -1).t().reshape(-1))

    def rewrite(self, m, keep, fold):
        return m
