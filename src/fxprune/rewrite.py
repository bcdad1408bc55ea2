"""Rewrite: a new, smaller GraphModule from the baked (masked-weights) copy and the plan.

Each module that owns sites is replaced by its rule's ``rewrite`` (sliced parameters, updated
attributes, constants folded into biases); function and method nodes with literal sizes are updated
by their rule's ``rewrite_node``.
"""
from __future__ import annotations

import contextlib
import math
import operator

import torch
import torch.fx as fx

from .channels import ChannelMap, ParamView
from .graph import float_dtypes
from .masks import Plan
from .rules import call_rule


class RewriteContext:
    """What ``rule.rewrite_node`` may ask: a node's widths after pruning."""

    def __init__(self, plan: Plan, gm: fx.GraphModule):
        self.plan, self.gm = plan, gm   # gm: the module being rewritten
        self.analysis = plan.analysis
        # by node name; nodes the rewrite adds in place of others take over their entries
        self.labels = dict(plan.analysis.labels_by_name)
        self.shapes = dict(plan.analysis.shapes_by_name)

    def _map_and_shape(self, node: fx.Node):
        cmap = self.labels.get(node.name)
        meta = self.shapes.get(node.name)
        if not isinstance(cmap, ChannelMap) or meta is None:
            return None, meta
        return cmap, meta

    def new_sizes(self, node: fx.Node) -> list[int] | None:
        cmap, shape = self._map_and_shape(node)
        if shape is None:
            return None
        sizes = list(shape)
        view = self.labels.get(node.name)
        if isinstance(view, ParamView) and len(view.dims) == len(sizes):  # a view of a sliced parameter
            for d in range(len(sizes)):
                keep = self._param_keep(view, d)
                sizes[d] = sizes[d] if keep is None else int(keep.sum())
        if cmap is None:
            return sizes
        kept = self._kept(cmap)
        for axis, d in enumerate(cmap.dims):
            sizes[d] = int(_along(kept, axis).sum())
        return sizes

    def _param_keep(self, view: ParamView, dim: int) -> torch.Tensor | None:
        """Bool per position of dim ``dim`` of a view of a parameter: does it survive the slicing of that
        parameter? None where the parameter is not sliced."""
        p = view.param_dim(dim)
        if p is None:
            return None
        owner, _, name = view.target.rpartition(".")
        site = self.analysis.sites.get((owner, f"{name}:dim{p}"))
        return None if site is None else self.plan.site_keep(site)

    def kept_along(self, node: fx.Node, dim: int) -> torch.Tensor | None:
        """Bool per position of ``node``'s dim ``dim``: does it survive? None if the dim holds no channels."""
        view = self.labels.get(node.name)
        if isinstance(view, ParamView):
            return self._param_keep(view, dim)
        cmap, _ = self._map_and_shape(node)
        if cmap is None or dim not in cmap.dims:
            return None
        return _along(self._kept(cmap), cmap.dims.index(dim))

    def _kept(self, cmap) -> torch.Tensor:
        kept = torch.ones(cmap.ids.shape, dtype=torch.bool)
        lab = cmap.ids >= 0
        kept[lab] = ~self.plan.removed[cmap.ids[lab]]
        return kept

    def replace_permutation(self, node: fx.Node) -> bool:
        """``node`` ends a chain that only reorders channels (Analysis.permutations). If the channels
        it keeps do not form a rectangle where the chain splits them, the chain cannot run on the
        pruned widths: one index_select of the chain's source takes its place. True if replaced."""
        entry = self.analysis.permutations.get(node.name)
        if entry is None:
            return False
        split, source, dim, perm = entry
        split_map = self.labels[split]
        kept = self._kept(split_map)
        if math.prod(int(_along(kept, axis).sum()) for axis in range(kept.dim())) == int(kept.sum()):
            return False
        kept_source = self._kept(self.labels[source])
        kept_out = self._kept(self.labels[node.name])
        index = (kept_source.cumsum(0) - 1)[perm[kept_out]]
        graph = node.graph
        source_node = next(n for n in graph.nodes if n.name == source)
        with graph.inserting_after(node):
            attr = self.constant_tensor(index, "fxprune_channel_order")
        with graph.inserting_after(attr):
            select = graph.call_function(torch.index_select, (source_node, dim, attr))
        node.replace_all_uses_with(select)
        self.labels[select.name], self.shapes[select.name] = self.labels[node.name], self.shapes[node.name]
        _erase_unused(node)
        return True

    def slice_operand(self, node: fx.Node) -> None:
        """An operand without tracked channels that spans ``node``'s channel dims (FlowContext.slices_operand)
        keeps the entries of the kept channels: an index_select per period of the dim (``unflatten``,
        ``index_select``, ``flatten``). A dim of heads merged with the batch, ``(batch * heads, ...)``,
        repeats its channels with the head count as period, so the batch size stays free; an example of
        batch 1 shows no repetition, and the whole dim as period gives the same slices."""
        entry = self.analysis.sliced_operands.get(node.name)
        if entry is None:
            return
        arg, dims = entry
        operand, cmap = node.args[arg], self.labels[node.name]
        offset = len(self.shapes[node.name]) - len(self.shapes[operand.name])
        kept, graph, value = self._kept(cmap), node.graph, operand
        for d in dims:
            axis = cmap.dims.index(d)
            keep = _along(kept, axis)
            if bool(keep.all()):
                continue
            period, od = _period(cmap.ids, axis), d - offset
            with graph.inserting_before(node):
                # not in the state dict: a constant of the pruned graph, as its literal sizes are
                index = self.constant_tensor(keep[:period].nonzero().squeeze(1), "fxprune_kept", persistent=False)
                value = graph.call_method("unflatten", (value, od, (-1, period)))
                value = graph.call_function(torch.index_select, (value, od + 1, index))
                value = graph.call_method("flatten", (value, od, od + 1))
        if value is not operand:
            node.args = node.args[:arg] + (value,) + node.args[arg + 1:]

    def size_argument(self, user: fx.Node, size, old: int, new: int):
        """What ``user`` passes for a dim whose width went from ``old`` to ``new`` where it passed ``size``:
        a product computed at run time with a literal (``bsz * num_heads`` sizing heads merged with the
        batch) becomes the same product with the literal scaled (a new node, since others may read the
        old one); anything else becomes the new width."""
        if isinstance(size, fx.Node) and size.op == "call_function" and size.target is operator.mul:
            ints = [i for i, a in enumerate(size.args) if isinstance(a, int)]
            if len(ints) == 1 and (size.args[ints[0]] * new) % old == 0:
                args = list(size.args)
                args[ints[0]] = args[ints[0]] * new // old
                with user.graph.inserting_before(user):
                    return user.graph.call_function(operator.mul, tuple(args))
        return new

    def constant_tensor(self, value: torch.Tensor, base: str, persistent: bool = True) -> fx.Node:
        """A ``get_attr`` node (at the graph's insertion point) for a new buffer ``<base>_<i>``."""
        name = _free_name(self.gm, base)
        self.gm.register_buffer(name, value, persistent=persistent)
        return self.gm.graph.get_attr(name)

    def set_constant(self, user: fx.Node, old: fx.Node, value: torch.Tensor, base: str) -> None:
        """``user`` reads ``value`` where it read the ``get_attr`` ``old``: the buffer is overwritten
        when nothing else reads it, else a new buffer ``<base>_<i>`` is made."""
        readers = [n for n in self.gm.graph.nodes if n.op == "get_attr" and n.target == old.target]
        if readers == [old] and list(old.users) == [user] and old.target in self.gm._buffers:
            self.gm._buffers[old.target] = value
            return
        with self.gm.graph.inserting_before(user):
            user.replace_input_with(old, self.constant_tensor(value, base))

    def replace_with_constant(self, node: fx.Node, value) -> None:
        """Users of ``node`` read ``value`` instead; the node goes."""
        for user in list(node.users):
            user.args = fx.node.map_arg(user.args, lambda n: value if n is node else n)
            user.kwargs = fx.node.map_arg(user.kwargs, lambda n: value if n is node else n)
        node.graph.erase_node(node)

    def old_shape(self, node: fx.Node):
        return self.shapes.get(node.name)

    def width_changed(self, node: fx.Node, dim: int) -> bool:
        new = self.new_sizes(node)
        old = self.shapes.get(node.name)
        return new is not None and old is not None and new[dim] != old[dim]


