"""The verification guard: a pruned model that differs from the masked model beyond float rounding is
never returned as if it were exact. A rule that is wrong on purpose makes the guard keep the group it
breaks (with a warning and the reason), or raise when keeping groups cannot help."""
from __future__ import annotations

import pytest
import torch
import torch.fx
import torch.nn as nn

import fxprune
from conftest import assert_pruned_equals_masked
from fxprune.rules import Rule, register, registry


class AddOne(nn.Module):
    """x + 1: a pruned channel holds 1 afterwards, which the next conv reads."""

    def forward(self, x):
        return x + 1


class ClaimsPassThrough(Rule):
    """Wrong on purpose: says a pruned (zero) channel stays zero through AddOne."""

    def flow(self, ctx):
        return ctx.arg_map(0)

    def rewrite(self, module, keep, fold):
        return module


def doubled(x, scale: float):
    return x * scale


torch.fx.wrap("doubled")


class RewritesScale(Rule):
    """Wrong on purpose: passes channels through, but doubles the literal scale on rewrite."""

    def flow(self, ctx):
        return ctx.arg_map(0)

    def rewrite_node(self, node, ctx):
        node.args = (node.args[0], node.args[1] * 2)


class Net(nn.Module):
    def __init__(self, mid):
        super().__init__()
        self.c1, self.mid, self.c2 = nn.Conv2d(3, 8, 1), mid, nn.Conv2d(8, 8, 3, padding=1)
        self.c3, self.c4 = nn.Conv2d(8, 6, 1), nn.Conv2d(6, 2, 1)

    def forward(self, x):
        return self.c4(torch.relu(self.c3(torch.relu(self.c2(self.mid(torch.relu(self.c1(x))))))))


class ScaledNet(Net):
    def forward(self, x):
        return self.c4(torch.relu(doubled(self.c3(torch.relu(self.c2(torch.relu(self.c1(x))))), 0.5)))


@pytest.fixture
def wrong_rules():
    register(AddOne)(ClaimsPassThrough)
    register(doubled)(RewritesScale)
    yield
    registry._MODULE_RULES.pop(AddOne, None)
    registry._CALL_RULES.pop(doubled, None)


def test_a_wrong_rule_keeps_its_group_with_a_warning(wrong_rules):
    torch.manual_seed(0)
    model, x = Net(AddOne()).eval(), torch.randn(2, 3, 8, 8)
    with pytest.warns(UserWarning, match=r"kept 1 group\(s\) whole to stay exact.*rewrite not exact at c2"):
        pruned = fxprune.prune(model, (x,), sparsity=0.5)
    report = pruned.meta["fxprune"]
    assert report.exact and report.rel_diff <= report.tolerance
    broken = next(g for g in report.groups if g.producers == ["c1.weight"])
    assert broken.width_after == 8 and "rewrite not exact at c2: c2 (Conv2d)" in broken.reason
    assert next(g for g in report.groups if g.producers == ["c2.weight"]).width_after == 4   # the rest pruned
    assert any("verification guard" in n for n in report.notes)
    assert_pruned_equals_masked(model, (x,), pruned)


def test_the_guard_raises_when_keeping_groups_cannot_help(wrong_rules):
    model, x = ScaledNet(nn.Identity()).eval(), torch.randn(2, 3, 8, 8)
    with pytest.raises(fxprune.InexactError, match="keeping every pruned group does not restore exactness"):
        fxprune.prune(model, (x,), sparsity=0.5)


def test_verify_false_turns_the_guard_off(wrong_rules):
    model, x = Net(AddOne()).eval(), torch.randn(2, 3, 8, 8)
    pruned = fxprune.prune(model, (x,), sparsity=0.5, verify=False)
    report = pruned.meta["fxprune"]
    assert report.exact is None and report.rel_diff is None
    assert next(g for g in report.groups if g.producers == ["c1.weight"]).width_after == 4


def test_dead_channel_elimination_is_verified_against_the_model_itself(wrong_rules):
    """Dead channels of c1 (zero rows) pass AddOne and become 1: the wrong rule calls them dead, the
    guard compares with the model itself and keeps them."""
    torch.manual_seed(0)
    model, x = Net(AddOne()).eval(), torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        model.c1.weight[:3] = 0
        model.c1.bias[:3] = 0
    with pytest.warns(UserWarning, match="rewrite not exact"):
        smaller = fxprune.eliminate_dead_channels(model, (x,))
    with torch.no_grad():
        torch.testing.assert_close(smaller(x), model(x), rtol=1e-5, atol=1e-6)
