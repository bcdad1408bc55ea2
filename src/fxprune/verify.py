"""Verify: run the pruned and the masked model on the same inputs and measure the difference.

Outputs whose channels were pruned (``prune_outputs=True``) are compared on their kept channels.
Both models run in the mode the model was captured in (constants that pruned channels carry through
a BatchNorm differ between train and eval mode, and are folded for the captured mode), under no_grad,
with dropout off and every buffer restored afterwards, so verification changes no BatchNorm statistics.
"""
from __future__ import annotations

import contextlib
import math

import torch
import torch.fx as fx
from torch.utils._pytree import tree_flatten

from .channels import ChannelMap
from .graph import buffers_restored, call_with


class RecordingInterpreter(fx.Interpreter):
    """Runs a GraphModule and keeps one input of the named nodes (``recorded``; ``names``: node name ->
    argument index) and, with ``all_outputs``, every node's tensor output (``values``, to find where two
    models part ways).

    ``masks``: id(tensor) -> (tensor, [(keep, axis), ...]) (:func:`fxprune.masked.masked_tensors`):
    those tensors are read masked (by modules called, through :func:`fxprune.graph.call_with`, and by
    ``get_attr``), with the values baking would have written into them, which are not touched."""

    def __init__(self, gm: fx.GraphModule, names: dict[str, int], all_outputs: bool = False,
                 masks: dict | None = None):
        super().__init__(gm)
        self.names, self.all_outputs = names, all_outputs
        self.recorded: dict[str, object] = {}
        self.values: dict[str, torch.Tensor] = {}
        self.masks = masks or {}

    def _read(self, t):
        """``t`` masked, made at each read and dropped after the op: one masked weight at a time."""
        if not isinstance(t, torch.Tensor) or id(t) not in self.masks:
            return t
        for keep, axis in self.masks[id(t)][1]:
            shape = [1] * t.dim()
            shape[axis] = -1
            t = t * keep.reshape(shape).to(t.dtype)
        return t

    def get_attr(self, target, args, kwargs):
        return self._read(super().get_attr(target, args, kwargs))

    def call_module(self, target, args, kwargs):
        module = self.fetch_attr(target)
        if self.masks:
            state = {name: self._read(t) for name, t in (*module.named_parameters(remove_duplicate=False),
                                                         *module.named_buffers(remove_duplicate=False))
                     if id(t) in self.masks}
            if state:
                return call_with(module, state, args, kwargs)
        return super().call_module(target, args, kwargs)

    def run_node(self, n):
        # copies: an in-place op (relu_, +=) may change a tensor after this node read or made it
        if n.name in self.names:
            args, _ = self.fetch_args_kwargs_from_env(n)
            x = args[self.names[n.name]]
            self.recorded[n.name] = x.detach().clone() if isinstance(x, torch.Tensor) else x
        out = super().run_node(n)
        if self.all_outputs and isinstance(out, torch.Tensor) and n.op != "output":
            self.values[n.name] = out.detach().clone()
        return out


def copies(inputs) -> tuple:
    """The inputs with their tensors cloned: a model may modify its inputs in place (``relu_`` on x);
    each run must see the same values, and the user's example inputs must stay as they were."""
    return tuple(t.clone() if isinstance(t, torch.Tensor) else t for t in inputs)


_DROPOUT = (torch.nn.Dropout, torch.nn.Dropout1d, torch.nn.Dropout2d, torch.nn.Dropout3d,
            torch.nn.AlphaDropout, torch.nn.FeatureAlphaDropout)


@contextlib.contextmanager
def verification_mode(*models):
    """Captured mode, dropout off, no_grad; buffers (BatchNorm statistics) restored on exit."""
    dropouts = [m for model in models for m in model.modules() if isinstance(m, _DROPOUT) and m.training]
    for m in dropouts:
        m.eval()
    try:
        with buffers_restored(*models), torch.no_grad():
            yield
    finally:
        for m in dropouts:
            m.train()


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
    """max |pruned - masked| / max |masked|: the difference relative to the output's own magnitude (0 when
    both are 0; inf when only the masked output is 0). A floor such as max(1, ...) would let a wrong
    rewrite pass on a model whose outputs are small."""
    a, _ = tree_flatten(masked_out)
    scale = max([0.0] + [float(x.detach().abs().max()) for x in a if isinstance(x, torch.Tensor) and x.numel()])
    diff = max_abs_diff(masked_out, pruned_out, keeps)
    if scale == 0.0:
        return 0.0 if diff == 0.0 else math.inf
    return diff / scale


#: dtypes whose models are verified in float32 copies: the rewrite's exactness does not depend on the
#: dtype, and half-precision rounding (a 1e-2 relative step) would hide a wrong rewrite
UPCAST = (torch.float16, torch.bfloat16)


def verification_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in UPCAST else dtype


def tolerance(dtype: torch.dtype) -> float:
    """The relative difference (see :func:`relative_diff`) that float rounding explains: 64 eps of the
    dtype the models are verified in (float32: 7.6e-6, float64: 1.4e-14). Measured differences of exact
    rewrites are 1-8 eps on the zoos; a wrong rewrite is orders of magnitude above."""
    return 64 * torch.finfo(verification_dtype(dtype)).eps


def model_dtype(module: torch.nn.Module) -> torch.dtype:
    """The most common dtype of ``module``'s floating parameters and buffers (float32 without any)."""
    counts: dict[torch.dtype, int] = {}
    for t in (*module.parameters(), *module.buffers()):
        if t.is_floating_point():
            counts[t.dtype] = counts.get(t.dtype, 0) + t.numel()
    return max(counts, key=counts.get) if counts else torch.float32


def cast_inputs(inputs: tuple, dtype: torch.dtype) -> tuple:
    """Floating tensors of ``inputs`` in ``dtype`` (others as they are)."""
    return tuple(t.to(dtype) if isinstance(t, torch.Tensor) and t.is_floating_point() else t for t in inputs)


def differing_nodes(masked_values: dict, pruned: fx.GraphModule, inputs: tuple, labels_by_name: dict,
                    removed: torch.Tensor, tol: float) -> list[str]:
    """The nodes of ``pruned``, in graph order, whose output differs from the masked model's (on the
    kept channels) by more than ``tol`` relative to its magnitude. Nodes that have no counterpart of a
    comparable shape are skipped."""
    rec = RecordingInterpreter(pruned, {}, all_outputs=True)
    with verification_mode(pruned):
        rec.run(*copies(inputs))
    out = []
    for node in pruned.graph.nodes:
        m, p = masked_values.get(node.name), rec.values.get(node.name)
        if m is None or p is None:
            continue
        cmap = labels_by_name.get(node.name)
        if m.shape != p.shape and isinstance(cmap, ChannelMap) and cmap.ndim == m.dim():
            kept = torch.ones(cmap.ids.shape, dtype=torch.bool)
            lab = cmap.ids >= 0
            kept[lab] = ~removed[cmap.ids[lab]]
            m, p = kept_values(m, cmap.dims, kept), channels_last(p, cmap.dims)
        if m.shape != p.shape or not m.is_floating_point() or m.numel() == 0:
            continue
        scale = float(m.abs().max())
        diff = float((m.double() - p.double()).abs().max())
        if diff > tol * scale or (scale == 0.0 and diff > 0.0):
            out.append(node.name)
    return out
