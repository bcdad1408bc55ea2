"""Report: what the pass found and did, as a table (``str(report)``) or a dict (``report.to_dict()``)."""
from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field

import torch

from .channels import CONST
from .measure import time_pair
from .verify import relative_diff


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
    #: parameters + buffers in bytes (numel * element_size; a tensor shared by several modules counts once)
    bytes_before: int = 0
    bytes_after: int = 0
    #: median forward time in milliseconds on the example inputs; None until measured
    #: (:func:`fxprune.measure_latency`, :meth:`Report.measure_latency`, the CLI's ``prune``)
    latency_before_ms: float | None = None
    latency_after_ms: float | None = None
    latency_runs: int | None = None
    latency_device: str | None = None
    latency_threads: int | None = None    # torch.get_num_threads() while timing
    max_abs_diff: float | None = 0.0   # None: not verified (prune(verify=False))
    #: max_abs_diff / max |masked output|
    rel_diff: float | None = 0.0
    #: rel_diff within float rounding of the dtype verified in (``tolerance``); None: not verified
    exact: bool | None = None
    tolerance: float | None = None
    #: the dtype the two models were compared in (float32 for float16/bfloat16 models)
    verified_dtype: str | None = None
    prune_bias: bool = True
    #: how the model was captured: "symbolic_trace", "torch.export (symbolic trace failed: ...)",
    #: "exported program", "graph module"
    capture: str | None = None
    notes: list[str] = field(default_factory=list)
    #: per flattened output: None, or (channel dims, kept bool array) when its width changed
    output_keeps: list = field(default_factory=list, repr=False)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["masks"] = {k: v.tolist() for k, v in self.masks.items()}
        d.pop("output_keeps")
        return d

    def measure_latency(self, model, pruned, example_inputs, runs: int = 10, warmup: int = 2) -> "Report":
        """Time ``model`` and ``pruned`` on ``example_inputs`` (median of ``runs`` forward passes each,
        after ``warmup``, under no_grad, in the mode the models are in, buffers restored) and record it
        in ``latency_before_ms`` / ``latency_after_ms``. Returns ``self``. See :func:`fxprune.measure_latency`."""
        before, after, device = time_pair(model, pruned, example_inputs, runs, warmup)
        self.latency_before_ms, self.latency_after_ms = before, after
        self.latency_runs, self.latency_device = runs, device
        self.latency_threads = torch.get_num_threads()
        return self

    def compare(self, masked_out, pruned_out) -> float:
        """max |pruned - masked| / max |masked| for outputs of the two models on any input (pruned outputs
        compared on their kept channels)."""
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
        ]
        if self.bytes_before:
            lines.append(f"size:       {self.bytes_before:,} -> {self.bytes_after:,} bytes "
                         f"({pct(self.bytes_before, self.bytes_after)}{_mb(self.bytes_before, self.bytes_after)})")
        if self.latency_before_ms is not None and self.latency_after_ms is not None:
            b, a = self.latency_before_ms, self.latency_after_ms
            speed = f"{b / a:.2f}x faster" if a > 0 and b >= a else (f"{a / b:.2f}x slower" if b > 0 else "-")
            threads = f", {self.latency_threads} threads" if self.latency_threads else ""
            lines.append(f"latency:    {b:.3g} ms -> {a:.3g} ms ({speed}; {self.latency_device or 'cpu'}{threads}, "
                         f"median of {self.latency_runs} runs on the example inputs)")
        lines += [
            (f"max |pruned - masked| on the example inputs: {self.max_abs_diff:.3g} (relative {self.rel_diff:.3g}"
             + (f"; {self.verified_dtype}" if self.verified_dtype not in (None, "float32") else "")
             + (f"; beyond rounding, tolerance {self.tolerance:.2g}" if self.exact is False else "") + ")"
             if self.max_abs_diff is not None else "not verified (verify=False)"),
        ]
        if self.capture and self.capture != "symbolic_trace":
            lines.append(f"captured with: {self.capture}")
        if self.barriers:
            lines.append("barriers (channels that reach these are not removed):")
            lines += [f"  {node}: {why}" for node, why in self.barriers]
        if self.outputs_changed:
            lines.append("outputs whose width changed: " + ", ".join(self.outputs_changed))
        lines += self.notes
        return "\n".join(lines)


def _mb(before: int, after: int) -> str:
    return f"; {before / 1e6:.1f} MB -> {after / 1e6:.1f} MB" if before >= 1e6 else ""


def model_bytes(module: torch.nn.Module) -> int:
    """Bytes of a module's parameters and buffers: the sum of ``numel * element_size``; a tensor
    reachable under several names (tied weights) counts once."""
    return sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))


def nothing_pruned(groups: list[GroupReport], barriers: list[tuple[str, str]]) -> str:
    """One line: why no channel was removed."""
    if not groups:
        unknown = Counter(why.removeprefix("no rule for ") for _, why in barriers if why.startswith("no rule for "))
        ops = ", ".join(f"{op} x{n}" for op, n in unknown.most_common(5))
        return ("nothing pruned: no op with a rule makes channels" + (f" (ops without rules: {ops})" if ops else
                " (no linear, conv, embedding or other op with parameters fxprune knows)"))
    if all(g.status == "unchanged" for g in groups):
        return "nothing pruned: no channel was selected (sparsity 0, or masks that keep everything)"
    reasons = Counter(g.reason for g in groups if g.status == "unprunable" and g.reason)
    if not reasons:
        return "nothing pruned: the selected channels had to stay (see the groups' reasons)"
    why, n = reasons.most_common(1)[0]
    return f"nothing pruned: {n} of {len(groups)} groups cannot be pruned, most because {why}"


def build_report(plan, keeps, prune_bias: bool) -> Report:
    analysis = plan.analysis
    consumers_of: dict[int, set[str]] = {}
    for use in analysis.uses:
        if use.site is not None:
            for i in analysis.group_of_element[use.ids[use.ids >= 0]].unique().tolist():
                consumers_of.setdefault(i, set()).add(use.site[0] or use.site[1].rpartition(":")[0])  # "": a get_attr weight
    groups = []
    for g in analysis.groups:
        consumers = sorted(consumers_of.get(g.index, ()))
        producers = [s.fqn(next(iter(s.tensors))) for s in g.producers]
        roots = torch.tensor([u.root for u in g.units], dtype=torch.long)
        masked, removed = int(plan.masked[roots].sum()), int(plan.removed[roots].sum())
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
    if not any(g.status == "pruned" for g in groups):
        notes.append(nothing_pruned(groups, barriers))
    return Report(groups, plan.tensor_masks(), barriers, out_names, prune_bias=prune_bias, notes=notes,
                  output_keeps=keeps)
