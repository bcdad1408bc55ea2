"""Capture: trace a private copy of the model with torch.fx and read masks it already carries.

The user's model is deep-copied first and never touched. Modules that have a registered rule
(recurrent layers, user leaf modules) stay leaves. Masks already on the model are read and removed
from the copy: fxprune's own masked model, torch.ao's structured pruner (FakeStructuredSparsity and
its bias hooks) and ``torch.nn.utils.prune`` structured masks.
"""
from __future__ import annotations

import copy
import os
import traceback

import torch
import torch.fx as fx
import torch.nn as nn
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
from torch.func import functional_call
from torch.fx.passes.shape_prop import ShapeProp
from torch.nn.utils import parametrize

from . import rules


class CaptureError(RuntimeError):
    """The model could not be captured as an fx graph."""


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


class Tracer(fx.Tracer):
    """torch.fx's tracer; modules with a registered fxprune rule are leaves as well."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return rules.is_leaf_type(m) or super().is_leaf_module(m, qualname)


_TORCH_DIR = os.path.dirname(torch.__file__)
_OWN_DIR = os.path.dirname(__file__)


def _user_frame(exc: BaseException) -> str:
    """The innermost frame of the traceback that is in the user's code."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if not f.filename.startswith((_TORCH_DIR, _OWN_DIR)) and "<eval_with_key>" not in f.filename]
    if not frames:
        return ""
    f = frames[-1]
    return f" at {f.filename}:{f.lineno} in {f.name}: `{(f.line or '').strip()}`"


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


def capture(model: nn.Module) -> tuple[fx.GraphModule, dict[str, torch.Tensor]]:
    """A traced private copy of ``model`` and the row masks it carried (keyed by tensor fqn)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected an nn.Module or fx.GraphModule, got {type(model).__name__}")
    model = private_copy(model)
    masks = strip_masks(model)
    if isinstance(model, fx.GraphModule):
        from .masked import strip_param_masks
        masks.update(strip_param_masks(model))
        return model, masks
    try:
        graph = Tracer().trace(model)
    except Exception as e:  # tracing runs user code: any error is the user's to see
        raise CaptureError(
            f"torch.fx cannot trace {type(model).__name__}: {type(e).__name__}: {e}{_user_frame(e)}. "
            "Make that code traceable (no Python control flow on tensor values), or register a rule for "
            "the module containing it so it stays a leaf (fxprune.rules.register)."
        ) from e
    return fx.GraphModule(model, graph, class_name=type(model).__name__), masks


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


def _unparametrize(mod: nn.Module, names: list[str]) -> None:
    """Drop the parametrizations ``names`` of ``mod`` (in a :func:`private_copy`, whose class is its
    own), restoring the original tensors."""
    for n in names:
        parametrize.remove_parametrizations(mod, n, leave_parametrized=False)
    if hasattr(mod, "_init_flat_weights"):  # recurrent modules cache their weights
        mod._init_flat_weights()


def strip_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """Remove mask machinery from ``model`` (a private copy) and return the row masks it held."""
    from torch.ao.pruning._experimental.pruner.parametrization import BiasHook, FakeStructuredSparsity
    from torch.nn.utils import prune as nn_prune

    from .masks import RowMask
    from .rules.norm import MaskedLayerNorm

    masks: dict[str, torch.Tensor] = {}
    for name, mod in list(model.named_modules()):
        prefix = f"{name}." if name else ""
        if parametrize.is_parametrized(mod):
            stripped = []
            for pname in list(mod.parametrizations.keys()):
                plist = mod.parametrizations[pname]
                found = [p for p in plist if isinstance(p, (RowMask, FakeStructuredSparsity))]
                if not found or len(found) != len(plist):
                    continue  # a parametrization of the user's own stays part of the model
                p = found[0]
                keep = p.keep if isinstance(p, RowMask) else p.mask
                masks[prefix + pname] = keep.detach().clone().bool()
                stripped.append(pname)
            if stripped:
                _unparametrize(mod, stripped)
        if hasattr(mod, "_bias") and isinstance(getattr(mod, "_bias"), torch.Tensor):  # torch.ao bias hook
            bias = mod._bias
            del mod._bias
            mod.bias = nn.Parameter(bias.detach().clone())
        for key in [k for k, h in mod._forward_hooks.items() if isinstance(h, BiasHook)]:
            del mod._forward_hooks[key]
        for key, hook in list(mod._forward_pre_hooks.items()):
            if isinstance(hook, nn_prune.BasePruningMethod):
                hooks = hook._pruning_methods if isinstance(hook, nn_prune.PruningContainer) else (hook,)
                pname = hooks[0]._tensor_name
                m = getattr(mod, pname + "_mask").detach().bool()
                nn_prune.remove(mod, pname)
                if m.dim() >= 1 and pname.startswith("weight"):
                    rows = m.reshape(m.shape[0], -1)
                    if not bool((rows.all(1) | ~rows.any(1)).all()):
                        raise ValueError(
                            f"{prefix}{pname}: torch.nn.utils.prune mask is not structured over output rows; "
                            "use prune.ln_structured(..., dim=0) or pass masks= explicitly")
                    masks[prefix + pname] = rows.all(1)
        for cname, child in list(mod.named_children()):
            if isinstance(child, MaskedLayerNorm):
                setattr(mod, cname, child.to_layernorm())
    return masks
