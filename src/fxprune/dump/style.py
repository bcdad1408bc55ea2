"""Colours and text escaping shared by every picture."""
from __future__ import annotations

import colorsys
import textwrap

# Distinct colours that read on white and as outlines; red is kept for barriers. Past these, evenly
# spaced hues (every node also names its groups as text, so a repeated colour is never ambiguous).
_PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22",
            "#393b79", "#e6550d", "#31a354", "#756bb1", "#637939", "#843c39", "#3182bd", "#7b4173",
            "#8c6d31", "#00a087", "#fdae6b", "#6baed6"]
_BARRIER = "#d62728"
_BARRIER_FILL = "#fde0dd"
_FONT = "Helvetica"
_MAX_OUTLINES = 5


def group_color(i: int) -> str:
    """The colour of group ``i`` in every dump."""
    if i < len(_PALETTE):
        return _PALETTE[i]
    h = ((i - len(_PALETTE)) * 0.618034) % 1.0
    r, g, b = colorsys.hsv_to_rgb(h, 0.75, 0.75)
    return f"#{int(r * 255):02x}{int(g * 255):02x}{int(b * 255):02x}"


def _text_on(color: str) -> str:
    r, g, b = (int(color[i:i + 2], 16) for i in (1, 3, 5))
    return "#000000" if 0.299 * r + 0.587 * g + 0.114 * b > 150 else "#ffffff"


def _tint(color: str, amount: float = 0.88) -> str:
    r, g, b = (int(color[i:i + 2], 16) for i in (1, 3, 5))
    r, g, b = (int(c + (255 - c) * amount) for c in (r, g, b))
    return f"#{r:02x}{g:02x}{b:02x}"


def _h(s) -> str:
    """Escape for Graphviz HTML-like labels."""
    return str(s).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def _q(s) -> str:
    """A DOT double-quoted string."""
    return '"' + str(s).replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ") + '"'


def _wrap(s: str, width: int, seps: str = " ") -> list[str]:
    """Wrap ``s`` at ``width`` characters, preferring to break after one of ``seps``."""
    if len(s) <= width:
        return [s]
    if seps == " ":
        return textwrap.wrap(s, width, break_long_words=True, break_on_hyphens=False) or [s]
    lines, line = [], ""
    token = ""
    for ch in s:
        token += ch
        if ch in seps:
            if line and len(line) + len(token) > width:
                lines.append(line)
                line = ""
            line += token
            token = ""
    if token:
        if line and len(line) + len(token) > width:
            lines.append(line)
            line = ""
        line += token
    if line:
        lines.append(line)
    return lines


def _arrow(before: int, after: int | None) -> str:
    return str(before) if after is None or after == before else f"{before}→{after}"
