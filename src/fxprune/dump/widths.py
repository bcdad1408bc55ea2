"""The widths chart: each layer's output channels before and after pruning."""
from __future__ import annotations

import os
import shutil
import subprocess
import warnings

import torch.fx as fx
import torch.nn as nn

from .style import _FONT, _h, _q, _text_on, group_color

def _width_rows(report_or_pruned) -> list[tuple[str, int, int, str, int]]:
    """(layer, width before, width after, status, group) per producer; in graph order when a pruned
    GraphModule is given, else in the report's group order."""
    rep = report_or_pruned
    order: dict[str, int] = {}
    if isinstance(rep, nn.Module):
        if isinstance(rep, fx.GraphModule):
            for node in rep.graph.nodes:
                if node.op in ("call_module", "get_attr"):
                    order.setdefault(str(node.target), len(order))
        rep = getattr(rep, "meta", {}).get("fxprune")
        if rep is None:
            raise ValueError("plot_widths: the module carries no fxprune report (pass what fxprune.prune returned)")
    groups = rep["groups"] if isinstance(rep, dict) else rep.groups
    rows = []
    for g in groups:
        get = (lambda k: g[k]) if isinstance(g, dict) else (lambda k: getattr(g, k))
        for p in get("producers"):
            layer = p.rsplit(".", 1)[0] if "." in p else p
            rows.append((layer or p, int(get("width_before")), int(get("width_after")), get("status"),
                         int(get("index"))))
    if order:
        rows.sort(key=lambda r: order.get(r[0], len(order)))
    return rows


_BEFORE, _AFTER = "#c9c9c9", "#1f77b4"


