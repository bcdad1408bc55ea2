"""The pipeline for one model: the stages in order, and the guard that no inexact result is returned.

:func:`prepare` captures the model, analyses it and makes the plan; :func:`finish` bakes the masks,
runs the masked model once (constants to fold, the reference to verify against), rewrites, verifies
and reports. :func:`run` does both under the verification guard: when the pruned model differs from the
masked one beyond float rounding, it finds the groups responsible (kept, the rest re-verified,
bisecting), keeps them with the reason, warns, and raises if keeping them cannot restore exactness.
"""
from __future__ import annotations

import warnings
import weakref
from dataclasses import dataclass
from typing import Callable

import torch
import torch.fx as fx

from .analysis import Analysis, analyze
from .analysis.flow import op_name
from .capture import META, capture, restore_call
from .channels import CONST, maps_in
from .dump import write_dumps
from .graph import FakeShapeProp, RealShapeProp, float_dtypes, grad_flags, private_copy, shared_copy
from .interop import carries_masks, take_masks
from .masked import bake_entries, bake_kept, masked_tensors, masked_view, replace_tensors
from .masks import Plan, Selection, make_plan, units_from_masks, units_from_sparsity
from .report import Report, build_report, model_bytes
from .rewrite import rewrite
from .timing import stage
from .verify import (RecordingInterpreter, cast_inputs, copies, differing_nodes, max_abs_diff,
                     model_dtype, output_keeps, relative_diff, tolerance, verification_dtype, verification_mode)


class InexactError(RuntimeError):
    """The pruned model differs from the masked model, and keeping the groups involved did not help."""


@dataclass
class State:
    gm: fx.GraphModule
    inputs: tuple
    analysis: Analysis
    plan: Plan


#: captured graph module -> storages (data_ptr) of the caller's parameters it shares (see capture_model)
_SHARED: "weakref.WeakKeyDictionary[fx.GraphModule, frozenset[int]]" = weakref.WeakKeyDictionary()


def capture_model(model, example_inputs=None, example_kwargs=None) -> tuple[fx.GraphModule, dict[str, torch.Tensor]]:
    """A captured copy of ``model``, without the masks it carried, and those masks. The example
    inputs, flat as the graph takes them, are in ``gm.meta["fxprune_capture"].inputs``.

    The copy shares ``model``'s parameters (:func:`fxprune.graph.shared_copy`): no stage writes into
    them, and :func:`finish` copies what the pruned model still shares. A model that carries masks
    (taken out of a full private copy) or float16/bfloat16 weights (verified in float32 copies) is
    copied whole.

    Example::

        gm, masks = capture_model(apply_masks(model, (x,), sparsity=0.5), (x,))   # gm: the unmasked graph
    """
    if isinstance(model, torch.export.ExportedProgram):
        tensors = list(model.state_dict.values())
        dtype = model_dtype(torch.nn.ParameterList(t for t in tensors if t.is_floating_point()))
        if verification_dtype(dtype) != dtype:   # cast to float32 for verification: copied whole
            return capture(model, example_inputs, example_kwargs), {}
        gm = capture(model, example_inputs, example_kwargs, copy=False)
        _SHARED[gm] = frozenset(t.untyped_storage().data_ptr() for t in tensors)
        return gm, {}
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"expected an nn.Module, fx.GraphModule or torch.export.ExportedProgram, "
                        f"got {type(model).__name__}")
    dtype = model_dtype(model)
    if carries_masks(model) or verification_dtype(dtype) != dtype:
        own = private_copy(model)
        masks = take_masks(own)
        return capture(own, example_inputs, example_kwargs, copy=False), masks
    gm = capture(shared_copy(model), example_inputs, example_kwargs, copy=False)
    _SHARED[gm] = frozenset(p.untyped_storage().data_ptr() for p in model.parameters())
    return gm, {}


def captured_inputs(gm: fx.GraphModule) -> tuple:
    """The example inputs of a captured graph, flat as it takes them."""
    inputs = gm.meta[META].inputs
    if inputs is None:
        raise ValueError("example_inputs is required: a tensor or a tuple of the model's positional inputs "
                         "(and example_kwargs= for keyword inputs)")
    return inputs


