"""Linear and convolution: consumers of their input channels, producers of their output channels."""
from __future__ import annotations

import copy
import weakref

import torch
import torch.fx as fx
import torch.nn as nn

from ..channels import CONST, VARY, ZERO, ChannelMap
from ..graph import attr, owner_of
from .common import add_folded, weight_readers
from .registry import Rule, Unsupported, call_rule, register


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
            bias = add_folded(bias, w[:, ~keep_in], c[~keep_in])
        # no random initialisation to overwrite: the kept slices become the parameters
        new = nn.utils.skip_init(nn.Linear, int(keep_in.sum()), int(keep_out.sum()), bias=bias is not None,
                                 device=w.device, dtype=w.dtype)
        new.weight = nn.Parameter(w[keep_out][:, keep_in], requires_grad=m.weight.requires_grad)
        if bias is not None:
            frozen = not (m.weight if m.bias is None else m.bias).requires_grad
            new.bias = nn.Parameter(bias[keep_out], requires_grad=not frozen)
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
        _couple_groups(ctx, x, g, cdim)
        ctx.consume("in", x, dim=cdim, fold=not zero_padded(m))
        ids = ctx.produce("out", m.out_channels, {"weight": 1}, _bias_roles(m))
        _couple_groups(ctx, ChannelMap.on_dim(cdim, nd, ids, ZERO), g, cdim)
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
        w = m.weight.detach()
        weight, bias = _sliced_conv(w, None if m.bias is None else m.bias.detach(), keep_in, keep_out,
                                    fold.get("in"), m.groups)
        new = _conv_like(m, weight, bias)
        new.in_channels, new.out_channels = int(keep_in.sum()), int(keep_out.sum())
        return new


def _sliced_conv(w, bias, keep_in, keep_out, fold_in, groups: int):
    """A conv's weight (out, in / groups, *kernel) and bias (or None) keeping ``keep_in`` / ``keep_out``;
    ``fold_in``: the constant each removed input channel carries, added to the bias."""
    per_group = keep_in.reshape(groups, -1)
    if not bool((per_group == per_group[0]).all()):
        raise AssertionError("grouped conv: groups keep different input channels")
    bias = None if bias is None else bias.clone()
    if fold_in is not None:
        # a constant input channel adds c * (sum of its kernel) to every output position of its group
        cin = fold_in.reshape(groups, -1)
        wsum = w.double().flatten(2).sum(2).reshape(groups, -1, w.shape[1])          # (g, out/g, in/g)
        removed = ~per_group[0]
        delta = torch.einsum("goi,gi->go", wsum[:, :, removed], cin[:, removed].double()).reshape(-1)
        # summed in float64, rounded once to the weight's dtype
        bias = (delta if bias is None else bias.double() + delta).to(w.dtype)
    return w[keep_out][:, per_group[0]], None if bias is None else bias[keep_out]


def _couple_groups(ctx, cmap, groups: int, cdim: int) -> None:
    """A grouped convolution keeps equal widths per group: channel j of every group goes together."""
    if cmap is None or groups == 1:
        return
    if cmap.dims != (cdim,):
        raise Unsupported("grouped convolution over channels spread on several dims")
    per = cmap.ids.reshape(groups, -1)
    ctx.union_ids(per[:1].expand(groups - 1, -1), per[1:])


def _conv_like(m, weight, bias):
    """A copy of conv ``m`` (stride, padding, dilation, groups, padding_mode) with new parameters
    ``weight`` and ``bias``: tensors of their own (sliced copies), taken as they are."""
    new = copy.copy(m)
    new._parameters = dict(m._parameters)
    new._buffers = dict(m._buffers)
    new._modules = dict(m._modules)
    new.weight = nn.Parameter(weight, requires_grad=m.weight.requires_grad)
    new.bias = None if bias is None else nn.Parameter(bias)
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


# -- function ops on get_attr weights: F.linear, F.conv1d/2d/3d, F.embedding -----------------------------
# Graphs written by other fx passes (or by hand) call the functional op on parameters read with get_attr.
# The weight's output rows are produced channels, its input columns consume channels, as for the modules.
# Their sites belong to the GraphModule itself (owner ""), their tensors named by fqn ("w", "sub.weight"),
# so masks are keyed like the weight; the masked model multiplies the get_attr weight by its keep mask and
# the rewrite slices the parameters of the GraphModule in place.

def _channels(value):
    """A ChannelMap argument, or None (a parameter's view, a non-tensor)."""
    return value if isinstance(value, ChannelMap) else None


def _arg_node(node, i: int, name: str):
    return node.args[i] if i < len(node.args) else node.kwargs.get(name)


