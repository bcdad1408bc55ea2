"""Regressions found by the property tests (tests/test_property.py), each as a small explicit model:
prune() equals the masked model on fresh inputs for both prune_bias settings, and
eliminate_dead_channels() leaves the output unchanged."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import fxprune
from conftest import RTOL, fresh_like, prune_both


def assert_dead_exact(model, inputs):
    """eliminate_dead_channels(model) computes model's output on fresh inputs; the smaller model."""
    smaller = fxprune.eliminate_dead_channels(model, inputs)
    with torch.no_grad():
        x = fresh_like(inputs, seed=7)
        a, b = model(*x), smaller(*x)
    assert float((a - b).abs().max()) / max(1.0, float(a.abs().max())) <= RTOL
    return smaller


def nonzero_biases(model, seed=0):
    """Biases far from 0, so that constants carried by pruned channels (prune_bias=False) matter."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if getattr(m, "bias", None) is not None:
                m.bias.copy_(torch.randn(m.bias.shape, generator=g))
    return model.eval()


# ------------------------------------------------------------------------------------------------
# "untracked": channels that no producer makes (the graph input's, a LayerNorm's in dead-channel mode)
# coupled with tracked ones by a gate or residual add. The tracked element at such a position
# (the gate's channel) used to be removed while the untracked channel stayed: the gate came out
# narrower than the tensor it gates.

class GateOverInputCat(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.gate = nn.Conv2d(9, 9, 1)
        self.head = nn.Conv2d(9, 4, 1)

    def forward(self, x):
        y = torch.cat([self.conv(x), x], 1)
        y = y * torch.sigmoid(self.gate(F.adaptive_avg_pool2d(y, 1)))
        return self.head(y)


class AddOverInputCat(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.proj = nn.Conv2d(3, 9, 1)
        self.head = nn.Conv2d(9, 4, 1)

    def forward(self, x):
        return self.head(torch.cat([x, self.conv(x)], 1) + self.proj(x))


@pytest.mark.parametrize("cls", [GateOverInputCat, AddOverInputCat])
def test_untracked_channels_keep_their_partners(cls):
    torch.manual_seed(0)
    model = nonzero_biases(cls())
    x = (torch.randn(2, 3, 8, 8),)
    for pruned in prune_both(model, x, sparsity=0.6):
        report = pruned.meta["fxprune"]
        assert report.params_after < report.params_before   # the tracked channels are still pruned
        assert any("no tracked producer" in why for _, why in report.barriers)


class TokenGate(nn.Module):
    """A token gate over cat([layer_norm(h), h]); in dead-channel mode the LayerNorm's channels are
    untracked (its statistics count the zeros), so the gate's channels there must stay."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 4)
        self.ln = nn.LayerNorm(4)
        self.gate = nn.Linear(8, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        h = self.fc(x)
        y = torch.cat([self.ln(h), h], -1)
        y = y * torch.sigmoid(self.gate(y.mean(1, keepdim=True)))
        return self.head(y.mean(1))


def test_dead_channels_next_to_untracked_ones():
    torch.manual_seed(0)
    model = TokenGate().eval()
    with torch.no_grad():
        model.fc.weight[1:3] = 0
        model.fc.bias[1:3] = 0
    x = (torch.randn(2, 5, 6),)
    smaller = assert_dead_exact(model, x)
    assert smaller.gate.out_features >= 4   # the LayerNorm's positions stay gated
    prune_both(model, x)


class SharedTokenLayers(nn.Module):
    """A LayerNorm and a Linear called on a producer's output and on the graph input: the call on the
    input reads their full width, so the LayerNorm entries and the Linear columns stay."""

    def __init__(self):
        super().__init__()
        self.fc0 = nn.Linear(4, 4)
        self.ln = nn.LayerNorm(4)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(self.ln(self.fc0(x))) + self.fc(self.ln(x))


class SharedConvLayers(nn.Module):
    """The same with a depthwise conv and a BatchNorm (per-channel members) and a conv; the graph input
    goes first."""

    def __init__(self):
        super().__init__()
        self.conv0 = nn.Conv2d(4, 4, 1)
        self.dw = nn.Conv2d(4, 4, 3, padding=1, groups=4)
        self.bn = nn.BatchNorm2d(4)
        self.conv = nn.Conv2d(4, 3, 1)

    def forward(self, x):
        return self.conv(self.bn(self.dw(x))) + self.conv(self.bn(self.dw(self.conv0(x))))


@pytest.mark.parametrize("cls, shape", [(SharedTokenLayers, (2, 5, 4)), (SharedConvLayers, (2, 4, 6, 6))])
def test_module_called_on_untracked_and_tracked_channels(cls, shape):
    torch.manual_seed(0)
    model = nonzero_biases(cls())
    x = (torch.randn(shape),)
    for pruned in prune_both(model, x):
        assert any("also reads channels that are not tracked" in why for _, why in pruned.meta["fxprune"].barriers)
    assert_dead_exact(model, x)


# ------------------------------------------------------------------------------------------------
# "inplace": an in-place op changes a tensor that a consumer has already read. The constant a pruned
# channel carries into that consumer was read back after the in-place op (the recording held the
# tensor, not its value then); and consumers reading the tensor after the op saw its old channel map.

class InplaceAfterRead(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 6, 1)
        self.c2 = nn.Conv2d(6, 4, 1)
        self.c3 = nn.Conv2d(6, 4, 1)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        y = self.c1(x)
        a = self.c2(y)              # reads y (a pruned channel holds c1's bias)
        return a + self.c3(self.act(y))   # then y is modified in place


class InplaceBeforeRead(nn.Module):
    """y.add_() and y.sigmoid_() change what a pruned channel of y holds (zero -> constant) for the
    consumers that read y afterwards, under y's own node."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 6, 1, bias=False)
        self.c2 = nn.Conv2d(3, 6, 1)
        self.c3 = nn.Conv2d(6, 4, 1)
        self.c4 = nn.Conv2d(6, 4, 1)
        self.c5 = nn.Conv2d(6, 4, 1)

    def forward(self, x):
        y = self.c1(x)
        a = self.c3(y)
        y.add_(self.c2(x))
        b = self.c4(y)
        y.sigmoid_()
        return a + b + self.c5(y)


@pytest.mark.parametrize("cls", [InplaceAfterRead, InplaceBeforeRead])
def test_inplace_ops_after_a_read(cls):
    torch.manual_seed(0)
    prune_both(nonzero_biases(cls()), (torch.randn(2, 3, 6, 6),))


class InplaceOnInput(nn.Module):
    def __init__(self):
        super().__init__()
        self.act = nn.Hardswish(inplace=True)
        self.conv = nn.Conv2d(3, 6, 1)
        self.head = nn.Conv2d(6, 2, 1)

    def forward(self, x):
        return self.head(self.conv(self.act(x)))


def test_model_that_modifies_its_input():
    """prune() runs the model twice (masked, pruned) to verify: on copies of the example inputs."""
    torch.manual_seed(0)
    model = InplaceOnInput().eval()
    x = torch.randn(2, 3, 6, 6)
    before = x.clone()
    pruned = prune_both(model, (x,))[0]
    assert torch.equal(x, before)
    assert pruned.meta["fxprune"].rel_diff <= RTOL


# ------------------------------------------------------------------------------------------------
# "emptied_conv": a producer coupled with others (an SE gate over a cat of several groups) lost every
# output channel: the group kept channels, but all of them came from the other producers, leaving a
# Conv2d with 0 output channels (and a mask that prunes every row of its weight).

class GateOverSplitCat(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.conv = nn.Conv2d(3, 3, 1)
        self.se = nn.Conv2d(6, 6, 1)
        self.head = nn.Conv2d(6, 4, 1)

    def forward(self, x):
        p, q = self.stem(x).chunk(2, 1)
        y = torch.cat([self.conv(q), p], 1)
        y = y * torch.sigmoid(self.se(F.adaptive_avg_pool2d(y, 1)))
        return self.head(y)


def test_every_producer_keeps_a_channel():
    torch.manual_seed(0)
    model = nonzero_biases(GateOverSplitCat())
    with torch.no_grad():   # conv's channels score lowest: a plain ranking prunes all of them
        model.conv.weight.mul_(1e-3)
    x = (torch.randn(2, 3, 8, 8),)
    for pruned in prune_both(model, x, sparsity=0.7):
        assert pruned.conv.out_channels >= 1
        assert all(bool(m.any()) for m in pruned.meta["fxprune"].masks.values())


def test_masks_that_empty_a_coupled_producer():
    """Explicit masks may leave a coupled producer nothing; one of its channels stays, masked."""
    torch.manual_seed(0)
    model = nonzero_biases(GateOverSplitCat())
    x = (torch.randn(2, 3, 8, 8),)
    masks = {"se.weight": torch.tensor([False, False, False, True, True, True])}  # conv's partners
    for prune_bias in (True, False):
        pruned = fxprune.prune(model, x, masks=masks, prune_bias=prune_bias)
        masked = fxprune.apply_masks(model, x, masks=masks, prune_bias=prune_bias)
        assert pruned.conv.out_channels == 1
        with torch.no_grad():
            xi = fresh_like(x)
            assert pruned.meta["fxprune"].compare(masked(*xi), pruned(*xi)) <= RTOL


def test_dead_producer_coupled_with_live_ones():
    """All of conv's channels are dead, but the gate's channels it is coupled with are not."""
    torch.manual_seed(0)
    model = nonzero_biases(GateOverSplitCat())
    with torch.no_grad():
        model.conv.weight.zero_()
        model.conv.bias.zero_()
    x = (torch.randn(2, 3, 8, 8),)
    smaller = assert_dead_exact(model, x)
    assert smaller.conv.out_channels == 1


def test_masks_of_a_producer_pruned_whole_through_coupling_round_trip():
    """se's mask prunes the gate rows over conv's channels: conv keeps one masked row, and the
    all-False mask report.masks holds for it is accepted when passed back."""
    model = nonzero_biases(GateOverSplitCat())
    x = (torch.randn(2, 3, 8, 8),)
    keep = torch.tensor([False, False, False, True, True, True])
    first = prune_both(model, x, sparsity=None, masks={"se.weight": keep})[0]
    masks = first.meta["fxprune"].masks
    assert not bool(masks["conv.weight"].any()) and first.conv.out_channels == 1
    again = prune_both(model, x, sparsity=None, masks=masks)[0]
    assert again.meta["fxprune"].params_after == first.meta["fxprune"].params_after
    with pytest.raises(ValueError, match="prunes every row"):   # a producer alone in its group
        fxprune.prune(model, x, masks={"head.weight": torch.zeros(4, dtype=torch.bool)}, prune_outputs=True)
