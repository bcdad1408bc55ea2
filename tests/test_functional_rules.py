"""Rules for function ops on get_attr weights (F.linear, F.conv*, F.embedding), functional norms
(F.batch_norm, F.instance_norm, F.group_norm), unbind/stack, spatial ops that keep channels
(interpolate/Upsample, pad, PixelShuffle/PixelUnshuffle, ChannelShuffle), and ops along a dim (roll,
flip, cumsum, cumprod).

Each model: the channels are pruned (parameter counts derived by hand, or the group's status), pruned ==
masked on fresh random inputs for both prune_bias settings, and the input model is left unchanged.
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

import fxprune
from conftest import RTOL, assert_pruned_equals_masked, fresh_like, model_digest


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def prune_checked(model, inputs, prune_bias, sparsity=0.5, **kw):
    """prune(), then pruned == masked on fresh inputs, and the model unchanged."""
    digest = model_digest(model)
    pruned = fxprune.prune(model, inputs, sparsity=sparsity, prune_bias=prune_bias, **kw)
    assert pruned.meta["fxprune"].rel_diff <= RTOL
    assert_pruned_equals_masked(model, inputs, pruned)
    assert model_digest(model) == digest
    assert n_params(pruned) == pruned.meta["fxprune"].params_after
    return pruned


def statuses(pruned) -> list[str]:
    return [g.status for g in pruned.meta["fxprune"].groups]


def barrier_text(pruned) -> str:
    return " ".join(f"{n}: {why}" for n, why in pruned.meta["fxprune"].barriers)


# =====================================================================================================
# 1. function ops on get_attr weights
# =====================================================================================================

class FunctionalMLP(nn.Module):
    """F.linear on parameters of the root (w1, b1) and of a bare submodule (sub.weight, no bias)."""

    def __init__(self):
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(16, 8))
        self.b1 = nn.Parameter(torch.randn(16))
        self.sub = nn.Module()
        self.sub.weight = nn.Parameter(torch.randn(4, 16))

    def forward(self, x):
        return F.linear(torch.sigmoid(F.linear(x, self.w1, self.b1)), self.sub.weight)


@pytest.mark.parametrize("prune_bias", [True, False])
def test_functional_linear(prune_bias):
    model, x = FunctionalMLP(), torch.randn(3, 8)
    pruned = prune_checked(model, (x,), prune_bias)
    report = pruned.meta["fxprune"]
    assert set(report.masks) == {"w1"}                      # keyed by the weight's fqn
    assert report.groups[0].producers == ["w1"] and statuses(pruned) == ["pruned", "unprunable"]
    # w1 16 -> 8 rows, b1 8, sub.weight 8 columns; sigmoid(0) = 0.5 is folded into a new bias of 4
    assert n_params(pruned) == 8 * 8 + 8 + 4 * 8 + 4
    assert dict(pruned.named_parameters())["sub.weight_folded_bias"].shape == (4,)
    # the same masks again give the same model
    again = fxprune.prune(model, (x,), masks=report.masks, prune_bias=prune_bias)
    assert torch.allclose(again(x), pruned(x))


def test_functional_linear_masked_model_round_trip():
    model, x = FunctionalMLP(), torch.randn(3, 8)
    masked = fxprune.apply_masks(model, (x,), sparsity=0.5)
    keep = masked._fxprune_keep_w1_dim0.reshape(-1).bool()
    assert int(keep.sum()) == 8
    # the masked model trains: the masked rows of the get_attr weight stay zero in its forward
    opt = torch.optim.SGD(masked.parameters(), lr=0.1)
    masked(x).pow(2).sum().backward()
    opt.step()
    # the masks come with the model; masked.w1's pruned rows were updated, and are masked still
    pruned = fxprune.prune(masked, (x,))
    assert torch.equal(pruned.meta["fxprune"].masks["w1"], keep)
    x2 = fresh_like((x,))[0]
    with torch.no_grad():
        assert pruned.meta["fxprune"].compare(masked(x2), pruned(x2)) <= RTOL
    # update_masks rewrites the keep buffer of the get_attr weight in place
    fxprune.update_masks(masked, sparsity=0.75)
    assert int(masked._fxprune_keep_w1_dim0.sum()) == 4


class FunctionalConvNet(nn.Module):
    """A graph of F.conv2d on get_attr weights: plain, depthwise (groups literal), grouped, and a last
    3x3 conv without padding."""

    def __init__(self):
        super().__init__()
        self.w1, self.b1 = nn.Parameter(torch.randn(16, 3, 3, 3)), nn.Parameter(torch.randn(16))
        self.dw, self.db = nn.Parameter(torch.randn(16, 1, 3, 3)), nn.Parameter(torch.randn(16))
        self.gw = nn.Parameter(torch.randn(8, 8, 1, 1))                   # groups=2: 16 -> 8
        self.w4, self.b4 = nn.Parameter(torch.randn(4, 8, 3, 3)), nn.Parameter(torch.randn(4))

    def forward(self, x):
        h = F.relu(F.conv2d(x, self.w1, self.b1, 1, 1))
        h = F.relu(F.conv2d(h, self.dw, self.db, 1, 0, 1, 16))           # depthwise, no padding
        h = F.relu(F.conv2d(h, self.gw, None, groups=2))
        return F.conv2d(h, self.w4, self.b4)


def test_functional_conv_by_hand():
    model, x = FunctionalConvNet(), torch.randn(2, 3, 10, 10)
    for pb in (True, False):
        pruned = prune_checked(model, (x,), pb)
        assert statuses(pruned) == ["pruned", "pruned", "unprunable"]
        # g0: w1's 16 channels coupled in pairs (channel j of both groups of gw): 8 units -> 4, 8 channels
        # kept; the depthwise conv keeps 8 filters (groups 16 -> 8); g1: gw's 8 rows, 2 per pair -> 4 kept
        expected = (8 * 3 * 9 + 8) + (8 * 9 + 8) + 4 * 4 + (4 * 4 * 9 + 4)
        if not pb:
            expected += 4  # relu(bias) of removed channels folded into a new bias of gw
        assert n_params(pruned) == expected
        assert "torch.conv2d(relu, dw, db, 1, 0, 1, 8)" in pruned.code     # groups rewritten to 8


class FunctionalConvNd(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.conv = (F.conv1d, F.conv2d, F.conv3d)[d - 1]
        self.w1, self.b1 = nn.Parameter(torch.randn(8, 3, *[3] * d)), nn.Parameter(torch.randn(8))
        self.w2 = nn.Parameter(torch.randn(4, 8, *[1] * d))

    def forward(self, x):
        return self.conv(torch.tanh(self.conv(x, self.w1, self.b1, padding=1)), self.w2)


@pytest.mark.parametrize("d", [1, 3])
def test_functional_conv1d_conv3d(d):
    model, x = FunctionalConvNd(d), torch.randn(2, 3, *[5] * d)
    for pb in (True, False):
        pruned = prune_checked(model, (x,), pb)
        # w1 8 -> 4 (+bias), w2 reads 4; tanh(bias) of removed channels folded into a new bias (pb=False)
        assert n_params(pruned) == (4 * 3 * 3 ** d + 4) + 4 * 4 + (0 if pb else 4)


def test_dead_channels_of_functional_ops():
    """eliminate_dead_channels: zero rows of a get_attr weight, zero filters of a functional depthwise
    conv (both channels of a grouped pair), zero gamma and beta of F.batch_norm."""
    model, x = FunctionalConvNet(), torch.randn(2, 3, 10, 10)
    with torch.no_grad():
        model.dw[[0, 8]] = 0
        model.db[[0, 8]] = 0          # channel 0 and 8 (a pair for the grouped conv) dead after dw
        model.gw[1] = 0                # row 1 of gw dead, and its pair (row 5)
        model.gw[5] = 0
    smaller = fxprune.eliminate_dead_channels(model, (x,))
    # w1/b1 and dw/db lose 2 channels, gw (8 rows x 8 columns per group) keeps 6 x 7, w4 loses 2 columns
    assert n_params(smaller) == n_params(model) - 2 * (3 * 9 + 1) - 2 * (9 + 1) - (64 - 6 * 7) - 2 * 4 * 9
    with torch.no_grad():
        assert torch.allclose(smaller(x), model(x), rtol=1e-5, atol=1e-5)
    model, x = FunctionalBN().eval(), torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        model.gamma[:4] = 0
        model.beta[:4] = 0
    smaller = fxprune.eliminate_dead_channels(model, (x,))
    assert n_params(smaller) == n_params(model) - 4 * (3 * 9 + 1 + 2 + 4 * 9)
    with torch.no_grad():
        assert torch.allclose(smaller(x), model(x), rtol=1e-5, atol=1e-5)


def _functionalize_convs(gm: fx.GraphModule) -> fx.GraphModule:
    """A pass of the kind fxprune must follow: every nn.Conv2d call becomes F.conv2d on get_attr weights."""
    modules = dict(gm.named_modules())
    for node in list(gm.graph.nodes):
        if node.op == "call_module" and isinstance(modules[node.target], nn.Conv2d):
            m = modules[node.target]
            with gm.graph.inserting_before(node):
                w = gm.graph.get_attr(f"{node.target}.weight")
                b = gm.graph.get_attr(f"{node.target}.bias") if m.bias is not None else None
                conv = gm.graph.call_function(F.conv2d, (node.args[0], w, b, m.stride, m.padding, m.dilation,
                                                         m.groups))
            node.replace_all_uses_with(conv)
            gm.graph.erase_node(node)
    gm.recompile()
    return fx.GraphModule(gm, gm.graph)


class ConvBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, groups=8), nn.BatchNorm2d(8)
        self.conv3 = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        return self.conv3(F.relu(self.bn2(self.conv2(h))))


@pytest.mark.parametrize("prune_bias", [True, False])
def test_after_fuse_and_functionalize(prune_bias):
    """torch.fx.experimental.optimization.fuse folds the BatchNorms, a second pass turns the convs into
    F.conv2d on the submodules' get_attr parameters; masks are keyed by those fqns."""
    from torch.fx.experimental.optimization import fuse
    torch.manual_seed(0)
    model = ConvBN().eval()
    with torch.no_grad():
        for bn in (model.bn1, model.bn2):
            bn.running_mean.normal_(), bn.running_var.uniform_(0.5, 2), bn.weight.normal_(), bn.bias.normal_()
    gm = _functionalize_convs(fuse(model))
    assert not any(n.op == "call_module" for n in gm.graph.nodes)
    x = torch.randn(2, 3, 8, 8)
    pruned = prune_checked(gm, (x,), prune_bias)
    report = pruned.meta["fxprune"]
    assert set(report.masks) == {"conv1.weight"}
    # conv1 8 -> 4 (+bias), depthwise conv2 4 filters (+bias), conv3 4 -> 4 columns (+bias)
    assert n_params(pruned) == (4 * 3 * 9 + 4) + (4 * 9 + 4) + (4 * 4 + 4)


