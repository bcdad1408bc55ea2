"""Graphviz DOT: the node labels, the legend, :func:`to_dot` and :func:`pruned_to_dot`, and the files
(``.dot``, and ``.svg``/``.png`` through the ``dot`` binary)."""
from __future__ import annotations

import os
import shutil
import subprocess
import warnings

import torch.fx as fx

from .layout import _boxes
from .records import _analysis_nodes, _Groups, _Node, _pruned_nodes
from .style import _BARRIER, _BARRIER_FILL, _FONT, _MAX_OUTLINES, _arrow, _h, _q, _tint, _text_on, _wrap, group_color

STAGES = ("captured", "groups", "pruned")

def _chips(groups: list[int], widths: dict[int, str] | None = None) -> str:
    cells = []
    for g in groups:
        c = group_color(g)
        text = f"g{g}" + (f" {widths[g]}" if widths and g in widths else "")
        cells.append(f'<TD BGCOLOR="{c}" CELLPADDING="2"><FONT COLOR="{_text_on(c)}" POINT-SIZE="10">'
                     f"<B>{_h(text)}</B></FONT></TD>")
    rows, per_row = [], (4 if widths else 6)
    for i in range(0, len(cells), per_row):
        rows.append("<TR>" + "".join(cells[i:i + per_row]) + "</TR>")
    return '<TABLE BORDER="0" CELLSPACING="2" CELLPADDING="0">' + "".join(rows) + "</TABLE>"


def _with_chips(text_html: str, groups: list[int]) -> str:
    """One line: the text, then a chip per group."""
    cells = [f'<TD><FONT POINT-SIZE="10">{text_html}</FONT></TD>'] if text_html else []
    for g in groups[:6]:
        c = group_color(g)
        w = 10 + 7 * len(str(g))
        cells.append(f'<TD BGCOLOR="{c}" CELLPADDING="1" FIXEDSIZE="TRUE" WIDTH="{w}" HEIGHT="14">'
                     f'<FONT COLOR="{_text_on(c)}" POINT-SIZE="9"><B>g{g}</B></FONT></TD>')
    if len(groups) > 6:
        cells.append(f'<TD><FONT POINT-SIZE="9">+{len(groups) - 6}</FONT></TD>')
    return '<TABLE BORDER="0" CELLSPACING="2" CELLPADDING="0" ALIGN="CENTER"><TR>' + "".join(cells) + "</TR></TABLE>"


def _outlined(inner_rows: list[str], groups: list[int], fill: str, barrier: bool, most: int = _MAX_OUTLINES,
              thickness: int = 3) -> str:
    """An HTML label: the rows, framed by one coloured outline per group (outermost first, at most
    ``most``; the chips inside name them all)."""
    body = (f'<TABLE BORDER="0" CELLBORDER="0" CELLSPACING="0" CELLPADDING="3" BGCOLOR="{fill}">'
            + "".join(f'<TR><TD ALIGN="CENTER">{r}</TD></TR>' for r in inner_rows) + "</TABLE>")
    frames = [group_color(g) for g in groups[:most]]
    if not frames:
        frames = ["#9e9e9e"]
    if barrier:
        frames = [_BARRIER] + frames
    for i, c in enumerate(reversed(frames)):
        outer = i == len(frames) - 1
        thick = 4 if (barrier and outer) else (thickness if groups else 1)
        style = ' STYLE="ROUNDED"' if outer else ""
        body = (f'<TABLE BORDER="{thick}" COLOR="{c}" CELLBORDER="0" CELLSPACING="0" CELLPADDING="1"{style}>'
                f"<TR><TD>{body}</TD></TR></TABLE>")
    return "<" + body + ">"


def _barrier_rows(reasons: list[tuple[str | None, str]]) -> list[str]:
    """One left-aligned block naming each barrier (node, or None for the node itself) and why; a
    small gap between barriers, so that several in one box do not run together."""
    blocks = []
    for where, why in reasons:
        head = f"barrier at {where}: " if where else "barrier: "
        blocks.append(f'<FONT COLOR="{_BARRIER}" POINT-SIZE="10"><B>'
                      + '<BR ALIGN="LEFT"/>'.join(_h(s) for s in _wrap(head + why, 44)) + '<BR ALIGN="LEFT"/></B></FONT>')
    if not blocks:
        return []
    return ['<FONT POINT-SIZE="4"> <BR ALIGN="LEFT"/></FONT>'.join(blocks)]


