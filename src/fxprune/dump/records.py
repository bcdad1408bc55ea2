"""What is drawn: one record per fx node, built from an Analysis (and a Plan) or a pruned GraphModule."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.fx as fx
import torch.nn as nn
from torch.fx.passes.shape_prop import TensorMetadata

from ..channels import ChannelMap, maps_in
from .style import _arrow, _h

_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


@dataclass
class _Node:
    name: str
    op: str
    title: str                              # Conv2d, add, .view(), input, output, param
    target: str                             # module path, parameter path or node name
    chain: list[tuple[str, str, bool]]      # enclosing modules (path, class name, container?), outer first
    inputs: list[str]
    shape: str = ""                         # HTML
    visible: bool = True                    # False: a size computation (ints), left out when collapsed
    out_groups: list[int] = field(default_factory=list)
    in_groups: list[int] = field(default_factory=list)
    in_width: str = ""                      # HTML: consumed channels
    barriers: list[str] = field(default_factory=list)

    @property
    def groups(self) -> list[int]:
        return list(dict.fromkeys(self.out_groups + self.in_groups))


def _cls_name(cls) -> str:
    return cls.__name__ if isinstance(cls, type) else str(cls).rsplit(".", 1)[-1].strip("'>")


def _chain(node: fx.Node, gm: fx.GraphModule | None) -> list[tuple[str, str, bool]]:
    """The modules whose forward produced ``node``, outermost first (the root excluded); a leaf
    module's own call is the last entry."""
    stack = node.meta.get("nn_module_stack")
    out = []
    if stack:
        for value in stack.values():
            path, cls = value if isinstance(value, tuple) else (value, None)
            if not path:
                continue
            container = isinstance(cls, type) and cls in _CONTAINERS
            out.append((path, _cls_name(cls) if cls is not None else "", container))
        return out
    if node.op in ("call_module", "get_attr") and isinstance(node.target, str):
        parts = node.target.split(".")
        n = len(parts) if node.op == "call_module" else len(parts) - 1
        for i in range(1, n + 1):
            path = ".".join(parts[:i])
            cls = ""
            if gm is not None:
                try:
                    cls = type(gm.get_submodule(path)).__name__
                except AttributeError:
                    pass
            out.append((path, cls, False))
    return out


def _target(node: fx.Node, chain) -> str:
    if node.op in ("call_module", "get_attr"):
        return str(node.target)
    if node.op in ("call_function", "call_method") and chain:
        return f"{chain[-1][0]} · {node.name}"
    return node.name


def _title(node: fx.Node, gm: fx.GraphModule | None, chain) -> str:
    if node.op == "call_module":
        if chain and chain[-1][0] == node.target and chain[-1][1]:
            return chain[-1][1]  # the type at capture time (rewritten modules may change type)
        try:
            return type(gm.get_submodule(node.target)).__name__
        except (AttributeError, TypeError):
            return "module"
    if node.op == "call_method":
        return f".{node.target}()"
    if node.op == "call_function":
        return getattr(node.target, "__name__", str(node.target))
    return {"placeholder": "input", "output": "output", "get_attr": "param"}.get(node.op, node.op)


def _has_tensor(meta) -> bool:
    if isinstance(meta, TensorMetadata):
        return True
    if isinstance(meta, (tuple, list)):
        return any(_has_tensor(m) for m in meta)
    if isinstance(meta, dict):
        return any(_has_tensor(m) for m in meta.values())
    return False


def _meta_text(meta) -> str:
    """Shapes of a (nested) tensor_meta: ``(2×7×16, (2×2×16, 2×2×16))``."""
    if isinstance(meta, TensorMetadata):
        return "×".join(str(s) for s in meta.shape) or "scalar"
    if isinstance(meta, (tuple, list)):
        return "(" + ", ".join(_meta_text(m) for m in meta) + ")"
    return "·"


def _shape_html(shape, channel_dims: dict[int, tuple[int, int | None]]) -> str:
    """``1×[16→8]×32×32``: channel dims in brackets, before→after."""
    parts = []
    for d, s in enumerate(shape):
        if d in channel_dims:
            before, after = channel_dims[d]
            parts.append(f"<B>[{_arrow(before, after)}]</B>")
        else:
            parts.append(str(s))
    return "×".join(parts) if parts else "scalar"


