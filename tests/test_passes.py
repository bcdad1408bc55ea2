"""fxprune as a torch.fx pass: PrunePass in a PassManager next to other passes, GraphModule inputs,
reproducing a result from its report's masks, and the pattern names find_patterns gives."""
import pytest
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from torch.fx.experimental.optimization import fuse
from torch.fx.passes.infra.pass_base import PassResult
from torch.fx.passes.infra.pass_manager import PassManager
from torch.testing._internal import common_pruning as cp

import fxprune
from conftest import RTOL, assert_pruned_equals_masked, fresh_like, model_digest


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: intra-op threads only add OpenMP barriers (slow on a loaded 2-core machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class ConvBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 16, 3, padding=1)
        self.b1 = nn.BatchNorm2d(16)
        self.c2 = nn.Conv2d(16, 12, 3, padding=1)
        self.b2 = nn.BatchNorm2d(12)
        self.fc = nn.Linear(12, 4)

    def forward(self, x):
        x = torch.relu(self.b1(self.c1(x)))
        x = F.max_pool2d(x, 2)
        x = torch.relu(self.b2(self.c2(x)))
        return self.fc(x.mean((2, 3)))


def conv_bn():
    torch.manual_seed(0)
    m = ConvBN().eval()
    with torch.no_grad():
        for bn in (m.b1, m.b2):
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.normal_()
            bn.bias.normal_()
    return m


class LSTMNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(8, 12)
        self.lstm = nn.LSTM(12, 16, num_layers=2, batch_first=True)
        self.norm = nn.LayerNorm(16)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        out, _ = self.lstm(torch.relu(self.embed(x)))
        return self.head(self.norm(out[:, -1]))


@torch.fx.wrap
def my_relu(x):
    return x.clamp(min=0)


def fuse_pass(gm: fx.GraphModule) -> PassResult:
    """torch's conv/bn fusion, which re-traces: the pass carries the graph module's meta over."""
    fused = fuse(gm)
    fused.meta.update(gm.meta)
    return PassResult(fused, True)


def relu_to_custom(gm: fx.GraphModule) -> PassResult:
    """A pass of our own: torch.relu -> my_relu, in place."""
    changed = False
    for node in gm.graph.nodes:
        if node.op == "call_function" and node.target in (torch.relu, F.relu):
            node.target = my_relu
            changed = True
    gm.recompile()
    return PassResult(gm, changed)


def state_equal(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_prune_pass_then_fuse_then_own_pass():
    model, x = conv_bn(), torch.randn(2, 3, 8, 8)
    gm = fx.symbolic_trace(model)
    digest = model_digest(gm)
    pm = PassManager([fxprune.PrunePass(example_inputs=(x,), sparsity=0.5), fuse_pass, relu_to_custom])
    result = pm(gm)
    assert isinstance(result, PassResult) and result.modified
    out = result.graph_module
    assert isinstance(out, fx.GraphModule)
    assert model_digest(gm) == digest  # the pass made a new module
    report = out.meta["fxprune"]
    assert report.params_after < report.params_before
    # fused: no BatchNorm left; relu replaced by our op; the convs are the pruned widths
    assert not any(isinstance(m, nn.BatchNorm2d) for m in out.modules())
    assert "my_relu" in out.code and "torch.relu" not in out.code
    assert out.c1.out_channels == 8 and out.c2.in_channels == 8
    assert out.c2.out_channels == 6 and out.fc.in_features == 6
    masked = fxprune.apply_masks(model, (x,), masks=report.masks).eval()
    with torch.no_grad():
        for seed in range(3):
            xx = fresh_like((x,), seed=seed)
            assert report.compare(masked(*xx), out(*xx)) <= RTOL


def test_prune_pass_result():
    model, x = conv_bn(), torch.randn(2, 3, 8, 8)
    gm = fx.symbolic_trace(model)
    result = fxprune.PrunePass(example_inputs=(x,), sparsity=0.5)(gm)
    assert isinstance(result, PassResult) and result.modified
    assert isinstance(result.graph_module, fx.GraphModule) and result.graph_module is not gm
    direct = fxprune.prune(gm, (x,), sparsity=0.5)
    assert state_equal(result.graph_module, direct)
    # keyword arguments go through: masks
    masks = direct.meta["fxprune"].masks
    again = fxprune.PrunePass(example_inputs=(x,), masks=masks)(gm).graph_module
    assert state_equal(again, direct)


def test_pass_manager_fixed_point_prunes_once():
    torch.manual_seed(0)
    model, x = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3)), torch.randn(4, 6)
    once = PassManager([fxprune.PrunePass(example_inputs=(x,), sparsity=0.5)])(fx.symbolic_trace(model))
    iterated = PassManager([fxprune.PrunePass(example_inputs=(x,), sparsity=0.5)], steps=3)(fx.symbolic_trace(model))
    assert once.graph_module.get_submodule("0").out_features == 8
    assert iterated.graph_module.get_submodule("0").out_features == 8


