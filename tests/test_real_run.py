"""The analysis runs the caller's model on its own tensors where that leaves no trace
(fxprune.analysis.RealChannelFlow, guarded), and on fake tensors where it cannot (FakeChannelFlow).
Both runs must find the same shapes, FLOPs, groups and barriers; the guarded run must refuse, before
it happens, any write into a parameter or an input, and leave buffers and the random number
generator as they were."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from fxprune.analysis import Analysis, FakeChannelFlow, RealChannelFlow, analyze
from fxprune.analysis.patterns import name_groups
from fxprune.capture import capture
from fxprune.channels import UnionFind
from conftest import normal_meta
from zoo import ZOO, ZOO_BY_NAME


def _found(gm, inputs, flow_cls) -> dict:
    flow = flow_cls(gm)
    flow.propagate(*inputs)
    analysis = Analysis(gm, flow)
    name_groups(analysis)
    return {
        "flops": flow.flops,
        "shapes": {n.name: normal_meta(n.meta.get("tensor_meta")) for n in gm.graph.nodes},
        "barriers": sorted((n.name, why) for n, why in flow.barriers),
        "groups": [(g.pattern, g.width, g.blocked, sorted(s.owner for s in g.producers),
                    [(u.elements, u.blocked) for u in g.units]) for g in analysis.groups],
    }


@pytest.mark.parametrize("name", [name for name, _, _ in ZOO])
def test_real_and_fake_runs_find_the_same(name):
    factory, inputs_factory = ZOO_BY_NAME[name]
    torch.manual_seed(0)
    model, inputs = factory().eval(), inputs_factory()
    gm = capture(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    real = _found(gm, inputs, RealChannelFlow)
    fake = _found(gm, inputs, FakeChannelFlow)
    assert real["flops"] == fake["flops"] > 0
    assert real["shapes"] == fake["shapes"]
    assert real["barriers"] == fake["barriers"]
    assert real["groups"] == fake["groups"]
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


class ClampsItsWeight(nn.Module):
    """Writes into its own parameter while it runs (weight clipping done in forward)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 8)
        self.b = nn.Linear(8, 2)

    def forward(self, x):
        self.a.weight.data.clamp_(-0.01, 0.01)
        return self.b(torch.relu(self.a(x)))


class ScalesItsInput(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 8)
        self.b = nn.Linear(8, 2)

    def forward(self, x):
        x.mul_(2)
        return self.b(torch.relu(self.a(x)))


@pytest.mark.parametrize("cls", [ClampsItsWeight, ScalesItsInput])
def test_guarded_run_refuses_writes_into_the_callers_tensors(cls):
    torch.manual_seed(0)
    model = cls().eval()
    gm = capture(model)
    x = torch.randn(3, 4)
    weight, given = model.a.weight.detach().clone(), x.clone()
    assert weight.abs().max() > 0.01
    with pytest.raises(RuntimeError) as info:
        RealChannelFlow(gm).propagate(x)
    assert "writes into a tensor of the caller" in str(info.value.__cause__)
    analysis = analyze(gm, (x,))   # falls back to fake tensors
    assert analysis.groups
    assert torch.equal(model.a.weight, weight) and torch.equal(x, given)


class TrainingBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.bn = nn.BatchNorm2d(8)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.head(F.dropout(torch.relu(self.bn(self.conv(x))), 0.5, training=self.training))


def test_guarded_run_leaves_statistics_and_random_state():
    torch.manual_seed(0)
    model = TrainingBlock().train()
    gm = capture(model)
    stats = {k: v.clone() for k, v in model.bn.state_dict().items()}
    x = torch.randn(2, 3, 8, 8)
    rng = torch.get_rng_state()
    flow = RealChannelFlow(gm)
    flow.propagate(x)
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(v, stats[k]) for k, v in model.bn.state_dict().items())
    assert flow.flops > 0


def test_union_find_matches_sequential_unions():
    """Vectorised unions resolve to what one union at a time gives: each element's root is the
    smallest id of its set, whatever the order and however many unions come in a batch."""
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        n = int(torch.randint(1, 40, (1,), generator=g))
        uf, parent = UnionFind(), list(range(n))
        uf.add(n)

        def find(x):
            while parent[x] != x:
                x = parent[x]
            return x

        for _ in range(3):
            k = int(torch.randint(0, 20, (1,), generator=g))
            a, b = torch.randint(0, n, (k,), generator=g), torch.randint(0, n, (k,), generator=g)
            uf.union_many(a, b)
            for x, y in zip(a.tolist(), b.tolist()):
                rx, ry = find(x), find(y)
                parent[max(rx, ry)] = min(rx, ry)
            uf.add(2)
            parent += [n, n + 1]
            n += 2
            assert uf.roots().tolist() == [find(i) for i in range(n)]
