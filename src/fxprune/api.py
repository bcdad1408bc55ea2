"""The public entry points, on top of the pipeline: :func:`prune`, :func:`apply_masks`,
:func:`update_masks`, :func:`eliminate_dead_channels`, :func:`find_patterns`, :func:`dump`,
:func:`measure_latency`, and :class:`PrunePass` for torch.fx's PassManager. No stage imports this
module.

The pipeline: capture -> analysis -> saliency -> masks (the plan) -> masked -> rewrite -> verify ->
report (and dumps).
"""
from __future__ import annotations

import functools
import gc
import inspect
import warnings

import torch
import torch.fx as fx
from torch.fx.passes.infra.pass_base import PassResult

from .analysis import analyze
from .capture import META, reexport, restore_call
from .dump import STAGES, check_stages, stage_texts, write_stages
from .graph import normalize_inputs
from .masked import build_masked, write_masks
from .masks import Selection, make_plan, units_from_masks, units_from_sparsity
from .measure import time_pair
from .pipeline import State, capture_model, captured_inputs, finish, prepare, run


def gc_paused(fn):
    """Run ``fn`` with Python's cyclic garbage collector paused, then collect the young generation.

    The pass allocates many small long-lived objects (fx nodes, fake tensors, channel units), which
    would trigger a full collection in the middle of it: that scans every object of the process
    (about 0.15 s with torch imported) and finds nothing of ours to free. Collecting the young
    generation afterwards frees the pass's own cyclic garbage (discarded graph copies) at once."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if not gc.isenabled():
            return fn(*args, **kwargs)
        gc.disable()
        try:
            return fn(*args, **kwargs)
        finally:
            gc.enable()
            gc.collect(0)
    return wrapper


@gc_paused
def prune(model, example_inputs=None, sparsity: float | None = None, masks: dict | None = None,
          criterion: str = "l1", prune_bias: bool | None = None, prune_outputs: bool = False,
          ignore=(), layer_sparsity: dict | None = None, global_ranking: bool = False,
          round_to: int = 1, verify: bool = True, dump_dir=None, example_kwargs: dict | None = None):
    """Prune channels of ``model`` and return a new, smaller GraphModule that computes exactly what the
    masked model computes. ``model`` is never modified.

    Example::

        pruned = fxprune.prune(model, (x,), sparsity=0.5)          # l1 saliency, every group
        pruned = fxprune.prune(model, (x,), masks={"fc1.weight": keep})
        print(pruned.meta["fxprune"])                               # the report

    ``model`` may be an ``nn.Module`` (traced symbolically, or exported with torch.export when that
    fails: Hugging Face transformers), a GraphModule (``ep.module()`` and ``make_fx`` graphs too) or a
    ``torch.export.ExportedProgram``, for which an ExportedProgram comes back: same signature,
    parameter names and dynamic dims, the report in ``result.graph_module.meta["fxprune"]``::

        pruned_ep = fxprune.prune(torch.export.export(llama, (), {"input_ids": ids}), sparsity=0.5)

    Args:
        example_inputs: a tensor or tuple of the model's positional inputs (shapes are propagated on
            fake tensors; the real inputs are used once more to verify the result). For an
            ExportedProgram, ``ep.example_inputs`` by default.
        example_kwargs: the model's keyword inputs (``{"input_ids": ids}``), as torch.export takes them.
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
    pruned = run(lambda keep: prepare(model, example_inputs, masks, sparsity, criterion, prune_bias, prune_outputs,
                                      ignore, keep, example_kwargs, layer_sparsity=layer_sparsity,
                                      global_ranking=global_ranking, round_to=round_to),
                 prune_bias, verify, dump_dir=dump_dir)
    return _as_given(model, pruned, example_inputs, example_kwargs)


def _as_given(model, pruned: fx.GraphModule, example_inputs, example_kwargs):
    """The result in the form the model came: an ExportedProgram for an ExportedProgram (the report in
    its ``graph_module.meta["fxprune"]``), else the GraphModule."""
    if not isinstance(model, torch.export.ExportedProgram):
        return pruned
    if example_inputs is None and example_kwargs is None:
        example_inputs, example_kwargs = model.example_inputs
    args = normalize_inputs(example_inputs) if example_inputs is not None else ()
    program = reexport(pruned, model, args, example_kwargs or {})
    program.graph_module.meta["fxprune"] = pruned.meta["fxprune"]
    return program


