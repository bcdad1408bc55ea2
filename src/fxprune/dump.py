"""Dumps: see what the pass found and did.

- :func:`to_dot`: the captured graph as Graphviz DOT, channel groups drawn as coloured outlines with
  a legend (pattern, width before -> after), barriers in red with the reason, module hierarchy
  collapsed into boxes (``layer1.0`` as one node) unless ``collapse=False``.
- :func:`dump`: ``captured.dot``, ``groups.dot`` and ``pruned.dot`` in a folder (and ``.svg``/``.png``
  when the Graphviz ``dot`` binary is on PATH); ``fxprune.prune(..., dump_dir=DIR)`` writes the same.
- :func:`to_networkx`: the channel-dependency graph (sites, groups, barriers) for your own analysis.
- :func:`plot_widths`: per-layer channel counts before and after pruning, as a bar chart.

Example::

    pruned = fxprune.prune(model, (x,), sparsity=0.5, dump_dir="dumps")   # dumps/groups.svg, ...
    fxprune.dump(model, (x,), "dumps", sparsity=0.5)                        # the same, by itself
    fxprune.plot_widths(pruned, "widths.svg")

    from fxprune.analysis import analyze
    from fxprune.capture import capture
    analysis = analyze(capture(model)[0], (x,))          # the channel analysis of a model
    from fxprune.dump import to_dot
    text = to_dot(analysis, collapse=False)
    g = fxprune.to_networkx(analysis)

``fxprune.dump`` is the function; this module is ``sys.modules["fxprune.dump"]`` (``from
fxprune.dump import to_dot`` works as usual).
"""
from __future__ import annotations

import colorsys
import inspect
import os
import shutil
import subprocess
import textwrap
import warnings
from dataclasses import dataclass, field

import torch
import torch.fx as fx
import torch.nn as nn

__all__ = ["to_dot", "dump", "to_networkx", "plot_widths", "save", "load", "STAGES"]

STAGES = ("captured", "groups", "pruned")

# Distinct colours that read on white and as outlines; red is kept for barriers. Past these, evenly
# spaced hues (every node also names its groups as text, so a repeated colour is never ambiguous).
_PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22",
            "#393b79", "#e6550d", "#31a354", "#756bb1", "#637939", "#843c39", "#3182bd", "#7b4173",
            "#8c6d31", "#00a087", "#fdae6b", "#6baed6"]
_BARRIER = "#d62728"
_BARRIER_FILL = "#fde0dd"
_FONT = "Helvetica"
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
_MAX_OUTLINES = 5


def group_color(i: int) -> str:
    """The colour of group ``i`` in every dump."""
    if i < len(_PALETTE):
        return _PALETTE[i]
    h = ((i - len(_PALETTE)) * 0.618034) % 1.0
    r, g, b = colorsys.hsv_to_rgb(h, 0.75, 0.75)
    return f"#{int(r * 255):02x}{int(g * 255):02x}{int(b * 255):02x}"


def _text_on(color: str) -> str:
    r, g, b = (int(color[i:i + 2], 16) for i in (1, 3, 5))
    return "#000000" if 0.299 * r + 0.587 * g + 0.114 * b > 150 else "#ffffff"


def _tint(color: str, amount: float = 0.88) -> str:
    r, g, b = (int(color[i:i + 2], 16) for i in (1, 3, 5))
    r, g, b = (int(c + (255 - c) * amount) for c in (r, g, b))
    return f"#{r:02x}{g:02x}{b:02x}"


def _h(s) -> str:
    """Escape for Graphviz HTML-like labels."""
    return str(s).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def _q(s) -> str:
    """A DOT double-quoted string."""
    return '"' + str(s).replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ") + '"'


def _wrap(s: str, width: int, seps: str = " ") -> list[str]:
    """Wrap ``s`` at ``width`` characters, preferring to break after one of ``seps``."""
    if len(s) <= width:
        return [s]
    if seps == " ":
        return textwrap.wrap(s, width, break_long_words=True, break_on_hyphens=False) or [s]
    lines, line = [], ""
    token = ""
    for ch in s:
        token += ch
        if ch in seps:
            if line and len(line) + len(token) > width:
                lines.append(line)
                line = ""
            line += token
            token = ""
    if token:
        if line and len(line) + len(token) > width:
            lines.append(line)
            line = ""
        line += token
    if line:
        lines.append(line)
    return lines


def _arrow(before: int, after: int | None) -> str:
    return str(before) if after is None or after == before else f"{before}→{after}"


# ---------------------------------------------------------------------------------------------------
# What is drawn: one record per fx node, built from an Analysis (and a Plan) or a pruned GraphModule
# ---------------------------------------------------------------------------------------------------

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
    from torch.fx.passes.shape_prop import TensorMetadata
    if isinstance(meta, TensorMetadata):
        return True
    if isinstance(meta, (tuple, list)):
        return any(_has_tensor(m) for m in meta)
    if isinstance(meta, dict):
        return any(_has_tensor(m) for m in meta.values())
    return False


def _meta_text(meta) -> str:
    """Shapes of a (nested) tensor_meta: ``(2×7×16, (2×2×16, 2×2×16))``."""
    from torch.fx.passes.shape_prop import TensorMetadata
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
    from .analysis import _maps_in
    from .channels import ChannelMap

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
        maps = _maps_in(label)
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
    from torch.fx.passes.shape_prop import TensorMetadata

    from .analysis import _maps_in
    from .channels import ChannelMap

    G = _Groups(analysis, plan) if analysis is not None else None
    old_shapes = analysis.shapes_by_name if analysis is not None else {}
    labels = analysis.labels_by_name if analysis is not None else {}
    out = []
    for node in gm.graph.nodes:
        chain = _chain(node, gm)
        meta = node.meta.get("tensor_meta")
        shape = tuple(meta.shape) if isinstance(meta, TensorMetadata) else None
        maps = [m for m in _maps_in(labels.get(node.name)) if isinstance(m, ChannelMap)]
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


# ---------------------------------------------------------------------------------------------------
# Collapsing module hierarchy into boxes
# ---------------------------------------------------------------------------------------------------

_BOX_BUDGET = 40   # collapse=True refines boxes while the picture has at most this many items