def _get_attr_target(node, i: int, name: str) -> str | None:
    """The fqn of argument i when it is a get_attr node (a parameter or buffer read as a whole)."""
    a = _arg_node(node, i, name)
    return a.target if getattr(a, "op", None) == "get_attr" else None


_HELD: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()   # flow -> _module_tensors (once per analysis)


def _module_tensors(gm) -> set[int]:
    """ids of the tensors of modules the graph calls (their weights are read inside the call)."""
    out: set[int] = set()
    for n in gm.graph.nodes:
        if n.op == "call_module":
            m = gm.get_submodule(n.target)
            out.update(id(t) for t in (*m.parameters(), *m.buffers()))
    return out


def _sole_user(ctx, fqns: list[str], input_at: int = 0) -> None:
    """The tensors ``fqns`` may be sliced only if every reader agrees on how: each get_attr of them feeds
    this op only, called with the same arguments (the input, argument ``input_at``, apart), and no
    module holds them."""
    gm = ctx.flow.module
    node = ctx.node
    held = _HELD.get(ctx.flow)
    if held is None:
        held = _HELD[ctx.flow] = _module_tensors(gm)
    for fqn in fqns:
        if id(attr(gm, fqn)) in held:
            raise Unsupported(f"{fqn} is also used by a module the graph calls")
        tied = _tied(gm, fqn)
        for n in gm.graph.nodes:
            if n.op != "get_attr" or n.target != fqn:
                continue
            for u in n.users:
                if tied and u.target is not node.target:  # the other side of tied embeddings
                    continue
                rest = lambda a: a[:input_at] + a[input_at + 1:]
                same = (u.op == node.op and u.target == node.target and rest(u.args) == rest(node.args)
                        and u.kwargs == node.kwargs and u.args[input_at:input_at + 1] != (n,))
                if not same:
                    raise Unsupported(f"{fqn} is also read by {u.name}")


_TIED = (torch.nn.functional.embedding, torch.nn.functional.linear)


def _tied(gm, fqn: str) -> bool:
    """Is ``fqn`` an embedding table that is also a linear layer's weight (tied input and output
    embeddings, GPT-2's ``lm_head``), and read nowhere else? Both read its columns: the hidden channels;
    the linear layer's bias (RoBERTa's) is per vocabulary row, which stays."""
    users = [u for n in gm.graph.nodes if n.op == "get_attr" and n.target == fqn for u in n.users]
    if not all(u.target in _TIED and getattr(_arg_node(u, 1, "weight"), "target", None) == fqn for u in users):
        return False
    return {u.target for u in users} == set(_TIED)


def _tie(ctx, fqn: str) -> None:
    """Couple the columns of a tied table (see _tied) as the embedding makes them (``"<fqn>:out"``) and
    as the linear reads them (``"<fqn>:in"``): one slice serves both. Read untracked, they all stay."""
    flow = ctx.flow
    made, read = flow.sites.get(("", f"{fqn}:out")), flow.sites.get(("", f"{fqn}:in"))
    if made is not None and ("", f"{fqn}:in") in flow.untracked_reads:
        flow.pin(ctx.node, made.ids, f"{fqn} (tied embeddings) is read by a linear layer on untracked channels")
    elif made is not None and read is not None:
        ctx.union_ids(made.ids, read.ids)


def _zero_rows(ctx, tensors: dict[str, int], n: int) -> torch.Tensor:
    """Per row (along each tensor's axis): zero in every tensor (dead-channel mode)."""
    zero = torch.ones(n, dtype=torch.bool)
    for fqn, axis in tensors.items():
        t = attr(ctx.flow.module, fqn).detach().movedim(axis, 0).reshape(n, -1)
        zero &= (t == 0).all(1)
    return zero


def _carry_of(ctx, tensors: dict[str, int], n: int, default: int) -> torch.Tensor | int:
    """What a pruned produced channel holds: ``default``; in dead-channel mode ZERO where its rows are
    zero, else VARY."""
    if not ctx.flow.dead:
        return default
    return torch.where(_zero_rows(ctx, tensors, n), ZERO, VARY).to(torch.int8)


def _set_tensor(root, fqn: str, value: torch.Tensor) -> None:
    holder, leaf = owner_of(root, fqn)
    old = getattr(holder, leaf)
    if isinstance(old, nn.Parameter):
        setattr(holder, leaf, nn.Parameter(value.clone(), requires_grad=old.requires_grad))
    elif leaf in holder._buffers:
        holder.register_buffer(leaf, value.clone(), persistent=leaf not in holder._non_persistent_buffers_set)
    else:   # a plain tensor attribute (an exported program's lifted constant)
        setattr(holder, leaf, value.clone())