def unshare(gm: fx.GraphModule, storages: frozenset[int]) -> None:
    """Copy each tensor of ``gm`` whose storage is one of ``storages`` (the caller's parameters), so the
    result shares nothing with the caller's model."""
    if storages:
        replace_tensors(gm, lambda t: t.detach().clone() if t.untyped_storage().data_ptr() in storages else None)


def prepare(model, example_inputs, masks, sparsity, criterion, prune_bias, prune_outputs, ignore,
            keep_groups: dict[int, str] | None = None, example_kwargs=None, **selection) -> State:
    """Capture, analyse, and plan which units are masked and removed (``keep_groups``: see make_plan)."""
    if sparsity is not None:
        select = Selection(sparsity, criterion, ignore, **selection)
        select.check()
    if masks is not None and sparsity is not None:
        raise ValueError("give either masks= or sparsity=, not both")
    if masks is not None and not isinstance(masks, dict):
        raise ValueError(f"masks must be a dict of tensor name -> bool keep-mask, got {type(masks).__name__}")
    with stage("capture"):
        gm, embedded = capture_model(model, example_inputs, example_kwargs)
    inputs = captured_inputs(gm)
    with stage("analysis"):
        analysis = analyze(gm, inputs, prune_bias=prune_bias, prune_outputs=prune_outputs)
    with stage("saliency"):
        if masks is not None:
            flags = units_from_masks(analysis, masks)
        elif sparsity is not None:
            flags = units_from_sparsity(analysis, gm, select)
        elif embedded:
            flags = units_from_masks(analysis, embedded, strict=False)
        else:
            raise ValueError("nothing to prune: give sparsity= or masks=, or a model that carries masks "
                             "(fxprune.apply_masks, torch.ao's structured pruner, torch.nn.utils.prune)")
    with stage("plan"):
        return State(gm, inputs, analysis, make_plan(analysis, flags, keep_groups))


