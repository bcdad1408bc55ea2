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

from typing import Callable

import torch.nn as nn


class Unsupported(Exception):
    """Raised by a rule: this use of the op cannot carry channels (the reason goes in the report)."""


class Rule:
    """Base class of op rules; see the module docstring."""

    #: modules whose rule is registered stay leaves when tracing
    leaf = True

    def flow(self, ctx):  # pragma: no cover - interface
        raise NotImplementedError

    def masked(self, module: nn.Module, keep: dict, prune_bias: bool) -> nn.Module | None:
        return None

    def rewrite(self, module: nn.Module, keep: dict, fold: dict) -> nn.Module:
        raise Unsupported(f"no rewrite for {type(module).__name__}")

    def rewrite_node(self, node, ctx) -> None:
        return None


_MODULE_RULES: dict[type, Rule] = {}
_CALL_RULES: dict[object, Rule] = {}


def register(*targets) -> Callable:
    """Class decorator: register a :class:`Rule` subclass for module types, functions or method names.

    Example::

        @fxprune.rules.register(MyGate)
        class MyGateRule(fxprune.rules.Rule):
            def flow(self, ctx):
                return ctx.arg_map(0)            # channels pass through unchanged
            def rewrite(self, module, keep, fold):
                return module
    """

    def deco(cls):
        rule = cls() if isinstance(cls, type) else cls
        for t in targets:
            if isinstance(t, type) and issubclass(t, nn.Module):
                _MODULE_RULES[t] = rule
            else:
                _CALL_RULES[t] = rule
        return cls

    return deco


def module_rule(module: nn.Module) -> Rule | None:
    for cls in type(module).__mro__:
        rule = _MODULE_RULES.get(cls)
        if rule is not None:
            return rule
    return None


def call_rule(target) -> Rule | None:
    try:
        return _CALL_RULES.get(target)
    except TypeError:  # unhashable target
        return None


def is_leaf_type(module: nn.Module) -> bool:
    rule = module_rule(module)
    return rule is not None and rule.leaf


# Importing the op families registers their rules.
from . import activation, attention, concat, elementwise, linear, norm, pointwise, pooling, recurrent, shape  # noqa: E402,F401,I001