@gc_paused
def eliminate_dead_channels(model, example_inputs=None, example_kwargs: dict | None = None):
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
    def make_state(keep_groups):
        gm, _ = capture_model(model, example_inputs, example_kwargs)
        inputs = captured_inputs(gm)
        analysis = analyze(gm, inputs, prune_bias=True, dead=True)
        flags = torch.zeros(analysis.n_elements, dtype=torch.bool)
        for g in analysis.groups:
            dead = [u for u in g.units if u.blocked is None]
            for u in dead[1:] if len(dead) == g.width else dead:
                flags[u.elements] = True
        return State(gm, inputs, analysis, make_plan(analysis, flags, keep_groups))

    # masking dead channels changes no value the model computes: verified against the model itself
    return _as_given(model, run(make_state, prune_bias=True, reference=True), example_inputs, example_kwargs)


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


@gc_paused
def apply_masks(model, example_inputs=None, masks=None, sparsity=None, criterion: str = "l1",
                prune_bias: bool = True, prune_outputs: bool = False, ignore=(), example_kwargs: dict | None = None,
                **selection) -> fx.GraphModule:
    """The masked model: a new GraphModule computing ``model`` with the pruned channels held at zero.

    Example::

        masked = fxprune.apply_masks(model, (x,), sparsity=0.5)
        opt = torch.optim.SGD(masked.parameters(), lr=0.01)
        ...                                   # fine-tune: pruned channels stay zero
        fxprune.update_masks(masked, sparsity=0.7)   # re-score, in place
        pruned = fxprune.prune(masked, (x,))  # the masks come with the model
    """
    state = prepare(model, example_inputs, masks, sparsity, criterion, prune_bias, prune_outputs, ignore,
                    example_kwargs=example_kwargs, **selection)
    masked = build_masked(state.gm, state.plan, prune_bias)
    masked.meta["fxprune_masked"] = {"example_inputs": state.inputs, "prune_bias": prune_bias,
                                     "prune_outputs": prune_outputs}
    return restore_call(masked, masked.meta[META].codegen)


@gc_paused
def update_masks(masked: fx.GraphModule, sparsity: float, criterion: str = "l1", ignore=(), **selection) -> dict:
    """Re-score the masked model's current (masked) weights and write new masks into it, in place.

    Returns the new masks keyed by tensor fqn. Channels masked before score zero, so at a higher
    sparsity they stay pruned.
    """
    info = getattr(masked, "meta", {}).get("fxprune_masked")
    if info is None:
        raise ValueError("update_masks expects a model returned by fxprune.apply_masks")
    select = Selection(sparsity, criterion, ignore, **selection)
    select.check()
    gm, _ = capture_model(masked)
    analysis = analyze(gm, info["example_inputs"], info["prune_bias"], info["prune_outputs"])
    flags = units_from_sparsity(analysis, masked, select)
    plan = make_plan(analysis, flags)
    write_masks(masked, plan, info["prune_bias"])
    return plan.tensor_masks()


@gc_paused
def find_patterns(model, example_inputs=None, prune_bias: bool = True, prune_outputs: bool = False,
                  example_kwargs: dict | None = None) -> list[dict]:
    """The channel groups of ``model``, each with its pattern name, producers, width and whether it
    can be pruned (and if not, why). ``model`` is not modified.

    Example::

        for g in fxprune.find_patterns(model, (x,)):
            print(g["pattern"], g["producers"], g["width"], g["blocked"])
    """
    gm, _ = capture_model(model, example_inputs, example_kwargs)
    analysis = analyze(gm, captured_inputs(gm), prune_bias, prune_outputs)
    return [
        {"pattern": g.pattern, "producers": [s.fqn(next(iter(s.tensors))) for s in g.producers],
         "width": g.width, "prunable": sum(1 for u in g.units if u.blocked is None), "blocked": g.blocked}
        for g in analysis.groups
    ]