class _Groups:
    """Element -> group lookups and per-group facts (width, status) of one Analysis (+ Plan)."""

    def __init__(self, analysis, plan=None):
        self.analysis, self.plan = analysis, plan
        self.of_element = torch.full((analysis.n_elements,), -1, dtype=torch.long)
        for g in analysis.groups:
            for u in g.units:
                self.of_element[u.elements] = g.index

    def of(self, ids: torch.Tensor) -> list[int]:
        ids = ids.reshape(-1)
        ids = ids[ids >= 0]
        if ids.numel() == 0:
            return []
        return sorted(set(self.of_element[ids].unique().tolist()) - {-1})

    def kept(self, ids: torch.Tensor) -> torch.Tensor | None:
        if self.plan is None:
            return None
        kept = torch.ones(ids.shape, dtype=torch.bool)
        lab = ids >= 0
        kept[lab] = ~self.plan.removed[ids[lab]]
        return kept

    def channel_dims(self, cmap) -> dict[int, tuple[int, int | None]]:
        """dim -> (size, kept size); kept is None without a plan, or when the kept channels of a
        map over several dims are not a product of per-dim index sets (see :meth:`map_text`)."""
        kept = self.kept(cmap.ids)
        if kept is not None and len(cmap.dims) > 1 and not self._product(kept):
            kept = None
        out = {}
        for axis, d in enumerate(cmap.dims):
            before = cmap.ids.shape[axis]
            after = None
            if kept is not None:
                others = [a for a in range(kept.dim()) if a != axis]
                after = int((kept.any(dim=others) if others else kept).sum())
            out[d] = (before, after)
        return out

    @staticmethod
    def _product(kept: torch.Tensor) -> bool:
        along = [kept.any(dim=[a for a in range(kept.dim()) if a != axis]) for axis in range(kept.dim())]
        prod = along[0]
        for a in along[1:]:
            prod = prod.unsqueeze(-1) & a
        return bool((prod == kept).all())

    def map_text(self, cmap) -> str:
        """The channel dims of a map: ``[32→16]``, ``[4→2×16]``; for channels over several dims whose
        kept ones are not a rectangle (LSTM states: each layer its own units), ``[2×32: 64→32]``."""
        kept = self.kept(cmap.ids)
        dims = self.channel_dims(cmap)
        if kept is not None and any(a is None for _, a in dims.values()):
            size = "×".join(str(b) for b, _ in dims.values())
            return f"[{size}: {_arrow(kept.numel(), int(kept.sum()))}]"
        return "[" + "×".join(_arrow(b, a) for b, a in dims.values()) + "]"

    def width(self, g) -> tuple[int, int | None]:
        if self.plan is None:
            return g.width, None
        removed = sum(1 for u in g.units if bool(self.plan.removed[u.root]))
        return g.width, g.width - removed

    def status(self, g) -> str:
        if self.plan is None:
            if g.blocked:
                return f"unprunable: {g.blocked}"
            free = sum(1 for u in g.units if u.blocked is None)
            if free < g.width:
                reason = next(u.blocked for u in g.units if u.blocked)
                return f"{free}/{g.width} prunable; others: {reason}"
            return "prunable"
        masked = sum(1 for u in g.units if bool(self.plan.masked[u.root]))
        removed = sum(1 for u in g.units if bool(self.plan.removed[u.root]))
        reasons = [self.plan.kept[u.root] for u in g.units if u.root in self.plan.kept]
        if removed:
            return "pruned" + (f"; {len(reasons)} masked kept: {reasons[0]}" if reasons else "")
        if masked:
            return "kept: " + (reasons[0] if reasons else "masked")
        if g.blocked:
            return f"unprunable: {g.blocked}"
        return "unchanged"