def _boxes(nodes: list[_Node], collapse, expand=()) -> dict[str, tuple[str, str]]:
    """node name -> (box path, class name); see :func:`_collapse`. ``expand``: module paths drawn
    open (every op inside them is a node), whatever ``collapse`` says about them."""
    boxed = _collapse(nodes, collapse)
    expand = [expand] if isinstance(expand, str) else [e for e in (expand or ()) if e]
    if not boxed or not expand:
        return boxed

    def inside(path: str) -> bool:
        return any(path == e or path.startswith(e + ".") for e in expand)

    def around(path: str) -> bool:  # an enclosing module of an expanded one
        return any(e.startswith(path + ".") for e in expand)

    by_name = {n.name: n for n in nodes}
    out = {}
    for k, (path, cls) in boxed.items():
        if not (inside(path) or around(path)):
            out[k] = (path, cls)
            continue
        n = by_name[k]
        chain = [(p, c) for p, c, cont in n.chain if not cont and not (n.op == "call_module" and p == n.target)]
        if any(inside(p) for p, _ in chain):
            continue  # drawn as its own node
        deeper = next(((p, c) for p, c in chain if not around(p)), None)
        if deeper is not None:
            out[k] = deeper
    sizes: dict[str, int] = {}
    for k, b in out.items():
        if by_name[k].op != "get_attr":
            sizes[b[0]] = sizes.get(b[0], 0) + 1
    return {k: b for k, b in out.items() if sizes.get(b[0], 0) >= 2}


