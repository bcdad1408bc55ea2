"""Attention: matmul, softmax, scaled_dot_product_attention. Attention is pruned in whole heads: the
q, k and v channels of one head form one unit, so a pruned head's scores, weights and output vanish
together and the head dim (and the 1/sqrt(head_dim) scale) stay as they were."""
from __future__ import annotations

import math
import operator

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..channels import CONST, VARY, ZERO, ChannelMap, ParamView
from .common import add_folded, factory_kwargs
from .elementwise import with_untracked
from .registry import Rule, Unsupported, register


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
        return self.product(ctx, (0, "input"), (1, "other"))

    def product(self, ctx, first: tuple[int, str], second: tuple[int, str]) -> ChannelMap | None:
        """The channels of ``first @ second`` (arguments given as (position, name))."""
        ma, mb = ctx.arg_map(*first), ctx.arg_map(*second)
        a, b = ctx.arg(*first), ctx.arg(*second)
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
            # attn @ v: the output holds v's channels; a pruned head's output is 0, and a constant
            # v channel stays that constant when attn's rows sum to 1 (softmax over the keys)
            v_carry = mb.carry.movedim(mb.dims.index(h), 0)
            stochastic = ma.sums_to_one == k_a
            carry = torch.where(zero.unsqueeze(1) | (v_carry == ZERO), ZERO,
                                torch.where((v_carry == CONST) & stochastic, CONST, VARY)).to(torch.int8)
            carry = carry.movedim(0, mb.dims.index(h))
            return mb.with_carry(carry)
        raise Unsupported("matmul layout other than attention's q @ k^T or attn @ v")


@register(torch.baddbmm, "baddbmm")
class BaddbmmRule(MatmulRule):
    """baddbmm(input, b1, b2, beta, alpha) = beta * input + alpha * (b1 @ b2): attention scores and a
    bias without tracked channels (Bloom's ALiBi, one row per head, computed from the head count). The
    bias is sliced with the heads (see elementwise.with_untracked)."""

    def flow(self, ctx):
        scores = self.product(ctx, (1, "batch1"), (2, "batch2"))
        bias = ctx.arg_map(0, "input")
        if isinstance(bias, (ChannelMap, ParamView)):
            raise Unsupported("baddbmm whose added input holds channels or parameters")
        if scores is None or ctx.arg(3, "beta", 1) == 0:
            return scores
        return with_untracked(ctx, scores, ctx.arg(0, "input"), 0, "add", first=False)


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
            is_log = isinstance(ctx.module, nn.LogSoftmax) if ctx.module is not None else "log" in name
            if dim is not None and (dim % cmap.ndim) in cmap.dims and len(cmap.dims) > 1:
                # over one of several channel dims (split attention's radix: view(b, card, radix, c)
                # .transpose(1, 2).softmax(1)): the channels along it are pruned together, so each
                # softmax row is kept or removed whole and kept rows do not change. A removed row of
                # zeros (or constants) holds constants (1 / radix).
                d = dim % cmap.ndim
                ctx.union_across(cmap, [d])
                out = cmap.map_carry(CONST, CONST)
                return ChannelMap(out.dims, out.ids, out.carry, out.ndim, None if is_log else d)
            if dim is None or (dim % cmap.ndim) in cmap.dims:
                raise Unsupported("softmax over a channel dim")
            if not is_log:
                out = cmap.map_carry(VARY, VARY)
                return ChannelMap(out.dims, out.ids, out.carry, out.ndim, dim % cmap.ndim)
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
        if nd >= 3 and all(m.dims == (d,) for m in maps) \
                and all(ctx.arg(i, n).shape[h] == 1 for i, n in enumerate(("query", "key", "value"))):
            return self._single_head(ctx, *maps)
        for m in maps:
            if h not in m.dims or not set(m.dims) <= {h, d}:
                raise Unsupported("attention inputs without a head dim")
            _whole_heads(ctx, m, h)
        reps = [_head_rep(m, h) for m in maps]
        ctx.union_ids(reps[0][0], reps[1][0])
        ctx.union_ids(reps[0][0], reps[2][0])
        mask = ctx.arg(3, "attn_mask")
        if isinstance(mask, torch.Tensor) and mask.dim() >= 3 and mask.shape[-3] > 1:
            # a per-head mask (T5's relative position bias, a table with a column per head): its heads
            # are the attention's heads, pruned with them; one computed from nothing tracked keeps them
            mm, hm = ctx.arg_map(3, "attn_mask"), mask.dim() - 3
            if isinstance(mm, ParamView) and mm.param_dim(hm) is not None:
                # a view of a table with a column per head (Swin's relative position bias, gathered by
                # a fixed index): the table is sliced with the heads
                heads = ChannelMap.on_dim(hm, mask.dim(), reps[0][0], torch.zeros_like(reps[0][0], dtype=torch.int8))
                ctx.param_member(mm, hm, heads, zeroed=False)
            elif isinstance(mm, ChannelMap) and mm.dims == (hm,):
                ctx.union_ids(reps[0][0], mm.ids)
            else:
                raise Unsupported("a per-head attention mask whose heads are not tracked channels")
        return self._values(ctx, maps[2])

    def _values(self, ctx, v: ChannelMap) -> ChannelMap:
        # softmax rows sum to 1: a constant v channel comes out as that constant (without dropout)
        const = CONST if ctx.arg(4, "dropout_p", 0.0) == 0 else VARY
        return v.with_carry(torch.where(v.carry == ZERO, ZERO, torch.where(v.carry == CONST, const, VARY))
                            .to(torch.int8))

    def _single_head(self, ctx, q: ChannelMap, k: ChannelMap, v: ChannelMap) -> ChannelMap:
        """One head (its size-1 head dim holds no channels, SegFormer's first stage): the head dim is
        pruned inside. Channel j of q and of k make one term q_j k_j of every score, pruned together;
        removing it is exact when the masked term is 0, or the same for every query and key (both
        constants: softmax ignores a shift). v's channels are the output's. The scale keeps the
        original head dim (see rewrite_node)."""
        if q.ids.numel() != k.ids.numel():
            raise Unsupported("single-head attention with q and k of different head dims")
        ctx.union_ids(q.ids, k.ids)
        vanishes = (q.carry == ZERO) | (k.carry == ZERO) | ((q.carry == CONST) & (k.carry == CONST))
        ctx.internal_use(q.ids, torch.where(vanishes, ZERO, VARY).to(torch.int8))
        return self._values(ctx, v)

    def rewrite_node(self, node, ctx):
        """A default scale is 1/sqrt(q's last dim): keep the original when a single head was pruned inside."""
        if (node.args[6] if len(node.args) > 6 else node.kwargs.get("scale")) is not None:
            return
        old, new = ctx.old_shape(node.args[0]), ctx.new_sizes(node.args[0])
        if old is not None and new is not None and new[-1] != old[-1]:
            node.args = node.args[:6]
            node.kwargs = {**node.kwargs, "scale": 1 / math.sqrt(old[-1])}


