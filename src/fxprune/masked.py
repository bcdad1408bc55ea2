"""The masked model: same shapes as the original, pruned channels held at zero in forward.

Producers' weight rows (and biases, with ``prune_bias``) carry a :class:`~fxprune.masks.RowMask`
parametrization, so the mask stays in force while the model trains, as torch.ao's parametrizations
do. Ops whose rule needs more (LayerNorm over kept channels only) are replaced by the rule's masked
module. :func:`update_masks` re-scores and writes new masks into the same buffers, so an optimizer
built on the masked model keeps working.
"""
from __future__ import annotations

import copy

import torch
import torch.fx as fx
import torch.nn as nn
from torch.nn.utils import parametrize

from .graph import MASK_TAG, ROWS_TAG, attr, owner_of, private_copy
from .masks import Plan, RowMask
from .rules import Rule
from .rules.norm import MaskedLayerNorm


def _sites_by_owner(plan: Plan) -> dict[str, list]:
    by_owner: dict[str, list] = {}
    for s in plan.analysis.sites.values():
        by_owner.setdefault(s.owner, []).append(s)
    return by_owner


def _rows(keep: torch.Tensor, gates: int, n_rows: int, kind: str) -> torch.Tensor:
    """A parameter's row mask. Producers stack gates, and each unit may span several adjacent rows
    (an attention head's head_dim rows): rows = (gate, unit, span). A member with several rows per
    channel (a depthwise conv with a channel multiplier) has them adjacent."""
    if kind == "producer":
        span = n_rows // (gates * keep.numel())
        return keep.repeat_interleave(span).repeat(gates)
    return keep.repeat_interleave(n_rows // keep.numel())


def _keep_name(target: str, dim: int) -> str:
    return f"_fxprune_keep_{target.replace('.', '_')}_dim{dim}"


def _mask_param(gm: fx.GraphModule, owner: str, site, keep: torch.Tensor, bake: bool) -> None:
    """Hold a get_attr parameter's pruned entries at zero. Baked: in the parameter itself. Masked model:
    a ``mul`` by a keep buffer after each get_attr of it (a parametrization would have to live on the
    module that owns the parameter, and that may be the GraphModule itself)."""
    name, dim = site.param_dim()
    _mask_attr(gm, f"{owner}.{name}" if owner else name, keep, dim, bake)


def _mask_attr(gm: fx.GraphModule, target: str, keep: torch.Tensor, dim: int, bake: bool,
               producer: bool = False) -> None:
    """Hold the entries of the get_attr tensor ``target`` along ``dim`` where ``keep`` is False at zero
    (see :func:`_mask_param`). ``producer``: ``keep`` is a producer's row mask (``F.linear(x, self.w)``),
    which :func:`fxprune.interop.strip_param_masks` reads back when a masked model is pruned."""
    param = attr(gm, target)
    shape = [1] * param.dim()
    shape[dim] = -1
    if bake:
        with torch.no_grad():
            param.mul_(keep.reshape(shape).to(param.dtype))
        return
    buf = _keep_name(target, dim)
    if hasattr(gm, buf):  # update_masks: the graph already multiplies by it
        getattr(gm, buf).copy_(keep.reshape(shape).to(param.dtype))
        return
    gm.register_buffer(buf, keep.reshape(shape).to(param.dtype).clone())
    for node in list(gm.graph.nodes):
        if node.op == "get_attr" and node.target == target:
            with gm.graph.inserting_after(node):
                k = gm.graph.get_attr(buf)
            with gm.graph.inserting_after(k):
                masked = gm.graph.call_function(torch.mul, (node, k))
            k.meta[MASK_TAG] = masked.meta[MASK_TAG] = True
            if producer:
                k.meta[ROWS_TAG] = target
            node.replace_all_uses_with(masked, delete_user_cb=lambda u: u is not masked)


def _masked_tensors_of(site, prune_bias: bool) -> dict[str, int]:
    """{tensor name: gates} that the masks of ``site`` zero: a producer's rows (and its biases with
    ``prune_bias``), a member's additive parameters with ``prune_bias``; nothing for other sites."""
    if site.kind == "producer":
        return {**site.tensors, **(site.biases if prune_bias else {})}
    if site.kind == "member" and prune_bias:
        return {p: 1 for p in site.zeroed}
    return {}


def _has_custom_mask(rule) -> bool:
    return type(rule).masked is not Rule.masked


def bake_entries(gm: fx.GraphModule, plan: Plan, prune_bias: bool) -> list[tuple[torch.Tensor, torch.Tensor, int, bool]]:
    """The multiplications that bake the plan's masks into ``gm``'s tensors, in order: (tensor, keep
    along ``axis``, axis, whether a masked entry may be kept by the rewrite: masked but not removed, or
    a tensor held in several places).
    Modules and function ops whose rule masks them another way (a LayerNorm over kept channels) have none.
    """
    out = []
    nodes = {n.name: n for n in gm.graph.nodes}
    # a tensor held in several places (tied embeddings) may be sliced another way by another reader
    # (kept columns that this site removes): always baked whole
    held: dict[int, int] = {}
    for _, t in (*gm.named_parameters(remove_duplicate=False), *gm.named_buffers(remove_duplicate=False)):
        held[id(t)] = held.get(id(t), 0) + 1
    for owner, sites in _sites_by_owner(plan).items():
        rule = sites[0].rule
        if owner in nodes and hasattr(rule, "masked_node"):  # a function op with a masked variant
            continue
        params = [s for s in sites if s.kind == "param"]
        sites = [s for s in sites if s.kind != "param"]
        for s in params:
            if prune_bias and s.zeroed:
                name, dim = s.param_dim()
                keep = plan.site_keep(s, for_removal=False)
                t = attr(gm, f"{owner}.{name}" if owner else name)
                stays = bool((~keep & plan.site_keep(s)).any()) or held.get(id(t), 0) > 1
                out.append((t, keep, dim, stays))
        if not sites:
            continue
        try:
            module = gm.get_submodule(owner)
        except AttributeError:
            continue  # a function op: nothing to mask
        if _has_custom_mask(sites[0].rule):
            continue
        for s in sites:
            names = _masked_tensors_of(s, prune_bias)
            if not names:
                continue
            keep = plan.site_keep(s, for_removal=False)
            stays = bool((~keep & plan.site_keep(s)).any())
            for pname, gates in names.items():
                axis = s.axes.get(pname, 0)
                t = attr(module, pname)
                rows = _rows(keep, gates, t.shape[axis], s.kind)
                if bool(rows.all()):
                    continue
                holder, leaf = owner_of(module, pname)
                if parametrize.is_parametrized(holder, leaf):
                    # computed at each read (weight_norm's g * v / |v|): no tensor to mask where it is
                    # read, so the mask joins its parametrizations (the graph module is a private copy
                    # when it has any), for the masked run and the rewrite alike
                    parametrize.register_parametrization(holder, leaf, RowMask(rows, axis))
                    continue
                out.append((t, rows, axis, stays or held.get(id(t), 0) > 1))
    return out


def masked_value(t: torch.Tensor, keep: torch.Tensor, axis: int) -> torch.Tensor:
    """``t`` with the entries where ``keep`` (along ``axis``) is False multiplied by zero: what baking
    writes into it."""
    shape = [1] * t.dim()
    shape[axis] = -1
    return t * keep.reshape(shape).to(t.dtype)


def masked_tensors(entries) -> dict[int, tuple[torch.Tensor, list]]:
    """id(tensor) -> (tensor, [(keep, axis), ...]) of :func:`bake_entries`: for running the masked model
    on the unbaked tensors (each masked where it is read, as baking would have left it)."""
    out: dict[int, tuple[torch.Tensor, list]] = {}
    for t, keep, axis, _ in entries:
        out.setdefault(id(t), (t, []))[1].append((keep, axis))
    return out


def bake_kept(gm: fx.GraphModule, entries) -> None:
    """Bake only what the rewrite keeps masked (a unit masked but not removed), into new tensors that
    replace the old ones wherever ``gm`` holds them: entries that are removed are sliced away anyway,
    so no tensor of the caller's model (which ``gm`` may share) is written or copied for them."""
    todo = masked_tensors([e for e in entries if e[3]])
    if not todo:
        return
    new = {}
    with torch.no_grad():
        for key, (t, masks) in todo.items():
            for keep, axis in masks:
                t = masked_value(t, keep, axis)
            new[key] = t
    replace_tensors(gm, lambda old: new.get(id(old)))


def replace_tensors(gm: nn.Module, new_of) -> None:
    """Replace each tensor ``t`` that a module of ``gm`` holds (parameter, buffer or plain attribute) by
    ``new_of(t)`` unless that is None; a parameter stays a parameter, and a tensor held in several
    places is replaced by one new tensor everywhere (ties stay ties)."""
    made: dict[int, torch.Tensor] = {}

    def new(old):
        if id(old) not in made:
            value = new_of(old)
            if value is not None and isinstance(old, nn.Parameter) and not isinstance(value, nn.Parameter):
                value = nn.Parameter(value, requires_grad=old.requires_grad)
            made[id(old)] = value
        return made[id(old)]

    for mod in gm.modules():
        changed = False
        for table in (mod._parameters, mod._buffers):
            for name, old in list(table.items()):
                if old is not None and new(old) is not None:
                    table[name], changed = new(old), True
        for name, old in list(vars(mod).items()):
            if isinstance(old, torch.Tensor) and new(old) is not None:
                setattr(mod, name, new(old))
                changed = True
        if changed and hasattr(mod, "_init_flat_weights"):
            mod._init_flat_weights()  # recurrent modules cache their weights


def build_masked(gm: fx.GraphModule, plan: Plan, prune_bias: bool, bake: bool = False) -> fx.GraphModule:
    """The captured ``gm`` with the plan's masks in force.

    ``bake=False``: a copy with masks as parametrizations (the masked model users train).
    ``bake=True``: masked weights written into ``gm``'s own parameters, in place (:func:`bake_entries`).
    """
    if bake:
        with torch.no_grad():
            for t, keep, axis, _ in bake_entries(gm, plan, prune_bias):
                shape = [1] * t.dim()
                shape[axis] = -1
                t.mul_(keep.reshape(shape).to(t.dtype))
        gm.graph.lint()
        gm.recompile()
        return gm
    new = private_copy(gm)
    nodes = {n.name: n for n in new.graph.nodes}
    for owner, sites in _sites_by_owner(plan).items():
        rule = sites[0].rule
        if owner in nodes and hasattr(rule, "masked_node"):  # a function op with a masked variant
            rule.masked_node(new, nodes[owner], {s.role: plan.site_keep(s) for s in sites}, prune_bias)
            continue
        params = [s for s in sites if s.kind == "param"]
        sites = [s for s in sites if s.kind != "param"]
        for s in params:
            if prune_bias and s.zeroed:
                _mask_param(new, owner, s, plan.site_keep(s, for_removal=False), bake=False)
        if not sites:
            continue
        try:
            module = new.get_submodule(owner)
        except AttributeError:
            continue  # a function op: nothing to mask
        rule = sites[0].rule
        if _has_custom_mask(rule):
            keep = {s.role: plan.site_keep(s) for s in sites}
            new.set_submodule(owner, rule.masked(module, keep, prune_bias))
            continue
        for s in sites:
            params = _masked_tensors_of(s, prune_bias)
            if not params:
                continue
            keep = plan.site_keep(s, for_removal=False)
            for pname, gates in params.items():
                axis = s.axes.get(pname, 0)
                rows = _rows(keep, gates, attr(module, pname).shape[axis], s.kind)
                if s.node.op != "call_module":
                    # a function op reads its weights through get_attr nodes (F.linear(x, self.w)): masked in
                    # the graph (a parametrization on their holder would not survive the GraphModule's copy)
                    _mask_attr(new, s.fqn(pname), rows, axis, bake=False, producer=pname in s.tensors)
                else:
                    parametrize.register_parametrization(*owner_of(module, pname), RowMask(rows, axis))
    new.graph.lint()
    new.recompile()
    return new


def masked_view(baked: fx.GraphModule, plan: Plan, prune_bias: bool) -> fx.GraphModule:
    """The masked model, sharing the parameters of ``baked`` (the output of ``build_masked(...,
    bake=True)``, whose weights already hold the masks; or the captured model, run with its tensors
    masked where they are read, see fxprune.verify.RecordingInterpreter's ``masks``): only modules
    and function ops whose rule masks them another way (a LayerNorm's statistics over kept channels)
    are replaced. For running the masked model once (verification, constants to fold) without copying
    the weights.

    Example::

        baked = build_masked(gm, plan, prune_bias, bake=True)
        out = masked_view(baked, plan, prune_bias)(x)      # what apply_masks(...)(x) computes
    """
    names = {n.name for n in baked.graph.nodes}
    changes = []
    for owner, sites in _sites_by_owner(plan).items():
        sites = [s for s in sites if s.kind != "param"]  # get_attr parameters are baked
        rule = sites[0].rule if sites else None
        if sites and ((owner in names and hasattr(rule, "masked_node")) or _has_custom_mask(rule)):
            changes.append((owner, rule, {s.role: plan.site_keep(s) for s in sites}))
    if not changes:   # nothing masked another way: the baked model is the masked one
        return baked
    view = fx.GraphModule(baked, copy.deepcopy(baked.graph), class_name=type(baked).__name__)
    nodes = {n.name: n for n in view.graph.nodes}
    for owner, rule, keep in changes:
        if owner in nodes and hasattr(rule, "masked_node"):
            rule.masked_node(view, nodes[owner], keep, prune_bias)
        elif _has_custom_mask(rule):
            # the view's module containers are its own (GraphModule copies the paths it uses), so
            # replacing a leaf here leaves ``baked`` alone
            view.set_submodule(owner, rule.masked(view.get_submodule(owner), keep, prune_bias))
    view.recompile()
    return view


def write_masks(masked: fx.GraphModule, plan: Plan, prune_bias: bool) -> None:
    """Write the plan's masks into a masked model made by :func:`build_masked`, in place: into the same
    keep buffers and parametrizations, so an optimizer built on it keeps working (``update_masks``)."""
    nodes = {n.name: n for n in masked.graph.nodes}
    for owner, sites in _sites_by_owner(plan).items():
        rule = sites[0].rule
        if owner in nodes and hasattr(rule, "masked_node"):
            rule.masked_node(masked, nodes[owner], {s.role: plan.site_keep(s) for s in sites}, prune_bias)
            continue
        try:
            module = masked.get_submodule(owner)
        except AttributeError:
            continue
        for s in sites:
            if s.kind == "param":
                if prune_bias and s.zeroed:
                    _mask_param(masked, owner, s, plan.site_keep(s, for_removal=False), bake=False)
                continue
            if isinstance(module, MaskedLayerNorm):
                module.keep.copy_(plan.site_keep(s))
                continue
            keep = plan.site_keep(s, for_removal=False)
            names = dict(s.tensors) if s.kind == "producer" else {p: 1 for p in s.zeroed}
            if s.kind == "producer":
                names.update(s.biases)
            for pname, gates in names.items():
                if s.node.op != "call_module":  # get_attr weights of a function op: masked in the graph
                    n_rows = attr(module, pname).shape[s.axes.get(pname, 0)]
                    _mask_attr(masked, s.fqn(pname), _rows(keep, gates, n_rows, s.kind), s.axes.get(pname, 0),
                               bake=False, producer=pname in s.tensors)
                    continue
                holder, leaf = owner_of(module, pname)
                if parametrize.is_parametrized(holder, leaf):
                    for p in holder.parametrizations[leaf]:
                        if isinstance(p, RowMask):
                            p.keep.copy_(_rows(keep, gates, p.keep.numel(), s.kind))