class FunctionalEmbed(nn.Module):
    def __init__(self):
        super().__init__()
        self.table = nn.Parameter(torch.randn(10, 16))
        self.w2, self.b2 = nn.Parameter(torch.randn(8, 16)), nn.Parameter(torch.randn(8))
        self.w3 = nn.Parameter(torch.randn(3, 8))

    def forward(self, idx):
        h = F.embedding(idx, self.table)
        return F.linear(F.relu(F.linear(h, self.w2, self.b2)), self.w3)


@pytest.mark.parametrize("prune_bias", [True, False])
def test_functional_embedding(prune_bias):
    model, idx = FunctionalEmbed(), torch.randint(0, 10, (2, 5))
    pruned = prune_checked(model, (idx,), prune_bias)
    assert set(pruned.meta["fxprune"].masks) == {"table", "w2"}
    # table 16 -> 8 columns, w2 8 -> 4 rows, w3 4 columns (relu(b2) folded into a new bias of 3)
    expected = 10 * 8 + (4 * 8 + 4) + 3 * 4 + (0 if prune_bias else 3)
    assert n_params(pruned) == expected


class SharedWeight(nn.Module):
    """A get_attr weight that another op reads too (here its sum): slicing it would change that op."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(4, 6)
        self.w = nn.Parameter(torch.randn(8, 6))
        self.out = nn.Linear(8, 2)

    def forward(self, x):
        return self.out(F.linear(self.inp(x), self.w)) + self.w.sum()


class SharedGamma(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.gamma, self.beta = nn.Conv2d(3, 8, 1), nn.Parameter(torch.randn(8)), nn.Parameter(torch.randn(8))

    def forward(self, x):
        h = F.batch_norm(self.conv(x), None, None, self.gamma, self.beta, True)
        return h.sum((2, 3)) * self.gamma.mean()


def test_weight_read_elsewhere_is_a_barrier():
    model, x = SharedWeight(), torch.randn(3, 4)
    pruned = prune_checked(model, (x,), True)
    assert n_params(pruned) == n_params(model)
    assert "also read by" in barrier_text(pruned)
    model, x = SharedGamma(), torch.randn(2, 3, 4, 4)
    pruned = prune_checked(model, (x,), True, prune_outputs=False)
    assert n_params(pruned) == n_params(model) and "gamma is also read by mean" in barrier_text(pruned)


# =====================================================================================================
# 2. functional norms
# =====================================================================================================

class FunctionalBN(nn.Module):
    """F.batch_norm on root buffers and parameters, training flag from the module."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 4, 3)
        self.register_buffer("rm", torch.randn(16))
        self.register_buffer("rv", torch.rand(16) + 0.5)
        self.gamma, self.beta = nn.Parameter(torch.randn(16)), nn.Parameter(torch.randn(16))

    def forward(self, x):
        h = F.batch_norm(self.conv1(x), self.rm, self.rv, self.gamma, self.beta, self.training, 0.1, 1e-5)
        return self.conv2(F.relu(h))