def dump(model_or_graph_module, example_inputs, out_dir, stages=STAGES, pruned=None, collapse=True,
         formats=("svg", "png"), expand=(), example_kwargs: dict | None = None, **prune_kwargs) -> dict[str, list[str]]:
    """Write ``captured.dot``, ``groups.dot`` and ``pruned.dot`` to ``out_dir`` (and ``.svg`` and
    ``.png`` of each when the Graphviz ``dot`` binary is found; otherwise one warning says how to
    install it). The model is not modified.

    What is pruned: ``pruned`` (a GraphModule returned by :func:`fxprune.prune` for this model), or
    ``prune_kwargs`` as for :func:`fxprune.prune` (``sparsity=0.5``, ``masks=...``), or the masks the
    model carries (:func:`fxprune.apply_masks`, torch.ao, torch.nn.utils.prune); with none of them,
    the groups are drawn without a plan and the ``pruned`` stage is skipped.

    Example::

        fxprune.dump(model, (x,), "dumps", sparsity=0.5)       # dumps/groups.svg, ...
        fxprune.dump(model, (x,), "dumps", stages=("groups",), collapse=False)
        fxprune.dump(model, (x,), "dumps", sparsity=0.5, expand=("layer2.0",))   # one block drawn open

    Returns ``{stage: [files written]}``.
    """
    prune_kwargs.pop("dump_dir", None)
    check_stages(stages)
    if isinstance(pruned, torch.export.ExportedProgram):   # what prune() returned for a program
        pruned = pruned.graph_module
    gm = embedded = None
    if pruned is None and not prune_kwargs:   # masks the model carries are a plan too
        gm, embedded = capture_model(model_or_graph_module, example_inputs, example_kwargs)
    if pruned is None and (prune_kwargs or embedded):
        bound = inspect.signature(prune).bind(model_or_graph_module, example_inputs, example_kwargs=example_kwargs,
                                              **prune_kwargs)
        bound.apply_defaults()
        args = dict(bound.arguments)
        args.pop("dump_dir", None)
        verify = args.pop("verify", True)
        model, inp = args.pop("model"), args.pop("example_inputs")
        base = ("masks", "sparsity", "criterion", "prune_bias", "prune_outputs", "ignore")
        state = prepare(model, inp, **{k: args.pop(k) for k in base}, **args)
        texts = stage_texts(state.analysis, state.plan, None, [s for s in stages if s != "pruned"], collapse,
                             expand)
        # the pipeline rewrites its graph in place: the captured and groups stages are drawn first
        pruned = finish(state, bound.arguments["prune_bias"], verify)
        if pruned.meta["fxprune"].exact is False:
            warnings.warn("fxprune.dump: the pruned graph drawn differs from the masked model beyond rounding "
                          "(fxprune.prune keeps the groups responsible; dump draws the plan as made)", stacklevel=2)
        if "pruned" in stages:
            texts.update(stage_texts(state.analysis, state.plan, pruned, ["pruned"], collapse, expand))
        texts = {s: texts[s] for s in stages if s in texts}
        return write_stages(str(out_dir), texts, formats)
    report = getattr(pruned, "meta", {}).get("fxprune") if pruned is not None else None
    prune_bias = report.prune_bias if report is not None else True
    prune_outputs = bool(report.outputs_changed) if report is not None else False
    if gm is None:
        gm, embedded = capture_model(model_or_graph_module, example_inputs, example_kwargs)
    analysis = analyze(gm, captured_inputs(gm), prune_bias=prune_bias, prune_outputs=prune_outputs)
    plan = None
    masks = report.masks if report is not None else embedded
    if masks:
        plan = make_plan(analysis, units_from_masks(analysis, masks, strict=False))
    elif report is not None:
        plan = make_plan(analysis, torch.zeros(analysis.n_elements, dtype=torch.bool))
    texts = stage_texts(analysis, plan, pruned, stages, collapse, expand)
    return write_stages(str(out_dir), texts, formats)


def measure_latency(model, pruned, example_inputs, runs: int = 10, warmup: int = 2) -> tuple[float, float]:
    """Time ``model`` (before) and ``pruned`` (what :func:`fxprune.prune` returned for it) on
    ``example_inputs``: the median of ``runs`` forward passes each after ``warmup`` passes, under
    ``torch.no_grad()``, in the mode the models are in; buffers are restored afterwards.

    Records the result in the pruned model's report (``pruned.meta["fxprune"].latency_before_ms``,
    ``latency_after_ms``, ``latency_runs``, ``latency_device``), so ``str(report)`` and
    ``report.to_dict()`` show it, and returns ``(before_ms, after_ms)``. Any two modules that take the
    same inputs can be timed; without a report, nothing is recorded.

    Example::

        pruned = fxprune.prune(model, (x,), sparsity=0.5)
        before_ms, after_ms = fxprune.measure_latency(model, pruned, (x,), runs=20)
    """
    report = getattr(pruned, "meta", {}).get("fxprune") if hasattr(pruned, "meta") else None
    if report is not None:
        report.measure_latency(model, pruned, example_inputs, runs, warmup)
        return report.latency_before_ms, report.latency_after_ms
    before, after, _ = time_pair(model, pruned, example_inputs, runs, warmup)
    return before, after
