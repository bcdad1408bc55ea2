"""Masks: which units are pruned, and which of those are physically removed.

Masks are keyed like torch.ao's ``tensor_fqn`` (``"seq.0.weight"``, ``"lstm.weight_ih_l0"``): a bool
keep-mask over that weight's output rows (for a recurrent weight, ``gates * hidden`` rows whose gates
agree, or one entry per hidden unit). A :class:`Plan` turns masks into per-element decisions:
``masked`` (zero in the masked model) and ``removed`` (masked and provably removable).
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from .analysis import Analysis
from .saliency import CRITERIA, select, unit_scores


class RowMask(nn.Module):
    """Parametrization that keeps a weight's pruned output rows (or entries along ``dim``) at zero;
    ``keep`` is a bool buffer."""

    def __init__(self, keep: torch.Tensor, dim: int = 0):
        super().__init__()
        self.dim = dim
        self.register_buffer("keep", keep.clone().bool())

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        shape = [1] * w.dim()
        shape[self.dim] = -1
        return w * self.keep.reshape(shape).to(w.dtype)


@dataclass
class Plan:
    analysis: Analysis
    masked: torch.Tensor                 # bool per element: pruned in the masked model
    removed: torch.Tensor                # bool per element: removed from the pruned model
    kept: dict[int, str] = field(default_factory=dict)   # unit root -> why a masked unit stays
    #: (id(site), for_removal) -> (site, keep): the stages ask for each site's keep several times
    _keeps: dict = field(default_factory=dict, repr=False, compare=False)

    def site_keep(self, site, for_removal: bool = True) -> torch.Tensor:
        """Bool per index of a site: True where the index stays (unlabeled indices always stay)."""
        cached = self._keeps.get((id(site), for_removal))
        if cached is not None and cached[0] is site:
            return cached[1].clone()
        flags = self.removed if for_removal else self.masked
        ids = site.ids
        out = torch.ones(ids.shape, dtype=torch.bool)
        lab = ids >= 0
        out[lab] = ~flags[ids[lab]]
        # a parameter entry that scales several channels (a row of ids) stays while any of them does
        out = out.any(dim=1) if out.dim() > 1 else out
        self._keeps[id(site), for_removal] = (site, out)
        return out.clone()

    def tensor_masks(self) -> dict[str, torch.Tensor]:
        """The masks in force, keyed by each producer's first tensor (rows = gates * units)."""
        out = {}
        for site in self.analysis.sites.values():
            if site.kind != "producer":
                continue
            keep = self.site_keep(site, for_removal=False)
            if bool(keep.all()):
                continue
            name, gates = next(iter(site.tensors.items()))
            out[site.fqn(name)] = keep.repeat(gates) if gates > 1 else keep
        return out


def units_from_masks(analysis: Analysis, masks: dict, strict: bool = True) -> torch.Tensor:
    """Per-element 'masked' flags from tensor-keyed masks, checked against the analysis."""
    masked = torch.zeros(analysis.n_elements, dtype=torch.bool)
    given = torch.zeros(analysis.n_elements, dtype=torch.bool)
    source: dict[int, str] = {}
    known = sorted(s.fqn(t) for s in analysis.sites.values() if s.kind == "producer" for t in s.tensors)
    for fqn, mask in masks.items():
        found = analysis.producer_for_tensor(fqn)
        if found is None:
            if not strict:
                continue
            hint = difflib.get_close_matches(fqn, known, n=3)
            raise ValueError(
                f"mask key {fqn!r} is not a prunable weight of this model"
                + (f"; did you mean {', '.join(map(repr, hint))}?" if hint else f"; prunable weights: {known}"))
        site, gates = found
        if not isinstance(mask, torch.Tensor):
            raise ValueError(f"mask {fqn!r} must be a torch.bool tensor, got {type(mask).__name__}")
        if mask.dtype != torch.bool:
            raise ValueError(f"mask {fqn!r} must have dtype torch.bool, got {mask.dtype}")
        n = len(site.ids)
        if mask.dim() != 1 or mask.numel() not in (n, gates * n):
            lengths = f"{n}" if gates == 1 else f"{gates * n} ({gates} gates x {n} units) or {n}"
            raise ValueError(f"mask {fqn!r} has shape {tuple(mask.shape)}; expected length {lengths}")
        mask = mask.cpu()
        if mask.numel() == gates * n and gates > 1:
            per_gate = mask.reshape(gates, n)
            if not bool((per_gate == per_gate[0]).all()):
                raise ValueError(f"mask {fqn!r}: the {gates} gates must keep the same units")
            mask = per_gate[0]
        group = analysis.group_of_unit[int(analysis.root[site.ids[0]])]
        if not bool(mask.any()) and len(group.producers) == 1:
            # coupled with other producers, all its rows may be masked (it keeps one, still zero);
            # a group with no channel left is refused in make_plan
            raise ValueError(f"mask {fqn!r} prunes every row; keep at least one")
        for j, e in enumerate(site.ids.tolist()):
            r = int(analysis.root[e])
            if r in source and bool(masked[r]) != bool(~mask[j]):
                raise ValueError(
                    f"masks {source[r]!r} and {fqn!r} disagree on coupled channels (row {j} of {fqn!r}); "
                    "channels in one group must be pruned together")
            source.setdefault(r, fqn)
            masked[r] = ~mask[j]
            given[r] = True
    # every element follows its unit's root
    return masked[analysis.root]


