"""Pointwise math (rules/pointwise.py): hand-written GELUs, comparisons, where, clamp, maximum pass
channels on exactly; an op that makes a pruned zero infinite keeps its channels; a rule that loses
channels makes a barrier instead of a wrong model."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

import fxprune
from fxprune.rules import Rule, register
from conftest import assert_pruned_equals_masked, model_digest


class NewGELU(nn.Module):
    """GPT-2's tanh GELU, written out."""

    def forward(self, x):
        return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


class MLP(nn.Module):
    def __init__(self, act):
        super().__init__()
        self.fc, self.act, self.proj = nn.Linear(8, 16), act, nn.Linear(16, 4)

    def forward(self, x):
        return self.proj(self.act(self.fc(x)))


class ErfGELU(nn.Module):
    """BERT's erf GELU."""

    def forward(self, x):
        return x * 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))


class Mixed(nn.Module):
    def forward(self, h):
        h = torch.where(h > 0, h, 0.1 * h) + torch.erf(h).abs() - (-h).clamp(min=-1, max=2)
        return torch.maximum(h, h ** 2).exp() - 1


class Reciprocal(nn.Module):
    def forward(self, h):
        return torch.reciprocal(h + 1e-3) - torch.reciprocal(h.abs() + 1e-3).clamp_max(1.0)


@pytest.mark.parametrize("act", [NewGELU(), ErfGELU(), Mixed()], ids=["new_gelu", "erf_gelu", "mixed"])
@pytest.mark.parametrize("prune_bias", [True, False])
def test_pointwise_chains_are_pruned_exactly(act, prune_bias):
    model, x = MLP(act).eval(), torch.randn(3, 8)
    digest = model_digest(model)
    pruned = fxprune.prune(model, (x,), sparsity=0.5, prune_bias=prune_bias)
    assert model_digest(model) == digest
    report = pruned.meta["fxprune"]
    assert report.barriers == []
    # the hidden layer goes from 16 to 8: fc loses 8 rows (8*8 + 8), proj 8 columns (4*8)
    assert report.params_after == report.params_before - (8 * 8 + 8) - 4 * 8
    assert_pruned_equals_masked(model, (x,), pruned)


def test_constant_channels_are_folded_through_pointwise_math():
    """prune_bias=False: a pruned channel holds fc's bias b, then f(b) after the math; proj's bias
    absorbs it."""
    model, x = MLP(Mixed()).eval(), torch.randn(3, 8)
    pruned = fxprune.prune(model, (x,), sparsity=0.5, prune_bias=False)
    assert any("folded" in n for n in pruned.meta["fxprune"].notes)
    assert_pruned_equals_masked(model, (x,), pruned)


def test_infinite_at_zero_keeps_the_channels():
    """1 / (0 + 1e-3) is finite, but reciprocal(0) would not be: here every op stays finite at zero,
    so channels go; with 1/h itself they must stay."""
    class Inf(nn.Module):
        def forward(self, h):
            return torch.reciprocal(h)

    model, x = MLP(Inf()).eval(), torch.randn(3, 8)
    report = fxprune.prune(model, (x,), sparsity=0.5).meta["fxprune"]
    hidden = next(g for g in report.groups if g.producers == ["fc.weight"])
    assert hidden.width_after == 16 and hidden.status == "unprunable" and "input-dependent" in hidden.reason
    model = MLP(Reciprocal()).eval()
    pruned = fxprune.prune(model, (x,), sparsity=0.5)
    assert pruned.meta["fxprune"].params_after < pruned.meta["fxprune"].params_before
    assert_pruned_equals_masked(model, (x,), pruned)


def test_untracked_operand_broadcast_along_channels_keeps_them():
    """where(cond from the graph input, h, 0): the condition varies per sample along every channel."""
    class Gate(nn.Module):
        def forward(self, h, x):
            return torch.where(x[:, :1] > 0, h, 0.0)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.gate, self.proj = nn.Linear(8, 16), Gate(), nn.Linear(16, 4)

        def forward(self, x):
            return self.proj(self.gate(torch.relu(self.fc(x)) + 1.0, x))

    model, x = Net().eval(), torch.randn(3, 8)
    pruned = fxprune.prune(model, (x,), sparsity=0.5, prune_bias=False)
    hidden = next(g for g in pruned.meta["fxprune"].groups if g.producers == ["fc.weight"])
    assert hidden.width_after == 16 and "input-dependent" in hidden.reason
    assert_pruned_equals_masked(model, (x,), pruned)
    pruned = fxprune.prune(model, (x,), sparsity=0.5, prune_bias=True)   # relu(0) + 1: a constant again
    assert_pruned_equals_masked(model, (x,), pruned)


class Opaque(nn.Module):
    def forward(self, h):
        return h * 2


def test_a_rule_that_loses_channels_makes_a_barrier():
    @register(Opaque)
    class LosingRule(Rule):  # says nothing about where the channels go
        def flow(self, ctx):
            return None

    try:
        model, x = MLP(Opaque()).eval(), torch.randn(3, 8)
        pruned = fxprune.prune(model, (x,), sparsity=0.5)
        report = pruned.meta["fxprune"]
        assert any("passes no channels on" in why for _, why in report.barriers)
        hidden = next(g for g in report.groups if g.producers == ["fc.weight"])
        assert hidden.width_after == 16
        assert_pruned_equals_masked(model, (x,), pruned)
    finally:
        from fxprune.rules import registry
        registry._MODULE_RULES.pop(Opaque, None)


def test_a_module_weight_also_read_by_the_graph_keeps_its_channels():
    """fc's rows feed relu -> out, and fc.weight.mean() is added to the output: slicing fc's rows
    would change that mean, so fc's channels stay."""
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.out = nn.Linear(4, 8), nn.Linear(8, 2)

        def forward(self, x):
            return self.out(torch.relu(self.fc(x))) + self.fc.weight.mean()

    model, x = Net().eval(), torch.randn(3, 4)
    pruned = fxprune.prune(model, (x,), sparsity=0.5)
    report = pruned.meta["fxprune"]
    assert any("fc.weight is also read directly" in why for _, why in report.barriers)
    assert report.params_after == report.params_before
    assert_pruned_equals_masked(model, (x,), pruned)


def test_cat_along_a_non_channel_dim_of_different_constants():
    """cat([a(x), b(x)], dim=3): a pruned channel holds a's bias in one half and b's in the other,
    which is no single constant for c to fold (prune_bias=False keeps it)."""
    class CatW(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Conv2d(3, 8, 1), nn.Conv2d(3, 8, 1), nn.Conv2d(8, 4, 1)

        def forward(self, x):
            return self.c(torch.cat([self.a(x), self.b(x)], dim=3))

    model, x = CatW().eval(), torch.randn(2, 3, 4, 4)
    for prune_bias in (True, False):
        pruned = fxprune.prune(model, (x,), sparsity=0.5, prune_bias=prune_bias)
        assert (pruned.meta["fxprune"].params_after < pruned.meta["fxprune"].params_before) == prune_bias
        assert_pruned_equals_masked(model, (x,), pruned)
