"""Latency: time a model and its pruned version on the example inputs.

Kept out of :func:`fxprune.prune` on purpose: timing costs forward passes (on a ResNet-50 several times
what pruning itself costs), so ``prune()`` records only what is cheap (parameters, FLOPs on fake
tensors, bytes) and latency is measured when asked::

    pruned = fxprune.prune(model, (x,), sparsity=0.5)
    fxprune.measure_latency(model, pruned, (x,), runs=20)      # fills the report's latency fields
    print(pruned.meta["fxprune"])                                # ... latency: 4.1 ms -> 1.9 ms ...

The command line's ``fxprune prune`` measures it by default (``--no-latency`` skips it).
"""
from __future__ import annotations

import statistics
import time

import torch

from .graph import normalize_inputs
from .verify import verification_mode

__all__ = ["time_pair"]


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_pair(model, pruned, example_inputs, runs: int = 10, warmup: int = 2) -> tuple[float, float, str]:
    """Median forward time of ``model`` and of ``pruned`` in milliseconds, and the inputs' device.

    Both run ``warmup`` times, then ``runs`` times each, interleaved (model, pruned, pruned, model, ...)
    so that a change of machine load affects both alike; under ``torch.no_grad()``, in the mode the
    models are in (``eval()`` or ``train()``, as ``prune()`` captured them) with dropout off, and every
    buffer (BatchNorm statistics) is restored afterwards, so neither model changes.
    """
    if int(runs) < 1:
        raise ValueError(f"runs must be a positive integer, got {runs}")
    if int(warmup) < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    inputs = normalize_inputs(example_inputs)
    device = next((str(t.device) for t in inputs if isinstance(t, torch.Tensor)), "cpu")
    times: tuple[list[float], list[float]] = ([], [])
    models = (model, pruned)
    with verification_mode(model, pruned):
        for i in range(int(warmup) + int(runs)):
            order = (0, 1) if i % 2 == 0 else (1, 0)
            for k in order:
                _sync(device)
                start = time.perf_counter()
                models[k](*inputs)
                _sync(device)
                if i >= warmup:
                    times[k].append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times[0]), statistics.median(times[1]), device
