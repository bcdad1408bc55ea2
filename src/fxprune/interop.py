"""Interop: read the masks a model already carries, and take the mask machinery out of it.

Three sources: fxprune's own masked model (``RowMask`` parametrizations, keep buffers multiplied in
the graph, masked LayerNorms), torch.ao's structured pruner (``FakeStructuredSparsity`` and its bias
hooks) and ``torch.nn.utils.prune`` structured masks. Works on a private copy (see
:func:`fxprune.graph.private_copy`), before it is captured.
"""
from __future__ import annotations

import torch
import torch.fx as fx
import torch.nn as nn
from torch.ao.pruning._experimental.pruner.parametrization import BiasHook, FakeStructuredSparsity
from torch.nn.utils import parametrize
from torch.nn.utils import prune as nn_prune

from .graph import MASK_TAG, RESTORE_TAG, ROWS_TAG
from .masks import RowMask
from .rules.norm import MaskedLayerNorm


def take_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """Remove every mask ``model`` (a private copy) carries and return them as row masks keyed by tensor
    fqn (``"fc1.weight"``): what :func:`fxprune.prune` uses when it is given no masks or sparsity.

    Example::

        own = private_copy(masked_model)
        masks = take_masks(own)          # own now computes the unmasked model
    """
    masks = strip_masks(model)
    if isinstance(model, fx.GraphModule):
        masks.update(strip_param_masks(model))
    return masks


def carries_masks(model: nn.Module) -> bool:
    """Whether ``model`` holds mask machinery that :func:`take_masks` would take out (parametrizations,
    torch.ao's bias hooks, torch.nn.utils.prune's hooks, masked LayerNorms, a masked graph's keep
    buffers): such a model is captured from a full private copy, which take_masks then edits."""
    for mod in model.modules():
        if parametrize.is_parametrized(mod) or isinstance(mod, MaskedLayerNorm):
            return True
        if isinstance(getattr(mod, "_bias", None), torch.Tensor):
            return True
        if any(isinstance(h, BiasHook) for h in mod._forward_hooks.values()):
            return True
        if any(isinstance(h, nn_prune.BasePruningMethod) for h in mod._forward_pre_hooks.values()):
            return True
    if isinstance(model, fx.GraphModule):
        return any(RESTORE_TAG in n.meta or MASK_TAG in n.meta for n in model.graph.nodes)
    return False


def _unparametrize(mod: nn.Module, names: list[str]) -> None:
    """Drop the parametrizations ``names`` of ``mod`` (in a :func:`private_copy`, whose class is its
    own), restoring the original tensors."""
    for n in names:
        parametrize.remove_parametrizations(mod, n, leave_parametrized=False)
    if hasattr(mod, "_init_flat_weights"):  # recurrent modules cache their weights
        mod._init_flat_weights()


def strip_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """Remove mask machinery from ``model`` (a private copy) and return the row masks it held."""
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


def strip_param_masks(gm: fx.GraphModule) -> dict[str, torch.Tensor]:
    """Undo the graph edits of a masked model (keep buffers, rules' masked_node) on a copy of a masked model (prune() of a masked model).
    Returns the row masks of producers whose weights are get_attr tensors, keyed by fqn."""
    masks: dict[str, torch.Tensor] = {}
    changed = False
    for node in gm.graph.nodes:
        if RESTORE_TAG in node.meta:  # (original target, how many leading args it takes)
            target, n_args = node.meta.pop(RESTORE_TAG)
            node.target, node.args, node.kwargs = target, node.args[:n_args], {}
            changed = True
    for node in list(gm.graph.nodes):
        if node.meta.get(MASK_TAG) and node.op == "call_function":
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
            changed = True
    for node in list(gm.graph.nodes):
        if node.meta.get(MASK_TAG) and node.op == "get_attr":
            gm.graph.erase_node(node)
            if hasattr(gm, node.target):  # several get_attr nodes may read one keep buffer
                if ROWS_TAG in node.meta:
                    masks[node.meta[ROWS_TAG]] = getattr(gm, node.target).detach().reshape(-1).bool().clone()
                delattr(gm, node.target)
    if changed:
        gm.recompile()
    return masks