@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("prune_bias", [True, False])
def test_functional_batch_norm(prune_bias, train):
    model, x = FunctionalBN().train(train), torch.randn(4, 3, 8, 8)
    pruned = prune_checked(model, (x,), prune_bias)
    # conv1 16 -> 8 (+bias), gamma/beta 8 each (running stats are buffers, sliced too), conv2 8 -> 4
    assert n_params(pruned) == (3 * 8 * 9 + 8) + 2 * 8 + (8 * 4 * 9 + 4)
    assert pruned.rm.shape == pruned.rv.shape == (8,)
    if prune_bias:  # the masked model zeroes gamma and beta of pruned channels, as for nn.BatchNorm2d
        masked = fxprune.apply_masks(model, (x,), masks=pruned.meta["fxprune"].masks)
        keep = pruned.meta["fxprune"].masks["conv1.weight"]
        gm = fx.Interpreter(masked)
        seen = {}

        def run_node(n, orig=gm.run_node):
            out = orig(n)
            seen[n.name] = out
            return out
        gm.run_node = run_node
        with torch.no_grad():
            gm.run(x)
        bn = next(n for n in masked.graph.nodes if n.target is F.batch_norm)    # traced with keywords
        gamma, beta = seen[bn.kwargs["weight"].name], seen[bn.kwargs["bias"].name]
        assert torch.all(gamma[~keep] == 0) and torch.all(beta[~keep] == 0) and torch.all(gamma[keep] != 0)


