"""The symbolic-trace frontend: ``torch.fx``'s tracer, with fxprune's rule modules as leaves."""
from __future__ import annotations

import torch.fx as fx
import torch.nn as nn

from .. import rules
from .common import CaptureError, user_frame


class Tracer(fx.Tracer):
    """torch.fx's tracer; modules with a registered fxprune rule are leaves as well. A subclass of a
    module with a rule that computes something else (its own forward: timm's Conv2dSame, an nn.Conv2d
    that pads by the input's size first) is traced through; if its forward cannot be traced it stays a
    leaf without a rule, a barrier that keeps its channels (it was run, not understood)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._untraceable: dict[int, bool] = {}

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        rule = rules.module_rule(m)
        if rule is not None:   # a rule with leaf=False: traced through (nn.RMSNorm into F.rms_norm)
            return rule.leaf
        if rules.overridden_base(m) is not None:
            if id(m) not in self._untraceable:
                try:
                    Tracer().trace(m)
                    self._untraceable[id(m)] = False
                except Exception:
                    self._untraceable[id(m)] = True
            if self._untraceable[id(m)]:
                return True
        return super().is_leaf_module(m, qualname)


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