class GetAttrWeightRule(Rule):
    """Base of the function ops on get_attr weights. Sites: ``("", "<fqn>:out")`` (rows produced),
    ``("", "<fqn>:in")`` (columns consumed). ``rewrite`` is called once with the GraphModule and every
    such role (of any of these ops), and slices each weight by the rule of the op that reads it."""

    WEIGHT, BIAS, INPUT = (1, "weight"), (2, "bias"), 0

    def weights(self, ctx):
        """(weight fqn, bias fqn or None), or None when the weight is no get_attr tensor."""
        w = _get_attr_target(ctx.node, *self.WEIGHT)
        if w is None:
            return None
        b = None
        if self.BIAS is not None and ctx.arg(*self.BIAS) is not None:
            b = _get_attr_target(ctx.node, *self.BIAS)
            if b is None:
                raise Unsupported("a bias that is not a get_attr tensor")
        _sole_user(ctx, [w] + ([b] if b else []), self.INPUT)
        ctx.site_owner = ""  # the sites belong to the GraphModule, named by the tensors' fqns
        return w, b

    def rewrite(self, root, keep, fold):
        by_fqn: dict[str, dict] = {}
        for role, k in keep.items():
            fqn, _, side = role.rpartition(":")
            by_fqn.setdefault(fqn, {})[side] = k
        for fqn, k in by_fqn.items():
            users = [u for u, _ in weight_readers(root, fqn)]
            users.sort(key=lambda u: u.target is not _TIED[0])   # tied embeddings: sliced as the table
            rule = call_rule(users[0].target)
            rule.rewrite_weight(root, users, fqn, attr(root, fqn).detach(), k.get("out"), k.get("in"),
                                fold.get(f"{fqn}:in"))
        return root

    def rewrite_weight(self, root, nodes, fqn, w, keep_out, keep_in, fold_in) -> None:
        raise NotImplementedError

    def _bias(self, nodes) -> str | None:
        """The fqn of the bias the op nodes read (the same for all of them, see _sole_user)."""
        return _get_attr_target(nodes[0], *self.BIAS) if self.BIAS is not None else None

    def _write_bias(self, root, nodes, fqn, bias: torch.Tensor | None, b_fqn: str | None) -> None:
        """Store the new bias; a bias made by folding constants gets a parameter next to the weight and
        every op node reads it."""
        if bias is None:
            return
        if b_fqn is not None:
            _set_tensor(root, b_fqn, bias)
            return
        holder, leaf = owner_of(root, fqn)
        name = f"{leaf}_folded_bias"
        holder.register_parameter(name, nn.Parameter(bias.clone()))
        target = f"{fqn.rpartition('.')[0]}.{name}" if "." in fqn else name
        i, key = self.BIAS
        for n in nodes:
            with root.graph.inserting_before(n):
                g = root.graph.get_attr(target)
            if i < len(n.args) or key not in n.kwargs and len(n.args) == i:
                args = list(n.args) + [None] * (i + 1 - len(n.args))
                args[i] = g
                n.args = tuple(args)
            else:
                n.kwargs = {**n.kwargs, key: g}


@register(torch.nn.functional.linear)
class FunctionalLinearRule(GetAttrWeightRule):
    """F.linear(x, w, b) with get_attr w (out, in) and b: rows produced, columns consumed (constants of
    removed input channels fold into b, created if needed)."""

    def flow(self, ctx):
        x = _channels(ctx.arg_map(0, "input"))
        W = ctx.arg(1, "weight")
        bias = _arg_node(ctx.node, 2, "bias")
        w = _get_attr_target(ctx.node, *self.WEIGHT)
        if isinstance(bias, fx.Node) and bias.op != "get_attr" and w is not None and W.dim() == 2:
            # a bias computed at run time (timm's qkv: cat of q and v biases around zeros for k): its
            # width is the run-time one, so the rows stay; the input columns are consumed (no constant
            # folds into a bias that is not a tensor of ours)
            _sole_user(ctx, [w])
            ctx.site_owner = ""
            ctx.consume(f"{w}:in", x, dim=-1, fold=False)
            return None
        names = self.weights(ctx)
        if names is None or W.dim() != 2:
            if isinstance(x, ChannelMap):
                raise Unsupported("a weight that is not a 2-d get_attr tensor")
            return None
        w, b = names
        if _tied(ctx.flow.module, w):
            # the output embedding of tied embeddings: the hidden channels are its columns, sliced with
            # the table's; its rows (the vocabulary, the table's rows) stay
            ctx.consume(f"{w}:in", x, dim=-1, fold=False)
            _tie(ctx, w)
            return None
        ctx.consume(f"{w}:in", x, dim=-1, fold=True)
        ids = ctx.produce(f"{w}:out", W.shape[0], {w: 1}, {b: 1} if b else {})
        default = ZERO if (b is None or ctx.prune_bias) else CONST
        carry = _carry_of(ctx, {w: 0, **({b: 0} if b else {})}, W.shape[0], default)
        return ChannelMap.on_dim(-1, ctx.out.dim(), ids, carry)

    def rewrite_weight(self, root, nodes, fqn, w, keep_out, keep_in, fold_in):
        keep_out = keep_out if keep_out is not None else torch.ones(w.shape[0], dtype=torch.bool)
        keep_in = keep_in if keep_in is not None else torch.ones(w.shape[1], dtype=torch.bool)
        b_fqn = self._bias(nodes)
        bias = None if b_fqn is None else attr(root, b_fqn).detach().clone()
        if fold_in is not None:
            bias = add_folded(bias, w[:, ~keep_in], fold_in[~keep_in])
        _set_tensor(root, fqn, w[keep_out][:, keep_in])
        self._write_bias(root, nodes, fqn, None if bias is None else bias[keep_out], b_fqn)


