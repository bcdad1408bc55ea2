"""The rule registry: how each op moves channels.

A rule is registered per module type (``register(nn.Linear)``), per function (``register(F.relu)``)
or per method name (``register("view")``). The analysis engine looks rules up here and knows no op
by name. A rule implements what applies to its op:

``flow(ctx)``
    Given the channel maps of the op's inputs (``ctx.arg_map``), return the map(s) of its output,
    recording producers, consumers, members and unions on ``ctx`` (see :class:`FlowContext`).
    Raise :class:`Unsupported` to make the op a barrier with a reason.
``masked(module, keep, prune_bias)``
    Module rules only, optional: the module to use in the masked model when it must do more than
    have its parameters' rows masked (LayerNorm normalising over kept channels only).
``rewrite(module, keep, fold)``
    Module rules only: the smaller module. ``keep[role]`` is a bool tensor per index of the role's
    index space; ``fold[role]`` is None or a tensor with the constant that each removed input
    channel carries (zero elsewhere), to be folded into the bias.
``rewrite_node(node, ctx)``
    Function/method rules only, optional: update literal arguments (sizes) of a node after pruning.

Users register rules for their own leaf modules with :func:`register` and :func:`leaf`.
"""
from __future__ import annotations

from .common import add_folded, factory_kwargs
from .registry import Rule, Unsupported, call_rule, is_leaf_type, module_rule, overridden_base, register

# Importing the op families registers their rules.
from . import activation, attention, concat, elementwise, experts, linear, norm, pointwise, pooling, recurrent, shape  # noqa: E402,F401,I001

__all__ = ["Rule", "Unsupported", "register", "module_rule", "call_rule", "is_leaf_type", "overridden_base",
           "factory_kwargs", "add_folded"]
