"""ATen graphs (torch.export, make_fx) in the vocabulary fxprune's rules speak.

A graph from ``torch.export`` calls ATen overloads (``aten.linear.default``, ``aten.view.default``)
where a symbolically traced one calls ``F.linear`` or ``x.view``. Rather than a second copy of every
rule, :func:`lower_aten` maps each ATen op to the torch-level call with the same semantics, so the op's
existing rule applies (an ATen op with the semantics of an existing rule maps to that rule):

- an op whose method variant is the same schema (``aten.add.Tensor(self, other, alpha)`` is
  ``x.add(other, alpha=...)``) becomes that method call when a rule knows the method;
- an op with a functional twin of the same arguments (``aten.linear``, ``aten.conv2d``,
  ``aten.scaled_dot_product_attention``) becomes that function; ops whose arguments differ
  (``aten.embedding(weight, indices)``, ``aten.batch_norm``, ``aten.slice``) are reordered here;
- pass-through nodes (``alias``, ``detach``, ``_assert_tensor_metadata``) disappear;
- higher-order ops with a body (``wrap_with_set_grad_enabled``, rotary embeddings under
  ``@torch.no_grad()``) are inlined.

Ops without a twin stay ATen calls: the analysis reports "no rule for aten...." where channels reach
them, never a silent no-op.
"""
from __future__ import annotations

import operator

import torch
import torch.fx as fx
import torch.nn.functional as F

from .. import rules

aten = torch.ops.aten

#: ATen op -> function with the same arguments in the same order
_SAME_ARGS = {
    aten.linear.default: F.linear,
    aten.conv1d.default: F.conv1d, aten.conv2d.default: F.conv2d, aten.conv3d.default: F.conv3d,
    aten.conv1d.padding: F.conv1d, aten.conv2d.padding: F.conv2d, aten.conv3d.padding: F.conv3d,
    aten.scaled_dot_product_attention.default: F.scaled_dot_product_attention,
    aten.cat.default: torch.cat, aten.stack.default: torch.stack, aten.split_with_sizes.default: torch.split,
    aten.baddbmm.default: torch.baddbmm,
    aten.where.self: torch.where, aten.where.ScalarSelf: torch.where, aten.where.ScalarOther: torch.where,
    aten.where.Scalar: torch.where,
    aten.gelu.default: F.gelu, aten.silu.default: F.silu, aten.hardswish.default: F.hardswish,
    aten.hardsigmoid.default: F.hardsigmoid, aten.mish.default: F.mish, aten.leaky_relu.default: F.leaky_relu,
    aten.hardtanh.default: F.hardtanh, aten.softplus.default: F.softplus,
    aten.adaptive_avg_pool1d.default: F.adaptive_avg_pool1d, aten.adaptive_avg_pool2d.default: F.adaptive_avg_pool2d,
    aten.adaptive_avg_pool3d.default: F.adaptive_avg_pool3d,
    aten.avg_pool1d.default: F.avg_pool1d, aten.avg_pool2d.default: F.avg_pool2d, aten.avg_pool3d.default: F.avg_pool3d,
    aten.max_pool1d.default: F.max_pool1d, aten.max_pool2d.default: F.max_pool2d, aten.max_pool3d.default: F.max_pool3d,
    aten.pad.default: F.pad, aten.rms_norm.default: F.rms_norm,
    aten.full_like.default: torch.full_like, aten.zeros_like.default: torch.zeros_like,
    aten.ones_like.default: torch.ones_like,
    aten.pixel_shuffle.default: F.pixel_shuffle, aten.pixel_unshuffle.default: F.pixel_unshuffle,
    aten.channel_shuffle.default: F.channel_shuffle,
}

#: ATen ops that return their input's value unchanged
_PASS_THROUGH = {aten.alias.default, aten.detach.default, aten.detach_.default, aten.lift_fresh_copy.default}
#: ATen ops with no value at all (assertions)
_ASSERTIONS = {aten._assert_tensor_metadata.default, aten._assert_scalar.default,
               aten.sym_constrain_range_for_size.default}


