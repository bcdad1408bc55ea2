"""The torch.export frontend: models that symbolic tracing cannot follow (Hugging Face transformers,
shape-dependent control flow), ``ExportedProgram``\\ s, and the way back to one.

The captured graph is ``ep.module()``, copied (its tensors are the program's and the user's model's),
lowered to fxprune's vocabulary (:mod:`.aten`) and given flat inputs; the user's calling convention
(pytree specs of args/kwargs and of the output, a ``ModelOutput`` stays one) is kept aside and put
back on the result (:func:`restore_call`). :func:`reexport` turns the pruned graph into an
``ExportedProgram`` with the original signature, parameter names and dynamic dims.
"""
from __future__ import annotations

import io
import logging
from contextlib import contextmanager, redirect_stderr

import torch
import torch.fx as fx
from torch.export import Dim, ShapesCollection
from torch.utils import _pytree as pytree

from ..graph import private_copy, shared_copy
from .aten import lower_aten
from .common import CaptureError, user_frame


@contextmanager
def _quiet_torch_logs():
    """torch.export logs its guards as warnings and prints the graph of a failed attempt to stderr;
    the CaptureError we raise says what failed, in one line."""
    loggers = [logging.getLogger(name) for name in list(logging.root.manager.loggerDict) if name.startswith("torch")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with redirect_stderr(io.StringIO()):
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def export_program(model: torch.nn.Module, args: tuple, kwargs: dict | None) -> torch.export.ExportedProgram:
    """``torch.export.export(model, args, kwargs, strict=False)``, its failure a CaptureError. Every dim
    of every input tensor is ``Dim.AUTO``: export keeps dynamic what the model allows (batch, sequence
    length), so the pruned graph is not tied to the example's sizes."""
    args, kwargs = tuple(args), dict(kwargs or {})
    shapes = ShapesCollection()
    for t in pytree.tree_leaves((args, kwargs)):
        if isinstance(t, torch.Tensor):
            shapes[t] = {d: Dim.AUTO for d in range(t.dim())}
    try:
        with _quiet_torch_logs():
            return torch.export.export(model, args, kwargs, strict=False,
                                       dynamic_shapes=shapes.dynamic_shapes(model, args, kwargs))
    except Exception as e:  # export runs user code: any error is the user's to see
        raise CaptureError(f"torch.export cannot export {type(model).__name__}: {type(e).__name__}: "
                           f"{str(e).strip().splitlines()[0] if str(e).strip() else ''}{user_frame(e)}") from e


def program_module(ep: torch.export.ExportedProgram, share: bool = False) -> fx.GraphModule:
    """A lowered copy of ``ep.module()`` (parameters under their original names). ``share``: it holds
    the program's parameters themselves (:func:`fxprune.graph.shared_copy`, for a pipeline that only
    replaces them), else copies."""
    return lower_aten((shared_copy if share else private_copy)(ep.module()))


def flatten_call(gm: fx.GraphModule, args: tuple, kwargs: dict | None) -> tuple:
    """The flat inputs, in placeholder order, of a call ``gm(*args, **kwargs)`` through ``gm``'s pytree
    calling convention; ``gm`` then takes them directly (plain codegen). Returns the convention's
    codegen, to be put back on the result, and the flat inputs (None when ``args`` and ``kwargs`` are)."""
    codegen = gm.graph._codegen
    in_spec = codegen.pytree_info.in_spec
    flat, spec = pytree.tree_flatten((tuple(args or ()), dict(kwargs or {})))
    if args is None and kwargs is None:
        flat = None
    elif in_spec is not None and spec != in_spec:
        # positional and keyword forms of the same inputs flatten differently: bind by the program's names
        names = [n.target for n in gm.graph.nodes if n.op == "placeholder"]
        bound = dict(zip(names, args))
        bound.update(kwargs or {})
        missing = [n for n in names if n not in bound]
        if missing or len(bound) != len(names):
            raise ValueError(f"example inputs do not match the program's inputs {names}: got {len(args)} "
                             f"positional and {sorted(kwargs or {})} keyword inputs")
        flat = [bound[n] for n in names]
    gm.graph._codegen = fx.graph.CodeGen()
    gm.recompile()
    return codegen, None if flat is None else tuple(flat)


def restore_call(gm: fx.GraphModule, codegen) -> fx.GraphModule:
    """Put the user's calling convention (``codegen`` from :func:`flatten_call`) back on ``gm``."""
    if codegen is not None:
        gm.graph._codegen = codegen
        gm._in_spec, gm._out_spec = codegen.pytree_info.in_spec, codegen.pytree_info.out_spec
        gm.recompile()
    return gm


def dynamic_shapes_of(ep: torch.export.ExportedProgram, args: tuple, kwargs: dict):
    """``dynamic_shapes`` for exporting a call on ``(args, kwargs)`` with ``ep``'s dynamic dims: one
    ``Dim`` per symbol of ``ep``'s inputs, with its range."""
    placeholders = {n.name: n for n in ep.graph.nodes if n.op == "placeholder"}
    user = [placeholders[name].meta.get("val") for name in ep.graph_signature.user_inputs]
    flat = pytree.tree_leaves((tuple(args), dict(kwargs or {})))
    dims: dict = {}
    shapes = ShapesCollection()
    found = False
    for value, t in zip(user, flat):
        if not isinstance(value, torch.Tensor) or not isinstance(t, torch.Tensor):
            continue
        spec = {}
        for d, size in enumerate(value.shape):
            if isinstance(size, torch.SymInt):
                expr = size.node.expr
                if expr.is_Symbol:
                    if expr not in dims:
                        r = ep.range_constraints.get(expr)
                        lo, hi = (_bound(r.lower), _bound(r.upper)) if r is not None else (None, None)
                        dims[expr] = Dim(str(expr), min=max(lo or 0, 0), **({"max": hi} if hi is not None else {}))
                    spec[d] = dims[expr]
                else:
                    spec[d] = Dim.AUTO
        if spec:
            shapes[t] = spec
            found = True
    return shapes if found else None


def _bound(value) -> int | None:
    """A range bound as an int, None when infinite."""
    try:
        return int(value)
    except (TypeError, ValueError, AttributeError, OverflowError):
        return None


def reexport(gm: fx.GraphModule, ep: torch.export.ExportedProgram, args: tuple, kwargs: dict
             ) -> torch.export.ExportedProgram:
    """The pruned graph (with ``ep``'s calling convention restored) as an ExportedProgram with ``ep``'s
    signature and dynamic dims."""
    shapes = dynamic_shapes_of(ep, args, kwargs)
    if shapes is not None:
        shapes = shapes.dynamic_shapes(gm, tuple(args), dict(kwargs or {}))
    try:
        return torch.export.export(gm, tuple(args), dict(kwargs or {}), strict=False, dynamic_shapes=shapes)
    except Exception as e:
        raise CaptureError(f"the pruned graph cannot be exported again: {type(e).__name__}: {e}") from e
