"""Subclasses of modules that have a rule (timm's BatchNormAct2d, Conv2dSame, AvgPool2dSame,
ScaledStdConv2d): a subclass that computes something else (its own forward) is traced through, or is a
barrier when it cannot be traced; one that computes what its base computes keeps the base's rule, and
its class."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import fxprune
from fxprune import rules


class BNAct(nn.BatchNorm2d):
    """timm's BatchNormAct2d in short: F.batch_norm on its own tensors, then an activation submodule."""

    def __init__(self, c, act=None):
        super().__init__(c)
        self.act = act if act is not None else nn.ReLU()

    def forward(self, x):
        x = F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, self.training,
                         self.momentum, self.eps)
        return self.act(x)


class SuperBNAct(BNAct):
    """The same through ``super().forward``: torch's BatchNorm forward cannot be traced (it branches on
    the input's rank), so this module stays whole, a barrier that says why."""

    def forward(self, x):
        return self.act(nn.BatchNorm2d.forward(self, x))


class ConvSame(nn.Conv2d):
    """timm's Conv2dSame in short: padding=0, the zeros are padded in forward."""

    def forward(self, x):
        return F.conv2d(F.pad(x, [1, 1, 1, 1]), self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _randomized(m):
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.weight.copy_(torch.rand(mod.weight.shape, generator=g) + 0.5)
                mod.bias.copy_(torch.randn(mod.bias.shape, generator=g))
                mod.running_mean.copy_(torch.randn(mod.running_mean.shape, generator=g))
                mod.running_var.copy_(torch.rand(mod.running_var.shape, generator=g) + 0.5)
    return m.eval()


NETS = {
    "bn_silu": lambda: nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), BNAct(8, act=nn.SiLU()), nn.Conv2d(8, 4, 1)),
    "bn_identity": lambda: nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), BNAct(8, act=nn.Identity()),
                                         nn.Conv2d(8, 4, 1)),
    "bn_hardsigmoid": lambda: nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), BNAct(8, act=nn.Hardsigmoid()),
                                            nn.Conv2d(8, 4, 1)),
    "super_bn_act": lambda: nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), SuperBNAct(8, act=nn.SiLU()),
                                          nn.Conv2d(8, 4, 1)),
    "conv_same": lambda: nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), ConvSame(8, 4, 3)),
}


@pytest.mark.parametrize("prune_bias", [True, False])
@pytest.mark.parametrize("name", sorted(NETS))
def test_prune_equals_masked(name, prune_bias):
    torch.manual_seed(0)
    model = _randomized(NETS[name]())
    x = torch.randn(2, 3, 9, 9)
    pruned = fxprune.prune(model, (x,), sparsity=0.5, prune_bias=prune_bias)
    report = pruned.meta["fxprune"]
    masked = fxprune.apply_masks(model, (x,), masks=report.masks, prune_bias=prune_bias)
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), masked(x), rtol=1e-5, atol=1e-5)
    if type(model[1]) is BNAct:   # traced through: its activation is still there, and the norm pruned
        assert type(pruned.get_submodule("1.act")) is type(model[1].act)
        assert pruned.get_parameter("1.weight").numel() < 8
    if type(model[1]) is SuperBNAct:
        assert any("computes something else" in why for _, why in report.barriers)


@pytest.mark.parametrize("name", ["bn_silu", "bn_identity", "bn_hardsigmoid"])
def test_dead_channels_of_a_norm_subclass(name):
    torch.manual_seed(0)
    model = _randomized(NETS[name]())
    with torch.no_grad():
        model[1].weight[:2] = 0
        model[1].bias[:2] = 0
    x = torch.randn(2, 3, 9, 9)
    out = fxprune.eliminate_dead_channels(model, (x,))
    with torch.no_grad():
        torch.testing.assert_close(out(x), model(x), rtol=1e-5, atol=1e-5)
    # act(0) == 0: the two channels are dead and removed; hardsigmoid(0) = 0.5: they are not dead
    expect = 8 if name == "bn_hardsigmoid" else 6
    assert out.get_parameter("1.weight").numel() == expect


class SameNorm(nn.BatchNorm2d):       # same computation, another constructor: keeps the rule and its class
    def __init__(self, c, tag="x"):
        super().__init__(c)
        self.tag = tag


def test_subclass_with_the_same_computation_keeps_its_class():
    model = _randomized(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), SameNorm(8, tag="t"), nn.Conv2d(8, 4, 1)))
    x = torch.randn(2, 3, 9, 9)
    pruned = fxprune.prune(model, (x,), sparsity=0.5)
    norm = pruned.get_submodule("1")
    assert type(norm) is SameNorm and norm.tag == "t" and norm.num_features == 4
    masked = fxprune.apply_masks(model, (x,), masks=pruned.meta["fxprune"].masks)
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), masked(x), rtol=1e-5, atol=1e-5)


class PadFirstPool(nn.AvgPool2d):   # computes something else than nn.AvgPool2d
    def forward(self, x):
        return F.avg_pool2d(F.pad(x, (1, 1, 1, 1)), self.kernel_size, self.stride)


class GainConv(nn.Conv2d):          # an extra per-row parameter its forward uses
    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.gain = nn.Parameter(torch.rand(self.out_channels, 1, 1, 1) + 0.5)

    def forward(self, x):
        return F.conv2d(x, self.weight * self.gain, self.bias, self.stride, self.padding)


class Inherits(nn.Conv2d):          # same computation: keeps nn.Conv2d's rule
    pass


def test_subclass_with_own_forward_is_traced():
    assert rules.module_rule(Inherits(3, 4, 1)) is rules.module_rule(nn.Conv2d(3, 4, 1))
    assert rules.module_rule(PadFirstPool(2)) is None and rules.module_rule(GainConv(3, 4, 1)) is None
    m = nn.Sequential(nn.Conv2d(3, 8, 1), nn.BatchNorm2d(8), PadFirstPool(2), GainConv(8, 8, 1), nn.ReLU(),
                      nn.Conv2d(8, 4, 1)).eval()
    x = torch.randn(1, 3, 8, 8)
    for pb in (True, False):
        p = fxprune.prune(m, (x,), sparsity=0.5, prune_bias=pb)
        assert p.meta["fxprune"].rel_diff <= 1e-5