def finish(state: State, prune_bias: bool, verify: bool = True, reference: bool = False,
           record: bool = False):
    """Bake, rewrite, verify and report ``state`` (whose graph module is changed in place). Returns the
    pruned GraphModule (report in ``meta["fxprune"]``) or, with ``record``, also the masked model's value
    at every node and the names of the nodes where the pruned model departs from it.

    ``reference``: verify against the captured model itself instead of the masked one (dead-channel
    elimination, where masking is claimed to change nothing). float16/bfloat16 models are baked,
    rewritten and verified in float32 and returned in their own dtypes (exact: their values are
    float16/bfloat16 values)."""
    plan, analysis, gm = state.plan, state.analysis, state.gm
    with stage("report"):
        params_before = sum(p.numel() for p in gm.parameters())
        bytes_before = model_bytes(gm)  # parameters + buffers, before baking
    dtype = model_dtype(gm)
    vdtype = verification_dtype(dtype) if verify else dtype
    dtypes = float_dtypes(gm)
    # (op, input node names) of each node as captured, to name where the models part ways
    ops = {n.name: (op_name(n, dict(gm.named_modules())), [a.name for a in n.all_input_nodes])
           for n in gm.graph.nodes} if record else {}
    if vdtype != dtype:
        gm.to(vdtype)
    inputs = cast_inputs(state.inputs, vdtype)
    expected = None
    if verify and reference:
        with stage("verify: masked forward"), verification_mode(gm):
            expected = gm(*copies(inputs))
    with stage("bake"):
        # consumers that read removed channels holding nonzero constants: record their inputs to fold them
        fold_uses = [u for u in analysis.uses if u.site is not None
                     and bool(((u.carry == CONST) & (u.ids >= 0) & plan.removed[u.ids.clamp(min=0)]).any())]
        entries = bake_entries(gm, plan, prune_bias)
    masked_out, recorded, values = expected, {}, {}
    if (verify and expected is None) or fold_uses or record:
        with stage("masked view"):
            masked = masked_view(gm, plan, prune_bias)
        with stage("verify: masked forward"):
            # the masked model: its tensors masked where they are read, as baking would leave them
            recorder = RecordingInterpreter(masked, {u.node.name: u.arg for u in fold_uses}, all_outputs=record,
                                            masks=masked_tensors(entries))
            with verification_mode(masked):
                out = recorder.run(*copies(inputs))
        masked_out = out if masked_out is None else masked_out
        recorded, values = recorder.recorded, recorder.values
    with stage("bake"):
        # masked entries that the rewrite keeps are zeroed in new tensors; removed ones are sliced away
        bake_kept(gm, entries)
    with stage("rewrite"):
        fold = {}
        for u in fold_uses:
            x = recorded[u.node.name]
            # float64 holds any float dtype's values exactly
            values_in = x.movedim(u.dim, -1).reshape(-1, x.shape[u.dim])[0].detach().double()
            removed = torch.zeros(len(u.ids), dtype=torch.bool)
            lab = u.ids >= 0
            removed[lab] = plan.removed[u.ids[lab]]
            fold[u.site] = torch.where(removed, values_in, torch.zeros_like(values_in))
        pruned = rewrite(gm, plan, fold)
        unshare(pruned, _SHARED.pop(gm, frozenset()))
    keeps = output_keeps(plan)
    grads = grad_flags(pruned)   # requires_grad as propagated with grad enabled, for the fresh metadata
    for node in pruned.graph.nodes:  # shapes from the capture are stale
        node.meta.pop("tensor_meta", None)
    # one run of the pruned model on the inputs: its output to verify, fresh shape metadata and its FLOPs
    # (from the shapes, counted as for the original model: fxprune.flops). A float16/bfloat16 model,
    # verified in float32, gets its shapes on fake tensors in its own dtypes after the cast back.
    real = dtype == verification_dtype(dtype)
    if real:
        shapes = RealShapeProp(pruned, grads)
        with stage("pruned forward"), verification_mode(pruned):
            pruned_out = shapes.propagate(*copies(inputs))
        flops_after = shapes.flops
    elif verify:
        with stage("pruned forward"), verification_mode(pruned):
            pruned_out = pruned(*copies(inputs))
    differing = differing_nodes(values, pruned, inputs, analysis.labels_by_name, plan.removed,
                                tolerance(dtype)) if record else []
    if vdtype != dtype:  # back to the model's dtypes; a new tensor (a folded bias) takes the model's
        for name, t in (*pruned.named_parameters(), *pruned.named_buffers()):
            if t.is_floating_point():
                t.data = t.data.to(dtypes.get(name, dtype))
    if not real:
        with stage("flops"):
            shapes = FakeShapeProp(pruned, count_flops=True)
            shapes.propagate(*state.inputs)
            flops_after = shapes.flops
    with stage("report"):
        report: Report = build_report(plan, keeps, prune_bias)
        report.params_before = params_before
        report.params_after = sum(p.numel() for p in pruned.parameters())
        report.bytes_before, report.bytes_after = bytes_before, model_bytes(pruned)
        report.flops_before, report.flops_after = analysis.flops, flops_after
    if verify:
        with stage("verify: compare"):
            report.max_abs_diff = max_abs_diff(masked_out, pruned_out, keeps)
            report.rel_diff = relative_diff(masked_out, pruned_out, keeps)
        report.tolerance = tolerance(dtype)
        report.exact = report.rel_diff <= report.tolerance
        report.verified_dtype = str(vdtype).removeprefix("torch.")
    else:
        report.max_abs_diff = report.rel_diff = None
    if META in pruned.meta:
        report.capture = pruned.meta[META].describe()
    pruned.meta["fxprune"] = report
    if record:
        return pruned, [(name, *ops.get(name, ("", []))) for name in differing]
    return pruned