@register(torch.addmm)
class AddmmRule(FunctionalLinearRule):
    """torch.addmm(b, x, w) = b + x @ w with get_attr w of shape (in, out) and b (GPT-2's Conv1D): F.linear
    with the weight transposed; rows of w are consumed, its columns (and b) produced."""

    WEIGHT, BIAS, INPUT = (2, "mat2"), (0, "input"), 1

    def flow(self, ctx):
        x = _channels(ctx.arg_map(1, "mat1"))
        W = ctx.arg(2, "mat2")
        names = self.weights(ctx) if ctx.arg(3, "beta", 1) == 1 and ctx.arg(4, "alpha", 1) == 1 else None
        if names is None or W.dim() != 2:
            if isinstance(x, ChannelMap):
                raise Unsupported("a weight that is not a 2-d get_attr tensor, or beta/alpha other than 1")
            return None
        w, b = names
        ctx.consume(f"{w}:in", x, dim=-1, fold=True, arg=1)
        ids = ctx.produce(f"{w}:out", W.shape[1], {w: 1}, {b: 1} if b else {}, axes={w: 1})
        default = ZERO if (b is None or ctx.prune_bias) else CONST
        carry = _carry_of(ctx, {w: 1, **({b: 0} if b else {})}, W.shape[1], default)
        return ChannelMap.on_dim(-1, ctx.out.dim(), ids, carry)

    def rewrite_weight(self, root, nodes, fqn, w, keep_out, keep_in, fold_in):
        super().rewrite_weight(root, nodes, fqn, w.t(), keep_out, keep_in, fold_in)
        holder, leaf = owner_of(root, fqn)
        _set_tensor(root, fqn, getattr(holder, leaf).detach().t())


def _conv_zero_padded(padding, kernel) -> bool:
    if isinstance(padding, str):
        return padding == "same" and any(k > 1 for k in kernel)
    pads = padding if isinstance(padding, (tuple, list)) else (padding,)
    return any(int(p) > 0 for p in pads)


