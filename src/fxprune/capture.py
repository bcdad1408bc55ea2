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
from torch.nn.utils import parametrize

from . import rules


class CaptureError(RuntimeError):
    """The model could not be captured as an fx graph."""


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
        strip_param_masks(model)
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