def _svg_widths(rows, title: str) -> str:
    name_w = max([len(r[0]) for r in rows] + [8]) * 7 + 52
    bar_w, text_w, row_h, top = 460, 150, 20, 64
    width = name_w + bar_w + text_w + 20
    height = top + row_h * len(rows) + 40
    vmax = max([r[1] for r in rows] + [1])
    out = ['<?xml version="1.0" encoding="UTF-8"?>',
           f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="Helvetica, Arial, sans-serif">',
           f'<rect width="{width}" height="{height}" fill="#ffffff"/>',
           f'<text x="12" y="24" font-size="16" font-weight="bold">{_h(title)}</text>',
           f'<rect x="12" y="36" width="14" height="12" fill="{_BEFORE}"/>'
           f'<text x="30" y="47" font-size="12">before</text>',
           f'<rect x="90" y="36" width="14" height="12" fill="{_AFTER}"/>'
           f'<text x="108" y="47" font-size="12">after</text>']
    for i, (name, before, after, status, gi) in enumerate(rows):
        y = top + i * row_h
        if i % 2:
            out.append(f'<rect x="0" y="{y - 2}" width="{width}" height="{row_h}" fill="#f7f7f7"/>')
        wb = bar_w * before / vmax
        wa = bar_w * after / vmax
        c = group_color(gi)
        out.append(f'<text x="{name_w - 44}" y="{y + 12}" font-size="12" text-anchor="end">{_h(name)}</text>')
        out.append(f'<rect x="{name_w - 38}" y="{y + 1}" width="30" height="{row_h - 6}" fill="{c}"/>'
                   f'<text x="{name_w - 23}" y="{y + 11}" font-size="10" font-weight="bold" text-anchor="middle" '
                   f'fill="{_text_on(c)}">g{gi}</text>')
        out.append(f'<rect x="{name_w}" y="{y + 1}" width="{wb:.1f}" height="{row_h - 6}" fill="{_BEFORE}"/>')
        out.append(f'<rect x="{name_w}" y="{y + 1}" width="{wa:.1f}" height="{row_h - 6}" fill="{_AFTER}"/>')
        pct = f" (−{100 * (1 - after / before):.0f}%)" if before and after != before else ""
        out.append(f'<text x="{name_w + bar_w + 8}" y="{y + 12}" font-size="12">{before} → {after}{_h(pct)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _dot_widths(rows, title: str) -> str:
    """The bar chart as one Graphviz HTML table (for PNG output without matplotlib)."""
    bar_w = 420
    vmax = max([r[1] for r in rows] + [1])
    trs = [f'<TR><TD COLSPAN="4" ALIGN="LEFT"><FONT POINT-SIZE="16"><B>{_h(title)}</B></FONT></TD></TR>',
           f'<TR><TD COLSPAN="4" ALIGN="LEFT"><FONT COLOR="{_BEFORE}">■</FONT> before   '
           f'<FONT COLOR="{_AFTER}">■</FONT> after</TD></TR>']
    for i, (name, before, after, _, gi) in enumerate(rows):
        row_bg = "#f5f5f5" if i % 2 else "#ffffff"
        wa = max(0, round(bar_w * after / vmax))
        wb = max(0, round(bar_w * before / vmax)) - wa
        rest = bar_w - wa - wb
        cells = []
        for w, c in ((wa, _AFTER), (wb, _BEFORE), (rest, row_bg)):
            if w > 0:
                cells.append(f'<TD WIDTH="{w}" HEIGHT="12" FIXEDSIZE="TRUE" BGCOLOR="{c}"></TD>')
        bar = '<TABLE BORDER="0" CELLBORDER="0" CELLSPACING="0" CELLPADDING="0"><TR>' + "".join(cells) + "</TR></TABLE>"
        pct = f" (−{100 * (1 - after / before):.0f}%)" if before and after != before else ""
        bg = f' BGCOLOR="{row_bg}"'
        c = group_color(gi)
        chip = (f'<TD BGCOLOR="{c}" FIXEDSIZE="TRUE" WIDTH="30" HEIGHT="14"><FONT COLOR="{_text_on(c)}" '
                f'POINT-SIZE="9"><B>g{gi}</B></FONT></TD>')
        trs.append(f'<TR><TD ALIGN="RIGHT"{bg}>{_h(name)}</TD>{chip}<TD{bg}>{bar}</TD>'
                   f'<TD ALIGN="LEFT"{bg}>{before} → {after}{_h(pct)}</TD></TR>')
    table = '<TABLE BORDER="0" CELLBORDER="0" CELLSPACING="0" CELLPADDING="3" BGCOLOR="#ffffff">' + "".join(trs) + "</TABLE>"
    return (f"digraph widths {{ graph [bgcolor=white, pad=0.2]; node [shape=plain, fontname={_q(_FONT)}, "
            f"fontsize=11]; chart [label=<{table}>]; }}\n")


def plot_widths(report_or_pruned, path, title: str = "channels per layer, before and after pruning") -> str:
    """A bar chart of each layer's output channels before and after pruning, written to ``path``
    (``.png`` or ``.svg``). ``report_or_pruned``: a :class:`fxprune.report.Report`, its ``to_dict()``,
    or the GraphModule :func:`fxprune.prune` returned.

    Uses matplotlib when it is installed; otherwise writes the SVG itself, and a PNG through the
    Graphviz ``dot`` binary (without either, a ``.svg`` is written next to ``path`` with a warning).
    Returns the path written.
    """
    rows = _width_rows(report_or_pruned)
    path = str(path)
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".png", ".svg"):
        raise ValueError(f"plot_widths writes .png or .svg, got {path!r}")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    try:  # optional: without matplotlib, the SVG is written here and the PNG through Graphviz
        import matplotlib
        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except Exception:
        plt = None
    if plt is not None:
        n = len(rows)
        fig, ax = plt.subplots(figsize=(9, 1.2 + 0.28 * max(n, 1)))
        ys = list(range(n))[::-1]
        ax.barh(ys, [r[1] for r in rows], color=_BEFORE, label="before", height=0.7)
        ax.barh(ys, [r[2] for r in rows], color=_AFTER, label="after", height=0.7)
        ax.set_yticks(ys, [f"{r[0]} (g{r[4]})" for r in rows], fontsize=8)
        vmax = max([r[1] for r in rows] + [1])
        for y, (_, b, a, _, _) in zip(ys, rows):
            ax.text(b + vmax * 0.01, y, f"{b} → {a}", va="center", fontsize=8)
        ax.set_xlim(0, vmax * 1.18)
        ax.set_xlabel("output channels")
        ax.set_title(title, loc="left")
        ax.legend(ncol=2, loc="lower right", bbox_to_anchor=(1.0, 1.0), frameon=False, fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return path
    if ext == ".svg":
        with open(path, "w", encoding="utf-8") as f:
            f.write(_svg_widths(rows, title))
        return path
    exe = shutil.which("dot")
    if exe is not None:
        proc = subprocess.run([exe, "-Tpng", "-o", path], input=_dot_widths(rows, title), capture_output=True,
                              text=True, timeout=120)
        if proc.returncode == 0:
            return path
    svg = os.path.splitext(path)[0] + ".svg"
    with open(svg, "w", encoding="utf-8") as f:
        f.write(_svg_widths(rows, title))
    warnings.warn(f"fxprune.plot_widths: neither matplotlib nor the Graphviz `dot` binary is available to "
                  f"write a PNG; wrote {svg} instead. `pip install matplotlib` or `apt-get install graphviz`.",
                  stacklevel=2)
    return svg
