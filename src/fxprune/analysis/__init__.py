"""Analysis: find the channel groups of a captured graph.

Three steps, one module each: :mod:`.flow` runs the graph (on real tensors where that leaves no trace,
else on fake ones) and propagates channel maps through the op rules; :mod:`.groups` joins elements
into units (pruned together) and units into groups; :mod:`.patterns` names each group after the ops its channels flow through. :func:`analyze`
runs all three.

Example::

    analysis = analyze(capture(model), (x,))
    [g.pattern for g in analysis.groups]          # ["conv-relu-conv", ...]
"""
from __future__ import annotations

import contextlib
import io
import logging

import torch
import torch.fx as fx
from torch._subclasses.fake_tensor import DynamicOutputShapeException

from ..timing import stage
from .flow import ChannelFlow, FakeChannelFlow, FlowContext, RealChannelFlow, Site, Use, op_name
from .groups import Analysis, Group, Unit
from .patterns import name_groups

__all__ = ["analyze", "Analysis", "Group", "Unit", "Site", "Use", "FlowContext", "ChannelFlow"]


def analyze(gm: fx.GraphModule, example_inputs, prune_bias: bool = True, prune_outputs: bool = False,
            dead: bool = False) -> Analysis:
    """Run :class:`ChannelFlow` on ``gm`` (which it annotates with shapes) and build the :class:`Analysis`.
    ``dead``: find channels that are zero for every input (see fxprune.eliminate_dead_channels)."""
    options = dict(prune_bias=prune_bias, prune_outputs=prune_outputs, dead=dead)
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(example_inputs) > len(placeholders) or not all(
            isinstance(t, torch.Tensor) or t is None or isinstance(t, (int, float, bool)) for t in example_inputs):
        raise ValueError(f"the model takes {len(placeholders)} inputs ({', '.join(n.name for n in placeholders)}); "
                         f"example_inputs has {len(example_inputs)}")
    quiet = logging.getLogger("torch._subclasses.fake_tensor")
    level = quiet.level
    flow = None
    try:
        # ShapeProp prints a traceback and FakeTensor logs the error before raising; the error below says it
        quiet.setLevel(logging.CRITICAL)
        with contextlib.redirect_stderr(io.StringIO()):
            if RealChannelFlow.can_run(gm, example_inputs):
                try:
                    flow = RealChannelFlow(gm, **options)
                    flow.propagate(*example_inputs)
                except Exception:   # refused, or failing: fake tensors say what failed, as always
                    flow = None
            if flow is None:
                with stage("shapes"):  # fake twins of the parameters
                    flow = FakeChannelFlow(gm, **options)
                flow.propagate(*example_inputs)
    except Exception as e:
        cause = e.__cause__ or e
        node = getattr(flow, "current", None)
        where = f" at node {node.name} ({op_name(node, flow.modules)})" if node is not None else ""
        msg = str(cause).rstrip(". ")
        if isinstance(cause, DynamicOutputShapeException):
            raise ValueError(
                f"the model has an op whose output shape depends on tensor values{where} ({msg}: a boolean mask "
                "index or nonzero). fxprune propagates shapes on fake tensors, which hold no values: index with "
                "integer indices held in a buffer, or register that part as a leaf module with a rule "
                "(fxprune.rules.register)") from e
        raise ValueError(f"running the model on example_inputs failed{where}: "
                         f"{type(cause).__name__}: {msg}. Check the shapes and dtypes of example_inputs.") from e
    finally:
        quiet.setLevel(level)
    analysis = Analysis(gm, flow)
    name_groups(analysis)
    analysis.flops = flow.flops  # of the original model, from the shapes of the run
    return analysis
