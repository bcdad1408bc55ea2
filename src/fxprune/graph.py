"""Graph utilities every stage uses: attribute paths, inputs, private copies, fake-tensor shapes.

The bottom of the package: it imports nothing of fxprune.
"""
from __future__ import annotations

import copy

import torch
import torch.fx as fx
import torch.nn as nn
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
from torch.func import functional_call
from torch.fx.passes.shape_prop import ShapeProp
from torch.nn.utils import parametrize

#: node.meta key on the nodes a masked model adds (keep buffers and their multiplications), so that
#: pruning a masked model can take them out again
MASK_TAG = "fxprune_param_mask"
#: node.meta key on the keep buffer's get_attr node of a producer's rows: the tensor fqn it masks
ROWS_TAG = "fxprune_rows_of"
#: node.meta key on a node whose target a masked model replaced: (original target, how many leading
#: args it takes)
RESTORE_TAG = "fxprune_restore"


def attr(module, dotted: str):
    """getattr through dots (``out_proj.weight``)."""
    for part in dotted.split("."):
        module = getattr(module, part)
    return module


def owner_of(module, dotted: str):
    """(submodule, leaf name) holding ``dotted``."""
    path, _, leaf = dotted.rpartition(".")
    return (module.get_submodule(path) if path else module), leaf


def normalize_inputs(example_inputs) -> tuple:
    if example_inputs is None:
        raise ValueError("example_inputs is required: a tensor or a tuple of the model's positional inputs")
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, list):
        return tuple(example_inputs)
    if not isinstance(example_inputs, tuple):
        raise ValueError(f"example_inputs must be a tensor or a tuple of inputs, got {type(example_inputs).__name__}")
    for i, t in enumerate(example_inputs):
        if isinstance(t, (tuple, list)):
            raise ValueError(f"example_inputs[{i}] is a {type(t).__name__}: pass the model's inputs themselves, "
                             "(x,) rather than ((x,),)")
    return example_inputs


def float_dtypes(module: nn.Module) -> dict[str, torch.dtype]:
    """{name: dtype} of ``module``'s floating parameters and buffers."""
    return {name: t.dtype for name, t in (*module.named_parameters(), *module.named_buffers())
            if t.is_floating_point()}


def private_copy(model: nn.Module) -> nn.Module:
    """copy.deepcopy that leaves the original alone whatever is done to the copy.

    Parametrized modules get a class of their own: a deep copy shares torch's injected Parametrized*
    class, and adding or removing a parametrization edits that class. Non-leaf tensors (which
    deepcopy refuses) held by modules are copied detached."""
    memo = {}
    for m in model.modules():
        # non-leaf tensors held as plain attributes: torch.nn.utils.prune's weight = orig * mask,
        # recurrent modules' cached _flat_weights
        held = [v for v in vars(m).values() if isinstance(v, torch.Tensor)]
        held += [t for t in getattr(m, "_flat_weights", None) or () if isinstance(t, torch.Tensor)]
        for t in held:
            if t.grad_fn is not None:
                memo[id(t)] = t.detach().clone()
    new = copy.deepcopy(model, memo)
    for m in new.modules():
        if parametrize.is_parametrized(m):
            cls = type(m)
            m.__class__ = type(cls.__name__, cls.__bases__, dict(cls.__dict__))
    return new


class FakeShapeProp(ShapeProp):
    """torch's ShapeProp on fake tensors, without its deep copy of the module.

    ``ShapeProp(gm, fake_mode)`` first deep-copies the whole module into fake tensors (a third of
    prune()'s time on a 25 M parameter model). Here each parameter and buffer gets a fake twin (no
    data copied) that modules are called with (``torch.func.functional_call``) and ``get_attr``
    returns; the module itself keeps its real tensors, which rules read. Buffers are restored
    afterwards in case an op with only real inputs ran for real.

    Example::

        FakeShapeProp(gm).propagate(x)      # node.meta["tensor_meta"] as with ShapeProp
    """

    def __init__(self, gm: fx.GraphModule):
        super().__init__(gm)  # no fake mode active here: ShapeProp makes no fake copy
        self.fake_mode = FakeTensorMode(allow_non_fake_inputs=True)
        self._fakes: dict[int, torch.Tensor] = {}   # id(real tensor) -> its fake twin
        # made here, outside the fake and FLOP-counting modes that propagate() runs under
        for t in (*gm.parameters(), *gm.buffers()):
            self._fake(t)

    def _fake(self, t):
        if not isinstance(t, torch.Tensor) or isinstance(t, FakeTensor):
            return t
        fake = self._fakes.get(id(t))
        if fake is None:  # same metadata on the meta device, no data (10x cheaper than from_tensor)
            meta = torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device="meta")
            fake = FakeTensor(self.fake_mode, meta, t.device)
            self._fakes[id(t)] = fake.requires_grad_(t.requires_grad)
        return fake

    def get_attr(self, target, args, kwargs):
        return self._fake(super().get_attr(target, args, kwargs))

    def call_module(self, target, args, kwargs):
        module = self.fetch_attr(target)
        state = {name: self._fake(t) for name, t in
                 [*module.named_parameters(remove_duplicate=False), *module.named_buffers(remove_duplicate=False)]}
        return functional_call(module, state, args, kwargs)

    def propagate(self, *args):
        saved = [(b, b.detach().clone()) for b in self.module.buffers()]
        try:
            return super().propagate(*args)
        finally:
            with torch.no_grad():
                for b, v in saved:
                    b.copy_(v)
