"""Idioms of timm's models: ``reshape_as``/``view_as``/``expand_as`` (LeViT's LinearNorm, gates), softmax
over split attention's radix dim (ResNeSt, SKNet), torchvision's stochastic_depth."""
import torch
import torch.nn as nn

import fxprune
from conftest import assert_pruned_equals_masked


class AsOps(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.g = nn.Linear(6, 8), nn.Linear(6, 8), nn.Linear(6, 1)
        self.bn, self.out = nn.BatchNorm1d(8), nn.Linear(8, 2)

    def forward(self, x):                       # x: (b, t, 6)
        y = self.a(x)
        z = self.bn(y.flatten(0, 1)).reshape_as(y)            # levit's LinearNorm
        z = z + self.b(x).view_as(y)
        z = z * torch.sigmoid(self.g(x)).expand_as(z)         # a gate broadcast over the channels
        return self.out(z)


def test_as_ops():
    torch.manual_seed(0)
    m = AsOps().eval()
    x = torch.randn(2, 5, 6)
    p = fxprune.prune(m, (x,), sparsity=0.5)
    r = p.meta["fxprune"]
    assert all("expand_as" in why for _, why in r.barriers)   # only g's single channel, broadcast
    assert r.params_after < r.params_before
    assert_pruned_equals_masked(m, (x,), p)
    assert p.a.out_features == p.b.out_features == 4


class Radix(nn.Module):
    def __init__(self, c=8, radix=2):
        super().__init__()
        self.c, self.radix = c, radix
        self.conv, self.fc, self.out = nn.Conv2d(3, c * radix, 1), nn.Conv2d(c, c * radix, 1), nn.Conv2d(c, 4, 1)

    def forward(self, x):
        b = x.shape[0]
        y = self.conv(x).view(b, self.radix, self.c, x.shape[2], x.shape[3])
        a = self.fc(y.sum(1).mean((2, 3), keepdim=True)).view(b, 1, self.radix, self.c).transpose(1, 2)
        a = a.softmax(1).reshape(b, self.radix, self.c, 1, 1)
        return self.out((y * a).sum(1))


def test_softmax_over_radix():
    torch.manual_seed(0)
    m = Radix().eval()
    x = torch.randn(2, 3, 6, 6)
    p = fxprune.prune(m, (x,), sparsity=0.5)
    r = p.meta["fxprune"]
    assert not r.barriers and p.out.in_channels == 4
    assert_pruned_equals_masked(m, (x,), p)


class ParamGate(nn.Module):
    """efficientvim's gate: an activation of a parameter multiplies the channels."""

    def __init__(self):
        super().__init__()
        self.a, self.out = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 2, 1)
        self.gate = nn.Parameter(torch.randn(8, 1, 1))

    def forward(self, x):
        return self.out(torch.relu(self.a(x)) * self.gate.sigmoid())


def test_an_activation_of_a_parameter():
    torch.manual_seed(0)
    m, x = ParamGate().eval(), torch.randn(2, 3, 5, 5)
    for prune_bias in (True, False):
        p = fxprune.prune(m, (x,), sparsity=0.5, prune_bias=prune_bias)
        assert p.meta["fxprune"].exact
        assert_pruned_equals_masked(m, (x,), p)


class ComputedBias(nn.Module):
    """BEiT/EVA's qkv: F.linear with the weight of a Linear and a bias concatenated at run time."""

    def __init__(self):
        super().__init__()
        self.inp, self.qkv, self.out = nn.Linear(6, 8), nn.Linear(8, 12, bias=False), nn.Linear(12, 2)
        self.q_bias, self.v_bias = nn.Parameter(torch.randn(4)), nn.Parameter(torch.randn(4))

    def forward(self, x):
        bias = torch.cat((self.q_bias, torch.zeros_like(self.v_bias), self.v_bias))
        h = torch.relu(self.inp(x))
        return self.out(torch.nn.functional.linear(h, self.qkv.weight, bias=bias))


def test_linear_with_a_bias_computed_at_run_time_consumes_its_input():
    torch.manual_seed(0)
    m, x = ComputedBias().eval(), torch.randn(3, 6)
    p = fxprune.prune(m, (x,), sparsity=0.5)
    assert p.inp.out_features == 4 and p.qkv.weight.shape == (12, 4)   # columns pruned, rows kept
    assert_pruned_equals_masked(m, (x,), p)


class WindowBias(nn.Module):
    """Swin's attention: a relative position bias table with a column per head, gathered by a fixed
    index, plus a shift mask that is the same for every head, given to SDPA as its mask."""

    def __init__(self, d=16, heads=4, n=4):
        super().__init__()
        self.heads, self.n = heads, n
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.table = nn.Parameter(torch.randn((2 * n - 1), heads))
        self.register_buffer("index", torch.randint(0, 2 * n - 1, (n * n,)))
        self.register_buffer("shift", torch.randn(1, 1, n, n))

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        bias = self.table[self.index].view(self.n, self.n, self.heads).permute(2, 0, 1).unsqueeze(0)   # literal heads
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias + self.shift)
        return self.proj(out.transpose(1, 2).reshape(b, t, d))


def test_per_head_bias_table_is_sliced_with_the_heads():
    torch.manual_seed(0)
    m, x = WindowBias().eval(), torch.randn(2, 4, 16)
    for prune_bias in (True, False):
        p = fxprune.prune(m, (x,), sparsity=0.5, prune_bias=prune_bias)
        assert p.meta["fxprune"].exact and p.table.shape == (7, 2)
        assert_pruned_equals_masked(m, (x,), p)
