"""eliminate_dead_channels: channels that are zero for every input are removed; the output is the
original model's, on inputs that are not the example."""
import copy

import pytest
import torch
import torch.nn as nn

import fxprune
from conftest import RTOL, fresh_like, model_digest
from zoo import ZOO

DEAD_ZOO = ["resnet_basic", "resnet_bottleneck", "mobilenet_v2", "mobilenet_v3", "efficientnet", "densenet",
            "googlenet", "shufflenet_v2", "vgg_bn", "regnet", "unet", "tcn", "r3d_video", "gpt_manual",
            "vit", "resnet_fused"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def kill_channels(model, fraction=0.3, seed=0):
    """Zero random output channels: rows and bias of Linear/Conv producers, or weight and bias of
    BatchNorms (network slimming)."""
    g = torch.Generator().manual_seed(seed)
    killed = 0
    with torch.no_grad():
        for name, m in model.named_modules():
            if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)) and m.weight.shape[0] > 2 \
                    and getattr(m, "groups", 1) == 1:
                rows = torch.rand(m.weight.shape[0], generator=g) < fraction
                m.weight[rows] = 0
                if m.bias is not None:
                    m.bias[rows] = 0
                killed += int(rows.sum())
            elif isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine:
                rows = torch.rand(m.num_features, generator=g) < fraction
                m.weight[rows] = 0
                m.bias[rows] = 0
                killed += int(rows.sum())
    return killed


def relative(a, b):
    a = [a] if isinstance(a, torch.Tensor) else list(a)
    b = [b] if isinstance(b, torch.Tensor) else list(b)
    scale = max([1.0] + [float(x.abs().max()) for x in a])
    return max(float((x - y).abs().max()) for x, y in zip(a, b)) / scale


@pytest.mark.parametrize("name", DEAD_ZOO)
def test_dead_channels_removed_exactly(name):
    factory, inputs_factory = {n: (f, i) for n, f, i in ZOO}[name]
    model, inputs = factory(), inputs_factory()
    assert kill_channels(model) > 0
    digest = model_digest(model)
    smaller = fxprune.eliminate_dead_channels(model, inputs)
    assert model_digest(model) == digest
    n_before = sum(p.numel() for p in model.parameters())
    n_after = sum(p.numel() for p in smaller.parameters())
    assert n_after < n_before, f"{name}: nothing removed"
    model.eval()
    smaller.eval()
    with torch.no_grad():
        for seed in (1, 2):
            x = fresh_like(inputs, seed=seed)
            assert relative(model(*x), smaller(*x)) <= RTOL


def test_nothing_dead_nothing_removed():
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    smaller = fxprune.eliminate_dead_channels(model, (torch.randn(2, 5),))
    assert sum(p.numel() for p in smaller.parameters()) == sum(p.numel() for p in model.parameters())


def test_batchnorm_killed_channel_with_live_conv():
    """network slimming: the conv rows are alive, the BN's weight and bias are zero: removed."""
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 4, 3, padding=1)).eval()
    with torch.no_grad():
        model[1].weight[[1, 5]] = 0
        model[1].bias[[1, 5]] = 0
        model[1].running_mean.normal_()
    smaller = fxprune.eliminate_dead_channels(model, (torch.randn(2, 3, 8, 8),))
    assert smaller.get_submodule("0").out_channels == 6
    x = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        assert relative(model(x), smaller(x)) <= RTOL


def test_zero_rows_but_live_bias_is_not_dead():
    """a zero weight row with a nonzero bias is a constant channel, not a dead one"""
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2)).eval()
    with torch.no_grad():
        model[0].weight[2] = 0
        model[0].bias[2] = 0.5
        model[0].weight[4] = 0
        model[0].bias[4] = 0
    smaller = fxprune.eliminate_dead_channels(model, (torch.randn(2, 4),))
    assert smaller.get_submodule("0").out_features == 5


def test_dead_lstm_units_and_attention_heads():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp = nn.Linear(6, 8)
            self.lstm = nn.LSTM(8, 6, num_layers=2, batch_first=True)
            self.attn = nn.MultiheadAttention(6, 3, batch_first=True)
            self.head = nn.Linear(6, 2)

        def forward(self, x):
            h, _ = self.lstm(torch.relu(self.inp(x)))
            a, _ = self.attn(h, h, h, need_weights=False)
            return self.head(a[:, -1])

    model = Net().eval()
    with torch.no_grad():
        for name in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"):
            getattr(model.lstm, name).view(4, 6, -1)[:, 2] = 0     # unit 2 of layer 0, every gate
        model.attn.in_proj_weight.view(3, 3, 2, 6)[:, 1] = 0      # head 1: q, k and v rows
        model.attn.in_proj_bias.view(3, 3, 2)[:, 1] = 0
    x = torch.randn(2, 5, 6)
    smaller = fxprune.eliminate_dead_channels(model, (x,))
    assert smaller.lstm.weight_hh_l0.shape[1] == 6  # hidden_size is shared by both layers: unit kept
    assert smaller.attn.num_heads == 2
    with torch.no_grad():
        x2 = torch.randn(3, 5, 6)
        assert relative(model(x2), smaller(x2)) <= RTOL