class PrunedMultiheadAttention(nn.Module):
    """nn.MultiheadAttention with its own widths: ``in_features`` input channels, ``num_heads`` heads
    of ``head_dim``, ``out_features`` output channels (nn.MultiheadAttention ties all of them to
    embed_dim). Same call signature and outputs."""

    def __init__(self, in_features, num_heads, head_dim, out_features, bias, dropout, batch_first,
                 device=None, dtype=None):
        super().__init__()
        kw = dict(device=device, dtype=dtype)
        self.num_heads, self.head_dim = num_heads, head_dim
        self.dropout, self.batch_first = dropout, batch_first
        inner = num_heads * head_dim
        self.q_proj = nn.Linear(in_features, inner, bias=bias, **kw)
        self.k_proj = nn.Linear(in_features, inner, bias=bias, **kw)
        self.v_proj = nn.Linear(in_features, inner, bias=bias, **kw)
        self.out_proj = nn.Linear(inner, out_features, bias=bias, **kw)

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        if not self.batch_first and query.dim() == 3:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        unbatched = query.dim() == 2
        if unbatched:
            query, key, value = (t.unsqueeze(0) for t in (query, key, value))
        B, T, S, H, D = query.shape[0], query.shape[1], key.shape[1], self.num_heads, self.head_dim
        q = self.q_proj(query).view(B, T, H, D).transpose(1, 2)
        k = self.k_proj(key).view(B, S, H, D).transpose(1, 2)
        v = self.v_proj(value).view(B, S, H, D).transpose(1, 2)
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(D)
        if attn_mask is not None:
            scores = scores.masked_fill(attn_mask, float("-inf")) if attn_mask.dtype == torch.bool \
                else scores + attn_mask
        elif is_causal:
            causal = torch.ones(T, S, dtype=torch.bool, device=q.device).triu(1)
            scores = scores.masked_fill(causal, float("-inf"))
        if key_padding_mask is not None:
            kpm = key_padding_mask.reshape(B, 1, 1, S)
            scores = scores.masked_fill(kpm, float("-inf")) if kpm.dtype == torch.bool else scores + kpm
        attn = F.dropout(scores.softmax(-1), self.dropout, self.training)
        out = self.out_proj((attn @ v).transpose(1, 2).reshape(B, T, H * D))
        weights = (attn.mean(1) if average_attn_weights else attn) if need_weights else None
        if unbatched:
            out = out.squeeze(0)
            weights = weights.squeeze(0) if weights is not None else None
        elif not self.batch_first:
            out = out.transpose(0, 1)
        return out, weights


