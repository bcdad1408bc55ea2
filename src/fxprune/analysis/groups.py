"""Units and groups: elements joined by unions form a *unit* (pruned together); units joined through
their producers form a *group*. :class:`Analysis` is the result of one run of the engine."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.fx as fx
from torch.fx.passes.shape_prop import TensorMetadata

from ..channels import CONST, VARY, ZERO, UnionFind
from .flow import ChannelFlow, Site


@dataclass(slots=True)
class Unit:
    root: int
    elements: list[int]
    blocked: str | None          # why its channels cannot be removed (None: removable)


@dataclass
class Group:
    """Coupled producers and the units they prune together."""

    index: int
    producers: list[Site]
    units: list[Unit]             # ordered by the first producer's index order
    pattern: str = ""

    @property
    def width(self) -> int:
        return len(self.units)

    @property
    def blocked(self) -> str | None:
        """Why no unit of the group can be removed (None if some can)."""
        if all(u.blocked for u in self.units):
            return self.units[0].blocked
        return None


class Analysis:
    """Result of :class:`ChannelFlow`: sites, uses, units and groups of one captured graph."""

    def __init__(self, gm: fx.GraphModule, flow: ChannelFlow):
        self.gm = gm
        self.sites = flow.sites
        self.uses = flow.uses
        self.barriers = flow.barriers
        self.labels = flow.labels
        self.prune_bias = flow.prune_bias
        self.dead = flow.dead
        self.element_site = flow.element_site
        free = flow.free_splits()
        self.products = [(n, ids) for n, ids in flow.products if n not in free]
        #: merge node name -> (split node name, source node name, channel dim, perm)
        self.permutations = {m.name: (s.name, src.name, d, perm) for m, (s, src, d, perm) in flow.permutations.items()}
        #: node name -> (argument index, output dims): untracked operands sliced with the channels
        self.sliced_operands = {n.name: v for n, v in flow.sliced_operands.items()}
        self.n_elements = len(flow.uf)
        self.root = flow.uf.roots()
        self.labels_by_name = {n.name: v for n, v in flow.labels.items()}
        self.shapes_by_name = {n.name: tuple(n.meta["tensor_meta"].shape) for n in gm.graph.nodes
                               if isinstance(n.meta.get("tensor_meta"), TensorMetadata)}
        self._units_and_groups()

    def _units_and_groups(self) -> None:
        blocked: dict[int, str] = {}
        for use in self.uses:
            carry = use.carry
            bad = carry == VARY
            if not use.ok_const or self.dead:  # dead channels are zero, not merely constant
                bad = bad | (carry == CONST)
            if not use.ok_zero:
                bad = bad | (carry == ZERO)
            ids = use.ids[bad & (use.ids >= 0)]
            if ids.numel() == 0:
                continue
            reason = use.what
            if use.ok_zero and (use.ok_const or bool((carry[bad] == VARY).any())):
                reason = f"input-dependent values reach {use.node.name} ({use.what})"
            elif use.ok_zero:
                reason = (f"constant channels cannot be folded into {use.node.name} ({use.what}); "
                          "nonzero constants reach it")
            for r in self.root[ids].unique().tolist():
                blocked.setdefault(r, reason)
        roots = self.root.tolist()
        members: dict[int, list[int]] = {}
        for e, r in enumerate(roots):
            members.setdefault(r, []).append(e)
        units = {r: Unit(r, es, blocked.get(r)) for r, es in members.items()}
        # groups: producer sites joined by units (a unit's elements may come from several producers);
        # the distinct (site of a unit's root, site of its element) pairs are few
        producer_keys = [k for k, s in self.sites.items() if s.kind == "producer"]
        index = {k: i for i, k in enumerate(producer_keys)}
        site_of = torch.tensor([index[k] for k in self.element_site], dtype=torch.long)
        site_uf = UnionFind()
        site_uf.add(len(producer_keys))
        n = len(producer_keys)
        pairs = (site_of[self.root] * n + site_of).unique()
        site_uf.union_many(pairs // n, pairs % n)
        site_root = site_uf.roots().tolist()
        by_group: dict[int, list[str]] = {}
        for k in producer_keys:
            by_group.setdefault(site_root[index[k]], []).append(k)
        self.groups: list[Group] = []
        self.unit_of: dict[int, Unit] = units
        self.group_of_unit: dict[int, Group] = {}
        group_of_site = torch.empty(len(producer_keys), dtype=torch.long)
        for keys in by_group.values():
            sites = [self.sites[k] for k in keys]
            ordered = [units[r] for r in dict.fromkeys(roots[e] for s in sites for e in s.ids.tolist())]
            g = Group(len(self.groups), sites, ordered)
            group_of_site[[index[k] for k in keys]] = g.index
            self.groups.append(g)
            for u in ordered:
                self.group_of_unit[u.root] = g
        #: group index of every element
        self.group_of_element = group_of_site[site_of]

    # -- helpers used by the later stages ------------------------------------------------------------
    def producer_for_tensor(self, fqn: str) -> tuple[Site, int] | None:
        """The producer site whose parameter ``fqn`` holds rows per element, and its gate count."""
        for s in self.sites.values():
            if s.kind == "producer":
                for name, gates in s.tensors.items():
                    if (f"{s.owner}.{name}" if s.owner else name) == fqn:
                        return s, gates
        return None
