"""The channel-dependency graph as a ``networkx.DiGraph``."""
from __future__ import annotations

import networkx as nx

from .records import _Groups

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
