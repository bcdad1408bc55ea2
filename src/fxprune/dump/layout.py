"""Layout: module hierarchy collapsed into boxes (``layer1.0`` as one node), chosen modules drawn open."""
from __future__ import annotations

from .records import _Node

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