def _arg(node: fx.Node, i: int, name: str, default=None):
    if i < len(node.args):
        return node.args[i]
    return node.kwargs.get(name, default)


def _index_on(dim: int, item) -> tuple:
    """A getitem index that applies ``item`` on ``dim`` (negative dims count from the end)."""
    if dim >= 0:
        return (slice(None),) * dim + (item,)
    return (Ellipsis, item) + (slice(None),) * (-dim - 1)


def _embedding(n):
    return F.embedding, (n.args[1], n.args[0]), {}


def _batch_norm(n):   # (input, weight, bias, running_mean, running_var, training, momentum, eps, cudnn)
    a = [_arg(n, i, k) for i, k in enumerate(("input", "weight", "bias", "running_mean", "running_var",
                                              "training", "momentum", "eps"))]
    return F.batch_norm, (a[0], a[3], a[4], a[1], a[2], a[5], a[6], a[7]), {}


def _layer_norm(n):   # (input, normalized_shape, weight, bias, eps, cudnn_enable)
    return F.layer_norm, tuple(_arg(n, i, k) for i, k in enumerate(("input", "normalized_shape", "weight",
                                                                    "bias", "eps"))), {}


def _group_norm(n):   # (input, num_groups, weight, bias, eps, cudnn_enabled)
    return F.group_norm, tuple(_arg(n, i, k) for i, k in enumerate(("input", "num_groups", "weight",
                                                                    "bias", "eps"))), {}


def _convolution(n):  # (input, weight, bias, stride, padding, dilation, transposed, output_padding, groups)
    if _arg(n, 6, "transposed"):
        return None
    nd = len(_arg(n, 3, "stride"))
    fn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}.get(nd)
    if fn is None:
        return None
    return fn, tuple(_arg(n, i, k) for i, k in ((0, "input"), (1, "weight"), (2, "bias"), (3, "stride"),
                                                (4, "padding"), (5, "dilation"), (8, "groups"))), {}


def _dropout(n):      # (input, p, train)
    return F.dropout, (n.args[0], _arg(n, 1, "p"), _arg(n, 2, "train")), {}


def _softmax(n):      # _softmax(self, dim, half_to_float)
    return F.softmax, (n.args[0], _arg(n, 1, "dim")), {}


def _slice(n):        # (self, dim=0, start=None, end=None, step=1)
    item = slice(_arg(n, 2, "start"), _arg(n, 3, "end"), _arg(n, 4, "step", 1))
    return operator.getitem, (n.args[0], _index_on(_arg(n, 1, "dim", 0), item)), {}


def _select(n):       # (self, dim, index)
    return operator.getitem, (n.args[0], _index_on(_arg(n, 1, "dim"), _arg(n, 2, "index"))), {}


def _index(n):        # (self, indices), None for a dim taken whole
    return operator.getitem, (n.args[0], tuple(slice(None) if i is None else i for i in n.args[1])), {}


def _to(n):           # to.dtype_layout(self, *, dtype, layout, device, pin_memory, non_blocking, copy, ...)
    kwargs = {k: v for k, v in n.kwargs.items() if k in ("dtype", "device", "non_blocking", "copy",
                                                           "memory_format") and v is not None}
    return "to", (n.args[0],), kwargs


def _numpy_t(n):      # x.T: every dim reversed
    val = n.args[0].meta.get("val") if isinstance(n.args[0], fx.Node) else None
    if val is None:
        return None
    return "permute", (n.args[0], list(range(val.dim() - 1, -1, -1))), {}


def _type_as(n):      # x.type_as(other) reads only other's dtype: x.to(that dtype)
    val = n.args[1].meta.get("val") if isinstance(n.args[1], fx.Node) else None
    if not isinstance(val, torch.Tensor):
        return None
    return "to", (n.args[0], val.dtype), {}


