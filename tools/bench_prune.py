"""Time fxprune.prune() on the torch.ao seed models (median of several runs; verified, and with
verify=False) and, in the same process, torch.ao's structured pruner (prepare + step + prune) on the
same model with the same sparsity. ratio = verified fxprune / torch.ao.

    .venv/bin/python tools/bench_prune.py [--runs 7]
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from torch.ao.pruning._experimental.pruner import SaliencyPruner
from torch.testing._internal import common_pruning as cp

import fxprune

MODELS = [
    ("LinearActivation", cp.LinearActivation, (128, 7)),
    ("Conv2dPadBias", cp.Conv2dPadBias, (1, 1, 28, 28)),
    ("Conv2dPool", cp.Conv2dPool, (1, 1, 28, 28)),
    ("Conv2dPoolFlatten", cp.Conv2dPoolFlatten, (1, 1, 28, 28)),
]


def median_ms(fn, runs: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def torchao_prune(model, x):
    m = copy.deepcopy(model)
    pruner = SaliencyPruner({"sparsity_level": 0.5})
    # every Linear/Conv2d but the last (torch.ao raises on a configured layer that feeds the output)
    names = [n for n, mod in m.named_modules() if isinstance(mod, (torch.nn.Linear, torch.nn.Conv2d))]
    pruner.prepare(m, [{"tensor_fqn": f"{n}.weight"} for n in names[:-1]])
    pruner.enable_mask_update = True
    pruner.step()
    m(x)
    return pruner.prune()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=7)
    args = ap.parse_args()
    torch.manual_seed(0)
    print(f"{'model':20s} {'params':>8s} {'fxprune ms':>11s} {'verify=False':>13s} {'torch.ao ms':>12s} {'ratio':>6s}")
    for name, cls, shape in MODELS:
        model, x = cls().eval(), torch.randn(shape)
        ours = median_ms(lambda: fxprune.prune(model, (x,), sparsity=0.5), args.runs)
        fast = median_ms(lambda: fxprune.prune(model, (x,), sparsity=0.5, verify=False), args.runs)
        ao = median_ms(lambda: torchao_prune(model, x), args.runs)
        params = sum(p.numel() for p in model.parameters())
        print(f"{name:20s} {params:8d} {ours:11.1f} {fast:13.1f} {ao:12.1f} {ours / ao:6.2f}")


if __name__ == "__main__":
    main()