def _analysis_nodes(analysis, plan=None, groups: bool = True) -> list[_Node]:
    """One record per node of the captured graph, from the analysis (which remembers every node, its
    channel map and its shape as captured, even after the pipeline rewrote the graph in place)."""
    gm = analysis.gm
    G = _Groups(analysis, plan)
    consumed: dict[str, list] = {}
    reached: dict[str, list[int]] = {}
    for use in analysis.uses:
        if use.site is not None:
            consumed.setdefault(use.node.name, []).append(use)
        elif groups:
            reached.setdefault(use.node.name, []).extend(G.of(use.ids))
    barrier_reasons: dict[str, list[str]] = {}
    for node, why in analysis.barriers:
        barrier_reasons.setdefault(node.name, [])
        if why not in barrier_reasons[node.name]:
            barrier_reasons[node.name].append(why)
    out = []
    for node, label in analysis.labels.items():
        chain = _chain(node, gm)
        maps = maps_in(label)
        shape = analysis.shapes_by_name.get(node.name)
        tensor = shape is not None or bool(maps) or _has_tensor(node.meta.get("tensor_meta"))
        visible = tensor or node.op in ("placeholder", "output", "call_module")
        rec = _Node(node.name, node.op, _title(node, gm, chain),
                    _target(node, chain),
                    chain, [a.name for a in node.all_input_nodes],
                    visible=visible)
        chan = [m for m in maps if isinstance(m, ChannelMap)]
        if shape is not None and len(chan) == 1 and chan[0].ndim == len(shape):
            dims = G.channel_dims(chan[0]) if groups else {}
            rec.shape = _shape_html(shape, dims)
            if plan is not None and any(a is None for _, a in dims.values()):
                rec.shape += " " + _h(G.map_text(chan[0]))
        elif shape is not None:
            rec.shape = _shape_html(shape, {})
        elif chan and groups:
            rec.shape = ", ".join(_h(G.map_text(m)) for m in chan)
        if groups:
            for m in chan:
                rec.out_groups += [g for g in G.of(m.ids) if g not in rec.out_groups]
            uses = consumed.get(node.name, [])
            for u in uses:
                rec.in_groups += [g for g in G.of(u.ids) if g not in rec.in_groups]
            if uses:
                parts = []
                for u in uses:
                    kept = G.kept(u.ids)
                    n = int(u.ids.numel())
                    parts.append(f"[{_arrow(n, None if kept is None else int(kept.sum()))}]")
                rec.in_width = "in " + ", ".join(dict.fromkeys(parts))
            rec.in_groups += [g for g in reached.get(node.name, []) if g not in rec.in_groups + rec.out_groups]
            rec.barriers = barrier_reasons.get(node.name, [])
        out.append(rec)
    return out


def _pruned_nodes(gm: fx.GraphModule, analysis=None, plan=None) -> list[_Node]:
    """One record per node of a pruned GraphModule; widths compare its fresh shapes with the
    captured ones, colours come from the analysis by node name."""
    G = _Groups(analysis, plan) if analysis is not None else None
    old_shapes = analysis.shapes_by_name if analysis is not None else {}
    labels = analysis.labels_by_name if analysis is not None else {}
    out = []
    for node in gm.graph.nodes:
        chain = _chain(node, gm)
        meta = node.meta.get("tensor_meta")
        shape = tuple(meta.shape) if isinstance(meta, TensorMetadata) else None
        maps = [m for m in maps_in(labels.get(node.name)) if isinstance(m, ChannelMap)]
        tensor = shape is not None or _has_tensor(meta) or bool(maps)
        rec = _Node(node.name, node.op, _title(node, gm, chain),
                    _target(node, chain),
                    chain, [a.name for a in node.all_input_nodes],
                    visible=tensor or node.op in ("placeholder", "output", "call_module"))
        if shape is not None:
            old = old_shapes.get(node.name)
            dims = {}
            if len(maps) == 1 and maps[0].ndim == len(shape):
                for d in maps[0].dims:
                    dims[d] = (old[d] if old is not None and len(old) == len(shape) else shape[d], shape[d])
            if old is not None and len(old) == len(shape):
                for d, (a, b) in enumerate(zip(old, shape)):
                    if a != b:
                        dims[d] = (a, b)
            rec.shape = _shape_html(shape, dims)
        elif _has_tensor(meta):
            rec.shape = _h(_meta_text(meta))
        if G is not None:
            for m in maps:
                rec.out_groups += [g for g in G.of(m.ids) if g not in rec.out_groups]
        out.append(rec)
    if G is not None:
        names = {r.name: r for r in out}
        widths: dict[str, list[str]] = {}
        for use in analysis.uses:
            rec = names.get(use.node.name)
            if rec is None:
                continue
            rec.in_groups += [g for g in G.of(use.ids) if g not in rec.in_groups + rec.out_groups]
            if use.site is not None:
                kept = G.kept(use.ids)
                n = int(use.ids.numel())
                widths.setdefault(rec.name, []).append(f"[{_arrow(n, None if kept is None else int(kept.sum()))}]")
        for name, parts in widths.items():
            names[name].in_width = "in " + ", ".join(dict.fromkeys(parts))
    return out
