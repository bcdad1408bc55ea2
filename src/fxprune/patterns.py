"""Patterns: name each channel group after the chain of ops its channels flow through."""
from __future__ import annotations

import re

import torch.fx as fx


def op_kind(node: fx.Node, modules: dict) -> str:
    """A short lowercase name: 'linear', 'conv', 'maxpool', 'relu', 'flatten', 'add', ..."""
    if node.op == "call_module":
        name = type(modules[node.target]).__name__
    elif node.op == "call_method":
        name = node.target
    elif node.op == "output":
        return "output"
    else:
        name = getattr(node.target, "__name__", str(node.target))
    name = name.lower().strip("_")
    name = re.sub(r"(\d)d$", "", name)                      # conv2d -> conv, maxpool2d -> maxpool
    name = re.sub(r"^(max|avg)_pool", r"\1pool", name)      # max_pool -> maxpool
    name = re.sub(r"^adaptive_(max|avg)_pool", r"adaptive\1pool", name)
    return {"iadd": "add", "truediv": "div", "getitem": "getitem"}.get(name, name.rstrip("_"))


def name_group(analysis, group) -> str:
    """producer kinds, then the ops the group's channels pass through, then consumer kinds."""
    gm = analysis.gm
    modules = dict(gm.named_modules())
    elements = {e for u in group.units for e in u.elements}
    producer_nodes = {s.node for s in group.producers}
    consumer_nodes = {u.node for u in analysis.uses if u.site is not None and _touches(u.ids, elements)}
    outputs = any(u.node.op == "output" and _touches(u.ids, elements) for u in analysis.uses)
    path = []
    for node in gm.graph.nodes:
        if node in producer_nodes or node in consumer_nodes or node.op in ("output", "placeholder", "get_attr"):
            continue
        cmaps = analysis.labels.get(node)
        if _labels_touch(cmaps, elements):
            kind = op_kind(node, modules)
            if kind not in _LAYOUT and (not path or path[-1] != kind):
                path.append(kind)
    prod = "+".join(dict.fromkeys(op_kind(n, modules) for n in _ordered(gm, producer_nodes)))
    cons = "+".join(dict.fromkeys(op_kind(n, modules) for n in _ordered(gm, consumer_nodes)))
    parts = [prod, *path]
    if cons:
        parts.append(cons)
    if outputs:
        parts.append("output")
    return "-".join(p for p in parts if p)


# ops that only move channels around are left out of pattern names (flatten and cat stay: they
# change what a channel is)
_LAYOUT = {"getitem", "contiguous", "identity", "view", "reshape", "transpose", "permute", "expand",
           "expand_as", "split", "chunk", "unsqueeze", "squeeze", "to", "float", "clone", "detach"}


def _ordered(gm, nodes):
    return [n for n in gm.graph.nodes if n in nodes]


def _touches(ids, elements) -> bool:
    return not elements.isdisjoint(ids.unique().tolist())


def _labels_touch(tree, elements) -> bool:
    from .analysis import _maps_in
    return any(_touches(cm.ids, elements) for cm in _maps_in(tree))


def find_patterns(model, example_inputs, prune_bias: bool = True, prune_outputs: bool = False) -> list[dict]:
    """The channel groups of ``model``, each with its pattern name, producers, width and whether it
    can be pruned (and if not, why). ``model`` is not modified.

    Example::

        for g in fxprune.find_patterns(model, (x,)):
            print(g["pattern"], g["producers"], g["width"], g["blocked"])
    """
    from .analysis import analyze
    from .capture import capture, normalize_inputs

    gm, _ = capture(model)
    analysis = analyze(gm, normalize_inputs(example_inputs), prune_bias, prune_outputs)
    return [
        {"pattern": g.pattern, "producers": [f"{s.owner}.{next(iter(s.tensors))}" for s in g.producers],
         "width": g.width, "prunable": sum(1 for u in g.units if u.blocked is None), "blocked": g.blocked}
        for g in analysis.groups
    ]