def _node_label(n: _Node, show_groups: bool) -> str:
    rows = [f'<FONT POINT-SIZE="12"><B>{_h(n.title)}</B></FONT>']
    if n.target and n.target != n.title:
        rows.append(f'<FONT POINT-SIZE="10" COLOR="#444444">{_h(n.target)}</FONT>')
    out_chips = n.out_groups if show_groups else []
    in_chips = [g for g in n.in_groups if g not in out_chips] if show_groups else []
    if n.shape or out_chips:
        rows.append(_with_chips(n.shape, out_chips))
    if n.in_width or in_chips:
        rows.append(_with_chips(n.in_width or ("" if n.op == "output" else "reads"), in_chips))
    rows += _barrier_rows([(None, why) for why in n.barriers])
    groups = n.groups if show_groups else []
    fill = _BARRIER_FILL if n.barriers else (_tint(group_color(groups[0]), 0.9) if groups else "#ffffff")
    return _outlined(rows, groups, fill, bool(n.barriers))


def _render(nodes: list[_Node], *, title: str, collapse, legend: list[str] | None, show_groups: bool,
            group_widths: dict[int, str], legend_tooltip: str = "", expand=()) -> str:
    by_name = {n.name: n for n in nodes}
    boxes = _boxes(nodes, collapse, expand)
    rep = {}
    for n in nodes:
        if n.name in boxes:
            rep[n.name] = "box:" + boxes[n.name][0]
        elif collapse is False or (n.visible and n.op != "get_attr"):
            rep[n.name] = n.name
        else:
            rep[n.name] = None
    lines = [
        "digraph fxprune {",
        f"  graph [rankdir=TB, fontname={_q(_FONT)}, fontsize=14, labelloc=t, label={_q(title)}, "
        "nodesep=0.25, ranksep=0.35, newrank=true];",
        f"  node [shape=plain, fontname={_q(_FONT)}];",
        f"  edge [color=\"#7f7f7f\", arrowsize=0.7, penwidth=1.3, fontname={_q(_FONT)}];",
    ]
    if legend:
        lines.append("  subgraph cluster_legend {")
        lines.append('    label="channel groups"; style="rounded"; color="#bbbbbb"; fontsize=12;')
        for i, html in enumerate(legend):
            tip = f", tooltip={_q(legend_tooltip)}" if legend_tooltip and i == 0 else ""
            lines.append(f"    legend{i} [label={html}{tip}];")
        for i in range(len(legend) - 1):
            lines.append(f"    legend{i} -> legend{i + 1} [style=invis];")
        lines.append("  }")
    # nodes
    members: dict[str, list[_Node]] = {}
    for n in nodes:
        if n.name in boxes:
            members.setdefault(boxes[n.name][0], []).append(n)
    opened = [expand] if isinstance(expand, str) else [e for e in (expand or ()) if e]
    clusters: dict[str, list[str]] = {}   # an expanded module: its nodes, drawn in a dashed frame
    titles: dict[str, str] = {}

    def frame(n: _Node) -> list[str]:
        for e in opened:
            for p, c, _ in n.chain:
                if p == e:
                    titles.setdefault(e, f"{e} ({c})" if c else e)
                    return clusters.setdefault(e, [])
        return lines

    emitted = set()
    for n in nodes:
        r = rep[n.name]
        if r is None or r in emitted:
            continue
        emitted.add(r)
        if r.startswith("box:"):
            path, cls = boxes[n.name]
            inner = members[path]
            groups = sorted({g for m in inner for g in m.groups}) if show_groups else []
            rows = [f'<FONT POINT-SIZE="12"><B>{_h(path)}</B></FONT>']
            ops = sum(1 for m in inner if m.op != "get_attr")
            rows.append(f'<FONT POINT-SIZE="10" COLOR="#444444">{_h(cls or "module")} · {ops} ops (collapsed)</FONT>')
            shapes = [m.shape for m in inner if m.shape and m.op != "get_attr"]
            if shapes:
                rows.append(f'<FONT POINT-SIZE="10">out {shapes[-1]}</FONT>')
            if groups:
                rows.append(_chips(groups, group_widths))
            found = [(m.name, why) for m in inner for why in m.barriers]
            barrier = bool(found)
            rows += _barrier_rows(found)
            fill = _BARRIER_FILL if barrier else "#f2f2f2"
            label = _outlined(rows, groups, fill, barrier, most=3, thickness=2)
            tip = f"{path} ({cls}): " + ", ".join(m.name for m in inner)
            lines.append(f"  {_q(r)} [label={label}, tooltip={_q(tip)}];")
        else:
            out = frame(n)
            if not n.visible:
                out.append(f"  {_q(r)} [shape=plaintext, label={_q(n.title + ' ' + n.name)}, "
                           "fontsize=9, fontcolor=\"#999999\"];")
                continue
            tip = n.name + (": groups " + ", ".join(f"g{g}" for g in n.groups) if show_groups and n.groups else "")
            out.append(f"  {_q(r)} [label={_node_label(n, show_groups)}, tooltip={_q(tip)}];")
    for i, (path, inner) in enumerate(clusters.items()):
        lines.append(f"  subgraph cluster_open{i} {{")
        lines.append(f'    label={_q(titles[path] + " (expanded)")}; style="dashed,rounded"; color="#777777"; '
                     'fontsize=12; labeljust=l;')
        lines += ["  " + x for x in inner]
        lines.append("  }")
    # edges
    seen = set()
    for n in nodes:
        dst = rep[n.name]
        if dst is None:
            continue
        for a in n.inputs:
            src_node = by_name.get(a)
            src = rep.get(a)
            if src is None or src == dst or (src, dst) in seen:
                continue
            seen.add((src, dst))
            attrs = []
            gs = src_node.out_groups if (show_groups and src_node is not None) else []
            if len(gs) == 1:
                attrs.append(f"color={_q(group_color(gs[0]))}")
            elif src_node is not None and not src_node.visible:
                attrs.append('style=dashed, color="#bbbbbb"')
            lines.append(f"  {_q(src)} -> {_q(dst)}" + (f" [{', '.join(attrs)}]" if attrs else "") + ";")
    if legend:  # the legend above the graph (beside it, a tall graph leaves a wide empty corner)
        targets = {d for _, d in seen}
        sources = [r for r in dict.fromkeys(rep.values()) if r is not None and r not in targets]
        for r in sources:
            lines.append(f"  legend{len(legend) - 1} -> {_q(r)} [style=invis];")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _unit_word(g) -> str:
    """``" heads"`` for a group of attention heads (its width counts heads, not channels), else ``""``."""
    if any(s.role == "heads" for s in g.producers):
        return " heads"
    attention = any(k in g.pattern for k in ("softmax", "scaled_dot_product_attention", "multiheadattention"))
    if attention and g.units and len(g.units[0].elements) > len(g.producers):
        return " heads"
    return ""