def _collapse(nodes: list[_Node], collapse) -> dict[str, tuple[str, str]]:
    """node name -> (box path, class name) for the nodes drawn inside a box.

    ``collapse=True``: each node goes into the outermost module around it that is neither a plain
    container (Sequential, ModuleList, ModuleDict) nor the leaf module itself. A box holding more
    than half of the graph is opened one level; then, while the picture stays small, a box whose
    contents split into several sub-boxes (a transformer block: attention, MLP) is opened too.
    An int collapses everything below that depth of module path; a box needs two ops or more.
    """
    if collapse is False or collapse is None:
        return {}
    drawn = [n for n in nodes if n.visible and n.op not in ("placeholder", "output")]
    ops = {n.name for n in drawn if n.op != "get_attr"}
    n_hidden = len(nodes) - len(drawn)

    def finish(box: dict) -> dict:
        sizes: dict[str, int] = {}
        for k, b in box.items():
            if b is not None and k in ops:
                sizes[b[0]] = sizes.get(b[0], 0) + 1
        return {k: b for k, b in box.items() if b is not None and sizes.get(b[0], 0) >= 2}

    def items(boxed: dict) -> int:  # what the picture draws: boxes and the ops outside them
        return len({b[0] for b in boxed.values()}) + sum(1 for k in ops if k not in boxed)

    if collapse is not True:
        depth = int(collapse)
        if depth < 1:
            return {}
        box: dict[str, tuple[str, str] | None] = {}
        for n in drawn:
            if not n.chain:
                box[n.name] = None
                continue
            path = n.chain[-1][0] if n.op != "get_attr" else n.target.rpartition(".")[0]
            parts = path.split(".") if path else []
            leaf_here = n.op == "call_module" and len(parts) == depth
            if len(parts) > depth or (len(parts) == depth and not leaf_here):
                prefix = ".".join(parts[:depth])
                cls = next((c for p, c, _ in n.chain if p == prefix), "")
                box[n.name] = (prefix, cls)
            else:
                box[n.name] = None
        return finish(box)

    chains = {n.name: [(p, c) for p, c, cont in n.chain if not cont and not (n.op == "call_module" and p == n.target)]
              for n in drawn}

    def layout(level: dict) -> dict:
        return finish({k: (chains[k][lv] if lv < len(chains[k]) else None) for k, lv in level.items()})

    level = {n.name: 0 for n in drawn}
    limit = max(8, (len(drawn) - n_hidden) // 2)
    for _ in range(64):  # open boxes that hold more than half of the graph
        boxed = layout(level)
        sizes: dict[str, int] = {}
        for k, b in boxed.items():
            sizes[b[0]] = sizes.get(b[0], 0) + 1
        big = {p for p, n in sizes.items() if n > limit}
        if not big:
            break
        for k, b in boxed.items():
            if b[0] in big:
                level[k] += 1
    for _ in range(256):  # open boxes made of sub-boxes while the picture stays small
        boxed = layout(level)
        sizes = {}
        for k, b in boxed.items():
            sizes[b[0]] = sizes.get(b[0], 0) + 1
        for path in sorted(sizes, key=lambda p: -sizes[p]):
            members = [k for k, b in boxed.items() if b[0] == path]
            trial = dict(level)
            for k in members:
                trial[k] += 1
            new = layout(trial)
            subs = {new[k][0] for k in members if k in new}
            if len(subs) >= 2 and items(new) <= _BOX_BUDGET:
                level = trial
                break
        else:
            break
    return layout(level)


# ---------------------------------------------------------------------------------------------------
# DOT
# ---------------------------------------------------------------------------------------------------

def _chips(groups: list[int], widths: dict[int, str] | None = None) -> str:
    cells = []
    for g in groups:
        c = group_color(g)
        text = f"g{g}" + (f" {widths[g]}" if widths and g in widths else "")
        cells.append(f'<TD BGCOLOR="{c}" CELLPADDING="2"><FONT COLOR="{_text_on(c)}" POINT-SIZE="10">'
                     f"<B>{_h(text)}</B></FONT></TD>")
    rows, per_row = [], (4 if widths else 6)
    for i in range(0, len(cells), per_row):
        rows.append("<TR>" + "".join(cells[i:i + per_row]) + "</TR>")
    return '<TABLE BORDER="0" CELLSPACING="2" CELLPADDING="0">' + "".join(rows) + "</TABLE>"


def _with_chips(text_html: str, groups: list[int]) -> str:
    """One line: the text, then a chip per group."""
    cells = [f'<TD><FONT POINT-SIZE="10">{text_html}</FONT></TD>'] if text_html else []
    for g in groups[:6]:
        c = group_color(g)
        w = 10 + 7 * len(str(g))
        cells.append(f'<TD BGCOLOR="{c}" CELLPADDING="1" FIXEDSIZE="TRUE" WIDTH="{w}" HEIGHT="14">'
                     f'<FONT COLOR="{_text_on(c)}" POINT-SIZE="9"><B>g{g}</B></FONT></TD>')
    if len(groups) > 6:
        cells.append(f'<TD><FONT POINT-SIZE="9">+{len(groups) - 6}</FONT></TD>')
    return '<TABLE BORDER="0" CELLSPACING="2" CELLPADDING="0" ALIGN="CENTER"><TR>' + "".join(cells) + "</TR></TABLE>"


def _outlined(inner_rows: list[str], groups: list[int], fill: str, barrier: bool, most: int = _MAX_OUTLINES,
              thickness: int = 3) -> str:
    """An HTML label: the rows, framed by one coloured outline per group (outermost first, at most
    ``most``; the chips inside name them all)."""
    body = (f'<TABLE BORDER="0" CELLBORDER="0" CELLSPACING="0" CELLPADDING="3" BGCOLOR="{fill}">'
            + "".join(f'<TR><TD ALIGN="CENTER">{r}</TD></TR>' for r in inner_rows) + "</TABLE>")
    frames = [group_color(g) for g in groups[:most]]
    if not frames:
        frames = ["#9e9e9e"]
    if barrier:
        frames = [_BARRIER] + frames
    for i, c in enumerate(reversed(frames)):
        outer = i == len(frames) - 1
        thick = 4 if (barrier and outer) else (thickness if groups else 1)
        style = ' STYLE="ROUNDED"' if outer else ""
        body = (f'<TABLE BORDER="{thick}" COLOR="{c}" CELLBORDER="0" CELLSPACING="0" CELLPADDING="1"{style}>'
                f"<TR><TD>{body}</TD></TR></TABLE>")
    return "<" + body + ">"


def _barrier_rows(reasons: list[tuple[str | None, str]]) -> list[str]:
    """One left-aligned block naming each barrier (node, or None for the node itself) and why; a
    small gap between barriers, so that several in one box do not run together."""
    blocks = []
    for where, why in reasons:
        head = f"barrier at {where}: " if where else "barrier: "
        blocks.append(f'<FONT COLOR="{_BARRIER}" POINT-SIZE="10"><B>'
                      + '<BR ALIGN="LEFT"/>'.join(_h(s) for s in _wrap(head + why, 44)) + '<BR ALIGN="LEFT"/></B></FONT>')
    if not blocks:
        return []
    return ['<FONT POINT-SIZE="4"> <BR ALIGN="LEFT"/></FONT>'.join(blocks)]


def _node_label(n: _Node, show_groups: bool) -> str:
    rows = [f'<FONT POINT-SIZE="12"><B>{_h(n.title)}</B></FONT>']
    if n.target and n.target != n.title:
        rows.append(f'<FONT POINT-SIZE="10" COLOR="#444444">{_h(n.target)}</FONT>')
    out_chips = n.out_groups if show_groups else []
    in_chips = [g for g in n.in_groups if g not in out_chips] if show_groups else []
    if n.shape or out_chips:
        rows.append(_with_chips(n.shape, out_chips))
    if n.in_width or in_chips:
        rows.append(_with_chips(n.in_width or ("" if n.op == "output" else "reads"), in_chips))
    rows += _barrier_rows([(None, why) for why in n.barriers])
    groups = n.groups if show_groups else []
    fill = _BARRIER_FILL if n.barriers else (_tint(group_color(groups[0]), 0.9) if groups else "#ffffff")
    return _outlined(rows, groups, fill, bool(n.barriers))


def _render(nodes: list[_Node], *, title: str, collapse, legend: list[str] | None, show_groups: bool,
            group_widths: dict[int, str], legend_tooltip: str = "", expand=()) -> str:
    by_name = {n.name: n for n in nodes}
    boxes = _boxes(nodes, collapse, expand)
    rep = {}
    for n in nodes:
        if n.name in boxes:
            rep[n.name] = "box:" + boxes[n.name][0]
        elif collapse is False or (n.visible and n.op != "get_attr"):
            rep[n.name] = n.name
        else:
            rep[n.name] = None
    lines = [
        "digraph fxprune {",
        f"  graph [rankdir=TB, fontname={_q(_FONT)}, fontsize=14, labelloc=t, label={_q(title)}, "
        "nodesep=0.25, ranksep=0.35, newrank=true];",
        f"  node [shape=plain, fontname={_q(_FONT)}];",
        f"  edge [color=\"#7f7f7f\", arrowsize=0.7, penwidth=1.3, fontname={_q(_FONT)}];",
    ]
    if legend:
        lines.append("  subgraph cluster_legend {")
        lines.append('    label="channel groups"; style="rounded"; color="#bbbbbb"; fontsize=12;')
        for i, html in enumerate(legend):
            tip = f", tooltip={_q(legend_tooltip)}" if legend_tooltip and i == 0 else ""
            lines.append(f"    legend{i} [label={html}{tip}];")
        for i in range(len(legend) - 1):
            lines.append(f"    legend{i} -> legend{i + 1} [style=invis];")
        lines.append("  }")
    # nodes
    members: dict[str, list[_Node]] = {}
    for n in nodes:
        if n.name in boxes:
            members.setdefault(boxes[n.name][0], []).append(n)
    opened = [expand] if isinstance(expand, str) else [e for e in (expand or ()) if e]
    clusters: dict[str, list[str]] = {}   # an expanded module: its nodes, drawn in a dashed frame
    titles: dict[str, str] = {}

    def frame(n: _Node) -> list[str]:
        for e in opened:
            for p, c, _ in n.chain:
                if p == e:
                    titles.setdefault(e, f"{e} ({c})" if c else e)
                    return clusters.setdefault(e, [])
        return lines

    emitted = set()
    for n in nodes:
        r = rep[n.name]
        if r is None or r in emitted:
            continue
        emitted.add(r)
        if r.startswith("box:"):
            path, cls = boxes[n.name]
            inner = members[path]
            groups = sorted({g for m in inner for g in m.groups}) if show_groups else []
            rows = [f'<FONT POINT-SIZE="12"><B>{_h(path)}</B></FONT>']
            ops = sum(1 for m in inner if m.op != "get_attr")
            rows.append(f'<FONT POINT-SIZE="10" COLOR="#444444">{_h(cls or "module")} · {ops} ops (collapsed)</FONT>')
            shapes = [m.shape for m in inner if m.shape and m.op != "get_attr"]
            if shapes:
                rows.append(f'<FONT POINT-SIZE="10">out {shapes[-1]}</FONT>')
            if groups:
                rows.append(_chips(groups, group_widths))
            found = [(m.name, why) for m in inner for why in m.barriers]
            barrier = bool(found)
            rows += _barrier_rows(found)
            fill = _BARRIER_FILL if barrier else "#f2f2f2"
            label = _outlined(rows, groups, fill, barrier, most=3, thickness=2)
            tip = f"{path} ({cls}): " + ", ".join(m.name for m in inner)
            lines.append(f"  {_q(r)} [label={label}, tooltip={_q(tip)}];")
        else:
            out = frame(n)
            if not n.visible:
                out.append(f"  {_q(r)} [shape=plaintext, label={_q(n.title + ' ' + n.name)}, "
                           "fontsize=9, fontcolor=\"#999999\"];")
                continue
            tip = n.name + (": groups " + ", ".join(f"g{g}" for g in n.groups) if show_groups and n.groups else "")
            out.append(f"  {_q(r)} [label={_node_label(n, show_groups)}, tooltip={_q(tip)}];")
    for i, (path, inner) in enumerate(clusters.items()):
        lines.append(f"  subgraph cluster_open{i} {{")
        lines.append(f'    label={_q(titles[path] + " (expanded)")}; style="dashed,rounded"; color="#777777"; '
                     'fontsize=12; labeljust=l;')
        lines += ["  " + x for x in inner]
        lines.append("  }")
    # edges
    seen = set()
    for n in nodes:
        dst = rep[n.name]
        if dst is None:
            continue
        for a in n.inputs:
            src_node = by_name.get(a)
            src = rep.get(a)
            if src is None or src == dst or (src, dst) in seen:
                continue
            seen.add((src, dst))
            attrs = []
            gs = src_node.out_groups if (show_groups and src_node is not None) else []
            if len(gs) == 1:
                attrs.append(f"color={_q(group_color(gs[0]))}")
            elif src_node is not None and not src_node.visible:
                attrs.append('style=dashed, color="#bbbbbb"')
            lines.append(f"  {_q(src)} -> {_q(dst)}" + (f" [{', '.join(attrs)}]" if attrs else "") + ";")
    if legend:  # the legend above the graph (beside it, a tall graph leaves a wide empty corner)
        targets = {d for _, d in seen}
        sources = [r for r in dict.fromkeys(rep.values()) if r is not None and r not in targets]
        for r in sources:
            lines.append(f"  legend{len(legend) - 1} -> {_q(r)} [style=invis];")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _unit_word(g) -> str:
    """``" heads"`` for a group of attention heads (its width counts heads, not channels), else ``""``."""
    if any(s.role == "heads" for s in g.producers):
        return " heads"
    attention = any(k in g.pattern for k in ("softmax", "scaled_dot_product_attention", "multiheadattention"))
    if attention and g.units and len(g.units[0].elements) > len(g.producers):
        return " heads"
    return ""


def _legend(analysis, plan=None, stage: str = "groups") -> tuple[list[str], str, dict[int, str]]:
    """The legend tables (groups, then barriers), a tooltip naming each group's full pattern, and
    each group's width text."""
    G = _Groups(analysis, plan)
    head = ('<TR><TD></TD><TD ALIGN="LEFT"><B>group</B></TD><TD ALIGN="LEFT"><B>pattern</B></TD>'
            '<TD><B>width</B></TD><TD ALIGN="LEFT"><B>status</B></TD></TR>')
    rows, widths, tips = [head], {}, []
    for g in analysis.groups:
        before, after = G.width(g)
        widths[g.index] = _arrow(before, after)
        c = group_color(g.index)
        pattern = '<BR ALIGN="LEFT"/>'.join(_h(s) for s in _wrap(g.pattern, 46, "-+")) + '<BR ALIGN="LEFT"/>'
        status = G.status(g)
        status_html = '<BR ALIGN="LEFT"/>'.join(_h(s) for s in _wrap(status, 30)) + '<BR ALIGN="LEFT"/>'
        colour = _BARRIER if status.startswith("unprunable") else "#000000"
        rows.append(f'<TR><TD BGCOLOR="{c}" WIDTH="18"> </TD>'
                    f'<TD ALIGN="LEFT"><B>g{g.index}</B></TD>'
                    f'<TD ALIGN="LEFT" BALIGN="LEFT">{pattern}</TD>'
                    f"<TD>{_h(widths[g.index] + _unit_word(g))}</TD>"
                    f'<TD ALIGN="LEFT" BALIGN="LEFT"><FONT COLOR="{colour}">{status_html}</FONT></TD></TR>')
        tips.append(f"g{g.index}: {g.pattern} ({widths[g.index]}; {status})")
    tables = [('<<TABLE BORDER="0" CELLBORDER="1" CELLSPACING="0" CELLPADDING="3" COLOR="#cccccc">'
               + "".join(rows) + "</TABLE>>")]
    if analysis.barriers:
        brow = [f'<TR><TD COLSPAN="2" ALIGN="LEFT"><FONT COLOR="{_BARRIER}"><B>barriers: channels that reach '
                "these are not pruned</B></FONT></TD></TR>"]
        for node, why in analysis.barriers:
            why_html = '<BR ALIGN="LEFT"/>'.join(_h(s) for s in _wrap(why, 46)) + '<BR ALIGN="LEFT"/>'
            brow.append(f'<TR><TD ALIGN="LEFT"><B>{_h(node.name)}</B></TD>'
                        f'<TD ALIGN="LEFT" BALIGN="LEFT">{why_html}</TD></TR>')
            tips.append(f"barrier {node.name}: {why}")
        tables.append('<<TABLE BORDER="0" CELLBORDER="1" CELLSPACING="0" CELLPADDING="3" COLOR="#f4a6a6" '
                      f'BGCOLOR="{_BARRIER_FILL}">' + "".join(brow) + "</TABLE>>")
    return tables, " | ".join(tips), widths


def _model_name(analysis) -> str:
    gm = analysis.gm
    name = type(gm).__name__
    return name if name not in ("GraphModule", "GraphModuleImpl") else "model"


def to_dot(analysis, plan=None, collapse=True, *, stage: str = "groups", title: str | None = None,
           expand=()) -> str:
    """Graphviz DOT text of the captured graph with its channel groups.

    Each group has its own colour: nodes that carry a group's channels (or read them) are outlined in
    it, one outline per group, and name their groups (``g3``); a legend names each group's pattern
    and width (before -> after with a ``plan``) and lists the barriers. Node labels show the op
    (module type or function), its target and the output shape with channel dims in brackets
    (``1×[16→8]×32×32``). Barriers are red, with the reason.

    Args:
        analysis: a :class:`fxprune.analysis.Analysis`.
        plan: a :class:`fxprune.masks.Plan`: widths before -> after, group status.
        collapse: ``True`` collapses module hierarchy into boxes (one box per block, such as
            ``layer1.0``), an int collapses everything below that depth of module path into one box,
            ``False`` draws every node.
        stage: ``"groups"`` (coloured) or ``"captured"`` (the plain captured graph, shapes only).
        expand: module paths to draw open although collapsed (``("layer2.0",)``): every op inside
            them is a node.
    """
    show = stage != "captured"
    nodes = _analysis_nodes(analysis, plan, groups=show)
    n_groups = len(analysis.groups)
    if title is None:
        if show:
            title = (f"fxprune · {_model_name(analysis)} · {n_groups} channel groups"
                     + (f", {len(analysis.barriers)} barriers" if analysis.barriers else "")
                     + (" · widths before→after" if plan is not None else ""))
        else:
            title = f"fxprune · {_model_name(analysis)} · captured graph ({len(nodes)} nodes)"
    legend, tip, widths = _legend(analysis, plan) if show else (None, "", {})
    return _render(nodes, title=title, collapse=collapse, legend=legend, show_groups=show,
                   group_widths=widths, legend_tooltip=tip, expand=expand)


def pruned_to_dot(pruned: fx.GraphModule, analysis=None, plan=None, collapse=True, *, title: str | None = None,
                  expand=()) -> str:
    """DOT text of a pruned GraphModule: its real (new) shapes, changed dims shown old→new, nodes
    coloured by the groups of the captured graph when ``analysis`` is given."""
    nodes = _pruned_nodes(pruned, analysis, plan)
    report = getattr(pruned, "meta", {}).get("fxprune")
    if title is None:
        title = f"fxprune · pruned graph ({len(nodes)} nodes)"
        if report is not None and report.params_before:
            title += f" · parameters {report.params_before:,}→{report.params_after:,}"
    legend, tip, widths = _legend(analysis, plan) if analysis is not None else (None, "", {})
    return _render(nodes, title=title, collapse=collapse, legend=legend, show_groups=analysis is not None,
                   group_widths=widths, legend_tooltip=tip, expand=expand)


# ---------------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------------

_DOT_HINT = ("Install Graphviz to get them: `apt-get install graphviz` (Debian/Ubuntu), "
             "`brew install graphviz` (macOS) or `conda install graphviz`.")


def _render_files(dot_path: str, formats=("svg", "png"), stacklevel: int = 3) -> list[str]:
    """Run ``dot`` on ``dot_path``; returns the files written (warns on a failure)."""
    exe = shutil.which("dot")
    written = []
    for fmt in formats:
        out = os.path.splitext(dot_path)[0] + "." + fmt
        try:
            proc = subprocess.run([exe, f"-T{fmt}", dot_path, "-o", out], capture_output=True, text=True,
                                  timeout=300)
        except subprocess.TimeoutExpired:
            warnings.warn(f"fxprune.dump: `dot` took over 300 s on {dot_path}; no .{fmt} written", stacklevel=stacklevel)
            continue
        if proc.returncode != 0:
            msg = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit code {proc.returncode}"
            warnings.warn(f"fxprune.dump: `dot -T{fmt}` failed on {dot_path}: {msg}", stacklevel=stacklevel)
            continue
        written.append(out)
    return written


def _write_stages(out_dir: str, texts: dict[str, str], formats=("svg", "png"), stacklevel: int = 3) -> dict[str, list[str]]:
    """Write ``<stage>.dot`` per text and render them; warnings point ``stacklevel`` frames up."""
    os.makedirs(out_dir, exist_ok=True)
    have_dot = shutil.which("dot") is not None
    written: dict[str, list[str]] = {}
    for stage, text in texts.items():
        path = os.path.join(out_dir, f"{stage}.dot")
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        written[stage] = [path]
        if have_dot and formats:
            written[stage] += _render_files(path, formats, stacklevel + 1)
    if texts and formats and not have_dot:
        warnings.warn("fxprune.dump: the Graphviz `dot` binary was not found on PATH, so only .dot files "
                      f"were written to {out_dir} (no .svg/.png). " + _DOT_HINT, stacklevel=stacklevel)
    return written


def _stage_texts(analysis, plan, pruned, stages, collapse, expand=()) -> dict[str, str]:
    bad = [s for s in stages if s not in STAGES]
    if bad:
        raise ValueError(f"unknown dump stage(s) {bad}; choose from {list(STAGES)}")
    texts = {}
    for s in stages:
        if s == "captured":
            texts[s] = to_dot(analysis, None, collapse, stage="captured", expand=expand)
        elif s == "groups":
            texts[s] = to_dot(analysis, plan, collapse, expand=expand)
        elif s == "pruned" and pruned is not None:
            texts[s] = pruned_to_dot(pruned, analysis, plan, collapse, expand=expand)
    return texts


def dump_state(state, pruned, out_dir, stages=STAGES, collapse=True, formats=("svg", "png")) -> dict[str, list[str]]:
    """The dumps of one ``prune()`` run (called by ``prune(..., dump_dir=...)``)."""
    texts = _stage_texts(state.analysis, state.plan, pruned, stages, collapse)
    return _write_stages(str(out_dir), texts, formats, stacklevel=5)  # the caller of prune()


def dump(model_or_graph_module, example_inputs, out_dir, stages=STAGES, pruned=None, collapse=True,
         formats=("svg", "png"), expand=(), **prune_kwargs) -> dict[str, list[str]]:
    """Write ``captured.dot``, ``groups.dot`` and ``pruned.dot`` to ``out_dir`` (and ``.svg`` and
    ``.png`` of each when the Graphviz ``dot`` binary is found; otherwise one warning says how to
    install it). The model is not modified.

    What is pruned: ``pruned`` (a GraphModule returned by :func:`fxprune.prune` for this model), or
    ``prune_kwargs`` as for :func:`fxprune.prune` (``sparsity=0.5``, ``masks=...``), or the masks the
    model carries (:func:`fxprune.apply_masks`, torch.ao, torch.nn.utils.prune); with none of them,
    the groups are drawn without a plan and the ``pruned`` stage is skipped.

    Example::

        fxprune.dump(model, (x,), "dumps", sparsity=0.5)       # dumps/groups.svg, ...
        fxprune.dump(model, (x,), "dumps", stages=("groups",), collapse=False)
        fxprune.dump(model, (x,), "dumps", sparsity=0.5, expand=("layer2.0",))   # one block drawn open

    Returns ``{stage: [files written]}``.
    """
    from . import api
    from .analysis import analyze
    from .capture import capture, normalize_inputs
    from .masks import make_plan, units_from_masks

    prune_kwargs.pop("dump_dir", None)
    inputs = normalize_inputs(example_inputs)
    _stage_texts(None, None, None, [s for s in stages if s not in STAGES], collapse)  # unknown stages
    gm = embedded = None
    if pruned is None and not prune_kwargs:
        gm, embedded = capture(model_or_graph_module)  # masks the model carries are a plan too
    if pruned is None and (prune_kwargs or embedded):
        bound = inspect.signature(api.prune).bind(model_or_graph_module, inputs, **prune_kwargs)
        bound.apply_defaults()
        args = dict(bound.arguments)
        args.pop("dump_dir", None)
        verify = args.pop("verify", True)
        model, inp = args.pop("model"), args.pop("example_inputs")
        base = ("masks", "sparsity", "criterion", "prune_bias", "prune_outputs", "ignore")
        state = api._prepare(model, inp, **{k: args.pop(k) for k in base}, **args)
        texts = _stage_texts(state.analysis, state.plan, None, [s for s in stages if s != "pruned"], collapse,
                             expand)
        # the pipeline rewrites its graph in place: the captured and groups stages are drawn first
        pruned = api._finish(state, bound.arguments["prune_bias"], verify)
        if "pruned" in stages:
            texts.update(_stage_texts(state.analysis, state.plan, pruned, ["pruned"], collapse, expand))
        texts = {s: texts[s] for s in stages if s in texts}
        return _write_stages(str(out_dir), texts, formats)
    report = getattr(pruned, "meta", {}).get("fxprune") if pruned is not None else None
    prune_bias = report.prune_bias if report is not None else True
    prune_outputs = bool(report.outputs_changed) if report is not None else False
    if gm is None:
        gm, embedded = capture(model_or_graph_module)
    analysis = analyze(gm, inputs, prune_bias=prune_bias, prune_outputs=prune_outputs)
    plan = None
    masks = report.masks if report is not None else embedded
    if masks:
        plan = make_plan(analysis, units_from_masks(analysis, masks, strict=False))
    elif report is not None:
        plan = make_plan(analysis, torch.zeros(analysis.n_elements, dtype=torch.bool))
    texts = _stage_texts(analysis, plan, pruned, stages, collapse, expand)
    return _write_stages(str(out_dir), texts, formats)


# ---------------------------------------------------------------------------------------------------
# networkx
# ---------------------------------------------------------------------------------------------------

def _site_id(site) -> str:
    return f"site:{site.owner}:{site.role}" if site.owner else f"site:{site.role}"


def to_networkx(analysis, plan=None):
    """The channel-dependency graph as a ``networkx.DiGraph``.

    Nodes:
      - ``"group:<i>"`` (``type="group"``): ``index``, ``pattern``, ``width``, ``prunable`` (units that
        can be removed), ``blocked`` (why none can, or None), ``producers``; with a ``plan`` also
        ``width_after`` and ``removed`` (unit indices).
      - ``"site:<module>:<role>"`` (``type="site"``): a producer's output rows, a consumer's input
        columns, a member's per-channel parameters or a parameter sliced with the channels;
        attributes ``kind``, ``owner``, ``role``, ``node`` (fx node name), ``width``, ``params``.
      - ``"barrier:<node>"`` (``type="barrier"``): an op that stops channels, with ``reason``.
    Edges:
      - site -> group: ``role`` and ``kind`` of the site, ``width`` (indices of the site in the
        group), ``index_map`` (per index of the site: the index of its unit in the group, -1 where
        the index holds no channel of this group), ``positions`` (the site's indices in the group).
      - group -> barrier: the group's channels reach the barrier (``reason``).

    Example::

        g = fxprune.to_networkx(analysis)
        [d["pattern"] for n, d in g.nodes(data=True) if d["type"] == "group"]
    """
    import networkx as nx

    G = nx.DiGraph()
    grp = _Groups(analysis, plan)
    unit_pos: dict[int, tuple[int, int]] = {}
    for g in analysis.groups:
        for j, u in enumerate(g.units):
            unit_pos[u.root] = (g.index, j)
        attrs = dict(type="group", index=g.index, pattern=g.pattern, width=g.width,
                     prunable=sum(1 for u in g.units if u.blocked is None), blocked=g.blocked,
                     producers=[s.fqn(next(iter(s.tensors))) if s.tensors else s.owner for s in g.producers],
                     unit_blocked=[u.blocked for u in g.units])
        if plan is not None:
            attrs["width_after"] = grp.width(g)[1]
            attrs["removed"] = [j for j, u in enumerate(g.units) if bool(plan.removed[u.root])]
            attrs["status"] = grp.status(g)
        G.add_node(f"group:{g.index}", **attrs)
    root = analysis.root
    for site in analysis.sites.values():
        sid = _site_id(site)
        ids = site.ids.reshape(-1)
        G.add_node(sid, type="site", kind=site.kind, owner=site.owner, role=site.role, node=site.node.name,
                   width=int(ids.numel()),
                   params=list(site.tensors) or list(site.params),
                   rule=type(site.rule).__name__ if site.rule is not None else None)
        per_group: dict[int, list[int]] = {}
        index_map: dict[int, list[int]] = {}
        for pos, e in enumerate(ids.tolist()):
            if e < 0:
                continue
            gi, j = unit_pos[int(root[e])]
            if gi not in index_map:
                index_map[gi] = [-1] * int(ids.numel())
                per_group[gi] = []
            index_map[gi][pos] = j
            per_group[gi].append(pos)
        for gi, positions in per_group.items():
            G.add_edge(sid, f"group:{gi}", role=site.role, kind=site.kind, width=len(positions),
                       index_map=index_map[gi], positions=positions)
    for node, why in analysis.barriers:
        bid = f"barrier:{node.name}"
        G.add_node(bid, type="barrier", node=node.name, reason=why)
    for use in analysis.uses:
        if use.site is None and not use.ok_zero and use.node.op != "output":
            bid = f"barrier:{use.node.name}"
            if bid not in G:
                G.add_node(bid, type="barrier", node=use.node.name, reason=use.what)
            for gi in grp.of(use.ids):
                G.add_edge(f"group:{gi}", bid, role="barrier", reason=use.what)
    return G


# ---------------------------------------------------------------------------------------------------
# Widths picture
# ---------------------------------------------------------------------------------------------------

def _width_rows(report_or_pruned) -> list[tuple[str, int, int, str, int]]:
    """(layer, width before, width after, status, group) per producer; in graph order when a pruned
    GraphModule is given, else in the report's group order."""
    rep = report_or_pruned
    order: dict[str, int] = {}
    if isinstance(rep, nn.Module):
        if isinstance(rep, fx.GraphModule):
            for node in rep.graph.nodes:
                if node.op in ("call_module", "get_attr"):
                    order.setdefault(str(node.target), len(order))
        rep = getattr(rep, "meta", {}).get("fxprune")
        if rep is None:
            raise ValueError("plot_widths: the module carries no fxprune report (pass what fxprune.prune returned)")
    groups = rep["groups"] if isinstance(rep, dict) else rep.groups
    rows = []
    for g in groups:
        get = (lambda k: g[k]) if isinstance(g, dict) else (lambda k: getattr(g, k))
        for p in get("producers"):
            layer = p.rsplit(".", 1)[0] if "." in p else p
            rows.append((layer or p, int(get("width_before")), int(get("width_after")), get("status"),
                         int(get("index"))))
    if order:
        rows.sort(key=lambda r: order.get(r[0], len(order)))
    return rows


_BEFORE, _AFTER = "#c9c9c9", "#1f77b4"


def _svg_widths(rows, title: str) -> str:
    name_w = max([len(r[0]) for r in rows] + [8]) * 7 + 52
    bar_w, text_w, row_h, top = 460, 150, 20, 64
    width = name_w + bar_w + text_w + 20
    height = top + row_h * len(rows) + 40
    vmax = max([r[1] for r in rows] + [1])
    out = ['<?xml version="1.0" encoding="UTF-8"?>',
           f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="Helvetica, Arial, sans-serif">',
           f'<rect width="{width}" height="{height}" fill="#ffffff"/>',
           f'<text x="12" y="24" font-size="16" font-weight="bold">{_h(title)}</text>',
           f'<rect x="12" y="36" width="14" height="12" fill="{_BEFORE}"/>'
           f'<text x="30" y="47" font-size="12">before</text>',
           f'<rect x="90" y="36" width="14" height="12" fill="{_AFTER}"/>'
           f'<text x="108" y="47" font-size="12">after</text>']
    for i, (name, before, after, status, gi) in enumerate(rows):
        y = top + i * row_h
        if i % 2:
            out.append(f'<rect x="0" y="{y - 2}" width="{width}" height="{row_h}" fill="#f7f7f7"/>')
        wb = bar_w * before / vmax
        wa = bar_w * after / vmax
        c = group_color(gi)
        out.append(f'<text x="{name_w - 44}" y="{y + 12}" font-size="12" text-anchor="end">{_h(name)}</text>')
        out.append(f'<rect x="{name_w - 38}" y="{y + 1}" width="30" height="{row_h - 6}" fill="{c}"/>'
                   f'<text x="{name_w - 23}" y="{y + 11}" font-size="10" font-weight="bold" text-anchor="middle" '
                   f'fill="{_text_on(c)}">g{gi}</text>')
        out.append(f'<rect x="{name_w}" y="{y + 1}" width="{wb:.1f}" height="{row_h - 6}" fill="{_BEFORE}"/>')
        out.append(f'<rect x="{name_w}" y="{y + 1}" width="{wa:.1f}" height="{row_h - 6}" fill="{_AFTER}"/>')
        pct = f" (−{100 * (1 - after / before):.0f}%)" if before and after != before else ""
        out.append(f'<text x="{name_w + bar_w + 8}" y="{y + 12}" font-size="12">{before} → {after}{_h(pct)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _dot_widths(rows, title: str) -> str:
    """The bar chart as one Graphviz HTML table (for PNG output without matplotlib)."""
    bar_w = 420
    vmax = max([r[1] for r in rows] + [1])
    trs = [f'<TR><TD COLSPAN="4" ALIGN="LEFT"><FONT POINT-SIZE="16"><B>{_h(title)}</B></FONT></TD></TR>',
           f'<TR><TD COLSPAN="4" ALIGN="LEFT"><FONT COLOR="{_BEFORE}">■</FONT> before   '
           f'<FONT COLOR="{_AFTER}">■</FONT> after</TD></TR>']
    for i, (name, before, after, _, gi) in enumerate(rows):
        row_bg = "#f5f5f5" if i % 2 else "#ffffff"
        wa = max(0, round(bar_w * after / vmax))
        wb = max(0, round(bar_w * before / vmax)) - wa
        rest = bar_w - wa - wb
        cells = []
        for w, c in ((wa, _AFTER), (wb, _BEFORE), (rest, row_bg)):
            if w > 0:
                cells.append(f'<TD WIDTH="{w}" HEIGHT="12" FIXEDSIZE="TRUE" BGCOLOR="{c}"></TD>')
        bar = '<TABLE BORDER="0" CELLBORDER="0" CELLSPACING="0" CELLPADDING="0"><TR>' + "".join(cells) + "</TR></TABLE>"
        pct = f" (−{100 * (1 - after / before):.0f}%)" if before and after != before else ""
        bg = f' BGCOLOR="{row_bg}"'
        c = group_color(gi)
        chip = (f'<TD BGCOLOR="{c}" FIXEDSIZE="TRUE" WIDTH="30" HEIGHT="14"><FONT COLOR="{_text_on(c)}" '
                f'POINT-SIZE="9"><B>g{gi}</B></FONT></TD>')
        trs.append(f'<TR><TD ALIGN="RIGHT"{bg}>{_h(name)}</TD>{chip}<TD{bg}>{bar}</TD>'
                   f'<TD ALIGN="LEFT"{bg}>{before} → {after}{_h(pct)}</TD></TR>')
    table = '<TABLE BORDER="0" CELLBORDER="0" CELLSPACING="0" CELLPADDING="3" BGCOLOR="#ffffff">' + "".join(trs) + "</TABLE>"
    return (f"digraph widths {{ graph [bgcolor=white, pad=0.2]; node [shape=plain, fontname={_q(_FONT)}, "
            f"fontsize=11]; chart [label=<{table}>]; }}\n")


def plot_widths(report_or_pruned, path, title: str = "channels per layer, before and after pruning") -> str:
    """A bar chart of each layer's output channels before and after pruning, written to ``path``
    (``.png`` or ``.svg``). ``report_or_pruned``: a :class:`fxprune.report.Report`, its ``to_dict()``,
    or the GraphModule :func:`fxprune.prune` returned.

    Uses matplotlib when it is installed; otherwise writes the SVG itself, and a PNG through the
    Graphviz ``dot`` binary (without either, a ``.svg`` is written next to ``path`` with a warning).
    Returns the path written.
    """
    rows = _width_rows(report_or_pruned)
    path = str(path)
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".png", ".svg"):
        raise ValueError(f"plot_widths writes .png or .svg, got {path!r}")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    try:
        import matplotlib
        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except Exception:
        plt = None
    if plt is not None:
        n = len(rows)
        fig, ax = plt.subplots(figsize=(9, 1.2 + 0.28 * max(n, 1)))
        ys = list(range(n))[::-1]
        ax.barh(ys, [r[1] for r in rows], color=_BEFORE, label="before", height=0.7)
        ax.barh(ys, [r[2] for r in rows], color=_AFTER, label="after", height=0.7)
        ax.set_yticks(ys, [f"{r[0]} (g{r[4]})" for r in rows], fontsize=8)
        vmax = max([r[1] for r in rows] + [1])
        for y, (_, b, a, _, _) in zip(ys, rows):
            ax.text(b + vmax * 0.01, y, f"{b} → {a}", va="center", fontsize=8)
        ax.set_xlim(0, vmax * 1.18)
        ax.set_xlabel("output channels")
        ax.set_title(title, loc="left")
        ax.legend(ncol=2, loc="lower right", bbox_to_anchor=(1.0, 1.0), frameon=False, fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return path
    if ext == ".svg":
        with open(path, "w", encoding="utf-8") as f:
            f.write(_svg_widths(rows, title))
        return path
    exe = shutil.which("dot")
    if exe is not None:
        proc = subprocess.run([exe, "-Tpng", "-o", path], input=_dot_widths(rows, title), capture_output=True,
                              text=True, timeout=120)
        if proc.returncode == 0:
            return path
    svg = os.path.splitext(path)[0] + ".svg"
    with open(svg, "w", encoding="utf-8") as f:
        f.write(_svg_widths(rows, title))
    warnings.warn(f"fxprune.plot_widths: neither matplotlib nor the Graphviz `dot` binary is available to "
                  f"write a PNG; wrote {svg} instead. `pip install matplotlib` or `apt-get install graphviz`.",
                  stacklevel=2)
    return svg


# ---------------------------------------------------------------------------------------------------
# Saving a pruned model
# ---------------------------------------------------------------------------------------------------

_FORMAT = 1


def save(gm: nn.Module, path) -> None:
    """Save a pruned GraphModule (and its report) so that :func:`load` returns it, runnable, in
    another process. A GraphModule pickles its own code, so the file needs neither the model's source
    file nor the class that was traced; only the classes of the leaf modules it holds (torch.nn's,
    fxprune's) must be importable where it is loaded.

    Example::

        fxprune.save(pruned, "pruned.pt")
        model = fxprune.load("pruned.pt")          # in any process
    """
    if not isinstance(gm, nn.Module):
        raise TypeError(f"save expects an nn.Module (a pruned GraphModule), got {type(gm).__name__}")
    unimportable = set()
    for m in gm.modules():
        mod = type(m).__module__
        if mod == "__main__" or mod.startswith("_fxprune_model_"):
            unimportable.add(f"{type(m).__name__} (defined in {'the main script' if mod == '__main__' else 'the model file'})")
    if isinstance(gm, fx.GraphModule):
        try:
            _, (_, import_block) = gm.__reduce__()
        except Exception:
            import_block = ""
        for line in import_block.splitlines():
            words = line.split()
            if len(words) >= 2 and words[0] in ("from", "import"):
                mod = words[1]
                if mod == "__main__" or mod.startswith("_fxprune_model_"):
                    unimportable.add(f"{' '.join(words[3:]) or mod} (a function the graph calls)")
    if unimportable:
        warnings.warn("fxprune.save: the saved model refers to " + ", ".join(sorted(unimportable))
                      + ", which another process cannot import; import it before fxprune.load, or move it "
                      "into an importable module", stacklevel=2)
    if isinstance(gm, fx.GraphModule):
        # annotations kept as strings (a model file with `from __future__ import annotations`) cannot be
        # pickled by GraphModule (its import block needs objects): they are only annotations, drop them
        stringly = [n for n in gm.graph.nodes if isinstance(n.type, str)]
        for n in stringly:
            n.type = None
        if stringly:
            gm.recompile()
    report = getattr(gm, "meta", {}).get("fxprune") if isinstance(gm, fx.GraphModule) else None
    torch.save({"fxprune_format": _FORMAT, "module": gm, "report": report}, str(path))


def load(path, map_location="cpu") -> nn.Module:
    """Load a model saved by :func:`save` (or ``torch.save`` of a module): a runnable GraphModule with
    its report in ``meta["fxprune"]``. Only load files you trust: like ``torch.load(weights_only=False)``,
    this runs the pickled code."""
    try:
        obj = torch.load(str(path), map_location=map_location, weights_only=False)
    except (ModuleNotFoundError, AttributeError) as e:
        raise RuntimeError(f"fxprune.load: {path} refers to code this process cannot import ({e}); "
                           "import the module that defines it first") from e
    if isinstance(obj, dict) and "fxprune_format" in obj:
        gm = obj["module"]
        if obj.get("report") is not None and isinstance(gm, fx.GraphModule):
            gm.meta["fxprune"] = obj["report"]
        return gm
    if isinstance(obj, nn.Module):
        return obj
    raise ValueError(f"fxprune.load: {path} holds a {type(obj).__name__}, not a saved model")