@dataclass
class Selection:
    """How ``sparsity`` picks channels.

    sparsity: fraction of each group's channels to prune (default for every group).
    criterion: "l1", "l2" or "fpgm".
    ignore: module names (or prefixes: "layer1" covers "layer1.0.conv1") whose channels stay.
    layer_sparsity: {module name or prefix: sparsity} overrides for the groups those modules produce.
    global_ranking: rank units of all groups together by scores normalised per group (score / mean
        score of its group) and prune the lowest int(total * sparsity); groups keep at least one unit.
    round_to: kept widths are multiples of this (rounded up: never more pruning than asked).
    """

    sparsity: float
    criterion: str = "l1"
    ignore: tuple[str, ...] = ()
    layer_sparsity: dict | None = None
    global_ranking: bool = False
    round_to: int = 1

    def check(self) -> None:
        check_sparsity(self.sparsity)
        if self.criterion not in CRITERIA:
            raise ValueError(f"unknown criterion {self.criterion!r}; choose one of {CRITERIA}")
        for name, value in (self.layer_sparsity or {}).items():
            if not isinstance(name, str):
                raise ValueError(f"layer_sparsity keys are module names, got {name!r}")
            check_sparsity(value, f"layer_sparsity[{name!r}]")
        if not isinstance(self.round_to, int) or isinstance(self.round_to, bool) or self.round_to < 1:
            raise ValueError(f"round_to must be a positive integer, got {self.round_to!r}")
        if isinstance(self.ignore, str):
            raise ValueError(f"ignore takes a list of module names, not a single string: ignore=[{self.ignore!r}]")
        self.ignore = tuple(self.ignore)

    def _matches(self, owner: str, name: str) -> bool:
        return owner == name or owner.startswith(name + ".")

    def group_sparsity(self, group) -> float | None:
        """None: the group is ignored."""
        owners = [s.owner or next(iter(s.tensors)) for s in group.producers]  # "": a get_attr weight, by fqn
        if any(self._matches(o, name) for o in owners for name in self.ignore):
            return None
        for name, value in (self.layer_sparsity or {}).items():
            if any(self._matches(o, name) for o in owners):
                return value
        return self.sparsity

    def keep_count(self, width: int, n_prune: int) -> int:
        keep = max(1, width - n_prune)
        return min(width, -(-keep // self.round_to) * self.round_to)


def units_from_sparsity(analysis: Analysis, model, selection: Selection) -> torch.Tensor:
    """Per-element 'masked' flags: in each group, the lowest-scoring removable units (see Selection)."""
    selection.check()
    masked = torch.zeros(analysis.n_elements, dtype=torch.bool)
    plans = []  # [group, unit positions, scores, allowed, n_prune] per class of the group's units
    group_scores = {}
    unit_classes = _unit_classes(analysis)
    for g in analysis.groups:
        sp = selection.group_sparsity(g)
        allowed = torch.tensor([u.blocked is None for u in g.units], dtype=torch.bool)
        if sp is None or not bool(allowed.any()) or (sp == 0 and not selection.global_ranking):
            continue
        scores = group_scores[g.index] = unit_scores(analysis, g, model, selection.criterion)
        classes = unit_classes[g.index]
        for where, n_prune in zip(classes, _apportion(int(g.width * sp), [len(c) for c in classes])):
            plans.append([g, where, scores[where], allowed[where], n_prune])
    if selection.global_ranking:
        _global_counts(plans, selection.sparsity)
    keeps = {}
    for g, where, scores, allowed, n_prune in plans:
        n_prune = len(where) - selection.keep_count(len(where), n_prune)
        n_prune = min(n_prune, int(allowed.sum()))
        keep = keeps.setdefault(g.index, torch.ones(g.width, dtype=torch.bool))
        if n_prune > 0:
            keep[where] = select(scores, n_prune, allowed)
    for g in analysis.groups:
        keep = keeps.get(g.index)
        if keep is None or bool(keep.all()):
            continue
        _one_per_producer(analysis, g, group_scores[g.index], keep)
        masked[[e for u, k in zip(g.units, keep.tolist()) if not k for e in u.elements]] = True
    return masked


def _unit_classes(analysis: Analysis) -> dict[int, list[torch.Tensor]]:
    """Per group, its unit positions classed by the layers that hold them (every producer, member and
    consumer site). Usually a group is one class. Where its channels part ways (the two halves of a
    chunk, a channel shuffle's groups), each class is pruned by the group's sparsity on its own: every
    layer's width shrinks alike, and units are ranked against units of the same layers."""
    # a set of sites is keyed by the sum of random 62-bit numbers, one per site
    gen = torch.Generator().manual_seed(0)
    key = torch.zeros(analysis.n_elements, dtype=torch.long)
    for site in analysis.sites.values():
        ids = site.ids.reshape(-1)
        roots = analysis.root[ids[ids >= 0]].unique()
        code = int(torch.randint(1 << 62, (), generator=gen))
        key.index_add_(0, roots, torch.full_like(roots, code))
    classes = {}
    for g in analysis.groups:
        roots = torch.tensor([u.root for u in g.units], dtype=torch.long)
        _, which = key[roots].unique(return_inverse=True)
        order = torch.argsort(which, stable=True)
        classes[g.index] = list(order.split(torch.bincount(which).tolist()))
    return classes


def _apportion(total: int, sizes: list[int]) -> list[int]:
    """Split ``total`` over parts in proportion to ``sizes``: each part gets the floor of its share,
    and the remainder goes to the largest fractional shares (ties: larger part, then earlier)."""
    width = sum(sizes)
    shares = [total * n / width for n in sizes]
    counts = [int(q) for q in shares]
    order = sorted(range(len(sizes)), key=lambda i: (-(shares[i] - counts[i]), -sizes[i], i))
    for i in order[:total - sum(counts)]:
        counts[i] += 1
    return counts


def _one_per_producer(analysis: Analysis, group, scores: torch.Tensor, keep: torch.Tensor) -> None:
    """Every producer of a group keeps a unit (its mask must keep a row): where a producer coupled with
    others (a residual add or gate over a cat) lost all its units, its best-scoring one stays."""
    position = {u.root: i for i, u in enumerate(group.units)}
    for site in group.producers:
        where = torch.tensor([position[r] for r in analysis.root[site.ids].tolist()], dtype=torch.long)
        if not bool(keep[where].any()):
            keep[where[scores[where].argmax()]] = True


def _global_counts(plans, sparsity: float) -> None:
    """Set each class's count from one ranking of all units by score / mean score of the class."""
    candidates = []
    for i, (_, _, scores, allowed, _) in enumerate(plans):
        mean = float(scores.mean()) or 1.0
        candidates += [(float(scores[j]) / mean, i, j) for j in allowed.nonzero().squeeze(1).tolist()]
    total = int(sum(len(p[1]) for p in plans) * sparsity)
    counts = [0] * len(plans)
    for _, i, _ in sorted(candidates):
        if total <= 0:
            break
        if counts[i] < len(plans[i][1]) - 1:
            counts[i] += 1
            total -= 1
    for p, c in zip(plans, counts):
        p[4] = c


def check_sparsity(sparsity, what: str = "sparsity") -> None:
    if not isinstance(sparsity, (int, float)) or isinstance(sparsity, bool) or not (0 <= sparsity < 1):
        raise ValueError(f"{what} must be a number in [0, 1), got {sparsity!r}")


def make_plan(analysis: Analysis, masked: torch.Tensor, keep_groups: dict[int, str] | None = None) -> Plan:
    """Decide removal: a masked unit is removed unless one of its uses cannot drop it. ``keep_groups``:
    {group index: why} groups whose masked units all stay (the verification guard's decision)."""
    removed = masked.clone()
    kept: dict[int, str] = {}
    is_masked = masked.tolist()
    for root, unit in analysis.unit_of.items():
        if is_masked[root] and unit.blocked:
            removed[unit.elements] = False
            kept[root] = unit.blocked
    for index, why in (keep_groups or {}).items():
        for unit in analysis.groups[index].units:
            if bool(removed[unit.root]):
                removed[unit.elements] = False
                kept[unit.root] = why
    for g in analysis.groups:
        if all(is_masked[u.root] for u in g.units):
            names = ", ".join(f"{s.owner}" for s in g.producers)
            raise ValueError(f"the masks prune every channel of the group produced by {names}; keep at least one")
    _some_channel(analysis, removed, kept)
    _equalize(analysis, masked, removed, kept)
    _rectangles(analysis, removed, kept)
    return Plan(analysis, masked, removed, kept)


def _some_channel(analysis: Analysis, removed, kept) -> None:
    """A consumer keeps at least one input channel and a producer at least one output channel (a
    convolution cannot run without either; a producer coupled with others, or with dead channels, may
    have lost all its own); that channel stays in the model, still masked."""
    for site in analysis.sites.values():
        if site.kind not in ("consumer", "producer") or bool((site.ids < 0).any()):
            continue
        if bool(removed[site.ids].all()):
            unit = analysis.unit_of[int(analysis.root[site.ids[0]])]
            removed[unit.elements] = False
            side = "input" if site.kind == "consumer" else "output"
            kept[unit.root] = f"{site.owner} keeps at least one {side} channel"


def _rectangles(analysis: Analysis, removed, kept) -> None:
    """Channels split over several dims (view(b, groups, c // groups, ...)) must keep a product of
    per-dim index sets; masked units inside the product's hull stay in the model, still zero."""
    changed = True
    while changed:
        changed = False
        for _node, ids in analysis.products:
            lab = ids >= 0
            stay = torch.ones(ids.shape, dtype=torch.bool)
            stay[lab] = ~removed[ids[lab]]
            hull = torch.ones(ids.shape, dtype=torch.bool)
            for axis in range(ids.dim()):
                others = [a for a in range(ids.dim()) if a != axis]
                along = stay.any(dim=others) if others else stay
                shape = [1] * ids.dim()
                shape[axis] = -1
                hull &= along.reshape(shape)
            for e in ids[hull & lab & ~stay].unique().tolist():
                unit = analysis.unit_of[int(analysis.root[e])]
                removed[unit.elements] = False
                kept[unit.root] = "kept so that channels split over several dims stay rectangular"
                changed = True


def _equalize(analysis: Analysis, masked, removed, kept) -> None:
    """Modules with one width for several producers (nn.LSTM's hidden_size) keep equal counts: masked
    units beyond the common count stay in the model, still zero."""
    by_owner: dict[str, list] = {}
    for s in analysis.sites.values():
        by_owner.setdefault(s.owner, []).append(s)
    for owner, sites in by_owner.items():
        rule = sites[0].rule
        if not hasattr(rule, "equal_roles"):
            continue
        module = analysis.gm.get_submodule(owner)
        roles = set(rule.equal_roles(module))
        group = [s for s in sites if s.role in roles]
        counts = [int((~removed[s.ids]).sum()) for s in group]
        target = max(counts)
        for s, c in zip(group, counts):
            for e in s.ids.tolist():
                if c >= target:
                    break
                if bool(removed[e]):
                    unit = analysis.unit_of[int(analysis.root[e])]
                    removed[unit.elements] = False
                    kept[unit.root] = f"{owner}: every layer must keep the same number of units"
                    c += 1