def _legend(analysis, plan=None, stage: str = "groups") -> tuple[list[str], str, dict[int, str]]:
    """The legend tables (groups, then barriers), a tooltip naming each group's full pattern, and
    each group's width text."""
    G = _Groups(analysis, plan)
    head = ('<TR><TD></TD><TD ALIGN="LEFT"><B>group</B></TD><TD ALIGN="LEFT"><B>pattern</B></TD>'
            '<TD><B>width</B></TD><TD ALIGN="LEFT"><B>status</B></TD></TR>')
    rows, widths, tips = [head], {}, []
    for g in analysis.groups:
        before, after = G.width(g)
        widths[g.index] = _arrow(before, after)
        c = group_color(g.index)
        pattern = '<BR ALIGN="LEFT"/>'.join(_h(s) for s in _wrap(g.pattern, 46, "-+")) + '<BR ALIGN="LEFT"/>'
        status = G.status(g)
        status_html = '<BR ALIGN="LEFT"/>'.join(_h(s) for s in _wrap(status, 30)) + '<BR ALIGN="LEFT"/>'
        colour = _BARRIER if status.startswith("unprunable") else "#000000"
        rows.append(f'<TR><TD BGCOLOR="{c}" WIDTH="18"> </TD>'
                    f'<TD ALIGN="LEFT"><B>g{g.index}</B></TD>'
                    f'<TD ALIGN="LEFT" BALIGN="LEFT">{pattern}</TD>'
                    f"<TD>{_h(widths[g.index] + _unit_word(g))}</TD>"
                    f'<TD ALIGN="LEFT" BALIGN="LEFT"><FONT COLOR="{colour}">{status_html}</FONT></TD></TR>')
        tips.append(f"g{g.index}: {g.pattern} ({widths[g.index]}; {status})")
    tables = [('<<TABLE BORDER="0" CELLBORDER="1" CELLSPACING="0" CELLPADDING="3" COLOR="#cccccc">'
               + "".join(rows) + "</TABLE>>")]
    if analysis.barriers:
        brow = [f'<TR><TD COLSPAN="2" ALIGN="LEFT"><FONT COLOR="{_BARRIER}"><B>barriers: channels that reach '
                "these are not pruned</B></FONT></TD></TR>"]
        for node, why in analysis.barriers:
            why_html = '<BR ALIGN="LEFT"/>'.join(_h(s) for s in _wrap(why, 46)) + '<BR ALIGN="LEFT"/>'
            brow.append(f'<TR><TD ALIGN="LEFT"><B>{_h(node.name)}</B></TD>'
                        f'<TD ALIGN="LEFT" BALIGN="LEFT">{why_html}</TD></TR>')
            tips.append(f"barrier {node.name}: {why}")
        tables.append('<<TABLE BORDER="0" CELLBORDER="1" CELLSPACING="0" CELLPADDING="3" COLOR="#f4a6a6" '
                      f'BGCOLOR="{_BARRIER_FILL}">' + "".join(brow) + "</TABLE>>")
    return tables, " | ".join(tips), widths