@register(nn.MultiheadAttention)
class MultiheadAttentionRule(Rule):
    """Consumer of the query/key/value channels (one in_proj column serves all three), whole heads
    (the q, k, v rows of a head, always with their biases, and out_proj's columns), producer of
    out_proj's channels."""

    def flow(self, ctx):
        m = ctx.module
        if not m._qkv_same_embed_dim or m.bias_k is not None or m.add_zero_attn:
            raise Unsupported("MultiheadAttention with kdim/vdim, add_bias_kv or add_zero_attn")
        maps = [ctx.arg_map(i, n) for i, n in enumerate(("query", "key", "value"))]
        maps = [mm if isinstance(mm, ChannelMap) else None for mm in maps]
        labeled = [mm for mm in maps if mm is not None]
        if labeled and len(labeled) < 3:
            ctx.block(labeled, f"{ctx.node.target}: query, key and value share in_proj columns, "
                               "and not all of them hold tracked channels")
        elif labeled:
            for mm in labeled[1:]:
                if mm.dims != labeled[0].dims:
                    raise Unsupported("query, key and value hold channels on different dims")
                ctx.union(labeled[0], mm)
            # one constant vector folds into in_proj_bias only when q, k and v are the same tensor
            same = len({id(a) for a in ctx.node.args[:3]}) == 1 and m.in_proj_bias is not None
            ctx.consume("in", labeled[0], dim=-1, fold=same)
        tensors = {"in_proj_weight": 3}
        if m.in_proj_bias is not None:
            tensors["in_proj_bias"] = 3
        heads = ctx.produce("heads", m.num_heads, tensors)
        ctx.internal_use(heads, ctx.producer_carry("heads", ZERO))  # out_proj reads the heads
        attn_mask = ctx.arg(5, "attn_mask")
        weights_used = any(u.op == "call_function" and u.target is operator.getitem and u.args[1] == 1
                           and len(u.users) > 0 for u in ctx.node.users)
        if weights_used or (isinstance(attn_mask, torch.Tensor) and attn_mask.dim() == 3):
            ctx.block(ChannelMap.on_dim(0, 1, heads, ZERO),
                      f"{ctx.node.target}: attention weights averaged over heads, or a per-head mask")
        out = ctx.produce("out", m.embed_dim, {"out_proj.weight": 1},
                          {"out_proj.bias": 1} if m.out_proj.bias is not None else {})
        carry = ctx.producer_carry("out", ZERO if (m.out_proj.bias is None or ctx.prune_bias) else CONST)
        return (ChannelMap.on_dim(-1, ctx.out[0].dim(), out, carry), None)

    def rewrite(self, m, keep, fold):
        E, H = m.embed_dim, m.num_heads
        D = E // H
        keep_in = keep.get("in", torch.ones(E, dtype=torch.bool))
        keep_h = keep.get("heads", torch.ones(H, dtype=torch.bool))
        keep_out = keep.get("out", torch.ones(E, dtype=torch.bool))
        rows = keep_h.repeat_interleave(D)
        bias = m.in_proj_bias is not None
        new = PrunedMultiheadAttention(int(keep_in.sum()), int(keep_h.sum()), D, int(keep_out.sum()),
                                       bias, m.dropout, m.batch_first, **factory_kwargs(m))
        w = m.in_proj_weight.detach()
        in_bias = m.in_proj_bias.detach().clone() if bias else None
        c = fold.get("in")
        if c is not None:  # constants of removed input channels (q = k = v)
            in_bias = add_folded(in_bias, w[:, ~keep_in], c[~keep_in])
        with torch.no_grad():
            for i, lin in enumerate((new.q_proj, new.k_proj, new.v_proj)):
                lin.weight.copy_(w[i * E:(i + 1) * E][rows][:, keep_in])
                if bias:
                    lin.bias.copy_(in_bias[i * E:(i + 1) * E][rows])
            new.out_proj.weight.copy_(m.out_proj.weight.detach()[keep_out][:, rows])
            if m.out_proj.bias is not None:
                new.out_proj.bias.copy_(m.out_proj.bias.detach()[keep_out])
        new.train(m.training)
        return new