@register(torch.nn.functional.conv1d, torch.nn.functional.conv2d, torch.nn.functional.conv3d)
class FunctionalConvRule(GetAttrWeightRule):
    """F.conv1d/2d/3d(x, w, b, stride, padding, dilation, groups) with get_attr w and b, as nn.ConvNd:
    groups == 1 produces rows and consumes columns; grouped convs prune channel j of every group
    together; depthwise convs (groups == input channels) pass channels through with their filters and
    biases as members, and ``groups`` is rewritten to the kept width."""

    def flow(self, ctx):
        x = _channels(ctx.arg_map(0, "input"))
        W = ctx.arg(1, "weight")
        names = self.weights(ctx)
        if names is None:
            if isinstance(x, ChannelMap):
                raise Unsupported("a weight that is not a get_attr tensor")
            return None
        w, b = names
        nd = ctx.out.dim()
        cdim = 1 if nd == W.dim() else 0
        g = ctx.arg(6, "groups", 1)
        if g > 1 and not isinstance(_arg_node(ctx.node, 6, "groups"), int):
            raise Unsupported("grouped convolution whose groups is not a literal")
        c_in = ctx.arg(0, "input").shape[cdim]
        zp = _conv_zero_padded(ctx.arg(4, "padding", 0), W.shape[2:])
        if g > 1 and g == c_in:
            return self._depthwise(ctx, x, w, b, W, cdim, zp)
        _couple_groups(ctx, x, g, cdim)
        ctx.consume(f"{w}:in", x, dim=cdim, fold=not zp)
        ids = ctx.produce(f"{w}:out", W.shape[0], {w: 1}, {b: 1} if b else {})
        _couple_groups(ctx, ChannelMap.on_dim(cdim, ctx.out.dim(), ids, ZERO), g, cdim)
        default = ZERO if (b is None or ctx.prune_bias) else CONST
        carry = _carry_of(ctx, {w: 0, **({b: 0} if b else {})}, W.shape[0], default)
        return ChannelMap.on_dim(cdim, nd, ids, carry)

    def _depthwise(self, ctx, x, w, b, W, cdim, zp):
        if x is None:
            return None
        if x.dims != (cdim,):
            raise Unsupported("depthwise convolution over channels spread on several dims")
        mult = W.shape[0] // x.ids.numel()
        rows = ChannelMap.on_dim(0, 1, x.ids.repeat_interleave(mult), x.carry.repeat_interleave(mult))
        ctx.param_member(ctx.arg_map(1, "weight"), 0, rows, zeroed=True)
        if b is not None:
            ctx.param_member(ctx.arg_map(2, "bias"), 0, rows, zeroed=True)
        out = rows.map_carry(CONST if b is not None else ZERO, VARY if zp else CONST)
        if ctx.flow.dead:
            zero = _zero_rows(ctx, {w: 0, **({b: 0} if b else {})}, W.shape[0])
            out = out.with_carry(torch.where(zero, ZERO, out.carry).to(torch.int8))
        elif ctx.prune_bias:  # filters and biases of pruned channels are masked: they output 0
            out = out.with_carry(ZERO)
        return ChannelMap.on_dim(cdim, ctx.out.dim(), out.ids, out.carry)

    def rewrite_weight(self, root, nodes, fqn, w, keep_out, keep_in, fold_in):
        keep_out = keep_out if keep_out is not None else torch.ones(w.shape[0], dtype=torch.bool)
        g = _arg_node(nodes[0], 6, "groups") or 1
        keep_in = keep_in if keep_in is not None else torch.ones(w.shape[1] * g, dtype=torch.bool)
        b_fqn = self._bias(nodes)
        weight, bias = _sliced_conv(w, None if b_fqn is None else attr(root, b_fqn).detach(), keep_in, keep_out,
                                    fold_in, g)
        _set_tensor(root, fqn, weight)
        self._write_bias(root, nodes, fqn, bias, b_fqn)

    def rewrite_node(self, node, ctx):
        """A depthwise conv's literal ``groups`` becomes the kept width."""
        g = _arg_node(node, 6, "groups")
        src, weight = node.args[0], _arg_node(node, 1, "weight")
        old = ctx.old_shape(src)
        if not isinstance(g, int) or g == 1 or old is None or ctx.old_shape(weight) is None:
            return
        cdim = 1 if len(old) == len(ctx.old_shape(weight)) else 0
        if old[cdim] != g:
            return
        new = ctx.new_sizes(src)[cdim]
        if new != g:
            if len(node.args) > 6:
                node.args = (*node.args[:6], new, *node.args[7:])
            else:
                node.kwargs = {**node.kwargs, "groups": new}


@register(torch.nn.functional.embedding)
class FunctionalEmbeddingRule(GetAttrWeightRule):
    """F.embedding(idx, w) with a get_attr table w (num, dim): its columns are produced channels."""

    BIAS = None

    def flow(self, ctx):
        x = ctx.arg_map(0, "input")
        W = ctx.arg(1, "weight")
        if isinstance(x, ChannelMap):
            raise Unsupported("indices that carry channels")
        if ctx.arg(3, "max_norm") is not None:
            raise Unsupported("max_norm renormalises rows over all channels")
        names = self.weights(ctx)
        if names is None:
            return None
        w, _ = names
        ids = ctx.produce(f"{w}:out", W.shape[1], {w: 1}, axes={w: 1})
        if _tied(ctx.flow.module, w):
            _tie(ctx, w)
        return ChannelMap.on_dim(-1, ctx.out.dim(), ids, _carry_of(ctx, {w: 1}, W.shape[1], ZERO))

    def rewrite_weight(self, root, nodes, fqn, w, keep_out, keep_in, fold_in):
        keep = keep_out if keep_out is not None else keep_in   # tied: both are the table's columns
        if keep is not None:
            _set_tensor(root, fqn, w[:, keep])
