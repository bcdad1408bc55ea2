"""Shared checks: exactness of pruned vs masked on inputs that are not the example inputs."""
from __future__ import annotations

import hashlib
import io

import pytest
import torch

import fxprune

# float32 rounding: relative to the output's magnitude
RTOL = 1e-5


def fresh_like(inputs, seed=1234):
    """Random inputs with the example's shapes and dtypes, but other values."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for t in inputs:
        if t.dtype.is_floating_point:
            out.append(torch.randn(t.shape, generator=g, dtype=t.dtype))
        else:
            out.append(torch.randint(0, int(t.max()) + 1, t.shape, generator=g, dtype=t.dtype))
    return tuple(out)


def masked_for(model, inputs, pruned, **kw):
    """The masked model for the masks ``pruned`` reports (same prune_bias / prune_outputs)."""
    report = pruned.meta["fxprune"]
    return fxprune.apply_masks(model, inputs, masks=report.masks, prune_bias=report.prune_bias, **kw)


def assert_pruned_equals_masked(model, inputs, pruned, n_trials=3, **kw):
    """pruned == masked on fresh random inputs, to float32 rounding; returns the worst relative diff."""
    report = pruned.meta["fxprune"]
    masked = masked_for(model, inputs, pruned, **kw)
    masked.eval()
    pruned.eval()
    worst = 0.0
    with torch.no_grad():
        for i in range(n_trials):
            # inputs drawn anew for each model: a model may modify its inputs in place
            x, y = fresh_like(inputs, seed=100 + i), fresh_like(inputs, seed=100 + i)
            worst = max(worst, report.compare(masked(*x), pruned(*y)))
    assert worst <= RTOL, f"pruned != masked: relative diff {worst:.3g}"
    return worst


def prune_both(model, inputs, sparsity=0.5, **kw):
    """prune() with both prune_bias settings (``inputs``: a tensor or a tuple): pruned == masked on fresh
    inputs, the model unchanged; the two pruned models."""
    inputs = inputs if isinstance(inputs, tuple) else (inputs,)
    digest = model_digest(model)
    out = []
    for prune_bias in (True, False):
        pruned = fxprune.prune(model, inputs, sparsity=sparsity, prune_bias=prune_bias, **kw)
        assert model_digest(model) == digest
        assert_pruned_equals_masked(model, inputs, pruned)
        out.append(pruned)
    return out


def normal_meta(meta):
    """tensor_meta with the strides of size-1 dims left out: a real run and a fake one may differ there
    (no element is ever reached through them)."""
    from torch.fx.passes.shape_prop import TensorMetadata
    if isinstance(meta, TensorMetadata):
        return meta._replace(stride=tuple(s if n > 1 else None for s, n in zip(meta.stride, meta.shape)))
    if isinstance(meta, (tuple, list)):
        return [normal_meta(m) for m in meta]
    if isinstance(meta, dict):
        return {k: normal_meta(v) for k, v in meta.items()}
    return meta


def model_digest(model) -> str:
    """Hash of a model's state_dict, code (GraphModule) and parametrizations: proves it was not modified."""
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes() if v.dtype != torch.bool
                 else v.to(torch.uint8).numpy().tobytes())
    if isinstance(model, torch.fx.GraphModule):
        h.update(model.code.encode())
    h.update(repr(model).encode())
    for m in model.modules():
        h.update(str(sorted(m._forward_hooks.keys())).encode())
        h.update(str(sorted(m._forward_pre_hooks.keys())).encode())
    return h.hexdigest()


@pytest.fixture(scope="module")
def one_thread():
    """torch on one thread for a module's tests (its models are small; threads only contend)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
