"""BatchNorm networks: pruned == masked in eval and train mode, both prune_bias settings."""
import pytest
import torch
import torch.nn as nn

import fxprune
from conftest import RTOL, assert_pruned_equals_masked, fresh_like


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
