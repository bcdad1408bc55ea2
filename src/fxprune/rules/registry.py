"""The rule registry: the :class:`Rule` interface, and rules looked up per module type, function or
method name (see :mod:`fxprune.rules` for what a rule implements)."""
from __future__ import annotations

import functools
from typing import Callable

import torch
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
_NAMED_RULES: dict[str, Rule] = {}   # "module.qualname" of functions, "ns::op" of custom ops: not imported


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
            if isinstance(t, str) and ("." in t.strip(".") or "::" in t):
                # "package.module.function" or a custom op "namespace::name": of a library fxprune does
                # not import
                _NAMED_RULES[t] = rule
            elif isinstance(t, type) and issubclass(t, nn.Module):
                _MODULE_RULES[t] = rule
            else:
                _CALL_RULES[t] = rule
        return cls

    return deco


#: methods a subclass may override and still compute what its registered base computes
_NOT_COMPUTATION = frozenset({"__init__", "__repr__", "extra_repr", "reset_parameters", "__setstate__",
                              "_load_from_state_dict", "_save_to_state_dict", "__getstate__"})


@functools.lru_cache(maxsize=None)
def _inherits_computation(cls: type, base: type) -> bool:
    """Whether ``cls`` (a subclass of ``base``) computes what ``base`` computes: no class between them
    redefines a method of ``base`` (``forward``, ``_conv_forward``, ...) other than construction and
    printing. timm's BatchNormAct2d (a BatchNorm2d followed by its activation), ScaledStdConv2d (an
    nn.Conv2d that standardises its weight) or AvgPool2dSame (an nn.AvgPool2d that pads first) do not:
    they are traced instead, their forward made of ops with rules."""
    for c in cls.__mro__:
        if c is base:
            return True
        for name, value in vars(c).items():
            if name not in _NOT_COMPUTATION and callable(value) and hasattr(base, name):
                return False
    return True


def overridden_base(module: nn.Module) -> type | None:
    """The registered base class whose computation ``module``'s class changes (see module_rule), or None."""
    cls = type(module)
    for base in cls.__mro__:
        if base in _MODULE_RULES:
            return None if base is cls or _inherits_computation(cls, base) else base
    return None


def module_rule(module: nn.Module) -> Rule | None:
    """The rule registered for ``module``'s class or, when it computes what that base computes (see
    _inherits_computation), for its nearest base class that has one."""
    cls = type(module)
    for base in cls.__mro__:
        rule = _MODULE_RULES.get(base)
        if rule is not None:
            return rule if base is cls or _inherits_computation(cls, base) else None
    return None


def call_rule(target) -> Rule | None:
    try:
        rule = _CALL_RULES.get(target)
    except TypeError:  # unhashable target
        return None
    if rule is None and isinstance(target, torch._ops.OpOverload):
        rule = _NAMED_RULES.get(target._schema.name)
    elif rule is None and isinstance(target, torch._ops.OpOverloadPacket):
        rule = _NAMED_RULES.get(target._qualified_op_name)
    elif rule is None and _NAMED_RULES and callable(target):
        rule = _NAMED_RULES.get(f"{getattr(target, '__module__', '')}.{getattr(target, '__qualname__', '')}")
    return rule


def is_leaf_type(module: nn.Module) -> bool:
    rule = module_rule(module)
    return rule is not None and rule.leaf
