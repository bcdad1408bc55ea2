"""The zoo (tests/zoo.py): 24 small real-architecture models, pruned at sparsity 0.5.

1. every model, both prune_bias settings, eval mode: pruned == masked on fresh inputs;
2. BatchNorm networks in train mode: pruned == masked on a fresh batch, running stats untouched by prune();
3. parameter counts derived by hand from the architectures (arithmetic below, not fxprune's output).

Run with ``-v`` to get the table of parameter counts and relative diffs at the end of the module.
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F

import fxprune
import zoo
from conftest import RTOL, assert_pruned_equals_masked, fresh_like
from zoo import ZOO, ZOO_BY_NAME

# (model name, prune_bias) -> why prune() is known to fail there. strict: a fix turns the case into XPASS,
# which fails, so the entry must then be removed.
KNOWN_GAPS = {
}

_RESULTS: dict[str, dict] = {}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module", autouse=True)
def _one_thread(request):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    if _RESULTS and request.config.getoption("verbose") > 0:
        rows = [("model", "params", "pb=True", "pb=False", "max rel diff")]
        for name, _, _ in ZOO:
            r = _RESULTS.get(name)
            if r is None:
                continue
            cells = [str(r.get(pb, {}).get("after", "raises")) for pb in (True, False)]
            diffs = [r[pb]["diff"] for pb in (True, False) if pb in r]
            rows.append((name, str(r["before"]), *cells, f"{max(diffs):.2g}" if diffs else "-"))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        table = "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows)
        capman = request.config.pluginmanager.getplugin("capturemanager")
        with capman.global_and_fixture_disabled():
            print("\n\nfxprune zoo at sparsity 0.5 (params after with prune_bias=True / False):\n" + table)


# =====================================================================================================
# 1. every zoo model, both prune_bias settings, eval mode
# =====================================================================================================

def _zoo_cases():
    for name, _, _ in ZOO:
        for pb in (True, False):
            marks = []
            if (name, pb) in KNOWN_GAPS:
                marks.append(pytest.mark.xfail(strict=True, raises=RuntimeError, reason=KNOWN_GAPS[name, pb]))
            yield pytest.param(name, pb, id=f"{name}-pb{pb}", marks=marks)


@pytest.mark.parametrize("name, prune_bias", list(_zoo_cases()))
def test_zoo_pruned_equals_masked(name, prune_bias):
    factory, inputs_factory = ZOO_BY_NAME[name]
    model, inputs = factory().eval(), inputs_factory()
    before = n_params(model)
    state = copy.deepcopy(model.state_dict())

    pruned = fxprune.prune(model, inputs, sparsity=0.5, prune_bias=prune_bias)
    report = pruned.meta["fxprune"]

    assert report.rel_diff <= RTOL, f"{name}: pruned != masked on the example inputs ({report.rel_diff:.3g})"
    assert report.exact and not any("verification guard" in n for n in report.notes), "the guard fired"
    worst = assert_pruned_equals_masked(model, inputs, pruned)
    after = n_params(pruned)
    assert report.params_before == before
    assert report.params_after == after
    assert after <= before
    if prune_bias:  # with prune_bias every zoo model has a prunable group
        assert after < before, f"{name}: nothing pruned\n{report}"
    # the input model is never modified
    assert set(model.state_dict()) == set(state)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    rec = _RESULTS.setdefault(name, {"before": before})
    rec[prune_bias] = {"after": after, "diff": max(worst, report.rel_diff)}


# =====================================================================================================
# 2. train mode: BatchNorm on batch statistics
# =====================================================================================================

def _bn_producers(model: nn.Module) -> dict[str, str]:
    """BatchNorm module name -> the conv whose output it normalizes (its input node, directly)."""
    gm = torch.fx.symbolic_trace(model)
    modules = dict(gm.named_modules())
    out = {}
    for node in gm.graph.nodes:
        if node.op == "call_module" and isinstance(modules[node.target], nn.modules.batchnorm._BatchNorm):
            src = node.args[0]
            assert src.op == "call_module" and isinstance(modules[src.target], nn.Conv2d), node.target
            out[node.target] = src.target
    return out


@pytest.mark.parametrize("prune_bias", [True, False])
@pytest.mark.parametrize("name", ["resnet_basic", "resnet_bottleneck"])
def test_train_mode_batchnorm(name, prune_bias):
    factory, _ = ZOO_BY_NAME[name]
    model = factory().train()
    x = (zoo._images(4, seed=5),)
    state = copy.deepcopy(model.state_dict())

    pruned = fxprune.prune(model, x, sparsity=0.5, prune_bias=prune_bias)
    report = pruned.meta["fxprune"]
    assert report.rel_diff <= RTOL
    if prune_bias:
        assert report.params_after < report.params_before
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items()), "prune() changed the model"

    # the pruned BNs hold exactly the original's statistics of the kept channels (prune() ran the model
    # in train mode to verify; the statistics must have been restored)
    producers = _bn_producers(model)
    groups = fxprune.find_patterns(model, x)
    known = {p for g in groups for p in g["producers"]}
    for bn_name, conv_name in producers.items():
        assert f"{conv_name}.weight" in known, f"{bn_name} does not follow a producer"
        bn = model.get_submodule(bn_name)
        keep = report.masks.get(f"{conv_name}.weight", torch.ones(bn.num_features, dtype=torch.bool))
        pbn = pruned.get_submodule(bn_name)
        assert pbn.num_features == int(keep.sum())
        assert torch.equal(pbn.running_mean, bn.running_mean[keep]), bn_name
        assert torch.equal(pbn.running_var, bn.running_var[keep]), bn_name
        assert torch.equal(pbn.num_batches_tracked, bn.num_batches_tracked), bn_name

    masked = fxprune.apply_masks(model, x, masks=report.masks, prune_bias=prune_bias).train()
    pruned.train()
    batch = fresh_like((torch.empty(8, 3, 32, 32),), seed=77)
    with torch.no_grad():
        diff = report.compare(masked(*batch), pruned(*batch))
    assert diff <= RTOL, f"train mode: pruned != masked ({diff:.3g})"


# =====================================================================================================
# 3. parameter counts derived by hand (sparsity 0.5: every prunable group keeps w - int(w * 0.5))
#
#    conv k x k, cin -> cout, groups g: cin / g * cout * k * k (+ cout bias); BatchNorm / LayerNorm: 2 * c;
#    Linear: in * out (+ out); a depthwise conv's channels are the group of its input; a Linear after a
#    flatten of C x H x W loses H * W columns per pruned channel; groups that reach the output stay.
# =====================================================================================================

def _prune(model, inputs, prune_bias=True):
    pruned = fxprune.prune(model, inputs, sparsity=0.5, prune_bias=prune_bias)
    report = pruned.meta["fxprune"]
    assert report.rel_diff <= RTOL
    assert report.params_after == n_params(pruned)
    return pruned


def test_resnet_basic_by_hand():
    factory, inputs = ZOO_BY_NAME["resnet_basic"]
    model, x = factory(), inputs()
    # ResNet(BasicBlock, [2, 2], widths=(16, 32)): convs have no bias
    before = ((3 * 16 * 9 + 2 * 16)                                        # conv1, bn1
              + 2 * (16 * 16 * 9 + 2 * 16 + 16 * 16 * 9 + 2 * 16)           # layer1.0, layer1.1
              + (16 * 32 * 9 + 2 * 32 + 32 * 32 * 9 + 2 * 32               # layer2.0 conv1, conv2
                 + 16 * 32 + 2 * 32)                                        # layer2.0 downsample 1x1, bn
              + (32 * 32 * 9 + 2 * 32 + 32 * 32 * 9 + 2 * 32)               # layer2.1
              + (32 * 10 + 10))                                             # fc
    assert n_params(model) == before
    # groups: stream 1 = {conv1, layer1.0.conv2, layer1.1.conv2} 16 -> 8; each block's conv1 16 -> 8 / 32 -> 16;
    # stream 2 = {layer2.0.conv2, layer2.0.downsample, layer2.1.conv2} 32 -> 16 (fc loses 16 columns)
    expected = ((3 * 8 * 9 + 2 * 8)
                + 2 * (8 * 8 * 9 + 2 * 8 + 8 * 8 * 9 + 2 * 8)
                + (8 * 16 * 9 + 2 * 16 + 16 * 16 * 9 + 2 * 16
                   + 8 * 16 + 2 * 16)
                + (16 * 16 * 9 + 2 * 16 + 16 * 16 * 9 + 2 * 16)
                + (16 * 10 + 10))
    assert n_params(_prune(model, x)) == expected == 11122


def test_resnet_basic_by_hand_no_prune_bias():
    factory, inputs = ZOO_BY_NAME["resnet_basic"]
    model, x = factory(), inputs()
    # prune_bias=False: a pruned channel is bn.bias - bn.running_mean * scale after its BN (a nonzero constant),
    # and every group reaches a zero-padded 3x3 conv (stream 2 through layer2.1.conv1), so nothing is removed
    assert n_params(_prune(model, x, prune_bias=False)) == n_params(model)


def test_mobilenet_v2_by_hand():
    factory, inputs = ZOO_BY_NAME["mobilenet_v2"]
    model, x = factory(), inputs()
    # width_mult 0.5: stem 16; blocks (inp, out, hidden): (16, 8, 16, t=1), (8, 16, 48), (16, 16, 96) x 3 (the 1st
    # and 3rd with a residual), (16, 32, 96); last 1x1 32 -> 256; classifier 256 -> 10. No conv biases.
    before = ((3 * 16 * 9 + 2 * 16)
              + (16 * 9 + 2 * 16 + 16 * 8 + 2 * 8)
              + (8 * 48 + 2 * 48 + 48 * 9 + 2 * 48 + 48 * 16 + 2 * 16)
              + 3 * (16 * 96 + 2 * 96 + 96 * 9 + 2 * 96 + 96 * 16 + 2 * 16)
              + (16 * 96 + 2 * 96 + 96 * 9 + 2 * 96 + 96 * 32 + 2 * 32)
              + (32 * 256 + 2 * 256)
              + (256 * 10 + 10))
    assert n_params(model) == before
    # groups: stem (+ features.1's depthwise) 16 -> 8; features.1 pw 8 -> 4; expansions 48 -> 24, 96 -> 48;
    # stream A = {features.2 pw, features.3 pw} 16 -> 8; stream B = {features.4 pw, features.5 pw} 16 -> 8;
    # features.6 pw 32 -> 16; last 1x1 256 -> 128; classifier output stays 10
    expected = ((3 * 8 * 9 + 2 * 8)
                + (8 * 9 + 2 * 8 + 8 * 4 + 2 * 4)
                + (4 * 24 + 2 * 24 + 24 * 9 + 2 * 24 + 24 * 8 + 2 * 8)
                + 3 * (8 * 48 + 2 * 48 + 48 * 9 + 2 * 48 + 48 * 8 + 2 * 8)
                + (8 * 48 + 2 * 48 + 48 * 9 + 2 * 48 + 48 * 16 + 2 * 16)
                + (16 * 128 + 2 * 128)
                + (128 * 10 + 10))
    assert n_params(_prune(model, x)) == expected == 10602


class _OneInvertedResidual(nn.Module):
    """stem conv -> one MobileNetV2 block with a residual (expand, depthwise, project) -> pooled Linear head."""

    def __init__(self):
        super().__init__()
        self.stem = zoo.Conv2dNormActivation(3, 16, stride=2, activation_layer=nn.ReLU6)
        self.block = zoo.InvertedResidual(16, 16, 1, expand_ratio=6)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = self.block(self.stem(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def test_mobilenet_v2_one_block_by_hand():
    torch.manual_seed(0)
    model = zoo._finish(_OneInvertedResidual(), (zoo._images(8, seed=99),))
    x = zoo._images()
    before = (3 * 16 * 9 + 2 * 16) + (16 * 96 + 2 * 96 + 96 * 9 + 2 * 96 + 96 * 16 + 2 * 16) + (16 * 10 + 10)
    assert n_params(model) == before
    # the residual couples the stem with the projection: 16 -> 8; the expansion (+ its depthwise) 96 -> 48
    expected = (3 * 8 * 9 + 2 * 8) + (8 * 48 + 2 * 48 + 48 * 9 + 2 * 48 + 48 * 8 + 2 * 8) + (8 * 10 + 10)
    assert n_params(_prune(model, (x,))) == expected == 1730


def test_vgg_bn_by_hand():
    factory, inputs = ZOO_BY_NAME["vgg_bn"]
    model, x = factory(), inputs()
    # convs with bias: 3 -> 16, M, 16 -> 32, M, 32 -> 64, 64 -> 64, M; AdaptiveAvgPool2d((2, 2)) -> flatten 64 * 4;
    # classifier 256 -> 128 -> 128 -> 10
    before = ((3 * 16 * 9 + 16 + 2 * 16) + (16 * 32 * 9 + 32 + 2 * 32) + (32 * 64 * 9 + 64 + 2 * 64)
              + (64 * 64 * 9 + 64 + 2 * 64)
              + (64 * 4 * 128 + 128) + (128 * 128 + 128) + (128 * 10 + 10))
    assert n_params(model) == before
    # every conv and hidden Linear halves; fc1 loses 2 * 2 columns per pruned channel of the last conv
    expected = ((3 * 8 * 9 + 8 + 2 * 8) + (8 * 16 * 9 + 16 + 2 * 16) + (16 * 32 * 9 + 32 + 2 * 32)
                + (32 * 32 * 9 + 32 + 2 * 32)
                + (32 * 4 * 64 + 64) + (64 * 64 + 64) + (64 * 10 + 10))
    assert n_params(_prune(model, x)) == expected == 28522


def test_vgg_bn_by_hand_no_prune_bias():
    factory, inputs = ZOO_BY_NAME["vgg_bn"]
    model, x = factory(), inputs()
    # prune_bias=False: conv bias -> BN -> ReLU leaves a constant in a pruned channel. The first three convs feed
    # zero-padded 3x3 convs (not foldable): kept. The last conv's constant goes through pools and the flatten
    # into fc1 (folded into its bias): 64 -> 32; fc1, fc2 fold into the next Linear: 128 -> 64 each.
    expected = ((3 * 16 * 9 + 16 + 2 * 16) + (16 * 32 * 9 + 32 + 2 * 32) + (32 * 64 * 9 + 64 + 2 * 64)
                + (64 * 32 * 9 + 32 + 2 * 32)
                + (32 * 4 * 64 + 64) + (64 * 64 + 64) + (64 * 10 + 10))
    assert n_params(_prune(model, x, prune_bias=False)) == expected == 55402


def _dense_layer(c, inter, growth):
    """DenseLayer on c input channels: bn1(c), conv1 1x1 c -> inter, bn2(inter), conv2 3x3 inter -> growth."""
    return 2 * c + c * inter + 2 * inter + inter * growth * 9


class _DenseBlockNet(nn.Module):
    """DenseNet's stem, first dense block (2 layers, growth 8) and transition, then a flatten -> Linear head."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, kernel_size=3, padding=1, bias=False)
        self.dense1 = zoo.DenseNet._make_dense_layers(16, 8, 2)
        self.trans1 = zoo.Transition(32, 16)
        self.linear = nn.Linear(16 * 4 * 4, 10)

    def forward(self, x):
        out = self.trans1(self.dense1(self.conv1(x)))   # 16 x 16 x 16
        out = F.avg_pool2d(out, 4)                       # 16 x 4 x 4
        return self.linear(out.view(out.size(0), -1))