def _rsub(n):         # rsub(x, other) is other - x
    if _arg(n, 2, "alpha", 1) != 1:
        return None
    return operator.sub, (_arg(n, 1, "other"), n.args[0]), {}


def _transposed_weight(node) -> fx.Node | None:
    """W when ``node`` is ``W.t()`` or ``W.permute(1, 0)`` of a get_attr W."""
    if not isinstance(node, fx.Node) or node.op not in ("call_function", "call_method"):
        return None   # (the transpose may be lowered already: a call_method)
    w = node.args[0] if node.args else None
    if not (isinstance(w, fx.Node) and w.op == "get_attr" and len(node.users) == 1):
        return None
    if node.target in (aten.t.default, aten.numpy_T.default, "t") or (
            node.target in (aten.permute.default, "permute") and list(node.args[1]) == [1, 0]):
        return w
    return None


def _mm(n):           # mm(x, W.t()): a linear layer as decompositions and make_fx write it
    w = _transposed_weight(n.args[1])
    return (torch.matmul, n.args, {}) if w is None else (F.linear, (n.args[0], w), {})


def _matmul(n):       # matmul(x, W.t()): a linear layer as Falcon writes it (x @ W.T)
    w = _transposed_weight(n.args[1])
    return (torch.matmul, n.args, n.kwargs) if w is None else (F.linear, (n.args[0], w), {})


def _bmm(n):          # bmm(x, W.t().expand(b, in, out)): a linear layer on 3-d input as decompositions write it
    expand = (aten.expand.default, "expand")
    e = n.args[1]
    if isinstance(e, fx.Node) and e.target in (aten.view.default, "view") and len(e.users) == 1:
        src = e.args[0]
        if isinstance(src, fx.Node) and src.target in expand and list(e.args[1]) == list(src.args[1]):
            e = src   # viewed as the shape it was expanded to: the same tensor
    if isinstance(e, fx.Node) and e.target in expand and len(e.users) == 1 and len(e.args[1]) == 3:
        w = _transposed_weight(e.args[0])
        if w is not None:
            return F.linear, (n.args[0], w), {}
    return torch.bmm, n.args, n.kwargs


def _addmm(n):        # addmm(b, x, W.t()) is F.linear(x, W, b); addmm(b, x, W) (GPT-2's Conv1D) stays addmm
    if n.kwargs.get("beta", 1) != 1 or n.kwargs.get("alpha", 1) != 1:
        return None
    w = _transposed_weight(n.args[2])
    if w is None:
        return torch.addmm, n.args, n.kwargs
    return F.linear, (n.args[1], w, n.args[0]), {}


def _inplace(fn):     # aten.hardswish_(x, ...): F.hardswish(x, ..., inplace=True), the same in-place op
    return lambda n: (fn, n.args, {**n.kwargs, "inplace": True})


def _constant_pad(n):  # constant_pad_nd(x, pad, value)
    return F.pad, (n.args[0], _arg(n, 1, "pad"), "constant", _arg(n, 2, "value", 0)), {}


def _upsample(mode: str, align: bool):
    """aten.upsample_<mode>.vec(x, output_size, [align_corners,] scale_factors): the call F.interpolate makes."""
    def lower(n):
        size = _arg(n, 1, "output_size")
        scales = _arg(n, 3 if align else 2, "scale_factors")
        kwargs = {"size": size} if size is not None else {"scale_factor": scales}
        if align:
            kwargs["align_corners"] = _arg(n, 2, "align_corners")
        return F.interpolate, (n.args[0],), {**kwargs, "mode": mode}
    return lower


def _sym_size(n):
    return "size", (n.args[0], n.args[1]), {}


