"""Capture: the model as a torch.fx GraphModule of its own, whatever the user handed in.

One entry, :func:`capture`; one module per frontend behind it (``symbolic``: torch.fx's symbolic
trace; ``export``: torch.export, with ``aten`` lowering its ATen ops to the calls fxprune's rules
know). Capture knows nothing of masks: a model that carries them is read by :mod:`fxprune.interop`
before it is captured.

The captured GraphModule takes flat inputs (one per placeholder); ``gm.meta["fxprune_capture"]``
(:class:`Captured`) says which frontend made it, holds the example inputs in that flat form, and the
user's calling convention that :func:`restore_call` puts back on the result.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
import torch.fx as fx
import torch.nn as nn

from ..graph import normalize_inputs, private_copy
from .aten import is_aten_graph, lower_aten
from .common import CaptureError
from .export import export_program, flatten_call, program_module, reexport, restore_call
from .symbolic import symbolic_trace

__all__ = ["capture", "CaptureError", "Captured", "restore_call", "reexport", "META"]

META = "fxprune_capture"


@dataclass
class Captured:
    """How a graph was captured: ``frontend`` ("symbolic_trace", "torch.export", "graph module",
    "exported program"), the example ``inputs`` in placeholder order (None if none were given), the
    user's calling convention (``codegen``, None when the graph takes its inputs as they are) and, for
    a fallback, why symbolic tracing was not used."""

    frontend: str
    inputs: tuple | None
    codegen: object = None
    fallback: str | None = None

    def describe(self) -> str:
        return self.frontend + (f" (symbolic trace failed: {self.fallback})" if self.fallback else "")


def _bind(fn, args: tuple, kwargs: dict) -> tuple:
    """``args``/``kwargs`` of a call to ``fn`` as positional inputs, defaults filled in."""
    sig = inspect.signature(fn)
    if any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in sig.parameters.values()):
        raise CaptureError("example_kwargs need named parameters: forward takes *args or **kwargs")
    bound = sig.bind(*args, **kwargs)
    bound.apply_defaults()
    return tuple(bound.arguments.values())


def _record(gm: fx.GraphModule, frontend: str, args, kwargs, fallback=None) -> fx.GraphModule:
    codegen, inputs = None, None if args is None else normalize_inputs(args)
    if isinstance(gm.graph._codegen, fx.graph._PyTreeCodeGen):
        codegen, inputs = flatten_call(gm, inputs, kwargs)
    elif kwargs:
        inputs = _bind(gm.forward, inputs or (), kwargs)
    gm.meta[META] = Captured(frontend, inputs, codegen, fallback)
    return gm


def capture(model, example_inputs=None, example_kwargs: dict | None = None, copy: bool = True) -> fx.GraphModule:
    """A GraphModule of ``model``'s computation that the pipeline may change at will.

    ``model`` may be an ``nn.Module`` (traced symbolically; if that fails and example inputs are
    given, exported with ``torch.export.export(..., strict=False)``), a GraphModule (taken as it is;
    an ATen graph from ``ep.module()`` or ``make_fx`` is lowered) or an ``ExportedProgram``
    (example inputs default to ``ep.example_inputs``). ``copy=True`` works on a private copy
    (:func:`fxprune.graph.private_copy`), so ``model`` is never touched; ``copy=False`` when ``model``
    already is one (an ExportedProgram's parameters are then shared, not copied).

    Example::

        gm = capture(model)
        analysis = fxprune.analysis.analyze(gm, (x,))
        gm = capture(llama, example_kwargs={"input_ids": ids})      # torch.export, flat inputs:
        analysis = fxprune.analysis.analyze(gm, gm.meta["fxprune_capture"].inputs)
    """
    if isinstance(model, torch.export.ExportedProgram):
        if example_inputs is None and example_kwargs is None and model.example_inputs is not None:
            example_inputs, example_kwargs = model.example_inputs
        return _record(program_module(model, share=not copy), "exported program", example_inputs, example_kwargs)
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected an nn.Module, fx.GraphModule or torch.export.ExportedProgram, "
                        f"got {type(model).__name__}")
    if copy:
        model = private_copy(model)
    if isinstance(model, fx.GraphModule):
        if is_aten_graph(model):
            lower_aten(model)
        return _record(model, "graph module", example_inputs, example_kwargs)
    try:
        gm = symbolic_trace(model)
    except CaptureError as traced:
        if example_inputs is None and example_kwargs is None:
            raise
        try:
            ep = export_program(model, normalize_inputs(example_inputs) if example_inputs is not None else (),
                                example_kwargs)
        except CaptureError as exported:
            raise CaptureError(f"{type(model).__name__} cannot be captured. {traced} | And {exported}") from exported
        # the exported module is ``model``'s own copy, or the caller's model shared as capture_model
        # shares it: its parameters are not copied again
        return _record(program_module(ep, share=True), "torch.export", example_inputs, example_kwargs,
                       fallback=str(traced))
    return _record(gm, "symbolic_trace", example_inputs, example_kwargs)
