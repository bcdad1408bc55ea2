"""The symbolic-trace frontend: ``torch.fx``'s tracer, with fxprune's rule modules as leaves."""
from __future__ import annotations

import torch.fx as fx
import torch.nn as nn

from .. import rules
from .common import CaptureError, user_frame


class Tracer(fx.Tracer):
    """torch.fx's tracer; modules with a registered fxprune rule are leaves as well."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return rules.is_leaf_type(m) or super().is_leaf_module(m, qualname)


def symbolic_trace(model: nn.Module) -> fx.GraphModule:
    """``model`` traced by :class:`Tracer` (a GraphModule sharing ``model``'s modules and tensors)."""
    try:
        graph = Tracer().trace(model)
    except Exception as e:  # tracing runs user code: any error is the user's to see
        raise CaptureError(
            f"torch.fx cannot trace {type(model).__name__}: {type(e).__name__}: {e}{user_frame(e)}. "
            "Make that code traceable (no Python control flow on tensor values), or register a rule for "
            "the module containing it so it stays a leaf (fxprune.rules.register)."
        ) from e
    return fx.GraphModule(model, graph, class_name=type(model).__name__)