def _model_name(analysis) -> str:
    gm = analysis.gm
    name = type(gm).__name__
    return name if name not in ("GraphModule", "GraphModuleImpl") else "model"


def to_dot(analysis, plan=None, collapse=True, *, stage: str = "groups", title: str | None = None,
           expand=()) -> str:
    """Graphviz DOT text of the captured graph with its channel groups.

    Each group has its own colour: nodes that carry a group's channels (or read them) are outlined in
    it, one outline per group, and name their groups (``g3``); a legend names each group's pattern
    and width (before -> after with a ``plan``) and lists the barriers. Node labels show the op
    (module type or function), its target and the output shape with channel dims in brackets
    (``1×[16→8]×32×32``). Barriers are red, with the reason.

    Args:
        analysis: a :class:`fxprune.analysis.Analysis`.
        plan: a :class:`fxprune.masks.Plan`: widths before -> after, group status.
        collapse: ``True`` collapses module hierarchy into boxes (one box per block, such as
            ``layer1.0``), an int collapses everything below that depth of module path into one box,
            ``False`` draws every node.
        stage: ``"groups"`` (coloured) or ``"captured"`` (the plain captured graph, shapes only).
        expand: module paths to draw open although collapsed (``("layer2.0",)``): every op inside
            them is a node.
    """
    show = stage != "captured"
    nodes = _analysis_nodes(analysis, plan, groups=show)
    n_groups = len(analysis.groups)
    if title is None:
        if show:
            title = (f"fxprune · {_model_name(analysis)} · {n_groups} channel groups"
                     + (f", {len(analysis.barriers)} barriers" if analysis.barriers else "")
                     + (" · widths before→after" if plan is not None else ""))
        else:
            title = f"fxprune · {_model_name(analysis)} · captured graph ({len(nodes)} nodes)"
    legend, tip, widths = _legend(analysis, plan) if show else (None, "", {})
    return _render(nodes, title=title, collapse=collapse, legend=legend, show_groups=show,
                   group_widths=widths, legend_tooltip=tip, expand=expand)


