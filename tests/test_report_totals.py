"""Report totals: size in bytes (always) and latency (only when asked: fxprune.measure_latency)."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import fxprune


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)          # float running stats and an int64 num_batches_tracked
        self.fc1 = nn.Linear(16, 24)
        self.fc2 = nn.Linear(24, 4)
        self.register_buffer("scale", torch.ones(4))

    def forward(self, x):
        x = F.relu(self.bn(self.conv(x))).mean((2, 3))
        return self.fc2(F.relu(self.fc1(x))) * self.scale


def _hand_bytes(m: nn.Module) -> int:
    total = 0
    for _, p in m.named_parameters():
        total += p.numel() * p.element_size()
    for _, b in m.named_buffers():
        total += b.numel() * b.element_size()
    return total


@pytest.fixture
def net():
    torch.manual_seed(0)
    return Net().eval(), (torch.randn(2, 3, 8, 8),)


def test_bytes_before_and_after_are_params_plus_buffers(net):
    model, x = net
    pruned = fxprune.prune(model, x, sparsity=0.5)
    r = pruned.meta["fxprune"]
    assert r.bytes_before == _hand_bytes(model)
    assert r.bytes_after == _hand_bytes(pruned)
    assert 0 < r.bytes_after < r.bytes_before
    # num_batches_tracked (int64) counts at its own element size
    assert r.bytes_before != 4 * sum(t.numel() for t in (*model.parameters(), *model.buffers()))
    d = r.to_dict()
    assert d["bytes_before"] == r.bytes_before and d["bytes_after"] == r.bytes_after
    assert f"size:       {r.bytes_before:,} -> {r.bytes_after:,} bytes" in str(r)


class Tied(nn.Module):
    """An embedding tied to the output layer (its weight), a layer between them."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(20, 8)
        self.mid = nn.Linear(8, 8)
        self.head = nn.Linear(8, 20, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, t):
        return self.head(F.relu(self.mid(self.emb(t))))


def test_tied_weights_count_once():
    torch.manual_seed(0)
    model = Tied().eval()
    pruned = fxprune.prune(model, (torch.randint(0, 20, (2, 5)),), sparsity=0.5)
    r = pruned.meta["fxprune"]
    assert r.bytes_before == 4 * (20 * 8 + 8 * 8 + 8) == _hand_bytes(model)
    assert r.bytes_after == _hand_bytes(pruned)


def test_prune_does_not_time_the_models(net):
    model, x = net
    r = fxprune.prune(model, x, sparsity=0.5).meta["fxprune"]
    assert r.latency_before_ms is None and r.latency_after_ms is None
    assert "latency" not in str(r)
    d = r.to_dict()
    assert d["latency_before_ms"] is None and d["latency_after_ms"] is None


def test_measure_latency_fills_the_report(net):
    model, x = net
    model.train()                                   # BatchNorm statistics would move in train mode
    before_state = {k: v.clone() for k, v in model.state_dict().items()}
    pruned = fxprune.prune(model, x, sparsity=0.5)
    before_ms, after_ms = fxprune.measure_latency(model, pruned, x, runs=3, warmup=1)
    r = pruned.meta["fxprune"]
    for v in (before_ms, after_ms, r.latency_before_ms, r.latency_after_ms):
        assert isinstance(v, float) and v > 0
    assert (r.latency_before_ms, r.latency_after_ms) == (before_ms, after_ms)
    assert r.latency_runs == 3 and r.latency_device == "cpu" and r.latency_threads == torch.get_num_threads()
    assert "latency:    " in str(r) and "median of 3 runs" in str(r)
    d = json.loads(json.dumps({k: v for k, v in r.to_dict().items() if k != "masks"}))
    assert d["latency_before_ms"] == before_ms and d["latency_after_ms"] == after_ms
    # timing changed neither model: same mode, same buffers
    assert model.training
    assert all(torch.equal(before_state[k], v) for k, v in model.state_dict().items())
    # the Report method does the same, and any two modules can be timed
    assert r.measure_latency(model, pruned, x[0], runs=1, warmup=0) is r and r.latency_runs == 1
    a, b = fxprune.measure_latency(model, model, x, runs=1, warmup=0)
    assert a > 0 and b > 0
    with pytest.raises(ValueError, match="runs must be a positive integer"):
        fxprune.measure_latency(model, pruned, x, runs=0)
