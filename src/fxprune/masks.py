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

    def site_keep(self, site, for_removal: bool = True) -> torch.Tensor:
        """Bool per index of a site: True where the index stays (unlabeled indices always stay)."""
        flags = self.removed if for_removal else self.masked
        ids = site.ids
        out = torch.ones(ids.shape, dtype=torch.bool)
        lab = ids >= 0
        out[lab] = ~flags[ids[lab]]
        return out

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
            out[f"{site.owner}.{name}"] = keep.repeat(gates) if gates > 1 else keep
        return out


def units_from_masks(analysis: Analysis, masks: dict, strict: bool = True) -> torch.Tensor:
    """Per-element 'masked' flags from tensor-keyed masks, checked against the analysis."""
    masked = torch.zeros(analysis.n_elements, dtype=torch.bool)
    given = torch.zeros(analysis.n_elements, dtype=torch.bool)
    source: dict[int, str] = {}
    known = sorted(f"{s.owner}.{t}" for s in analysis.sites.values() if s.kind == "producer" for t in s.tensors)
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
        if not bool(mask.any()):
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


def units_from_sparsity(analysis: Analysis, model, sparsity: float, criterion: str,
                        ignore: tuple[str, ...] = ()) -> torch.Tensor:
    """Per-element 'masked' flags: in each group, the int(width * sparsity) lowest-scoring removable units."""
    check_sparsity(sparsity)
    if criterion not in CRITERIA:
        raise ValueError(f"unknown criterion {criterion!r}; choose one of {CRITERIA}")
    masked = torch.zeros(analysis.n_elements, dtype=torch.bool)
    for g in analysis.groups:
        if any(s.owner in ignore for s in g.producers):
            continue
        allowed = torch.tensor([u.blocked is None for u in g.units], dtype=torch.bool)
        if not bool(allowed.any()):
            continue
        n_prune = min(int(g.width * sparsity), g.width - 1, int(allowed.sum()))
        if n_prune <= 0:
            continue
        keep = select(unit_scores(analysis, g, model, criterion), n_prune, allowed)
        for u, k in zip(g.units, keep.tolist()):
            if not k:
                masked[u.elements] = True
    return masked


def check_sparsity(sparsity) -> None:
    if not isinstance(sparsity, (int, float)) or isinstance(sparsity, bool) or not (0 <= sparsity < 1):
        raise ValueError(f"sparsity must be a number in [0, 1), got {sparsity!r}")


def make_plan(analysis: Analysis, masked: torch.Tensor) -> Plan:
    """Decide removal: a masked unit is removed unless one of its uses cannot drop it."""
    removed = masked.clone()
    kept: dict[int, str] = {}
    for root, unit in analysis.unit_of.items():
        if bool(masked[root]) and unit.blocked:
            removed[unit.elements] = False
            kept[root] = unit.blocked
    for g in analysis.groups:
        if all(bool(masked[u.root]) for u in g.units):
            names = ", ".join(f"{s.owner}" for s in g.producers)
            raise ValueError(f"the masks prune every channel of the group produced by {names}; keep at least one")
    _equalize(analysis, masked, removed, kept)
    _rectangles(analysis, removed, kept)
    return Plan(analysis, masked, removed, kept)


def _rectangles(analysis: Analysis, removed, kept) -> None:
    """Channels split over several dims (view(b, groups, c // groups, ...)) must keep a product of
    per-dim index sets; masked units inside the product's hull stay in the model, still zero."""
    changed = True
    while changed:
        changed = False
        for ids in analysis.products:
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