def test_resnet_bottleneck_by_hand():
    """ResNet(Bottleneck, [2, 1], widths=(8, 16)): expansion 4, 1x1 / 3x3 / 1x1 convs without bias."""
    factory, inputs = ZOO_BY_NAME["resnet_bottleneck"]
    model, x = factory(), inputs()

    def block(cin, inner, out, down):
        return ((cin * inner + 2 * inner) + (inner * inner * 9 + 2 * inner) + (inner * out + 2 * out)
                + ((cin * out + 2 * out) if down else 0))

    def count(stem, s1, i1, s2, i2):
        return ((3 * stem * 9 + 2 * stem) + block(stem, i1, s1, True) + block(s1, i1, s1, False)
                + block(s1, i2, s2, True) + (s2 * 10 + 10))

    assert n_params(model) == count(8, 32, 8, 64, 16)
    # groups: the stem (8, read by layer1.0.conv1 and its downsample) 8 -> 4; stream 1 = {layer1.0.conv3,
    # layer1.0.downsample, layer1.1.conv3} 32 -> 16; stream 2 = {layer2.0.conv3, downsample} 64 -> 32;
    # every block's two inner widths halve
    assert n_params(_prune(model, x)) == count(4, 16, 4, 32, 8) == 2766


def test_resnet_fused_by_hand():
    """resnet_basic after torch.fx.experimental.optimization.fuse: each BatchNorm folded into its conv
    (a bias of cout instead of 2 * cout); the groups are resnet_basic's."""
    factory, inputs = ZOO_BY_NAME["resnet_fused"]
    model, x = factory(), inputs()

    def count(a, b):  # stream widths: layer1 a, layer2 b (inner widths the same)
        conv = lambda cin, cout, k=3: cin * cout * k * k + cout
        return (conv(3, a) + 2 * (conv(a, a) + conv(a, a)) + (conv(a, b) + conv(b, b) + conv(a, b, 1))
                + 2 * conv(b, b) + (b * 10 + 10))

    assert n_params(model) == count(16, 32)
    assert n_params(_prune(model, x)) == count(8, 16) == 11002


