"""Report: what the pass found and did, as a table (``str(report)``) or a dict (``report.to_dict()``)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

from .channels import CONST


@dataclass
class GroupReport:
    index: int
    pattern: str
    producers: list[str]
    consumers: list[str]
    width_before: int
    width_after: int
    masked: int
    status: str                 # "pruned", "kept" (masked units stayed), "unprunable", "unchanged"
    reason: str | None = None


@dataclass
class Report:
    groups: list[GroupReport]
    masks: dict[str, torch.Tensor]
    barriers: list[tuple[str, str]]
    outputs_changed: list[str]
    params_before: int = 0
    params_after: int = 0
    flops_before: int = 0
    flops_after: int = 0
    max_abs_diff: float | None = 0.0   # None: not verified (prune(verify=False))
    rel_diff: float | None = 0.0
    prune_bias: bool = True
    notes: list[str] = field(default_factory=list)
    #: per flattened output: None, or (channel dims, kept bool array) when its width changed
    output_keeps: list = field(default_factory=list, repr=False)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["masks"] = {k: v.tolist() for k, v in self.masks.items()}
        d.pop("output_keeps")
        return d

    def compare(self, masked_out, pruned_out) -> float:
        """max |pruned - masked| / max(1, max |masked|) for outputs of the two models on any input."""
        from .verify import relative_diff
        return relative_diff(masked_out, pruned_out, self.output_keeps)

    def __str__(self) -> str:
        rows = [("group", "pattern", "width", "status", "why")]
        for g in self.groups:
            rows.append((str(g.index), g.pattern, f"{g.width_before} -> {g.width_after}", g.status, g.reason or ""))
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        lines = ["  ".join(r[i].ljust(widths[i]) for i in range(4)) + "  " + r[4] for r in rows]
        pct = lambda a, b: f"{100 * (1 - b / a):.1f}% less" if a else "-"
        lines += [
            "",
            f"parameters: {self.params_before:,} -> {self.params_after:,} ({pct(self.params_before, self.params_after)})",
            f"FLOPs:      {self.flops_before:,} -> {self.flops_after:,} ({pct(self.flops_before, self.flops_after)})",
            (f"max |pruned - masked| on the example inputs: {self.max_abs_diff:.3g} (relative {self.rel_diff:.3g})"
             if self.max_abs_diff is not None else "not verified (verify=False)"),
        ]
        if self.barriers:
            lines.append("barriers (channels that reach these are not removed):")
            lines += [f"  {node}: {why}" for node, why in self.barriers]
        if self.outputs_changed:
            lines.append("outputs whose width changed: " + ", ".join(self.outputs_changed))
        lines += self.notes
        return "\n".join(lines)


def build_report(plan, keeps, prune_bias: bool) -> Report:
    analysis = plan.analysis
    groups = []
    for g in analysis.groups:
        elements = {e for u in g.units for e in u.elements}
        consumers = sorted({u.site[0] for u in analysis.uses if u.site is not None
                            and not elements.isdisjoint(u.ids.unique().tolist())})
        producers = [f"{s.owner}.{next(iter(s.tensors))}" for s in g.producers]
        masked = sum(1 for u in g.units if bool(plan.masked[u.root]))
        removed = sum(1 for u in g.units if bool(plan.removed[u.root]))
        reasons = [plan.kept[u.root] for u in g.units if u.root in plan.kept]
        if removed:
            status, reason = "pruned", (f"{len(reasons)} masked units kept: {reasons[0]}" if reasons else None)
        elif masked:
            status, reason = "kept", reasons[0] if reasons else None
        elif g.blocked:
            status, reason = "unprunable", g.blocked
        else:
            status, reason = "unchanged", None
        groups.append(GroupReport(g.index, g.pattern, producers, consumers, g.width, g.width - removed,
                                  masked, status, reason))
    out_names = [f"output[{i}]" for i, k in enumerate(keeps) if k is not None]
    barriers = [(n.name, why) for n, why in analysis.barriers]
    notes = []
    folded = sum(int(((u.carry == CONST) & plan.removed[u.ids.clamp(min=0)] & (u.ids >= 0)).any())
                 for u in analysis.uses if u.site is not None)
    if folded:
        notes.append(f"constants of removed channels folded into the bias of {folded} consumer(s)")
    return Report(groups, plan.tensor_masks(), barriers, out_names, prune_bias=prune_bias, notes=notes,
                  output_keeps=keeps)