@pytest.mark.parametrize("make", [conv_bn, LSTMNet, cp.Conv2dPoolFlattenFunctional, cp.LinearActivationFunctional],
                         ids=["ConvBN", "LSTMNet", "Conv2dPoolFlattenFunctional", "LinearActivationFunctional"])
def test_prune_of_symbolic_traced_graphmodule(make):
    torch.manual_seed(0)
    model = make().eval()
    x = {"ConvBN": torch.randn(2, 3, 8, 8), "LSTMNet": torch.randn(2, 5, 8),
         "Conv2dPoolFlattenFunctional": torch.randn(2, 1, 8, 8)}.get(type(model).__name__, torch.randn(4, 7))
    gm = fx.symbolic_trace(model)  # LSTM traced as a leaf: torch.fx's default tracer keeps nn modules
    pruned_gm = fxprune.prune(gm, (x,), sparsity=0.5)
    pruned_model = fxprune.prune(model, (x,), sparsity=0.5)
    assert isinstance(pruned_gm, fx.GraphModule)
    report = pruned_gm.meta["fxprune"]
    assert report.params_after < report.params_before
    assert report.params_after == pruned_model.meta["fxprune"].params_after
    assert state_equal(pruned_gm, pruned_model)
    assert_pruned_equals_masked(gm, (x,), pruned_gm)


REPRO = {
    "ConvBN": (conv_bn, (2, 3, 8, 8), {}),
    "ConvBN-keep-bias": (conv_bn, (2, 3, 8, 8), {"prune_bias": False}),
    "LSTMNet": (LSTMNet, (2, 5, 8), {}),
    "LSTMNet-fpgm": (LSTMNet, (2, 5, 8), {"criterion": "fpgm"}),
    "LSTMLinearModel-2layers": (lambda: cp.LSTMLinearModel(8, 16, 4, 2), (5, 3, 8), {}),  # masked units kept
    "Conv2dPadBias-keep-bias": (cp.Conv2dPadBias, (2, 1, 12, 12), {"prune_bias": False}),
    "LinearActivationFunctional": (cp.LinearActivationFunctional, (4, 7), {"criterion": "l2"}),
}


@pytest.mark.parametrize("name", list(REPRO))
def test_report_masks_reproduce_the_pruned_model(name):
    make, shape, kw = REPRO[name]
    torch.manual_seed(0)
    model, x = make().eval(), torch.randn(shape)
    pruned = fxprune.prune(model, (x,), sparsity=0.5, **kw)
    report = pruned.meta["fxprune"]
    again = fxprune.prune(model, (x,), masks=report.masks, prune_bias=kw.get("prune_bias", True))
    r2 = again.meta["fxprune"]
    assert state_equal(pruned, again)
    assert pruned.code == again.code
    assert (r2.params_before, r2.params_after, r2.flops_after) == (report.params_before, report.params_after,
                                                                  report.flops_after)
    assert r2.masks.keys() == report.masks.keys()
    assert all(torch.equal(r2.masks[k], report.masks[k]) for k in report.masks)
    assert [(g.status, g.width_after) for g in r2.groups] == [(g.status, g.width_after) for g in report.groups]
    pruned.eval()
    again.eval()
    with torch.no_grad():
        for seed in range(2):
            xx = fresh_like((x,), seed=seed)
            a, b = pruned(*xx), again(*xx)
            a, b = (a, b) if isinstance(a, tuple) else ((a,), (b,))
            assert all(torch.equal(u, v) for u, v in zip(a, b))


# -- pattern names ---------------------------------------------------------------------------------