class FunctionalNorms(nn.Module):
    """F.instance_norm (affine, instance statistics) and F.group_norm (4 groups of 4, and one without
    affine parameters) on get_attr tensors."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.iw, self.ib = nn.Parameter(torch.randn(16)), nn.Parameter(torch.randn(16))
        self.gw, self.gb = nn.Parameter(torch.randn(16)), nn.Parameter(torch.randn(16))
        self.conv2 = nn.Conv2d(16, 8, 3, padding=1)
        self.conv3 = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        h = F.instance_norm(self.conv1(x), weight=self.iw, bias=self.ib)
        h = F.group_norm(F.relu(h), 4, self.gw, self.gb)
        h = F.group_norm(F.relu(self.conv2(h)), 2)
        return self.conv3(h)


def test_functional_instance_and_group_norm():
    model, x = FunctionalNorms(), torch.randn(2, 3, 8, 8)
    for pb in (True, False):
        pruned = prune_checked(model, (x,), pb)
        # conv1 16 -> 8 (4 norm groups of 4 -> 2 groups), iw/ib/gw/gb 8 each, conv2 8 -> 4 (2 groups of 4:
        # 1 kept), conv3 4 columns
        expected = (3 * 8 * 9 + 8) + 4 * 8 + (8 * 4 * 9 + 4) + (4 * 4 + 4)
        if not pb:   # the shift of group_norm's pruned channels can't pass conv2's zero padding: g0 stays
            assert statuses(pruned)[0] == "unprunable"
            continue
        assert statuses(pruned) == ["pruned", "pruned", "unprunable"]
        assert n_params(pruned) == expected
        assert "group_norm(relu, 2," in pruned.code and "group_norm(relu_1, 1" in pruned.code


class GroupNormConstants(nn.Module):
    """nn.GroupNorm without affine over constants that differ per channel: they normalise to nonzero
    constants (not to 0), which a zero-padded conv cannot take."""

    def __init__(self):
        super().__init__()
        self.c1, self.gn, self.c2 = nn.Conv2d(3, 8, 3, padding=1), nn.GroupNorm(4, 8, affine=False), nn.Conv2d(8, 4, 3, padding=1)

    def forward(self, x):
        return self.c2(self.gn(self.c1(x)))


def test_group_norm_of_constants_is_not_zero():
    torch.manual_seed(0)
    model, x = GroupNormConstants().eval(), torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        model.c1.bias.normal_()
    pruned = prune_checked(model, (x,), False)
    assert statuses(pruned)[0] == "unprunable"
    assert statuses(prune_checked(model, (x,), True))[0] == "pruned"


# =====================================================================================================
# 3. unbind and stack
# =====================================================================================================

class StackUnbind(nn.Module):
    """stack along a new dim (1) and unbind along it: channels pass, the two branches are coupled."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.Conv2d(3, 8, 1, bias=False)
        self.c = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        s = torch.stack([F.relu(self.a(x)), F.relu(self.b(x))], dim=1)      # (N, 2, 8, H, W)
        p, q = s.unbind(1)
        return self.c(p * q + torch.stack((p, q)).sum(0))


