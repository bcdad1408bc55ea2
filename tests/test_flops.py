"""FLOPs from shapes (fxprune.flops) equal FlopCounterMode's count of a fake-tensor run, on every zoo
model before and after pruning (both prune_bias settings), and the pruned graph's shape metadata is
what a fresh propagation finds."""
from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import fxprune
from fxprune.capture import capture
from fxprune.flops import graph_flops, node_flops
from fxprune.graph import FakeShapeProp
from conftest import normal_meta
from zoo import ZOO, ZOO_BY_NAME


def counted_by_mode(gm, inputs) -> int:
    """The FLOPs FlopCounterMode counts over a fake-tensor run of ``gm`` (how prune() counted them before)."""
    with FlopCounterMode(display=False) as counter:
        FakeShapeProp(gm).propagate(*inputs)
    return counter.get_total_flops()


def shapes_of(gm) -> dict:
    return {n.name: normal_meta(n.meta.get("tensor_meta")) for n in gm.graph.nodes}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name", [name for name, _, _ in ZOO])
def test_flops_from_shapes_equal_flop_counter(name):
    factory, inputs_factory = ZOO_BY_NAME[name]
    model, inputs = factory().eval(), inputs_factory()
    gm = capture(model)
    expected = counted_by_mode(gm, inputs)
    assert expected > 0
    prop = FakeShapeProp(gm, count_flops=True)
    prop.propagate(*inputs)
    assert prop.flops == expected
    # the nodes with a formula, from the recorded shapes alone (no run), sum to the same as the run counts
    modules = dict(gm.named_modules())
    from_shapes = [node_flops(n, modules) for n in gm.graph.nodes]
    assert sum(f for f in from_shapes if f) > 0
    if all(f is not None for f in from_shapes):
        assert graph_flops(gm) == expected

    for prune_bias in (True, False):
        pruned = fxprune.prune(model, inputs, sparsity=0.5, prune_bias=prune_bias)
        report = pruned.meta["fxprune"]
        assert report.flops_before == expected
        metas = shapes_of(pruned)
        assert report.flops_after == counted_by_mode(pruned, inputs)   # also re-propagates the shapes
        fresh = shapes_of(pruned)
        assert metas == fresh, "the pruned graph's tensor_meta differs from a fresh propagation's"
        no_verify = fxprune.prune(model, inputs, sparsity=0.5, prune_bias=prune_bias, verify=False)
        assert no_verify.meta["fxprune"].flops_after == report.flops_after
