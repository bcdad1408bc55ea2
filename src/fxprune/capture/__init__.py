"""Capture: the model as a torch.fx GraphModule of its own, whatever the user handed in.

One entry, :func:`capture`; one module per frontend behind it (``symbolic``: torch.fx's symbolic
trace). Capture knows nothing of masks: a model that carries them is read by :mod:`fxprune.interop`
before it is captured.
"""
from __future__ import annotations

import torch.fx as fx
import torch.nn as nn

from ..graph import private_copy
from .common import CaptureError
from .symbolic import symbolic_trace

__all__ = ["capture", "CaptureError"]


def capture(model: nn.Module, copy: bool = True) -> fx.GraphModule:
    """A GraphModule of ``model``'s computation that the pipeline may change at will.

    ``copy=True`` works on a private copy (:func:`fxprune.graph.private_copy`), so ``model`` is never
    touched; ``copy=False`` when ``model`` already is one. A GraphModule is taken as it is (no
    retrace).

    Example::

        gm = capture(model)
        analysis = fxprune.analysis.analyze(gm, (x,))
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected an nn.Module or fx.GraphModule, got {type(model).__name__}")
    if copy:
        model = private_copy(model)
    if isinstance(model, fx.GraphModule):
        return model
    return symbolic_trace(model)
