"""Dumps: see what the pass found and did.

- :func:`to_dot`: the captured graph as Graphviz DOT, channel groups drawn as coloured outlines with
  a legend (pattern, width before -> after), barriers in red with the reason, module hierarchy
  collapsed into boxes (``layer1.0`` as one node) unless ``collapse=False``.
- :func:`write_dumps`: ``captured.dot``, ``groups.dot`` and ``pruned.dot`` in a folder (and
  ``.svg``/``.png`` when the Graphviz ``dot`` binary is on PATH); what ``fxprune.dump(...)`` and
  ``fxprune.prune(..., dump_dir=DIR)`` write.
- :func:`to_networkx`: the channel-dependency graph (sites, groups, barriers) for your own analysis.
- :func:`plot_widths`: per-layer channel counts before and after pruning, as a bar chart.

One module each: ``style`` (colours, escaping), ``records`` (one record per fx node), ``layout``
(boxes for module hierarchy), ``dot`` (DOT text and files), ``digraph`` (networkx), ``widths``.

Example::

    pruned = fxprune.prune(model, (x,), sparsity=0.5, dump_dir="dumps")   # dumps/groups.svg, ...
    fxprune.dump(model, (x,), "dumps", sparsity=0.5)                        # the same, by itself
    fxprune.plot_widths(pruned, "widths.svg")

    from fxprune.analysis import analyze
    from fxprune.capture import capture
    analysis = analyze(capture(model), (x,))          # the channel analysis of a model
    from fxprune.dump import to_dot
    text = to_dot(analysis, collapse=False)
    g = fxprune.to_networkx(analysis)

``fxprune.dump`` is the function (:func:`fxprune.api.dump`); this package is
``sys.modules["fxprune.dump"]`` (``from fxprune.dump import to_dot`` works as usual).
"""
from __future__ import annotations

from .digraph import to_networkx
from .dot import STAGES, check_stages, pruned_to_dot, stage_texts, to_dot, write_dumps, write_stages
from .style import group_color
from .widths import plot_widths

__all__ = ["to_dot", "pruned_to_dot", "write_dumps", "stage_texts", "write_stages", "check_stages", "to_networkx", "plot_widths", "group_color", "STAGES"]
