"""Concatenation and splitting: channel index maps between a group's channels and each member's."""
from __future__ import annotations

import torch

from ..channels import CONST, VARY, ChannelMap, ParamView
from .registry import Rule, Unsupported, register


def _dim(ctx, i, default=0):
    d = ctx.arg(i, "dim", default)
    return d


@register(torch.cat, torch.concat, torch.concatenate)
class CatRule(Rule):
    """Along a channel dim, the output's channel map is the inputs' maps end to end. Along another dim,
    the inputs' channels are the same channels: they are coupled."""

    def flow(self, ctx):
        tensors = ctx.arg(0, "tensors")
        raw = list(ctx.arg_map(0, "tensors") or [])
        maps = [m if isinstance(m, ChannelMap) else None for m in raw]
        if all(m is None for m in maps):
            return None
        nd = ctx.out.dim()
        dim = _dim(ctx, 1) % nd
        labeled = [m for m in maps if m is not None]
        if any(dim in m.dims for m in labeled):
            out = ChannelMap.cat(maps, [t.shape[dim] for t in tensors], dim, nd)
            if out is None:
                raise Unsupported("concatenation of channels spread over several dims")
            return out
        first = ctx.couple(labeled, "concatenated tensors")
        carry = torch.stack([m.carry for m in labeled]).amax(0)
        if len(labeled) > 1:  # each input's constant fills its own part of the cat dim: not one constant
            carry = torch.where(carry == CONST, VARY, carry)
        for m, t in zip(raw, tensors):
            if m is None or isinstance(m, ChannelMap):
                if m is None and any(t.shape[d] > 1 for d in first.dims):
                    carry = torch.full_like(carry, VARY)  # an input without tracked channels spans them
                continue
            # a parameter (a class token) is concatenated: it is sliced with the channels
            for d in first.dims:
                ctx.param_member(m, d, first, zeroed=True)
            if not ctx.prune_bias:
                carry = torch.full_like(carry, VARY)
        return first.with_carry(carry)


@register(torch.split, torch.chunk, torch.tensor_split, "split", "chunk", "tensor_split")
class SplitRule(Rule):
    """Each piece holds its slice of the channel map; after pruning the split sizes are recounted."""

    def flow(self, ctx):
        cmap = ctx.arg_map(0)
        if cmap is None:
            return None
        x = ctx.arg(0)
        dim = _dim(ctx, 2) % x.dim()
        pieces = ctx.out
        if dim not in cmap.dims:
            return tuple(cmap for _ in pieces)
        out, start = [], 0
        for p in pieces:
            out.append(cmap.select(dim, slice(start, start + p.shape[dim])))
            start += p.shape[dim]
        return tuple(out)

    def rewrite_node(self, node, ctx):
        src = node.args[0]
        old = ctx.old_shape(src)
        if old is None:
            return
        dim = node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0)
        dim %= len(old)
        kept = ctx.kept_along(src, dim)
        if kept is None or bool(kept.all()):
            return
        sizes, start = [], 0
        for size in _piece_sizes(node, old[dim]):
            sizes.append(int(kept[start:start + size].sum()))
            start += size
        # every form becomes split with explicit sizes
        node.target = "split" if node.op == "call_method" else torch.split
        node.args = (src, sizes)
        node.kwargs = {"dim": dim}


def _piece_sizes(node, n):
    how = node.args[1] if len(node.args) > 1 else node.kwargs.get("split_size_or_sections",
                                                                   node.kwargs.get("chunks", node.kwargs.get("split_size")))
    name = node.target if isinstance(node.target, str) else node.target.__name__
    if name == "chunk":
        size = -(-n // how)
        return [min(size, n - i) for i in range(0, n, size)]
    if name == "tensor_split":
        if isinstance(how, int):
            return [len(c) for c in torch.arange(n).tensor_split(how)]
        bounds = [0, *how, n]
        return [b - a for a, b in zip(bounds, bounds[1:])]
    if isinstance(how, int):
        return [min(how, n - i) for i in range(0, n, how)]
    return list(how)


@register(torch.unbind, "unbind")
class UnbindRule(Rule):
    """Pieces of a tensor along ``dim``. Along a dim without channels every piece holds the tensor's
    channels. Along one of several channel dims (``qkv.view(b, t, 3, c).unbind(2)``) piece i holds
    slice i of the map; a piece cannot disappear, so the slices are pruned alike (position j of every
    piece together). Along the only channel dim each piece is one channel: a barrier, as removing a
    channel would remove an output of the op and every op that reads it."""

    def flow(self, ctx):
        cmap = ctx.arg_map(0, "input")
        if not isinstance(cmap, ChannelMap):
            return None
        dim = _dim(ctx, 1) % cmap.ndim
        n = len(ctx.out)
        if dim not in cmap.dims:
            piece = cmap.drop_dim(dim, 0)
            return tuple(piece for _ in range(n))
        if len(cmap.dims) == 1:
            raise Unsupported("unbind along the channel dim: each piece is one channel")
        pieces = [cmap.drop_dim(dim, i) for i in range(n)]
        for p in pieces[1:]:
            ctx.union(pieces[0], p)
        return tuple(pieces)


@register(torch.stack)
class StackRule(Rule):
    """Stacking along a new dim: the inputs' channels are the same channels (coupled, as torch.cat along
    a dim without channels), and sit on the same dims of the result, shifted past the new dim."""

    def flow(self, ctx):
        tensors = ctx.arg(0, "tensors")
        raw = list(ctx.arg_map(0, "tensors") or [])
        maps = [m if isinstance(m, ChannelMap) else None for m in raw]
        labeled = [m for m in maps if m is not None]
        if not labeled:
            return None
        dim = _dim(ctx, 1) % ctx.out.dim()
        first = ctx.couple(labeled, "stacked tensors")
        carry = torch.stack([m.carry for m in labeled]).amax(0)
        if len(tensors) > 1:  # a pruned channel's constants (one per input) differ along the new dim
            carry = torch.where(carry == CONST, VARY, carry).to(torch.int8)
        for m, t in zip(raw, tensors):
            if isinstance(m, ChannelMap):
                continue
            if isinstance(m, ParamView):  # a parameter stacked with channels is sliced with them
                for d in first.dims:
                    ctx.param_member(m, d, first, zeroed=True)
                if not ctx.prune_bias:
                    carry = torch.full_like(carry, VARY)
            elif any(t.shape[d] > 1 for d in first.dims):
                carry = torch.full_like(carry, VARY)  # an input without tracked channels spans them
        return first.with_carry(carry).insert_dim(dim)
