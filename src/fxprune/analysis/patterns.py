"""Patterns: name each channel group after the chain of ops its channels flow through."""
from __future__ import annotations

import re

import torch.fx as fx

from ..channels import maps_in


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


def name_groups(analysis) -> None:
    """Set ``group.pattern`` for every group: producer kinds, then the ops its channels pass through,
    then consumer kinds (one pass over the graph)."""
    gm = analysis.gm
    modules = dict(gm.named_modules())
    group_of_element = analysis.group_of_element

    def groups_in(ids) -> set[int]:
        ids = ids.reshape(-1)
        return set(group_of_element[ids[ids >= 0]].unique().tolist())

    paths = {g.index: [] for g in analysis.groups}
    producers = {g.index: {s.node for s in g.producers} for g in analysis.groups}
    consumers = {g.index: set() for g in analysis.groups}
    outputs = set()
    for use in analysis.uses:
        touched = groups_in(use.ids)
        if use.site is not None:
            for i in touched:
                consumers[i].add(use.node)
        elif use.node.op == "output":
            outputs |= touched
    for node in gm.graph.nodes:
        if node.op in ("output", "placeholder", "get_attr"):
            continue
        kind = op_kind(node, modules)
        if kind in _LAYOUT:
            continue
        for cm in maps_in(analysis.labels.get(node)):
            for i in groups_in(cm.ids):
                path = paths[i]
                if node in producers[i] or node in consumers[i] or (path and path[-1] == kind):
                    continue
                path.append(kind)
    order = {n: k for k, n in enumerate(gm.graph.nodes)}
    for g in analysis.groups:
        i = g.index
        prod = "+".join(dict.fromkeys(op_kind(n, modules) for n in sorted(producers[i], key=order.get)))
        cons = "+".join(dict.fromkeys(op_kind(n, modules) for n in sorted(consumers[i], key=order.get)))
        parts = [prod, *_compress(paths[i]), cons, "output" if i in outputs else ""]
        g.pattern = "-".join(p for p in parts if p)


def _compress(ops: list[str]) -> list[str]:
    """A block of ops repeated back to back as one item (a residual stream through n blocks):
    a-b-c-b-c-b-c-d -> a-(b-c)x3-d. At each position the repetition covering the most ops wins."""
    out, i = [], 0
    while i < len(ops):
        length, times = 1, 1
        for n in range(1, (len(ops) - i) // 2 + 1):
            k = 1
            while ops[i + k * n: i + (k + 1) * n] == ops[i: i + n]:
                k += 1
            if k > 1 and n * k > length * times:
                length, times = n, k
        if times > 1:
            out.append(f"({'-'.join(ops[i: i + length])})x{times}")
        else:
            out.append(ops[i])
        i += length * times
    return out


# ops that only move channels around are left out of pattern names (flatten and cat stay: they
# change what a channel is)
_LAYOUT = {"getitem", "contiguous", "identity", "view", "reshape", "transpose", "permute", "expand",
           "expand_as", "split", "chunk", "unsqueeze", "squeeze", "to", "float", "clone", "detach"}
