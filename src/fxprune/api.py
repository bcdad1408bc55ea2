"""prune(): the whole pipeline, and PrunePass for torch.fx's PassManager."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.fx as fx
from torch.fx.passes.infra.pass_base import PassResult
from torch.utils.flop_counter import FlopCounterMode

from ._gc import gc_paused
from .analysis import Analysis, analyze
from .capture import FakeShapeProp, capture, normalize_inputs
from .channels import CONST
from .masked import build_masked, masked_view
from .masks import Plan, Selection, make_plan, units_from_masks, units_from_sparsity
from .report import Report, build_report, model_bytes
from .rewrite import rewrite
from .verify import RecordingInterpreter, copies, verification_mode, max_abs_diff, output_keeps, relative_diff


@dataclass
class _State:
    gm: fx.GraphModule
    inputs: tuple
    analysis: Analysis
    plan: Plan


def _prepare(model, example_inputs, masks, sparsity, criterion, prune_bias, prune_outputs, ignore,
             **selection) -> _State:
    inputs = normalize_inputs(example_inputs)
    if sparsity is not None:
        select = Selection(sparsity, criterion, ignore, **selection)
        select.check()
    if masks is not None and sparsity is not None:
        raise ValueError("give either masks= or sparsity=, not both")
    if masks is not None and not isinstance(masks, dict):
        raise ValueError(f"masks must be a dict of tensor name -> bool keep-mask, got {type(masks).__name__}")
    gm, embedded = capture(model)
    analysis = analyze(gm, inputs, prune_bias=prune_bias, prune_outputs=prune_outputs)
    if masks is not None:
        flags = units_from_masks(analysis, masks)
    elif sparsity is not None:
        flags = units_from_sparsity(analysis, gm, select)
    elif embedded:
        flags = units_from_masks(analysis, embedded, strict=False)
    else:
        raise ValueError("nothing to prune: give sparsity= or masks=, or a model that carries masks "
                         "(fxprune.apply_masks, torch.ao's structured pruner, torch.nn.utils.prune)")
    return _State(gm, inputs, analysis, make_plan(analysis, flags))


@gc_paused
def prune(model: torch.nn.Module, example_inputs, sparsity: float | None = None, masks: dict | None = None,
          criterion: str = "l1", prune_bias: bool | None = None, prune_outputs: bool = False,
          ignore=(), layer_sparsity: dict | None = None, global_ranking: bool = False,
          round_to: int = 1, verify: bool = True, dump_dir=None) -> fx.GraphModule:
    """Prune channels of ``model`` and return a new, smaller GraphModule that computes exactly what the
    masked model computes. ``model`` is never modified.

    Example::

        pruned = fxprune.prune(model, (x,), sparsity=0.5)          # l1 saliency, every group
        pruned = fxprune.prune(model, (x,), masks={"fc1.weight": keep})
        print(pruned.meta["fxprune"])                               # the report

    Args:
        example_inputs: a tensor or tuple of the model's positional inputs (shapes are propagated on
            fake tensors; the real inputs are used once more to verify the result).
        sparsity: fraction of each group's channels to prune, in [0, 1).
        masks: bool keep-masks over producers' output rows, keyed by tensor fqn (``"fc1.weight"``).
        criterion: ``"l1"``, ``"l2"`` or ``"fpgm"``.
        prune_bias: pruned channels' biases are zeroed too (their channels are then exactly 0);
            with False the bias stays and its constant is folded into the consumers where exact.
            Default: the setting of the masked model given (``apply_masks(..., prune_bias=...)``),
            else True.
        prune_outputs: let explicit masks change the width of graph outputs.
        ignore: module names (or prefixes) whose output channels are never pruned.
        layer_sparsity: ``{module name or prefix: sparsity}`` for the groups those modules produce.
        global_ranking: rank all groups' channels together (scores normalised per group).
        round_to: kept widths are multiples of this.
        verify: run the masked and the pruned model on ``example_inputs`` and record the difference
            (report.max_abs_diff). False skips the masked model's forward pass unless constants must
            be folded; the report then has no difference.
        dump_dir: write graph dumps of the captured graph, the channel groups and the pruned graph
            there (``captured.dot``, ``groups.dot``, ``pruned.dot``; ``.svg``/``.png`` too when the
            Graphviz ``dot`` binary is installed). See :func:`fxprune.dump`.
    """
    if prune_bias is None:  # a masked model of ours says how it masks
        prune_bias = getattr(model, "meta", {}).get("fxprune_masked", {}).get("prune_bias", True)
    state = _prepare(model, example_inputs, masks, sparsity, criterion, prune_bias, prune_outputs, ignore,
                     layer_sparsity=layer_sparsity, global_ranking=global_ranking, round_to=round_to)
    return _finish(state, prune_bias, verify, dump_dir=dump_dir)


def _finish(state: _State, prune_bias: bool, verify: bool = True, dump_dir=None) -> fx.GraphModule:
    plan, analysis = state.plan, state.analysis
    params_before = sum(p.numel() for p in state.gm.parameters())
    bytes_before = model_bytes(state.gm)  # parameters + buffers, before baking
    # consumers that read removed channels holding nonzero constants: record their inputs to fold them
    fold_uses = [u for u in analysis.uses if u.site is not None
                 and bool(((u.carry == CONST) & (u.ids >= 0) & plan.removed[u.ids.clamp(min=0)]).any())]
    baked = build_masked(state.gm, plan, prune_bias, bake=True)  # state.gm is ours: baked in place
    masked_out, recorded = None, {}
    if verify or fold_uses:
        masked = masked_view(baked, plan, prune_bias)
        recorder = RecordingInterpreter(masked, {u.node.name for u in fold_uses})
        with verification_mode(masked):
            masked_out = recorder.run(*copies(state.inputs))
        recorded = recorder.recorded
    fold = {}
    for u in fold_uses:
        x = recorded[u.node.name]
        values = x.movedim(u.dim, -1).reshape(-1, x.shape[u.dim])[0].detach().float()
        removed = torch.zeros(len(u.ids), dtype=torch.bool)
        lab = u.ids >= 0
        removed[lab] = plan.removed[u.ids[lab]]
        fold[u.site] = torch.where(removed, values, torch.zeros_like(values))
    pruned = rewrite(baked, plan, fold)
    keeps = output_keeps(plan)
    for node in pruned.graph.nodes:  # shapes from the capture are stale
        node.meta.pop("tensor_meta", None)
    # fresh shape metadata and FLOPs on fake tensors, counted as for the original model
    shapes = FakeShapeProp(pruned)
    with FlopCounterMode(display=False) as after:
        shapes.propagate(*state.inputs)
    if verify:
        with verification_mode(pruned):
            pruned_out = pruned(*copies(state.inputs))
    report: Report = build_report(plan, keeps, prune_bias)
    report.params_before = params_before
    report.params_after = sum(p.numel() for p in pruned.parameters())
    report.bytes_before, report.bytes_after = bytes_before, model_bytes(pruned)
    report.flops_before, report.flops_after = analysis.flops, after.get_total_flops()
    if verify:
        report.max_abs_diff = max_abs_diff(masked_out, pruned_out, keeps)
        report.rel_diff = relative_diff(masked_out, pruned_out, keeps)
    else:
        report.max_abs_diff = report.rel_diff = None
    pruned.meta["fxprune"] = report
    if dump_dir is not None:  # captured/groups/pruned .dot (+ .svg/.png with Graphviz), see fxprune.dump
        from .dump import dump_state
        dump_state(state, pruned, dump_dir)
    return pruned


@gc_paused
def eliminate_dead_channels(model: torch.nn.Module, example_inputs) -> fx.GraphModule:
    """Remove every channel that is zero for every input, and return a smaller GraphModule with the
    same output as ``model`` (which is not modified).

    A channel is dead when all its producers' weight rows and biases are zero, or when a BatchNorm
    (GroupNorm, depthwise conv) with zero weight and bias for it zeroes it, and it reaches every
    consumer through ops that keep zeros. Useful after network-slimming training or after
    ``torch.nn.utils.prune``; one channel of a group whose channels are all dead stays.

    Example::

        smaller = fxprune.eliminate_dead_channels(model, (x,))
        assert torch.allclose(smaller(x), model(x))
    """
    inputs = normalize_inputs(example_inputs)
    gm, _ = capture(model)
    analysis = analyze(gm, inputs, prune_bias=True, dead=True)
    flags = torch.zeros(analysis.n_elements, dtype=torch.bool)
    for g in analysis.groups:
        dead = [u for u in g.units if u.blocked is None]
        for u in dead[1:] if len(dead) == g.width else dead:
            flags[u.elements] = True
    # masking dead channels (prune_bias=True) changes no value the model computes: the masked model
    # is the model itself, and the pruned model equals it
    return _finish(_State(gm, inputs, analysis, make_plan(analysis, flags)), prune_bias=True)


class PrunePass:
    """:func:`prune` as a torch.fx pass: GraphModule in, ``PassResult`` out.

    Example::

        from torch.fx.passes.infra.pass_manager import PassManager
        pm = PassManager([fxprune.PrunePass(sparsity=0.5, example_inputs=(x,)), other_pass])
        result = pm(torch.fx.symbolic_trace(model))
    """

    def __init__(self, example_inputs, **kwargs):
        self.example_inputs = example_inputs
        self.kwargs = kwargs

    def __call__(self, gm: fx.GraphModule) -> PassResult:
        if "fxprune" in getattr(gm, "meta", {}):  # already pruned (a PassManager running to a fixed point)
            return PassResult(gm, False)
        return PassResult(prune(gm, self.example_inputs, **self.kwargs), True)