def test_m5_audio_by_hand():
    """torchaudio's M5 (Conv1d, biased, each followed by BatchNorm1d): widths 32, 32, 64, 64; fc to 35
    after a permute (channels last)."""
    factory, inputs = ZOO_BY_NAME["m5_audio"]
    model, x = factory(), inputs()

    def count(a, b):
        conv = lambda cin, cout, k: cin * cout * k + cout + 2 * cout       # with its BatchNorm
        return conv(1, a, 80) + conv(a, a, 3) + conv(a, b, 3) + conv(b, b, 3) + (b * 35 + 35)

    assert n_params(model) == count(32, 64)
    assert n_params(_prune(model, x)) == count(16, 32) == 8099


def test_vit_by_hand():
    """ViT: 8x8 patches of 32x32 images (16 + 1 tokens), embed 64, 2 blocks of nn.MultiheadAttention
    (4 heads of 16) and MLP 128, 10 classes. The residual stream (patch embedding, cls token,
    position embedding, every LayerNorm, out_proj and MLP output) halves to 32; 2 of 4 heads go
    whole (head_dim stays 16); the MLPs halve to 64."""
    factory, inputs = ZOO_BY_NAME["vit"]
    model, x = factory(), inputs()

    def count(e, heads, mlp, hd=16):
        block = (2 * e + (3 * heads * hd * e + 3 * heads * hd) + (heads * hd * e + e) + 2 * e
                 + (e * mlp + mlp) + (mlp * e + e))
        return (3 * e * 8 * 8 + e) + e + 17 * e + 2 * block + 2 * e + (e * 10 + 10)

    assert n_params(model) == count(64, 4, 128)
    assert n_params(_prune(model, x)) == count(32, 2, 64) == 24234