def _along(kept: torch.Tensor, axis: int) -> torch.Tensor:
    """Per position on ``axis``: is any channel there kept? (a split's kept channels form a product of
    these per-axis sets)"""
    others = [a for a in range(kept.dim()) if a != axis]
    return kept.any(dim=others) if others else kept


def _period(ids: torch.Tensor, axis: int) -> int:
    """The smallest period of the channels along ``axis``: position p holds what position p % period
    holds (the whole length when they do not repeat)."""
    rows = ids.movedim(axis, 0).reshape(ids.shape[axis], -1)
    n = rows.shape[0]
    for period in range(1, n):
        if n % period == 0 and bool((rows == rows[:period].repeat(n // period, 1)).all()):
            return period
    return n


def _free_name(gm: torch.nn.Module, base: str) -> str:
    i = 0
    while hasattr(gm, f"{base}_{i}"):
        i += 1
    return f"{base}_{i}"


def _erase_unused(node: fx.Node) -> None:
    """Erase ``node`` and then whatever only it used (the sizes a reshape read), if side-effect free."""
    if getattr(node, "_erased", False) or node.users or node.op not in ("call_function", "call_method") \
            or node.is_impure():
        return
    inputs = list(node.all_input_nodes)
    node.graph.erase_node(node)
    for n in inputs:
        _erase_unused(n)


def _slice_param(module, site, keep: torch.Tensor) -> None:
    """A get_attr parameter or buffer sliced along the dim where it meets channels."""
    if bool(keep.all()):
        return
    name, dim = site.param_dim()
    old = getattr(module, name)
    value = old.detach().index_select(dim, keep.nonzero().squeeze(1)).clone()
    if isinstance(old, torch.nn.Parameter):
        setattr(module, name, torch.nn.Parameter(value, requires_grad=old.requires_grad))
    else:
        module.register_buffer(name, value, persistent=name not in module._non_persistent_buffers_set)


def rewrite(baked: fx.GraphModule, plan: Plan, fold: dict) -> fx.GraphModule:
    """Slice ``baked`` (a private copy, modified here) by ``plan``; ``fold[site_key]`` holds constants."""
    shared = _shared_parameters(baked)
    by_owner: dict[str, list] = {}
    for s in plan.analysis.sites.values():
        by_owner.setdefault(s.owner, []).append(s)
    for owner, sites in by_owner.items():
        try:
            module = baked.get_submodule(owner)
        except AttributeError:
            continue
        for s in [s for s in sites if s.kind == "param"]:
            _slice_param(module, s, plan.site_keep(s))
        sites = [s for s in sites if s.kind != "param"]
        if not sites:
            continue
        keep = {s.role: plan.site_keep(s) for s in sites}
        folds = {s.role: fold.get(s.key) for s in sites}
        if all(bool(k.all()) for k in keep.values()) and all(f is None for f in folds.values()):
            continue
        before = float_dtypes(module)
        with _default_dtype_of(module):  # a rule building nn.X(...) without dtype= gets the module's
            new_module = sites[0].rule.rewrite(module, keep, folds)
        _check_dtypes(owner, before, new_module, sites[0].rule)
        if new_module is not module:  # owner "" (get_attr weights of function ops) is sliced in place
            baked.set_submodule(owner, new_module)
    ctx = RewriteContext(plan, baked)
    for node in list(baked.graph.nodes):
        if node.graph is None or getattr(node, "_erased", False):  # erased by an earlier rewrite
            continue
        if node.op in ("call_function", "call_method"):
            if ctx.replace_permutation(node):
                continue
            ctx.slice_operand(node)
            rule = call_rule(node.target)
            if rule is not None:
                rule.rewrite_node(node, ctx)
    _retie(baked, shared)
    baked.graph.lint()
    baked.recompile()
    return baked


@contextlib.contextmanager
def _default_dtype_of(module: torch.nn.Module):
    """torch's default dtype set to the dtype of ``module``'s floating tensors while its rule builds the
    smaller module, when they all have one (float64, float16, bfloat16 models)."""
    dtypes = set(float_dtypes(module).values())
    if len(dtypes) != 1 or isinstance(module, fx.GraphModule):
        yield
        return
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtypes.pop())
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def _check_dtypes(owner: str, before: dict, new: torch.nn.Module, rule) -> None:
    """Pruning changes widths, never dtypes: every floating tensor the smaller module keeps has the
    dtype it had."""
    for name, dtype in float_dtypes(new).items():
        if name in before and before[name] != dtype:
            raise AssertionError(f"{type(rule).__name__}.rewrite turned {owner}.{name} from {before[name]} into "
                                 f"{dtype}; build the new module with the old one's dtype "
                                 "(fxprune.rules.factory_kwargs)")


def _shared_parameters(gm: torch.nn.Module) -> list[list[tuple[str, str]]]:
    """Parameters that several modules hold (tied embeddings): [(module path, name), ...] per tensor."""
    where: dict[int, list[tuple[str, str]]] = {}
    for path, mod in gm.named_modules(remove_duplicate=False):
        for name, p in mod._parameters.items():
            if p is not None:
                where.setdefault(id(p), []).append((path, name))
    return [places for places in where.values() if len(places) > 1]


def _retie(gm: fx.GraphModule, shared) -> None:
    """Tie again what was tied, when every holder the graph reads was sliced the same way. Holders it
    does not read (an exported graph reads tied embeddings under one name) follow the ones it reads."""
    read = {n.target for n in gm.graph.nodes if n.op == "call_module" or n.op == "get_attr" and n.users}
    def is_read(path, name):
        fqn = f"{path}.{name}" if path else name
        return fqn in read or path in read
    for places in shared:
        params = [getattr(gm.get_submodule(path), name) for path, name in places]
        used = [p for p, place in zip(params, places) if is_read(*place)] or params
        if all(p.shape == used[0].shape and torch.equal(p, used[0]) for p in used[1:]):
            for path, name in places:
                setattr(gm.get_submodule(path), name, used[0])
