"""Every torch.ao seed model, both prune_bias settings, sparsity mode: pruned == masked and smaller."""
import pytest
import torch
from torch.testing._internal import common_pruning as cp

import fxprune
from conftest import assert_pruned_equals_masked

LINEAR = [cp.SimpleLinear, cp.LinearBias, cp.LinearActivation, cp.LinearActivationFunctional]
CONV = [cp.SimpleConv2d, cp.Conv2dBias, cp.Conv2dActivation, cp.Conv2dPadBias, cp.Conv2dPool,
        cp.Conv2dPoolFlatten, cp.Conv2dPoolFlattenFunctional]


@pytest.mark.parametrize("prune_bias", [True, False])
@pytest.mark.parametrize("cls", LINEAR + CONV, ids=lambda c: getattr(c, "__name__", str(c)))
def test_sparsity_half(cls, prune_bias):
    model = cls().eval()
    x = torch.randn(4, 7) if cls in LINEAR else torch.randn(2, 1, 28, 28)
    pruned = fxprune.prune(model, (x,), sparsity=0.5, prune_bias=prune_bias)
    report = pruned.meta["fxprune"]
    if cls is cp.Conv2dPool and not prune_bias:
        # every consumer is a zero-padded conv: kept biases are constants that cannot be folded exactly
        # (and a zero-padded average pool makes them input-dependent at the borders)
        assert report.params_after == report.params_before
        inner = [g for g in report.groups if "output" not in g.pattern]
        assert inner and all(g.status == "unprunable" for g in inner)
        assert all("constant" in g.reason or "input-dependent" in g.reason for g in inner)
    else:
        assert report.params_after < report.params_before
    assert report.rel_diff <= 1e-5
    assert_pruned_equals_masked(model, (x,), pruned)