@pytest.mark.parametrize("prune_bias", [True, False])
def test_stack_and_unbind_along_other_dims(prune_bias):
    model, x = StackUnbind(), torch.randn(2, 3, 6, 6)
    pruned = prune_checked(model, (x,), prune_bias)
    assert statuses(pruned)[0] == "pruned"
    # a and b 8 -> 4 (coupled), c 4 columns
    assert n_params(pruned) == 3 * 4 * 9 + 3 * 4 + (4 * 4 + 4)


def test_stack_of_constants_varies_along_the_new_dim():
    model, x = StackUnbind(), torch.randn(2, 3, 6, 6)
    model.a.bias, model.b.bias = nn.Parameter(torch.randn(8)), nn.Parameter(torch.randn(8))
    assert statuses(prune_checked(model, (x,), True))[0] == "pruned"
    # relu(bias of a) and relu(bias of b) side by side: not one constant, so c cannot fold them
    assert statuses(prune_checked(model, (x,), False))[0] == "unprunable"


class QKVUnbind(nn.Module):
    """qkv.view(b, t, 3, c).unbind(2): one of two channel dims; position j of q, k and v goes together."""

    def __init__(self):
        super().__init__()
        self.qkv, self.out = nn.Linear(16, 48), nn.Linear(16, 4)

    def forward(self, x):
        b, t, _ = x.shape
        q, k, v = torch.unbind(self.qkv(x).view(b, t, 3, 16), 2)
        return self.out(q * torch.sigmoid(k) + v)


