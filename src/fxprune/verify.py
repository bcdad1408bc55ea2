"""Verify: run the pruned and the masked model on the same inputs and measure the difference.

Outputs whose channels were pruned (``prune_outputs=True``) are compared on their kept channels.
Both models run in the mode the model was captured in (constants that pruned channels carry through
a BatchNorm differ between train and eval mode, and are folded for the captured mode), under no_grad,
with dropout off and every buffer restored afterwards, so verification changes no BatchNorm statistics.
"""
from __future__ import annotations

import contextlib

import torch
import torch.fx as fx
from torch.utils._pytree import tree_flatten

from .channels import ChannelMap


class RecordingInterpreter(fx.Interpreter):
    """Runs a GraphModule and keeps the first input of the named nodes."""

    def __init__(self, gm: fx.GraphModule, names: set[str]):
        super().__init__(gm)
        self.names, self.recorded = names, {}

    def run_node(self, n):
        if n.name in self.names:
            args, _ = self.fetch_args_kwargs_from_env(n)
            # a copy: an in-place op (relu_, +=) may change the tensor after this node read it
            x = args[0]
            self.recorded[n.name] = x.detach().clone() if isinstance(x, torch.Tensor) else x
        return super().run_node(n)


def copies(inputs) -> tuple:
    """The inputs with their tensors cloned: a model may modify its inputs in place (``relu_`` on x);
    each run must see the same values, and the user's example inputs must stay as they were."""
    return tuple(t.clone() if isinstance(t, torch.Tensor) else t for t in inputs)


_DROPOUT = (torch.nn.Dropout, torch.nn.Dropout1d, torch.nn.Dropout2d, torch.nn.Dropout3d,
            torch.nn.AlphaDropout, torch.nn.FeatureAlphaDropout)


@contextlib.contextmanager
def verification_mode(*models):
    """Captured mode, dropout off, no_grad; buffers (BatchNorm statistics) restored on exit."""
    saved = [[(b, b.detach().clone()) for b in model.buffers()] for model in models]
    dropouts = [m for model in models for m in model.modules() if isinstance(m, _DROPOUT) and m.training]
    for m in dropouts:
        m.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for m in dropouts:
            m.train()
        with torch.no_grad():
            for pairs in saved:
                for b, v in pairs:
                    b.copy_(v)


def output_keeps(plan) -> list:
    """Per flattened graph output: None (unchanged) or (channel dims, kept bool array) for a pruned one."""
    analysis = plan.analysis
    out_node = next(n for n in analysis.gm.graph.nodes if n.op == "output")
    labels = fx.node.map_arg(out_node.args[0], lambda a: analysis.labels.get(a))
    leaves, _ = tree_flatten(labels, is_leaf=lambda x: isinstance(x, ChannelMap) or x is None)
    keeps = []
    for cm in leaves:
        if isinstance(cm, ChannelMap):
            kept = torch.ones(cm.ids.shape, dtype=torch.bool)
            lab = cm.ids >= 0
            kept[lab] = ~plan.removed[cm.ids[lab]]
            keeps.append(None if bool(kept.all()) else (cm.dims, kept))
        else:
            keeps.append(None)
    return keeps


def channels_last(t: torch.Tensor, dims) -> torch.Tensor:
    """Move ``dims`` to the end and merge them: (..., prod(channel dims))."""
    others = [d for d in range(t.dim()) if d not in dims]
    return t.permute(*others, *dims).reshape(*[t.shape[d] for d in others], -1)


def kept_values(t: torch.Tensor, dims, kept: torch.Tensor) -> torch.Tensor:
    """The masked output's values at kept channel positions, in the pruned output's order."""
    return channels_last(t, dims)[..., kept.reshape(-1)]


def max_abs_diff(masked_out, pruned_out, keeps) -> float:
    """max |pruned - masked| over all outputs; pruned outputs are compared on their kept channels."""
    a, _ = tree_flatten(masked_out)
    b, _ = tree_flatten(pruned_out)
    worst = 0.0
    for i, (x, y) in enumerate(zip(a, b)):
        if not isinstance(x, torch.Tensor):
            continue
        k = keeps[i] if i < len(keeps) else None
        if k is not None:
            x, y = kept_values(x, *k), channels_last(y, k[0])
        if x.shape != y.shape:
            raise AssertionError(f"output {i}: pruned shape {tuple(y.shape)} != masked shape {tuple(x.shape)}")
        if x.numel():
            worst = max(worst, float((x.detach().double() - y.detach().double()).abs().max()))
    return worst


def relative_diff(masked_out, pruned_out, keeps) -> float:
    """max |pruned - masked| / max(1, max |masked|): the figure compared against float32 rounding."""
    a, _ = tree_flatten(masked_out)
    scale = max([1.0] + [float(x.detach().abs().max()) for x in a if isinstance(x, torch.Tensor) and x.numel()])
    return max_abs_diff(masked_out, pruned_out, keeps) / scale
