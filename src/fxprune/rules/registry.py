"""The rule registry: the :class:`Rule` interface, and rules looked up per module type, function or
method name (see :mod:`fxprune.rules` for what a rule implements)."""
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
