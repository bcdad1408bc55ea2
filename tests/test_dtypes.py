"""dtypes: float64, float32, bfloat16 and float16 models prune, keep their dtype in every tensor, and the
pruned model equals the masked one. Half-precision models are verified in float32 copies (the rewrite
does not depend on the dtype; their own rounding is a 1e-2 relative step), and checked in their own dtype
to the rounding of that dtype."""
from __future__ import annotations

import copy

import pytest
import torch

import fxprune
from conftest import RTOL, fresh_like, masked_for
from zoo import ZOO_BY_NAME

DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).abs().max() / a.abs().max())


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("name", ["mobilenet_v3", "vit"])   # a CNN with BatchNorm, a transformer
def test_dtype(name, dtype):
    factory, inputs_factory = ZOO_BY_NAME[name]
    model = factory().eval().to(dtype)
    inputs = tuple(t.to(dtype) for t in inputs_factory())
    pruned = fxprune.prune(model, inputs, sparsity=0.5)
    report = pruned.meta["fxprune"]
    assert report.exact and report.params_after < report.params_before
    assert report.verified_dtype == ("float32" if dtype in (torch.float16, torch.bfloat16) else str(dtype)[6:])
    floats = {t.dtype for t in (*pruned.parameters(), *pruned.buffers()) if t.is_floating_point()}
    assert floats == {dtype}
    masked = masked_for(model, inputs, pruned)
    assert {t.dtype for t in masked.parameters()} == {dtype}   # masks never change a dtype
    x = fresh_like(inputs)
    with torch.no_grad():
        out_masked, out_pruned = masked(*x), pruned(*x)
        assert torch.isfinite(out_pruned).all() and out_masked.abs().max() > 0
        assert _rel(out_masked, out_pruned) <= 64 * torch.finfo(dtype).eps
        if dtype in (torch.float16, torch.bfloat16):   # the same models in float32: exact to float32 rounding
            m32, p32 = copy.deepcopy(masked).float(), copy.deepcopy(pruned).float()
            x32 = tuple(t.float() for t in x)
            assert _rel(m32(*x32), p32(*x32)) <= RTOL
