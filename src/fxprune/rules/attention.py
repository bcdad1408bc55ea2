"""Attention: matmul, softmax, scaled_dot_product_attention. Attention is pruned in whole heads: the
q, k and v channels of one head form one unit, so a pruned head's scores, weights and output vanish
together and the head dim (and the 1/sqrt(head_dim) scale) stay as they were."""
from __future__ import annotations

import operator

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..channels import VARY, ZERO, ChannelMap
from . import Rule, Unsupported, register


def _whole_heads(ctx, cmap: ChannelMap, head_dim: int) -> None:
    """Couple every channel of each head: positions that share an index on ``head_dim``."""
    axis = cmap.dims.index(head_dim)
    ids = cmap.ids.movedim(axis, 0).reshape(cmap.ids.shape[axis], -1)
    for h in range(ids.shape[0]):
        ctx.union_ids(ids[h, :1].expand(ids.shape[1]), ids[h])


def _head_rep(cmap: ChannelMap, head_dim: int):
    axis = cmap.dims.index(head_dim)
    return cmap.ids.movedim(axis, 0).reshape(cmap.ids.shape[axis], -1)[:, 0], \
        cmap.carry.movedim(axis, 0).reshape(cmap.carry.shape[axis], -1).amax(1)


@register(torch.matmul, operator.matmul, torch.bmm, "matmul", "bmm")
class MatmulRule(Rule):
    """Batched matmul between tensors whose channels sit on a batch dim (heads) and on the contracted or
    the output dim: q @ k^T contracts a head's channels, attn @ v carries v's channels."""

    def flow(self, ctx):
        ma, mb = ctx.arg_map(0, "input"), ctx.arg_map(1, "other")
        a, b = ctx.arg(0, "input"), ctx.arg(1, "other")
        ma = ma if isinstance(ma, ChannelMap) else None
        mb = mb if isinstance(mb, ChannelMap) else None
        if ma is None and mb is None:
            return None
        if a.dim() < 3 or b.dim() < 3 or ma is None or mb is None:
            raise Unsupported("matmul of channels with a tensor whose channels are not tracked")
        nd = ctx.out.dim()
        ma, mb = ma.align_to(nd), mb.align_to(nd)
        batch = set(range(nd - 2))
        heads_a, heads_b = [d for d in ma.dims if d in batch], [d for d in mb.dims if d in batch]
        if len(heads_a) != 1 or heads_a != heads_b:
            raise Unsupported("matmul without one head dim on both sides")
        h = heads_a[0]
        k_a, k_b, n_b = nd - 1, nd - 2, nd - 1
        for m in (ma, mb):
            _whole_heads(ctx, m, h)
        rep_a, carry_a = _head_rep(ma, h)
        rep_b, carry_b = _head_rep(mb, h)
        ctx.union_ids(rep_a, rep_b)
        zero = (carry_a == ZERO) | (carry_b == ZERO)
        if k_a in ma.dims and k_b in mb.dims and set(ma.dims) == {h, k_a} and set(mb.dims) == {h, k_b}:
            # q @ k^T: a head's channels are contracted; scores of a pruned head are 0
            carry = torch.where(zero, ZERO, VARY).to(torch.int8)
            return ChannelMap((h,), rep_a, carry, nd)
        if ma.dims == (h,) and set(mb.dims) == {h, n_b}:
            # attn @ v: the output holds v's channels; a pruned head's output is 0
            carry = torch.where(zero.unsqueeze(1) | (mb.carry.movedim(mb.dims.index(h), 0) == ZERO),
                                ZERO, VARY).to(torch.int8)
            carry = carry.movedim(0, mb.dims.index(h))
            return mb.with_carry(carry)
        raise Unsupported("matmul layout other than attention's q @ k^T or attn @ v")


@register(F.softmax, torch.softmax, F.log_softmax, torch.log_softmax, nn.Softmax, nn.LogSoftmax,
          "softmax", "log_softmax", "masked_fill", "masked_fill_", torch.masked_fill)
class RowwiseRule(Rule):
    """softmax over a dim without channels, masked_fill: channels pass; a pruned channel's values are
    no longer a per-channel constant."""

    def flow(self, ctx):
        cmap = ctx.arg_map(0, "input")
        if not isinstance(cmap, ChannelMap):
            return None
        dim = ctx.module.dim if ctx.module is not None else ctx.arg(1, "dim")
        name = getattr(ctx.node.target, "__name__", str(ctx.node.target))
        if "masked_fill" not in name and ctx.module is None or isinstance(ctx.module, (nn.Softmax, nn.LogSoftmax)):
            if dim is None or (dim % cmap.ndim) in cmap.dims:
                raise Unsupported("softmax over a channel dim")
        return cmap.map_carry(VARY, VARY)

    def rewrite(self, m, keep, fold):
        return m


@register(F.scaled_dot_product_attention)
class SDPARule(Rule):
    """scaled_dot_product_attention(q, k, v, ...) on (batch, heads, tokens, head_dim)."""

    def flow(self, ctx):
        maps = [ctx.arg_map(i, n) for i, n in enumerate(("query", "key", "value"))]
        maps = [m if isinstance(m, ChannelMap) else None for m in maps]
        if all(m is None for m in maps):
            return None
        if any(m is None for m in maps):
            raise Unsupported("attention with q, k or v whose channels are not tracked")
        q = ctx.arg(0, "query")
        nd = q.dim()
        h, d = nd - 3, nd - 1
        for m in maps:
            if h not in m.dims or not set(m.dims) <= {h, d}:
                raise Unsupported("attention inputs without a head dim")
            _whole_heads(ctx, m, h)
        reps = [_head_rep(m, h) for m in maps]
        ctx.union_ids(reps[0][0], reps[1][0])
        ctx.union_ids(reps[0][0], reps[2][0])
        mask = ctx.arg(3, "attn_mask")
        if isinstance(mask, torch.Tensor) and mask.dim() >= 3 and mask.shape[-3] > 1:
            raise Unsupported("a per-head attention mask")
        v = maps[2]
        return v.with_carry(torch.where(v.carry == ZERO, ZERO, VARY).to(torch.int8))