def test_convnext_by_hand():
    """ConvNeXt dims (32, 64), depths (2, 1). The stem group (32) passes the hand-written channels-first
    LayerNorm, which a pruned channel would change (x - mean is not zero): it stays. The MLPs halve
    (128 -> 64, 256 -> 128), and the second stream (downsample conv, block, final norm, head) halves."""
    factory, inputs = ZOO_BY_NAME["convnext"]
    model, x = factory(), inputs()

    def block(d, h):  # dwconv 7x7 + bias, LayerNorm, pwconv1, pwconv2, gamma
        return (d * 49 + d) + 2 * d + (d * h + h) + (h * d + d) + d

    def count(a, b, h0, h1):
        return ((3 * a * 16 + a) + 2 * a + 2 * block(a, h0) + 2 * a + (a * b * 4 + b) + block(b, h1)
                + 2 * b + (b * 10 + 10))

    assert n_params(model) == count(32, 64, 128, 256)
    assert n_params(_prune(model, x)) == count(32, 32, 64, 128) == 28042


def test_unet_by_hand():
    """milesial UNet, base 8: no residual adds, so every conv's output is its own group and halves
    (the ConvTranspose2d outputs too: F.pad and the skip concatenations carry channels). Only the 3 input
    and 2 output channels stay, so the pruned UNet is the UNet of base 4."""
    factory, inputs = ZOO_BY_NAME["unet"]
    model, x = factory(), inputs()

    def count(b):
        dc = lambda cin, cout: cin * cout * 9 + 2 * cout + cout * cout * 9 + 2 * cout   # DoubleConv
        up = lambda cin, cout: (cin * (cin // 2) * 4 + cin // 2) + dc(cin, cout)     # ConvTranspose2d, DoubleConv
        return (dc(3, b) + dc(b, 2 * b) + dc(2 * b, 4 * b) + dc(4 * b, 8 * b)
                + up(8 * b, 4 * b) + up(4 * b, 2 * b) + up(2 * b, b) + (b * 2 + 2))

    assert n_params(model) == count(8)
    assert n_params(_prune(model, x)) == count(4) == 30546


def test_googlenet_by_hand():
    """GoogLeNet with three Inception blocks: each branch conv's output is its own group (the concat
    only places them side by side), and every width is even, so every width halves: the pruned model
    is the same GoogLeNet with half the widths (3 input channels and 10 classes stay)."""
    factory, inputs = ZOO_BY_NAME["googlenet"]
    model, x = factory(), inputs()

    def count(d):
        bc = lambda cin, cout, k: cin * cout * k * k + 2 * cout                # conv (no bias) + BN

        def inception(cin, c1, c3r, c3, c5r, c5, pp):
            cin, c1, c3r, c3, c5r, c5, pp = (w // d for w in (cin, c1, c3r, c3, c5r, c5, pp))
            return (bc(cin, c1, 1) + bc(cin, c3r, 1) + bc(c3r, c3, 3) + bc(cin, c5r, 1) + bc(c5r, c5, 3)
                    + bc(cin, pp, 1))

        return (bc(3, 32 // d, 3) + inception(32, 16, 16, 24, 4, 8, 8) + inception(56, 24, 24, 32, 8, 16, 16)
                + inception(88, 32, 16, 32, 8, 16, 16) + (96 // d * 10 + 10))

    assert n_params(model) == count(1)
    assert n_params(_prune(model, x)) == count(2) == 8606


def test_efficientnet_by_hand():
    """EfficientNet-style MBConvs with SE (Linear, no bias, sigmoid gate `x * y`): convs without bias
    followed by BatchNorm. Groups: the stem joins MBConv 1's SE output rows and projection (the gate and
    the residual add); each expanded width joins its SE output rows; each SE hidden width, MBConv 2 and 3's
    projections (residual), MBConv 4's projection and the head conv are groups of their own. All halve."""
    factory, inputs = ZOO_BY_NAME["efficientnet"]
    model, x = factory(), inputs()

    def count(s0, h1, e2, h2, s1, e3, h3, e4, h4, p4, hd):
        conv_bn = lambda cin, cout, k=1: cin * cout * k * k + 2 * cout
        dw_bn = lambda c, k: c * k * k + 2 * c
        se = lambda c, h: 2 * c * h
        return (conv_bn(3, s0, 3)
                + dw_bn(s0, 3) + se(s0, h1) + conv_bn(s0, s0)                                  # MBConv(16, 16, 1)
                + conv_bn(s0, e2) + dw_bn(e2, 3) + se(e2, h2) + conv_bn(e2, s1)                # MBConv(16, 24, 6)
                + conv_bn(s1, e3) + dw_bn(e3, 3) + se(e3, h3) + conv_bn(e3, s1)                # MBConv(24, 24, 6)
                + conv_bn(s1, e4) + dw_bn(e4, 5) + se(e4, h4) + conv_bn(e4, p4)                # MBConv(24, 40, 6)
                + conv_bn(p4, hd) + (hd * 10 + 10))

    assert n_params(model) == count(16, 4, 96, 4, 24, 144, 6, 144, 6, 40, 160)
    assert n_params(_prune(model, x)) == count(8, 2, 48, 2, 12, 72, 3, 72, 3, 20, 80) == 12786


def test_regnet_by_hand():
    """RegNet-style: stem 16, stages (32, 64) of 2 ResBottleneckBlocks (bottleneck 1.0, group width 8 ->
    4 then 8 groups, SE on the bottleneck). A grouped conv keeps equal widths per group (channel j of
    every group goes together), so each bottleneck width halves with its group count unchanged; the stem,
    the two residual streams (projection + both blocks' c) and every SE hidden width halve too."""
    factory, inputs = ZOO_BY_NAME["regnet"]
    model, x = factory(), inputs()

    def cbn(cin, cout, k=1, groups=1):     # conv without bias + BatchNorm
        return cin // groups * cout * k * k + 2 * cout

    def block(cin, out, groups, se_hidden, proj):
        return ((cbn(cin, out) if proj else 0) + cbn(cin, out) + cbn(out, out, 3, groups)
                + (out * se_hidden + se_hidden + se_hidden * out + out) + cbn(out, out))

    def count(stem, w1, w2, h):
        return (cbn(3, stem, 3) + block(stem, w1, 4, h[0], True) + block(w1, w1, 4, h[1], False)
                + block(w1, w2, 8, h[2], True) + block(w2, w2, 8, h[3], False) + (w2 * 10 + 10))

    assert n_params(model) == count(16, 32, 64, (4, 8, 8, 16))
    assert n_params(_prune(model, x)) == count(8, 16, 32, (2, 4, 4, 8)) == 10884


def test_shufflenet_v2_by_hand():
    """ShuffleNetV2, stages (24, 48, 96) of 2 units, conv5 256. Each unit ends in a channel shuffle
    (view -> transpose -> view), which only reorders channels: when the kept ones do not form a
    rectangle over the shuffle's (2, c/2) view it becomes one index_select, so every branch prunes
    on its own. The chunk after a shuffle sends half of each branch's channels to the next unit's
    identity half and half to its branch; each half halves (README: uneven groups). So every width
    halves: stem 12, stage widths (24, 48), branch widths 12 and 24, conv5 128."""
    factory, inputs = ZOO_BY_NAME["shufflenet_v2"]
    model, x = factory(), inputs()

    def cbn(cin, cout, k=1, groups=1):     # conv without bias + BatchNorm
        return cin // groups * cout * k * k + 2 * cout

    def branch2(cin, bf):                  # 1x1, depthwise 3x3, 1x1
        return cbn(cin, bf) + cbn(bf, bf, 3, bf) + cbn(bf, bf)

    def stage(cin, bf):                    # a stride-2 unit (branch1: depthwise 3x3, 1x1), a stride-1 unit
        return cbn(cin, cin, 3, cin) + cbn(cin, bf) + branch2(cin, bf) + branch2(bf, bf)

    def count(stem, bf2, bf3, c5):
        return cbn(3, stem, 3) + stage(stem, bf2) + stage(2 * bf2, bf3) + cbn(2 * bf3, c5) + (c5 * 10 + 10)

    assert n_params(model) == count(24, 24, 48, 256)
    pruned = _prune(model, x)
    assert n_params(pruned) == count(12, 12, 24, 128) == 13186
    ops = [n.target for n in pruned.graph.nodes]
    assert ops.count(torch.index_select) == 4 and torch.transpose not in ops   # the shuffles are gathers


def test_llama_by_hand():
    """LLaMA (transformers' idioms): RMSNorm, rotary embeddings computed at run time, 4 query heads
    sharing 2 key/value heads, SwiGLU MLP. The residual stream (embedding, every o_proj and down_proj,
    the RMSNorm weights, lm_head's columns) halves 64 -> 32; a key/value head goes with the query heads
    that share it, so 2 kv heads -> 1 and 4 query heads -> 2 (head_dim stays 16: the rotary cos and sin
    span it); each MLP halves 128 -> 64; the vocabulary (the output) stays 96."""
    factory, inputs = ZOO_BY_NAME["llama"]
    model, x = factory(), inputs()

    def count(d, heads, kv_heads, mlp, vocab=96, head_dim=16, layers=2):
        attn = d * heads * head_dim + 2 * d * kv_heads * head_dim + heads * head_dim * d
        return vocab * d + layers * (2 * d + attn + 3 * d * mlp) + d + d * vocab

    assert n_params(model) == count(64, 4, 2, 128)
    pruned = _prune(model, x)
    assert n_params(pruned) == count(32, 2, 1, 64) == 24736
    attn = pruned.get_submodule("layers.0.self_attn")
    assert (attn.q_proj.out_features, attn.k_proj.out_features, attn.o_proj.in_features) == (32, 16, 32)


def test_swin_by_hand():
    """Swin: patch embedding (conv 4x4), two blocks of window attention (4 heads of 8, the second block
    shifted with torch.roll and masked), MLP 128, LayerNorm, classifier. The stream halves 32 -> 16, each
    block keeps 2 of 4 heads, and the relative position bias table (49 x heads), gathered by an index
    buffer, loses the pruned heads' columns; each MLP halves 128 -> 64."""
    factory, inputs = ZOO_BY_NAME["swin"]
    model, x = factory(), inputs()

    def count(d, heads, mlp, head_dim=8, table=49, classes=10):
        inner = heads * head_dim
        block = (2 * d + table * heads + d * 3 * inner + 3 * inner + inner * d + d + 2 * d
                 + d * mlp + mlp + mlp * d + d)
        return (3 * d * 16 + d) + 2 * block + 2 * d + (d * classes + classes)

    assert n_params(model) == count(32, 4, 128)
    pruned = _prune(model, x)
    assert n_params(pruned) == count(16, 2, 64) == 7742
    assert tuple(pruned.get_submodule("blocks.1.attn").relative_position_bias_table.shape) == (49, 2)


def test_mobilenet_v3_by_hand():
    """MobileNetV3 bnecks with hardsigmoid SE (1x1 convs with bias, scale * x): the stem joins block 1's
    depthwise conv and SE output rows (no expand); each expanded width joins its SE output rows; blocks
    2-3 and 4-5 share residual streams; SE hidden widths (8, 24, 32: _make_divisible), the head conv and
    the classifier's hidden Linear are groups of their own. Every group halves."""
    factory, inputs = ZOO_BY_NAME["mobilenet_v3"]
    model, x = factory(), inputs()

    def count(s, se1, p1, e2, q, e3, e4, se4, r, e5, se5, h, l):
        cbn = lambda cin, cout, k=1: cin * cout * k * k + 2 * cout           # conv without bias + BN
        dw = lambda c, k: c * k * k + 2 * c
        se = lambda c, hid: c * hid + hid + hid * c + c
        return (cbn(3, s, 3)
                + dw(s, 3) + se(s, se1) + cbn(s, p1)
                + cbn(p1, e2) + dw(e2, 3) + cbn(e2, q)
                + cbn(q, e3) + dw(e3, 3) + cbn(e3, q)
                + cbn(q, e4) + dw(e4, 5) + se(e4, se4) + cbn(e4, r)
                + cbn(r, e5) + dw(e5, 5) + se(e5, se5) + cbn(e5, r)
                + cbn(r, h) + (h * l + l) + (l * 10 + 10))

    widths = (16, 8, 16, 48, 24, 72, 72, 24, 40, 120, 32, 240, 128)
    assert n_params(model) == count(*widths)
    assert n_params(_prune(model, x)) == count(*(w // 2 for w in widths)) == 23006


def test_tcn_by_hand():
    """locuslab TCN, Conv1d: channels (16, 32, 32), kernel 3, inputs 4, 10 classes."""
    factory, inputs = ZOO_BY_NAME["tcn"]
    model, x = factory(), inputs()

    def block(cin, c, down):  # conv1 + bn1 + conv2 + bn2 (+ 1x1 downsample with bias)
        return (cin * c * 3 + c) + 2 * c + (c * c * 3 + c) + 2 * c + ((cin * c + c) if down else 0)

    assert n_params(model) == block(4, 16, True) + block(16, 32, True) + block(32, 32, False) + (32 * 10 + 10)
    # groups: each block's inner width halves; stream 0 = {block0.conv2, block0.downsample} 16 -> 8;
    # stream 1 = {block1.conv2, block1.downsample, block2.conv2 (identity residual)} 32 -> 16
    expected = block(4, 8, True) + block(8, 16, True) + block(16, 16, False) + (16 * 10 + 10)
    assert n_params(_prune(model, x)) == expected == 3570


def test_r3d_video_by_hand():
    """torchvision r3d (Conv3d): stem 3 -> 16 (3x7x7), layer1 one block 16, layer2 one block 32 with a
    1x1x1 downsample, fc to 10; convs without bias."""
    factory, inputs = ZOO_BY_NAME["r3d_video"]
    model, x = factory(), inputs()

    def count(w1, w2, inner1, inner2):
        return ((3 * w1 * 3 * 7 * 7 + 2 * w1)                               # stem conv, bn
                + (w1 * inner1 * 27 + 2 * inner1) + (inner1 * w1 * 27 + 2 * w1)   # layer1 conv1, conv2
                + (w1 * inner2 * 27 + 2 * inner2) + (inner2 * w2 * 27 + 2 * w2)   # layer2 conv1, conv2
                + (w1 * w2 + 2 * w2)                                        # downsample, bn
                + (w2 * 10 + 10))                                           # fc

    assert n_params(model) == count(16, 32, 16, 32)
    # stream 1 = {stem, layer1.conv2} 16 -> 8; stream 2 = {layer2.conv2, downsample} 32 -> 16; inner widths halve
    assert n_params(_prune(model, x)) == count(8, 16, 8, 16) == 17794


def test_densenet_one_block_by_hand():
    torch.manual_seed(0)
    model = zoo._finish(_DenseBlockNet(), (zoo._images(8, seed=99),))
    x = zoo._images()
    before = ((3 * 16 * 9)
              + (2 * 16 + 16 * 32 + 2 * 32 + 32 * 8 * 9)          # dense1.0 on 16 channels
              + (2 * 24 + 24 * 32 + 2 * 32 + 32 * 8 * 9)          # dense1.1 on cat(16, 8)
              + (2 * 32 + 32 * 16)                                # transition: bn(32), conv 1x1 32 -> 16
              + (16 * 16 * 10 + 10))                              # Linear on flatten(16 x 4 x 4)
    assert n_params(model) == before
    # every producer is its own group (a concat only places channels side by side): stem 16 -> 8,
    # conv1s 32 -> 16, conv2s 8 -> 4, transition 16 -> 8; each BN keeps the channels it normalizes
    expected = ((3 * 8 * 9)
                + (2 * 8 + 8 * 16 + 2 * 16 + 16 * 4 * 9)          # dense1.0 on the stem's 8
                + (2 * 12 + 12 * 16 + 2 * 16 + 16 * 4 * 9)        # dense1.1 on cat(8, 4)
                + (2 * 16 + 16 * 8)                               # transition on cat(8, 4, 4)
                + (8 * 4 * 4 * 10 + 10))                          # the Linear loses 4 * 4 columns per channel
    assert n_params(_prune(model, (x,))) == expected == 3242


def test_densenet_by_hand():
    factory, inputs = ZOO_BY_NAME["densenet"]
    model, x = factory(), inputs()
    # DenseNet(nblocks=(2, 3, 3), growth 8, bn_size 4): stem 16; dense1 on 16, 24 -> 32; trans1 32 -> 16;
    # dense2 on 16, 24, 32 -> 40; trans2 40 -> 20; dense3 on 20, 28, 36 -> 44; bn(44); Linear 44 -> 10
    before = (3 * 16 * 9
              + _dense_layer(16, 32, 8) + _dense_layer(24, 32, 8)
              + 2 * 32 + 32 * 16
              + _dense_layer(16, 32, 8) + _dense_layer(24, 32, 8) + _dense_layer(32, 32, 8)
              + 2 * 40 + 40 * 20
              + _dense_layer(20, 32, 8) + _dense_layer(28, 32, 8) + _dense_layer(36, 32, 8)
              + 2 * 44 + 44 * 10 + 10)
    assert n_params(model) == before
    # halved: stem 8, growth 4, bottleneck 16, transitions 8 and 10
    expected = (3 * 8 * 9
                + _dense_layer(8, 16, 4) + _dense_layer(12, 16, 4)
                + 2 * 16 + 16 * 8
                + _dense_layer(8, 16, 4) + _dense_layer(12, 16, 4) + _dense_layer(16, 16, 4)
                + 2 * 20 + 20 * 10
                + _dense_layer(10, 16, 4) + _dense_layer(14, 16, 4) + _dense_layer(18, 16, 4)
                + 2 * 22 + 22 * 10 + 10)
    assert n_params(_prune(model, x)) == expected == 7518


def test_lstm_last_by_hand():
    factory, inputs = ZOO_BY_NAME["lstm_last"]
    model, x = factory(), inputs()
    # Embedding(100, 32) -> LSTM(32, 48) (4 gates, two bias vectors) -> Linear(48, 5) on the last step
    before = 100 * 32 + (4 * 48 * 32 + 4 * 48 * 48 + 2 * 4 * 48) + (48 * 5 + 5)
    assert n_params(model) == before
    # embedding columns 32 -> 16 (the LSTM loses input columns), hidden units 48 -> 24
    expected = 100 * 16 + (4 * 24 * 16 + 4 * 24 * 24 + 2 * 4 * 24) + (24 * 5 + 5)
    # the gate biases are always masked with their unit and the Embedding has no bias: prune_bias does not matter
    for pb in (True, False):
        assert n_params(_prune(model, x, prune_bias=pb)) == expected == 5757


# ---- GPT (nanoGPT): one block, n_embd 64, 4 heads of 16, MLP 256, vocab 96, block_size 16, biases ----------

def _gpt_one_block(layer_norm: str):
    torch.manual_seed(0)
    model = zoo.GPT(zoo.GPTConfig(n_layer=1))
    if layer_norm == "nn.LayerNorm":
        def swap(mod):
            for name, child in mod.named_children():
                if isinstance(child, zoo.GPTLayerNorm):
                    setattr(mod, name, nn.LayerNorm(child.weight.shape[0]))
                else:
                    swap(child)
        swap(model)
    return zoo._finish(model), zoo._tokens()


def _gpt_one_block_counts():
    before = (96 * 64 + 16 * 64                          # wte, wpe
              + 2 * 64                                   # ln_1
              + 64 * 3 * 64 + 3 * 64                     # c_attn
              + 64 * 64 + 64                             # attn.c_proj
              + 2 * 64                                   # ln_2
              + 64 * 256 + 256 + 256 * 64 + 64           # mlp
              + 2 * 64                                   # ln_f
              + 64 * 96)                                 # lm_head (no bias)
    # residual stream {wte, wpe, attn.c_proj, mlp.c_proj} 64 -> 32 (LayerNorms sliced with it);
    # heads 4 -> 2, whole: q, k, v each 2 * 16 rows; MLP 256 -> 128; lm_head's 96 outputs stay
    expected = (96 * 32 + 16 * 32
                + 2 * 32
                + 32 * 3 * (2 * 16) + 3 * (2 * 16)
                + (2 * 16) * 32 + 32
                + 2 * 32
                + 32 * 128 + 128 + 128 * 32 + 32
                + 2 * 32
                + 32 * 96)
    return before, expected


def test_gpt_one_block_by_hand_nn_layernorm():
    """nanoGPT's block with its LayerNorms as nn.LayerNorm: the residual stream is pruned with the embeddings."""
    model, x = _gpt_one_block("nn.LayerNorm")
    before, expected = _gpt_one_block_counts()
    assert n_params(model) == before
    stream = [g for g in fxprune.find_patterns(model, (x,)) if "transformer.wte.weight" in g["producers"]]
    assert len(stream) == 1 and stream[0]["width"] == 64
    assert set(stream[0]["producers"]) == {"transformer.wte.weight", "transformer.wpe.weight",
                                           "transformer.h.0.attn.c_proj.weight", "transformer.h.0.mlp.c_proj.weight"}
    pruned = _prune(model, (x,))
    assert n_params(pruned) == expected == 19424
    attn = pruned.get_submodule("transformer.h.0.attn")
    assert (attn.c_attn.in_features, attn.c_attn.out_features) == (32, 96)
    assert (attn.c_proj.in_features, attn.c_proj.out_features) == (32, 32)


def test_gpt_one_block_by_hand():
    """nanoGPT's block as written (its LayerNorm calls F.layer_norm): the same counts."""
    model, x = _gpt_one_block("F.layer_norm")
    before, expected = _gpt_one_block_counts()
    assert n_params(model) == before
    assert n_params(_prune(model, (x,))) == expected


@pytest.mark.parametrize("name", ["gpt_manual", "gpt_sdpa"])
def test_gpt_two_blocks_by_hand(name):
    factory, inputs = ZOO_BY_NAME[name]
    model, x = factory(), inputs()
    block = (2 * 64 + 64 * 3 * 64 + 3 * 64 + 64 * 64 + 64 + 2 * 64 + 64 * 256 + 256 + 256 * 64 + 64)
    assert n_params(model) == 96 * 64 + 16 * 64 + 2 * block + 2 * 64 + 64 * 96
    # the residual stream {wte, wpe, both blocks' attn.c_proj and mlp.c_proj} 64 -> 32; per block 2 of 4 heads
    # and 128 of 256 MLP units
    pruned_block = (2 * 32 + 32 * 3 * 32 + 3 * 32 + 32 * 32 + 32 + 2 * 32 + 32 * 128 + 128 + 128 * 32 + 32)
    expected = 96 * 32 + 16 * 32 + 2 * pruned_block + 2 * 32 + 32 * 96
    assert n_params(_prune(model, x)) == expected == 32128


def test_gpt_manual_heads_pruned_whole():
    """The zoo's 2-block gpt_manual: each block keeps 2 of its 4 heads (16 wide each) and 128 of 256 MLP units."""
    factory, inputs = ZOO_BY_NAME["gpt_manual"]
    model, x = factory(), inputs()
    heads = [g for g in fxprune.find_patterns(model, x) if g["producers"][0].endswith("attn.c_attn.weight")]
    assert [g["width"] for g in heads] == [4, 4]      # attention groups are counted in heads
    pruned = _prune(model, x)
    for i in range(2):
        attn = pruned.get_submodule(f"transformer.h.{i}.attn")
        width = attn.c_proj.in_features
        assert width == 2 * 16
        assert attn.c_attn.out_features == 3 * width
        assert pruned.get_submodule(f"transformer.h.{i}.mlp.c_fc").out_features == 128
        keep = pruned.meta["fxprune"].masks[f"transformer.h.{i}.attn.c_attn.weight"]
        q = keep[:64].reshape(4, 16)                   # q rows, head by head
        assert bool((q.all(dim=1) | ~q.any(dim=1)).all()), "a head was pruned partially"
        assert int(q.all(dim=1).sum()) == 2
        assert torch.equal(keep[:64], keep[64:128]) and torch.equal(keep[:64], keep[128:])