LIN = (4, 7)
CONV = (2, 1, 28, 28)
SEQ = (5, 3, 8)
PATTERNS = {
    "SimpleLinear": (cp.SimpleLinear, LIN, ["linear-linear"] * 4 + ["linear-output"]),
    "LinearBias": (cp.LinearBias, LIN, ["linear-linear"] * 4 + ["linear-output"]),
    "LinearActivation": (cp.LinearActivation, LIN, [
        "linear-relu-linear", "linear-tanh-linear", "linear-linear", "linear-relu-linear", "linear-tanh-output"]),
    "LinearActivationFunctional": (cp.LinearActivationFunctional, LIN, [
        "linear-relu-linear", "linear-relu-linear", "linear-linear", "linear-relu-linear", "linear-relu-linear",
        "linear-relu-output"]),
    "SimpleConv2d": (cp.SimpleConv2d, CONV, ["conv-conv"] * 3 + ["conv-output"]),
    "Conv2dActivation": (cp.Conv2dActivation, CONV, [
        "conv-relu-conv", "conv-tanh-conv", "conv-relu-conv", "conv-relu-conv", "conv-hardtanh-output"]),
    "Conv2dPool": (cp.Conv2dPool, CONV, [
        "conv-maxpool-relu-conv", "conv-tanh-avgpool-conv", "conv-maxpool-relu-conv", "conv-avgpool-relu-conv",
        "conv-output"]),
    "Conv2dPoolFlatten": (cp.Conv2dPoolFlatten, CONV, [
        "conv-maxpool-relu-conv", "conv-tanh-avgpool-conv", "conv-maxpool-relu-conv",
        "conv-adaptiveavgpool-flatten-linear", "linear-output"]),
    "Conv2dPoolFlattenFunctional": (cp.Conv2dPoolFlattenFunctional, CONV, [
        "conv-maxpool-relu-conv", "conv-tanh-avgpool-conv", "conv-maxpool-relu-conv",
        "conv-adaptiveavgpool-flatten-linear", "linear-output"]),
    # the torch.ao LSTM seed models return the LSTM output (and state): the last layer's group ends
    # in "output"; a lower layer feeds the next layer (and, in LSTMLayerNormLinearModel, the returned state)
    "LSTMLinearModel-1": (lambda: cp.LSTMLinearModel(8, 16, 4, 1), SEQ, ["lstm-linear-output", "linear-output"]),
    "LSTMLinearModel-2": (lambda: cp.LSTMLinearModel(8, 16, 4, 2), SEQ, [
        "lstm", "lstm-linear-output", "linear-output"]),
    "LSTMLayerNormLinearModel-1": (lambda: cp.LSTMLayerNormLinearModel(8, 16, 4, 1), SEQ, [
        "lstm-layernorm-linear-output", "linear-output"]),
    "LSTMLayerNormLinearModel-2": (lambda: cp.LSTMLayerNormLinearModel(8, 16, 4, 2), SEQ, [
        "lstm-output", "lstm-layernorm-linear-output", "linear-output"]),
    # an LSTM whose output is internal
    "LSTMNet": (LSTMNet, (2, 5, 8), ["linear-relu-lstm", "lstm", "lstm-layernorm-linear", "linear-output"]),
}


@pytest.mark.parametrize("name", list(PATTERNS))
def test_find_patterns_names(name):
    make, shape, expected = PATTERNS[name]
    model, x = make(), torch.randn(shape)
    digest = model_digest(model)
    groups = fxprune.find_patterns(model, (x,))
    assert [g["pattern"] for g in groups] == expected
    assert model_digest(model) == digest
    for g in groups:
        assert set(g) == {"pattern", "producers", "width", "prunable", "blocked"}
        assert 0 <= g["prunable"] <= g["width"]
        if g["pattern"].endswith("-output"):
            assert g["blocked"] == "graph output" and g["prunable"] == 0
        else:
            assert g["blocked"] is None and g["prunable"] == g["width"]


def test_find_patterns_lstm_producers_and_prune_outputs():
    model, x = cp.LSTMLayerNormLinearModel(8, 16, 4, 2), torch.randn(SEQ)
    groups = fxprune.find_patterns(model, (x,), prune_outputs=True)
    assert [g["producers"] for g in groups] == [["lstm.weight_ih_l0"], ["lstm.weight_ih_l1"], ["linear.weight"]]
    assert [g["width"] for g in groups] == [16, 16, 4]
    assert all(g["blocked"] is None and g["prunable"] == g["width"] for g in groups)
    # the pattern names do not depend on prune_outputs
    assert [g["pattern"] for g in groups] == PATTERNS["LSTMLayerNormLinearModel-2"][2]


def test_report_patterns_match_find_patterns():
    model, x = LSTMNet().eval(), torch.randn(2, 5, 8)
    pruned = fxprune.prune(model, (x,), sparsity=0.5)
    assert [g.pattern for g in pruned.meta["fxprune"].groups] == [
        g["pattern"] for g in fxprune.find_patterns(model, (x,))]