#: ATen op -> (node -> (function or method name, args, kwargs), or None to keep the op)
_ADAPTED = {
    aten.embedding.default: _embedding,
    aten.batch_norm.default: _batch_norm,
    aten.layer_norm.default: _layer_norm, aten.group_norm.default: _group_norm,
    aten.convolution.default: _convolution,
    aten.dropout.default: _dropout, aten._softmax.default: _softmax,
    aten.slice.Tensor: _slice, aten.select.int: _select, aten.index.Tensor: _index,
    aten.to.dtype_layout: _to, aten.numpy_T.default: _numpy_t,
    aten.sym_size.int: _sym_size, aten.type_as.default: _type_as,
    aten.rsub.Scalar: _rsub, aten.rsub.Tensor: _rsub,
    aten.mm.default: _mm, aten.bmm.default: _bmm, aten.matmul.default: _matmul, aten.addmm.default: _addmm,
    aten.constant_pad_nd.default: _constant_pad,
    aten.hardswish_.default: _inplace(F.hardswish), aten.hardsigmoid_.default: _inplace(F.hardsigmoid),
    aten.silu_.default: _inplace(F.silu), aten.hardtanh_.default: _inplace(F.hardtanh),
    aten.leaky_relu_.default: _inplace(F.leaky_relu),
    aten.upsample_nearest1d.vec: _upsample("nearest", False), aten.upsample_nearest2d.vec: _upsample("nearest", False),
    aten.upsample_nearest3d.vec: _upsample("nearest", False), aten.upsample_linear1d.vec: _upsample("linear", True),
    aten.upsample_bilinear2d.vec: _upsample("bilinear", True), aten.upsample_bicubic2d.vec: _upsample("bicubic", True),
    aten.upsample_trilinear3d.vec: _upsample("trilinear", True),
}


def _method_twin(op) -> str | None:
    """The Tensor method with ``op``'s schema (``aten.add.Tensor`` -> ``"add"``), if a rule knows it."""
    schema = getattr(op, "_schema", None)
    if schema is None or not schema.arguments or schema.arguments[0].name != "self":
        return None
    name = op.overloadpacket.__name__
    if not hasattr(torch.Tensor, name) or rules.call_rule(name) is None:
        return None
    return name


def lowered_call(node: fx.Node):
    """(op, target, args, kwargs) that ``node``, an ATen call, becomes, or None to keep it."""
    op = node.target
    if op in _SAME_ARGS:
        return "call_function", _SAME_ARGS[op], node.args, node.kwargs
    if op in _ADAPTED:
        found = _ADAPTED[op](node)
        if found is None:
            return None
        target, args, kwargs = found
        return ("call_method" if isinstance(target, str) else "call_function"), target, args, kwargs
    name = _method_twin(op)
    if name is not None:
        return "call_method", name, node.args, node.kwargs
    return None


def _first_output(graph: fx.Graph, node: fx.Node) -> bool:
    """An op that returns (out, statistics...) whose statistics are unused in inference graphs:
    ``_native_batch_norm_legit_no_training(x, w, b, mean, var, momentum, eps)[0]`` is F.batch_norm in
    eval mode, ``native_layer_norm(x, shape, w, b, eps)[0]`` is F.layer_norm."""
    users = list(node.users)
    if not all(u.target is operator.getitem and u.args[1] == 0 for u in users):
        return False
    if node.target is aten.native_layer_norm.default:
        call = (F.layer_norm, tuple(_arg(node, i, k) for i, k in enumerate(
            ("input", "normalized_shape", "weight", "bias", "eps"))))
    else:
        x, w, b, mean, var, momentum, eps = (_arg(node, i, k) for i, k in enumerate(
            ("input", "weight", "bias", "running_mean", "running_var", "momentum", "eps")))
        call = (F.batch_norm, (x, mean, var, w, b, False, momentum, eps))
    with graph.inserting_before(node):
        new = graph.call_function(*call)
    new.meta = dict(node.meta)
    for u in users:
        u.replace_all_uses_with(new)
        graph.erase_node(u)
    graph.erase_node(node)
    return True


