"""Mixture-of-experts: the grouped matmul of fused expert weights.

``grouped_mm(x, W, offs)`` with x of shape (tokens, in) sorted by expert and W of shape (experts, in,
out) multiplies the rows of each expert's token range by that expert's matrix. Column j of the output
is column j of every expert's matrix, so a channel spans all experts: the expert MLPs of a fused 3-D
tensor (Mixtral's ``gate_up_proj`` / ``down_proj``) keep one common width, and a channel's saliency sums
over the experts. The weight is read as a get_attr tensor or through a transpose of its last two dims
(``W.transpose(-2, -1)``: how transformers reads an (experts, out, in) tensor).
"""
from __future__ import annotations

import torch

from ..channels import ZERO, ChannelMap
from ..graph import attr
from .common import last_two_transposed, weight_readers
from .linear import GetAttrWeightRule, _carry_of, _channels, _module_tensors, _set_tensor
from .registry import Unsupported, register


#: argument names per position in torch._grouped_mm / aten (self, mat2, offs, bias), F.grouped_mm (mat_a,
#: mat_b, *, offs, bias) and transformers' fallback op (input, weight, offs)
_NAMES = (("self", "mat_a", "input"), ("mat2", "mat_b", "weight"), ("offs",), ("bias",))


def _operand(node, i: int, values: dict | None = None):
    """Argument i of a grouped matmul node under any of its names; from ``values`` (name or position ->
    value) when given, else the node's own argument."""
    if i < len(node.args):
        return node.args[i] if values is None else values[i]
    for name in _NAMES[i]:
        if name in node.kwargs:
            return node.kwargs[name] if values is None else values[name]
    return None


def _expert_weight(node):
    """(get_attr node, transposed) of a grouped matmul's weight argument, or (None, False)."""
    w = _operand(node, 1)
    transposed = last_two_transposed(w)
    if transposed:
        w = w.args[0]
    return (w, transposed) if getattr(w, "op", None) == "get_attr" else (None, False)


def _axes(transposed: bool) -> tuple[int, int]:
    """(input axis, output axis) of the fused tensor as stored."""
    return (2, 1) if transposed else (1, 2)


@register(torch._grouped_mm, "torch.nn.functional.grouped_mm", "transformers::grouped_mm_fallback")
class GroupedMMRule(GetAttrWeightRule):
    """grouped_mm(x, W, offs) with x (tokens, in) and a get_attr W (experts, in, out), or W read through
    ``transpose(-2, -1)`` of an (experts, out, in) tensor: the input columns are consumed and the output
    columns produced across every expert at once (see the module docstring)."""

    WEIGHT, BIAS, INPUT = (1, "mat2"), None, 0

    def flow(self, ctx):
        node = ctx.node
        values = {**dict(enumerate(ctx.args)), **ctx.kwargs}
        x = _channels(ctx.map_of(_operand(node, 0)))
        get_attr, transposed = _expert_weight(node)
        W = _operand(node, 1, values)
        reason = None
        if get_attr is None:
            reason = "an expert weight that is not a get_attr tensor (or its transpose)"
        elif _operand(node, 0, values).dim() != 2 or W.dim() != 3:
            reason = "a grouped matmul other than (tokens, in) by (experts, in, out)"
        elif _operand(node, 3) is not None:
            reason = "a grouped matmul with a bias"
        if reason is not None:
            if isinstance(x, ChannelMap):
                raise Unsupported(reason)
            return None
        w = get_attr.target
        self._sole_reader(ctx, w, transposed)
        ctx.site_owner = ""
        out_axis = _axes(transposed)[1]
        ctx.consume(f"{w}:in", x, dim=-1, fold=False)
        ids = ctx.produce(f"{w}:out", W.shape[2], {w: 1}, axes={w: out_axis})
        return ChannelMap.on_dim(-1, 2, ids, _carry_of(ctx, {w: out_axis}, W.shape[2], ZERO))

    def _sole_reader(self, ctx, fqn: str, transposed: bool) -> None:
        """The fused tensor is sliced only if every reader is a grouped matmul reading it the same way."""
        gm = ctx.flow.module
        if id(attr(gm, fqn)) in _module_tensors(gm):
            raise Unsupported(f"{fqn} is also used by a module the graph calls")
        for u, through in weight_readers(gm, fqn):
            if u.target != ctx.node.target or through != transposed or _expert_weight(u)[0] is None:
                raise Unsupported(f"{fqn} is also read by {u.name}")

    def rewrite_weight(self, root, nodes, fqn, w, keep_out, keep_in, fold_in):
        in_axis, out_axis = _axes(any(t for _, t in weight_readers(root, fqn)))
        for axis, keep in ((out_axis, keep_out), (in_axis, keep_in)):
            if keep is not None:
                w = w.index_select(axis, keep.nonzero().squeeze(1))
        _set_tensor(root, fqn, w)