def pruned_to_dot(pruned: fx.GraphModule, analysis=None, plan=None, collapse=True, *, title: str | None = None,
                  expand=()) -> str:
    """DOT text of a pruned GraphModule: its real (new) shapes, changed dims shown old→new, nodes
    coloured by the groups of the captured graph when ``analysis`` is given."""
    nodes = _pruned_nodes(pruned, analysis, plan)
    report = getattr(pruned, "meta", {}).get("fxprune")
    if title is None:
        title = f"fxprune · pruned graph ({len(nodes)} nodes)"
        if report is not None and report.params_before:
            title += f" · parameters {report.params_before:,}→{report.params_after:,}"
    legend, tip, widths = _legend(analysis, plan) if analysis is not None else (None, "", {})
    return _render(nodes, title=title, collapse=collapse, legend=legend, show_groups=analysis is not None,
                   group_widths=widths, legend_tooltip=tip, expand=expand)


_DOT_HINT = ("Install Graphviz to get them: `apt-get install graphviz` (Debian/Ubuntu), "
             "`brew install graphviz` (macOS) or `conda install graphviz`.")


def _render_files(dot_path: str, formats=("svg", "png"), stacklevel: int = 3) -> list[str]:
    """Run ``dot`` on ``dot_path``; returns the files written (warns on a failure)."""
    exe = shutil.which("dot")
    written = []
    for fmt in formats:
        out = os.path.splitext(dot_path)[0] + "." + fmt
        try:
            proc = subprocess.run([exe, f"-T{fmt}", dot_path, "-o", out], capture_output=True, text=True,
                                  timeout=300)
        except subprocess.TimeoutExpired:
            warnings.warn(f"fxprune.dump: `dot` took over 300 s on {dot_path}; no .{fmt} written", stacklevel=stacklevel)
            continue
        if proc.returncode != 0:
            msg = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit code {proc.returncode}"
            warnings.warn(f"fxprune.dump: `dot -T{fmt}` failed on {dot_path}: {msg}", stacklevel=stacklevel)
            continue
        written.append(out)
    return written


def write_stages(out_dir: str, texts: dict[str, str], formats=("svg", "png"), stacklevel: int = 3) -> dict[str, list[str]]:
    """Write ``<stage>.dot`` per text and render them; warnings point ``stacklevel`` frames up."""
    os.makedirs(out_dir, exist_ok=True)
    have_dot = shutil.which("dot") is not None
    written: dict[str, list[str]] = {}
    for stage, text in texts.items():
        path = os.path.join(out_dir, f"{stage}.dot")
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        written[stage] = [path]
        if have_dot and formats:
            written[stage] += _render_files(path, formats, stacklevel + 1)
    if texts and formats and not have_dot:
        warnings.warn("fxprune.dump: the Graphviz `dot` binary was not found on PATH, so only .dot files "
                      f"were written to {out_dir} (no .svg/.png). " + _DOT_HINT, stacklevel=stacklevel)
    return written


def check_stages(stages) -> None:
    bad = [s for s in stages if s not in STAGES]
    if bad:
        raise ValueError(f"unknown dump stage(s) {bad}; choose from {list(STAGES)}")


def stage_texts(analysis, plan, pruned, stages, collapse, expand=()) -> dict[str, str]:
    check_stages(stages)
    texts = {}
    for s in stages:
        if s == "captured":
            texts[s] = to_dot(analysis, None, collapse, stage="captured", expand=expand)
        elif s == "groups":
            texts[s] = to_dot(analysis, plan, collapse, expand=expand)
        elif s == "pruned" and pruned is not None:
            texts[s] = pruned_to_dot(pruned, analysis, plan, collapse, expand=expand)
    return texts


def write_dumps(out_dir, analysis, plan=None, pruned=None, stages=STAGES, collapse=True, expand=(),
                formats=("svg", "png"), stacklevel: int = 3) -> dict[str, list[str]]:
    """Write ``<stage>.dot`` for each of ``stages`` to ``out_dir`` (and ``.svg``/``.png`` with Graphviz);
    the ``pruned`` stage needs ``pruned``. Returns ``{stage: [files written]}``; warnings point
    ``stacklevel`` frames up."""
    texts = stage_texts(analysis, plan, pruned, stages, collapse, expand)
    return write_stages(str(out_dir), texts, formats, stacklevel + 1)
