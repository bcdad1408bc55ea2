"""BatchNorm networks: pruned == masked in eval and train mode, both prune_bias settings."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import fxprune
from conftest import RTOL, assert_pruned_equals_masked, fresh_like, prune_both


class VGGBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x):
        return self.classifier(self.features(x))


def vggbn():
    m = VGGBN()
    with torch.no_grad():  # non-trivial statistics and affine parameters
        for bn in m.modules():
            if isinstance(bn, nn.modules.batchnorm._BatchNorm):
                bn.running_mean.normal_()
                bn.running_var.uniform_(0.5, 2.0)
                bn.weight.normal_()
                bn.bias.normal_()
    return m


def test_param_count_by_hand():
    pruned = fxprune.prune(vggbn().eval(), (torch.randn(4, 3, 16, 16),), sparsity=0.5)
    # conv1 3->8 (+bias), bn 8, conv2 8->16 (no bias), bn 16, fc 16*4*4 -> 32 (+bias), bn1d 32, fc 32 -> 10
    expected = (3 * 8 * 9 + 8) + 2 * 8 + 8 * 16 * 9 + 2 * 16 + (256 * 32 + 32) + 2 * 32 + (32 * 10 + 10)
    assert sum(p.numel() for p in pruned.parameters()) == expected
    assert pruned.meta["fxprune"].params_after == expected


@pytest.mark.parametrize("prune_bias", [True, False])
def test_eval_mode_exact(prune_bias):
    model, x = vggbn().eval(), torch.randn(4, 3, 16, 16)
    pruned = fxprune.prune(model, (x,), sparsity=0.5, prune_bias=prune_bias)
    assert pruned.meta["fxprune"].params_after < pruned.meta["fxprune"].params_before
    assert_pruned_equals_masked(model, (x,), pruned)


@pytest.mark.parametrize("prune_bias", [True, False])
def test_train_mode_exact_and_statistics_untouched(prune_bias):
    model, x = vggbn().train(), torch.randn(4, 3, 16, 16)
    pruned = fxprune.prune(model, (x,), sparsity=0.5, prune_bias=prune_bias)
    report = pruned.meta["fxprune"]
    # verification restored the statistics: the pruned BN holds the original's kept running stats
    bn_before = model.features[1].running_mean
    bn_after = pruned.get_submodule("features.1").running_mean
    assert set(bn_after.tolist()) <= set(bn_before.tolist())
    masked = fxprune.apply_masks(model, (x,), masks=report.masks, prune_bias=prune_bias).train()
    pruned.train()
    x2 = fresh_like((torch.randn(8, 3, 16, 16),))[0]
    with torch.no_grad():
        assert report.compare(masked(x2), pruned(x2)) <= RTOL


# ------------------------------------------------------------------------------------------------
# RMSNorm written by hand (LLaMA): x * rsqrt(mean(x^2 over channels) + eps) * weight


class RMSNorm(nn.Module):
    def __init__(self, d, eps=1e-6):
        super().__init__()
        self.eps, self.weight = eps, nn.Parameter(1 + 0.1 * torch.randn(d))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class RMSBlock(nn.Module):
    """A pre-norm residual block with RMSNorm."""

    def __init__(self):
        super().__init__()
        self.emb, self.norm, self.up = nn.Linear(8, 16), RMSNorm(16), nn.Linear(16, 32)
        self.down, self.norm2, self.head = nn.Linear(32, 16), RMSNorm(16), nn.Linear(16, 5)

    def forward(self, x):
        h = self.emb(x)
        h = h + self.down(F.silu(self.up(self.norm(h))))
        return self.head(self.norm2(h))


def test_rmsnorm_residual_stream_is_pruned_exactly():
    """Zero channels add nothing to the sum of squares; the mean keeps dividing by 16."""
    torch.manual_seed(0)
    model, x = RMSBlock().eval(), torch.randn(2, 3, 8)
    pruned = fxprune.prune(model, (x,), sparsity=0.5)
    stream = next(g for g in pruned.meta["fxprune"].groups if "emb.weight" in g.producers)
    assert (stream.width_before, stream.width_after) == (16, 8)
    assert "/ 16.0" in pruned.code
    assert_pruned_equals_masked(model, (x,), pruned)
    # with the biases kept, pruned channels hold constants that the mean would miss: they stay
    pruned = fxprune.prune(model, (x,), sparsity=0.5, prune_bias=False)
    stream = next(g for g in pruned.meta["fxprune"].groups if "emb.weight" in g.producers)
    assert stream.width_after == 16 and "mean" in stream.reason
    assert_pruned_equals_masked(model, (x,), pruned)


def test_max_over_channels_is_a_barrier():
    class MaxNorm(nn.Module):
        def forward(self, x):
            return x / (x.abs().amax(-1, keepdim=True) + 1)

    model = nn.Sequential(nn.Linear(8, 16), MaxNorm(), nn.Linear(16, 4)).eval()
    x = torch.randn(3, 8)
    pruned = fxprune.prune(model, (x,), sparsity=0.5)
    report = pruned.meta["fxprune"]
    assert any("reduction over a channel dim" in why for _, why in report.barriers)
    assert report.params_after == report.params_before
    assert_pruned_equals_masked(model, (x,), pruned)


class _RMSBlock(nn.Module):
    """nn.RMSNorm (traced: F.rms_norm on get_attr weights) over a residual stream."""

    def __init__(self):
        super().__init__()
        self.up, self.norm, self.fc, self.head = nn.Linear(6, 16), nn.RMSNorm(16), nn.Linear(16, 16), nn.Linear(16, 3)
        with torch.no_grad():
            self.norm.weight.uniform_(0.5, 1.5)

    def forward(self, x):
        h = self.up(x)
        h = h + self.fc(self.norm(h))
        return self.head(self.norm(h))


def test_rms_norm_symbolic_and_exported():
    """F.rms_norm (and aten.rms_norm from torch.export): the masked model's statistics leave pruned
    channels out, so removing them is exact; its weight is sliced with the stream."""
    model, x = _RMSBlock().eval(), torch.randn(4, 6)
    for pruned in prune_both(model, x):
        assert pruned.norm.weight.shape == (8,) and pruned.up.out_features == 8
    program = fxprune.prune(torch.export.export(model, (x,)), sparsity=0.5)
    report = program.graph_module.meta["fxprune"]
    assert report.exact and report.params_after == pruned.meta["fxprune"].params_after
    masked = fxprune.apply_masks(model, (x,), masks=report.masks)
    y = torch.randn(4, 6)   # a static program: the example's batch size
    assert report.compare(masked(y), program.module()(y)) <= 1e-6


class _GroupNorm1(nn.Module):
    """F.group_norm with one group (timm's GroupNorm1: a LayerNorm over (C, H, W)) between convs."""

    def __init__(self):
        super().__init__()
        self.conv, self.head = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 4, 1)
        self.weight, self.bias = nn.Parameter(torch.rand(16) + 0.5), nn.Parameter(torch.randn(16))

    def forward(self, x):
        return self.head(F.group_norm(self.conv(x), 1, self.weight, self.bias, 1e-5))


def test_group_norm_with_one_group():
    model, x = _GroupNorm1().eval(), torch.randn(2, 3, 8, 8)
    for pruned in prune_both(model, x):
        assert pruned.conv.out_channels == 8 and pruned.weight.shape == (8,)