@pytest.mark.parametrize("prune_bias", [True, False])
def test_unbind_along_a_channel_dim_of_several(prune_bias):
    model, x = QKVUnbind(), torch.randn(2, 5, 16)
    pruned = prune_checked(model, (x,), prune_bias)
    # 16 units of 3 rows (q, k, v) -> 8: qkv 48 -> 24 rows; out reads 8
    assert n_params(pruned) == (16 * 24 + 24) + (8 * 4 + 4)
    assert "view(getitem, getitem_1, 3, 8)" in pruned.code


class UnbindChannels(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc, self.out = nn.Linear(8, 4), nn.Linear(2, 2)

    def forward(self, x):
        a, b, c, d = self.fc(x).unbind(1)
        return self.out(torch.stack([a * b, c + d], 1))


def test_unbind_along_the_channel_dim_is_a_barrier():
    model, x = UnbindChannels(), torch.randn(3, 8)
    pruned = prune_checked(model, (x,), True)
    assert statuses(pruned)[0] == "unprunable"
    assert "unbind along the channel dim" in barrier_text(pruned)


# =====================================================================================================
# 4. spatial ops that keep channels
# =====================================================================================================

class Spatial(nn.Module):
    """conv (3 -> 8) -> relu -> op -> conv 3x3 without padding (8 -> 4)."""

    def __init__(self, op):
        super().__init__()
        self.c1, self.op, self.c2 = nn.Conv2d(3, 8, 3, padding=1), op, nn.Conv2d(8, 4, 3)

    def forward(self, x):
        return self.c2(self.op(F.relu(self.c1(x))))


class Fn(nn.Module):
    """A function op as a module of the test (traced through, not a leaf)."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


SPATIAL_PRUNED = {  # ops through which both zero and constant channels keep their carry
    "interp-nearest": Fn(lambda x: F.interpolate(x, scale_factor=2)),
    "interp-nearest-exact": Fn(lambda x: F.interpolate(x, size=(11, 13), mode="nearest-exact")),
    "interp-bilinear": Fn(lambda x: F.interpolate(x, scale_factor=1.5, mode="bilinear")),
    "interp-bilinear-ac": Fn(lambda x: F.interpolate(x, size=(9, 9), mode="bilinear", align_corners=True)),
    "interp-bilinear-aa": Fn(lambda x: F.interpolate(x, size=(5, 5), mode="bilinear", antialias=True)),
    "interp-bicubic": Fn(lambda x: F.interpolate(x, scale_factor=2, mode="bicubic", align_corners=False)),
    "interp-area": Fn(lambda x: F.interpolate(x, size=(4, 5), mode="area")),
    "Upsample": nn.Upsample(scale_factor=2, mode="bilinear"),
    "UpsamplingNearest2d": nn.UpsamplingNearest2d(scale_factor=2),
    "UpsamplingBilinear2d": nn.UpsamplingBilinear2d(size=(12, 12)),
    "pad-reflect": Fn(lambda x: F.pad(x, (1, 2, 0, 1), mode="reflect")),
    "pad-replicate": Fn(lambda x: F.pad(x, (1, 1, 1, 1), mode="replicate")),
    "pad-crop": Fn(lambda x: F.pad(x, (-1, 0, 0, -1))),
    "ReflectionPad2d": nn.ReflectionPad2d(1),
    "ReplicationPad2d": nn.ReplicationPad2d((1, 0, 2, 1)),
    "CircularPad2d": nn.CircularPad2d(1),
    "ChannelShuffle": nn.ChannelShuffle(2),
    "channel_shuffle": Fn(lambda x: F.channel_shuffle(x, 2)),
}
SPATIAL_ZERO_ONLY = {  # zero padding: a zero channel stays zero, a constant one does not stay constant
    "pad-zeros": Fn(lambda x: F.pad(x, (1, 1, 2, 0))),
    "ZeroPad2d": nn.ZeroPad2d(1),
    "ConstantPad2d-0": nn.ConstantPad2d((0, 1, 1, 0), 0.0),
}


@pytest.mark.parametrize("name", list(SPATIAL_PRUNED))
def test_spatial_ops_keep_channels(name):
    model, x = Spatial(SPATIAL_PRUNED[name]), torch.randn(2, 3, 8, 8)
    for pb in (True, False):
        pruned = prune_checked(model, (x,), pb)
        assert statuses(pruned) == ["pruned", "unprunable"], pruned.meta["fxprune"]
        # c1 8 -> 4 (+bias), c2 reads 4 (the relu(bias) of removed channels folded into its bias)
        assert n_params(pruned) == (3 * 4 * 9 + 4) + (4 * 4 * 9 + 4)


@pytest.mark.parametrize("name", list(SPATIAL_ZERO_ONLY))
def test_zero_padding_keeps_zeros_only(name):
    model, x = Spatial(SPATIAL_ZERO_ONLY[name]), torch.randn(2, 3, 8, 8)
    assert statuses(prune_checked(model, (x,), True)) == ["pruned", "unprunable"]
    pruned = prune_checked(model, (x,), False)   # relu(bias) next to zeros: not one constant
    assert statuses(pruned)[0] == "unprunable"


def test_nonzero_constant_padding_and_channel_padding():
    model, x = Spatial(nn.ConstantPad2d(1, 0.5)), torch.randn(2, 3, 8, 8)
    assert statuses(prune_checked(model, (x,), True))[0] == "unprunable"   # pruned zeros padded with 0.5
    model = Spatial(Fn(lambda x: F.pad(x, (0, 0, 0, 0, 1, 0))[:, 1:]))
    pruned = prune_checked(model, (x,), True)
    assert statuses(pruned)[0] == "unprunable" and "padding along a channel dim" in barrier_text(pruned)


class PixelShuffleNet(nn.Module):
    def __init__(self, functional=False):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.Conv2d(4, 4, 3)
        self.shuffle = Fn(lambda x: F.pixel_shuffle(x, 2)) if functional else nn.PixelShuffle(2)

    def forward(self, x):
        return self.c2(self.shuffle(F.relu(self.c1(x))))


@pytest.mark.parametrize("functional", [False, True])
def test_pixel_shuffle_prunes_whole_blocks(functional):
    model, x = PixelShuffleNet(functional), torch.randn(2, 3, 6, 6)
    for pb in (True, False):
        pruned = prune_checked(model, (x,), pb)
        # c1: 4 blocks of 4 channels -> 2 blocks (8 channels), c2 reads 2 channels
        assert n_params(pruned) == 3 * 8 * 9 + (2 * 4 * 9 + 4)


def test_pixel_shuffle_of_constants_varies():
    model, x = PixelShuffleNet(), torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        model.c1.bias = nn.Parameter(torch.randn(16))
    assert statuses(prune_checked(model, (x,), False))[0] == "unprunable"   # an r x r pattern of constants
    assert statuses(prune_checked(model, (x,), True))[0] == "pruned"


class PixelUnshuffleNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.un, self.c2 = nn.Conv2d(3, 4, 3, padding=1), nn.PixelUnshuffle(2), nn.Conv2d(16, 4, 3)

    def forward(self, x):
        return self.c2(self.un(F.relu(self.c1(x))))


@pytest.mark.parametrize("prune_bias", [True, False])
def test_pixel_unshuffle(prune_bias):
    model, x = PixelUnshuffleNet(), torch.randn(2, 3, 8, 8)
    pruned = prune_checked(model, (x,), prune_bias)
    # c1 4 -> 2 channels, each 4 channels after the unshuffle: c2 reads 8
    assert n_params(pruned) == (3 * 2 * 9 + 2) + (8 * 4 * 9 + 4)


# =====================================================================================================
# 5. roll, flip, cumsum, cumprod
# =====================================================================================================

class AlongTime(nn.Module):
    """Conv1d -> (op along time, or flip along channels) -> Conv1d (1x1: constants fold)."""

    def __init__(self, op):
        super().__init__()
        self.op = op
        self.a = nn.Conv1d(3, 8, 3, padding=1)
        self.c = nn.Conv1d(8, 4, 1)

    def forward(self, x):
        y = torch.relu(self.a(x))
        if self.op == "roll":
            y = torch.roll(y, 2, dims=2)
        elif self.op == "flip_time":
            y = y.flip(-1)
        elif self.op == "flip_channels":
            y = torch.flip(y, [1])
        elif self.op == "cumsum":
            y = y.cumsum(2)
        elif self.op == "cumprod":
            y = torch.cumprod(y, dim=-1)
        return self.c(y)


@pytest.mark.parametrize("op", ["roll", "flip_time", "flip_channels", "cumsum", "cumprod"])
def test_ops_along_a_dim(op):
    model = AlongTime(op).eval()
    x = torch.randn(2, 3, 9)
    pruned = prune_checked(model, (x,), prune_bias=True)
    assert pruned.a.out_channels == pruned.c.in_channels == 4
    no_bias = prune_checked(nonzero_bias(model), (x,), prune_bias=False)
    # a constant channel stays one under roll and flip, so it folds; a cumulative op makes it vary
    assert no_bias.a.out_channels == (8 if op.startswith("cum") else 4)


class RollChannels(AlongTime):
    def forward(self, x):
        return self.c(torch.roll(torch.relu(self.a(x)), 1, dims=1))


def test_roll_along_channels_is_a_barrier():
    pruned = prune_checked(RollChannels("").eval(), (torch.randn(2, 3, 9),), prune_bias=True)
    assert pruned.a.out_channels == 8 and "roll along a channel dim" in barrier_text(pruned)


def nonzero_bias(model):
    model = copy.deepcopy(model)
    with torch.no_grad():
        model.a.bias.copy_(torch.linspace(0.5, 1.5, 8))   # relu keeps positive constants
    return model


class TiledAndGathered(nn.Module):
    """repeat along the channel dim (position p holds channel p % width) and gather along a dim without
    channels with an index that spans them (sliced with them)."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(6, 8), nn.Linear(16, 5), nn.Linear(8, 3)
        self.register_buffer("order", torch.tensor([[3, 0, 2], [1, 1, 0], [2, 3, 3], [0, 2, 1]]))

    def forward(self, x):                                   # x: (b, 4, 6)
        h = torch.relu(self.fc1(x))                        # (b, 4, 8): channels on the last dim
        tiled = self.fc2(h.repeat(1, 1, 2))                # fc2 reads every channel twice
        index = self.order.t().unsqueeze(0).unsqueeze(-1).expand(x.size(0), 3, 4, 8)[:, :, 0]   # (b, 3, 8)
        picked = torch.gather(h, 1, index)                 # along the token dim
        return tiled.sum(1) + self.fc3(picked).sum((1, 2), keepdim=True).squeeze(-1)


@pytest.mark.parametrize("prune_bias", [True, False])
def test_repeat_and_gather(prune_bias):
    torch.manual_seed(0)
    model = TiledAndGathered().eval()
    x = (torch.randn(2, 4, 6),)
    pruned = fxprune.prune(model, x, sparsity=0.5, prune_bias=prune_bias)
    assert pruned.get_parameter("fc1.weight").shape[0] == 4 and pruned.get_parameter("fc2.weight").shape[1] == 8
    assert_pruned_equals_masked(model, x, pruned)


@fx.wrap
def _one_minus_sigmoid(t):
    return 1.0 - torch.sigmoid(t)


class ParamAlsoReadOpaquely(nn.Module):
    """A per-channel gate read by a rule (sigmoid, sliced with the channels) and by a function without
    one (ConViT's 1 - sigmoid(gating) when no rule knows the op): slicing the gate for the first would
    change what the second makes from it."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(6, 8), nn.Linear(8, 3)
        self.g = nn.Parameter(torch.randn(8))

    def forward(self, x):
        h = self.a(x)
        return self.b(h * torch.sigmoid(self.g) + h * _one_minus_sigmoid(self.g))


@pytest.mark.parametrize("prune_bias", [True, False])
def test_parameter_read_by_an_op_without_rule_is_not_sliced(prune_bias):
    model = ParamAlsoReadOpaquely().eval()
    pruned = prune_checked(model, (torch.randn(4, 6),), prune_bias)
    assert pruned.a.out_features == 8 and pruned.g.shape == (8,)
    report = pruned.meta["fxprune"]
    assert any("g is also read by _one_minus_sigmoid" in b for b in map(str, report.barriers)), report.barriers
