"""Saliency: score each unit of a group from its producers' weight rows.

``l1`` and ``l2`` are row norms (torch.ao's SaliencyPruner uses the L1 norm); ``fpgm`` is the summed
distance of a row to all others (torch.ao's FPGMPruner): rows near the geometric median are the most
replaceable. A recurrent unit's rows in all gates count together. A unit shared by several producers
(a residual add) sums their scores. Lower is pruned first; ties go to the lower index.
"""
from __future__ import annotations

import torch

from .graph import attr

CRITERIA = ("l1", "l2", "fpgm")


def element_scores(weight: torch.Tensor, gates: int, criterion: str, units: int | None = None) -> torch.Tensor:
    """One score per unit of a producer whose ``weight`` has rows (gate, unit, span): ``gates`` stacked
    gates, ``units`` units (default: one row per unit and gate), each spanning adjacent rows (an
    attention head's head_dim rows). A unit's rows count together."""
    w = weight.detach()
    w = w.to(torch.promote_types(w.dtype, torch.float32))  # float16/bfloat16 scored in float32
    units = units or w.shape[0] // gates
    rows = w.reshape(gates, units, w.shape[0] // (gates * units), -1)
    if criterion == "l1":
        return rows.abs().sum(-1).sum(2).sum(0)
    if criterion == "l2":
        return rows.pow(2).sum(-1).sqrt().sum(2).sum(0)
    if criterion == "fpgm":
        flat = rows.permute(1, 0, 2, 3).reshape(units, -1)
        return torch.cdist(flat, flat, p=2).abs().sum(1)
    raise ValueError(f"unknown criterion {criterion!r}; choose one of {CRITERIA}")


def unit_scores(analysis, group, model, criterion: str) -> torch.Tensor:
    """Scores of ``group.units`` from the weights of ``model`` (the captured or masked GraphModule)."""
    position = {u.root: i for i, u in enumerate(group.units)}
    scores = torch.zeros(len(group.units), dtype=torch.float64)
    for site in group.producers:
        module = model.get_submodule(site.owner)
        for name, gates in site.tensors.items():
            if "weight" not in name and "bias" in name:  # gate biases ride along; a get_attr weight may be "w"
                continue
            weight = attr(module, name).movedim(site.axes.get(name, 0), 0)
            s = element_scores(weight, gates, criterion, len(site.ids)).double()
            where = torch.tensor([position[r] for r in analysis.root[site.ids].tolist()], dtype=torch.long)
            scores.index_add_(0, where, s)
    return scores


def select(scores: torch.Tensor, n_prune: int, allowed: torch.Tensor) -> torch.Tensor:
    """Keep-mask over units: prune the ``n_prune`` lowest-scoring allowed units (ties: lower index)."""
    keep = torch.ones(len(scores), dtype=torch.bool)
    candidates = allowed.nonzero().squeeze(1)
    order = torch.sort(scores[candidates], stable=True).indices  # stable: ties keep index order
    keep[candidates[order[:n_prune]]] = False
    return keep