#: higher-order ops whose body is inlined -> the argument that is the body
_BODY_AT = {"wrap_with_set_grad_enabled": 1, "wrap": 0, "wrap_with_autocast": 4}


def inline_higher_order(gm: fx.GraphModule) -> fx.GraphModule:
    """Inline the body of every ``wrap_with_set_grad_enabled``, ``wrap`` and ``wrap_with_autocast``
    (with autocast off) call into ``gm``'s graph.

    The values are those of the body; the grad mode it set is not kept (the pruned graph computes the
    same values). Example::

        gm = inline_higher_order(torch.export.export(model, (x,)).module())
    """
    graph = gm.graph
    for node in list(graph.nodes):
        name = getattr(node.target, "__name__", "")
        if node.op != "call_function" or name not in _BODY_AT:
            continue
        if name == "wrap_with_autocast" and node.args[2]:   # autocast on changes the body's dtypes: kept
            continue
        body_at = _BODY_AT[name]
        body_node, inputs = node.args[body_at], node.args[body_at + 1:]
        body = gm.get_submodule(body_node.target)
        prefix = body_node.target + "."
        env = dict(zip([p for p in body.graph.nodes if p.op == "placeholder"], inputs))
        with graph.inserting_before(node):
            for b in body.graph.nodes:
                if b.op == "placeholder":
                    continue
                if b.op == "output":
                    result = fx.node.map_arg(b.args[0], env.__getitem__)
                    break
                if b.op == "get_attr":
                    env[b] = graph.get_attr(prefix + b.target)
                else:
                    env[b] = graph.node_copy(b, env.__getitem__)
                env[b].meta = dict(b.meta)
        if isinstance(result, (tuple, list)):
            for u in list(node.users):
                if u.target is operator.getitem:
                    u.replace_all_uses_with(result[u.args[1]])
                    graph.erase_node(u)
        else:
            node.replace_all_uses_with(result)
        graph.erase_node(node)
        if not body_node.users:
            graph.erase_node(body_node)
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm


def lower_aten(gm: fx.GraphModule) -> fx.GraphModule:
    """``gm`` (an ATen graph: ``ep.module()``, ``make_fx``) with every ATen op that has a torch-level
    twin replaced by it, pass-through nodes removed and higher-order bodies inlined; changed in place
    and returned.

    Example::

        gm = lower_aten(copy.deepcopy(torch.export.export(model, (x,)).module()))
        fxprune.analysis.analyze(gm, (x,))
    """
    inline_higher_order(gm)
    graph = gm.graph
    for node in list(graph.nodes):
        if node.op != "call_function" or not isinstance(node.target, torch._ops.OpOverload):
            continue
        if node.target in _ASSERTIONS and not node.users:
            graph.erase_node(node)
        elif node.target in _PASS_THROUGH:
            node.replace_all_uses_with(node.args[0])
            graph.erase_node(node)
        elif node.target in (aten._native_batch_norm_legit_no_training.default, aten.native_layer_norm.default):
            _first_output(graph, node)
        else:
            found = lowered_call(node)
            if found is None:
                continue
            op, target, args, kwargs = found
            with graph.inserting_before(node):
                new = graph.create_node(op, target, tuple(args), dict(kwargs))
            new.meta = dict(node.meta)
            node.replace_all_uses_with(new)
            graph.erase_node(node)
    for node in reversed(graph.nodes):  # values computed for nothing (export keeps some) would be barriers
        if node.op in ("call_function", "call_method") and not node.users and not node.is_impure():
            graph.erase_node(node)
    graph.lint()
    gm.recompile()
    return gm


def is_aten_graph(gm: fx.GraphModule) -> bool:
    """Does ``gm`` call ATen overloads (a graph from torch.export or make_fx)?"""
    return any(n.op == "call_function" and isinstance(n.target, (torch._ops.OpOverload, torch._ops.HigherOrderOperator))
               for n in gm.graph.nodes)