def run(make_state: Callable[[dict], State], prune_bias: bool, verify: bool = True, reference: bool = False,
        dump_dir=None, stacklevel: int = 3) -> fx.GraphModule:
    """:func:`finish` of ``make_state({})`` under the verification guard (see the module docstring);
    ``make_state(keep_groups)`` prepares the model afresh with those groups kept. Warnings point
    ``stacklevel`` frames above this function (the public entry, its wrapper, the user)."""
    state = make_state({})
    pruned = finish(state, prune_bias, verify, reference)
    if verify and not pruned.meta["fxprune"].exact:
        pruned, state = _restore_exactness(make_state, state, pruned, prune_bias, reference, stacklevel + 2)
    if dump_dir is not None:  # captured/groups/pruned .dot (+ .svg/.png with Graphviz), see fxprune.dump
        write_dumps(dump_dir, state.analysis, state.plan, pruned, stacklevel=stacklevel + 2)
    if META in pruned.meta:   # called as the user calls the model (args/kwargs, a ModelOutput back)
        restore_call(pruned, pruned.meta[META].codegen)
    return pruned


def _restore_exactness(make_state, state: State, pruned, prune_bias: bool, reference: bool, stacklevel: int):
    """Keep the groups that make ``pruned`` inexact: groups whose channels pass through the first nodes
    where the two models part ways are tried first, then a binary search over the rest finds each
    group whose removal breaks exactness (assuming that keeping more groups never breaks it)."""
    first = pruned.meta["fxprune"]
    candidates = [g.index for g in state.analysis.groups if bool(state.plan.removed[[u.root for u in g.units]].any())]
    _, differing = finish(make_state({}), prune_bias, True, reference, record=True)
    analysis = state.analysis
    reason_of: dict[int, str] = {}
    for name, op, inputs in differing:   # the groups a node reads or makes
        for label in [analysis.labels_by_name.get(a) for a in inputs] + [analysis.labels_by_name.get(name)]:
            for cm in maps_in(label):
                ids = cm.ids.reshape(-1)
                for gi in analysis.group_of_element[ids[ids >= 0]].unique().tolist():
                    reason_of.setdefault(gi, f"rewrite not exact at {name}: {op}")
    order = sorted(candidates, key=lambda g: (g not in reason_of, candidates.index(g)))

    def reason(g):
        return reason_of.get(g, "rewrite not exact (pruned != masked with this group removed)")

    cache: dict[frozenset, tuple] = {}

    def attempt(groups) -> tuple:
        key = frozenset(groups)
        if key not in cache:
            st = make_state({g: reason(g) for g in groups})
            cache[key] = (finish(st, prune_bias, True, reference), st)
        return cache[key]

    if not attempt(order)[0].meta["fxprune"].exact:
        where = "; ".join(f"{n} ({op})" for n, op, _ in differing[:3]) or "no single node"
        raise InexactError(
            f"the pruned model differs from the masked model (relative {first.rel_diff:.3g}, tolerance "
            f"{first.tolerance:.2g}), and keeping every pruned group does not restore exactness; it first "
            f"differs at {where}. This is a bug in fxprune or in a registered rule: please report it; "
            "prune(verify=False) returns the result unchecked")
    culprits, rest = [], list(order)
    while not attempt(culprits)[0].meta["fxprune"].exact:
        lo, hi = 1, len(rest)   # the fewest of ``rest`` (in order) that, kept too, restore exactness
        while lo < hi:
            mid = (lo + hi) // 2
            if attempt(culprits + rest[:mid])[0].meta["fxprune"].exact:
                hi = mid
            else:
                lo = mid + 1
        culprits.append(rest[lo - 1])
        rest = rest[lo:]
    pruned, state = attempt(culprits)
    why = "; ".join(f"group {g} ({analysis.groups[g].pattern}): {reason(g)}" for g in culprits)
    warnings.warn(f"fxprune: the pruned model differed from the masked model (relative {first.rel_diff:.3g}, "
                  f"tolerance {first.tolerance:.2g}); kept {len(culprits)} group(s) whole to stay exact: {why}",
                  stacklevel=stacklevel)
    pruned.meta["fxprune"].notes.append(f"verification guard: kept {why}")
    return pruned, state
