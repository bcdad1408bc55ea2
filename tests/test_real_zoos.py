"""Real model zoos nobody here wrote: timm and torchvision models, random init, small inputs.

1. The cases that came back silently inexact or failed to capture (issue 11), each a regression test:
   pruned == masked on a fresh input, and the verification guard did not fire.
2. A representative subset with both prune_bias settings.
3. Dead channels: a quarter of every BatchNorm's channels zeroed by hand (weight and bias), an oracle that
   does not use fxprune; ``eliminate_dead_channels`` must return the function of the model it was given.

Random init can make a comparison vacuous (a zero-initialised gain makes every output equal): constant
parameters get a random perturbation and BatchNorm statistics random values first, and every test
checks that the output depends on the input. ``tools/sweep.py`` runs whole zoos; this is the fast part.
"""
from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn as nn

import fxprune
import real_zoos as rz
from conftest import assert_pruned_equals_masked, fresh_like, model_digest

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning", "ignore::FutureWarning"),
              pytest.mark.usefixtures("one_thread")]   # real models: one thread each, steadier on CI

# (source, name, input side, create_model kwargs)
REGRESSIONS = [
    ("timm", "repvgg_a0", 32, {}),                 # BatchNormAct2d (Identity act) rebuilt with ReLU
    ("timm", "fastvit_t8", 32, {}),
    ("timm", "mobilenetv3_large_100", 32, {}),
    ("timm", "rexnet_100", 32, {}),
    ("timm", "efficientnet_b0", 32, {}),
    ("timm", "xception41", 32, {}),
    ("timm", "cspdarknet53", 32, {}),
    ("timm", "mobilenetv4_conv_small", 32, {}),
    ("timm", "lcnet_050", 32, {}),
    ("timm", "coatnet_0_rw_224", 64, {"img_size": 64}),
    ("timm", "maxvit_tiny_tf_224", 64, {"img_size": 64}),   # AvgPool2dSame: KeyError in capture
    ("timm", "nfnet_l0", 32, {}),                  # ScaledStdConv2d: F.batch_norm over the weight
    ("timm", "efficientvit_b0", 64, {}),           # shape-dependent Python: captured by torch.export
]
SUBSET = [
    ("torchvision", "resnet18", 32, {}),
    ("torchvision", "mobilenet_v3_small", 32, {}),
    ("timm", "convnext_atto", 32, {}),             # LayerNorm2d
    ("timm", "deit_tiny_patch16_224", 32, {"img_size": 32}),
]
DEAD = [("timm", "efficientnet_b0", 32, {}), ("timm", "lcnet_050", 32, {}), ("timm", "repvgg_a0", 32, {}),
        ("timm", "cspdarknet53", 32, {})]


def _build(source, name, side, kwargs):
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if source == "timm":
            model = rz.import_timm().create_model(name, pretrained=False, **kwargs).eval()
        else:
            model = rz.build(source, name)
    return rz.perturbed(model), (torch.randn(1, 3, side, side),)


def _depends_on_input(model, inputs) -> None:
    with torch.no_grad():
        a, b = model(*fresh_like(inputs, 1)), model(*fresh_like(inputs, 2))
    assert not torch.equal(a, b), "the output does not depend on the input: the comparison would be vacuous"


def _check(model, inputs, prune_bias):
    digest = model_digest(model)
    pruned = fxprune.prune(model, inputs, sparsity=0.5, prune_bias=prune_bias)
    report = pruned.meta["fxprune"]
    assert report.exact and not any("verification guard" in n for n in report.notes), "the guard fired"
    # with prune_bias=False, a kept bias's constant before a zero-padded conv keeps its channel (exact)
    assert report.params_after < report.params_before or not prune_bias
    assert_pruned_equals_masked(model, inputs, pruned, n_trials=1)
    assert model_digest(model) == digest
    return report




@pytest.mark.parametrize("source, name, side, kwargs", REGRESSIONS, ids=[c[1] for c in REGRESSIONS])
def test_regression(source, name, side, kwargs):
    model, inputs = _build(source, name, side, kwargs)
    _depends_on_input(model, inputs)
    _check(model, inputs, prune_bias=True)


@pytest.mark.parametrize("prune_bias", [True, False])
@pytest.mark.parametrize("source, name, side, kwargs", SUBSET, ids=[f"{c[0]}-{c[1]}" for c in SUBSET])
def test_subset(source, name, side, kwargs, prune_bias):
    model, inputs = _build(source, name, side, kwargs)
    _depends_on_input(model, inputs)
    report = _check(model, inputs, prune_bias)
    if prune_bias:   # every width halves: at most 0.40 of the parameters stay
        assert report.params_after <= 0.40 * report.params_before


@pytest.mark.parametrize("source, name, side, kwargs", DEAD, ids=[c[1] for c in DEAD])
def test_dead_channels_oracle(source, name, side, kwargs):
    model, inputs = _build(source, name, side, kwargs)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine:
                k = m.num_features // 4
                m.weight[:k] = 0
                m.bias[:k] = 0
    _depends_on_input(model, inputs)
    digest = model_digest(model)
    smaller = fxprune.eliminate_dead_channels(model, inputs)
    assert model_digest(model) == digest
    assert smaller.meta["fxprune"].params_after < smaller.meta["fxprune"].params_before
    x = fresh_like(inputs)
    with torch.no_grad():
        want, got = model(*x), smaller(*x)
    assert float((want - got).abs().max() / want.abs().max()) <= 1e-5
