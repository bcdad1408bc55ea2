"""The table for issue notes: each network of tests/zoo.py pruned at sparsity 0.5 (both prune_bias
settings): parameters before and after, max |pruned - masked| relative on fresh random inputs (not
the example), and prune() time (median of several runs).

    .venv/bin/python tools/zoo_table.py [--runs 3] [names ...]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))

import fxprune  # noqa: E402
from zoo import ZOO  # noqa: E402


def fresh(inputs, seed):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(t.shape, generator=g) if t.dtype.is_floating_point
                 else torch.randint(0, int(t.max()) + 1, t.shape, generator=g) for t in inputs)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("names", nargs="*")
    args = ap.parse_args()
    print("| network | params | after (prune_bias=True) | after (prune_bias=False) | max rel diff | prune() ms |")
    print("|---|---|---|---|---|---|")
    for name, factory, inputs_factory in ZOO:
        if args.names and name not in args.names:
            continue
        model, x = factory().eval(), inputs_factory()
        after, worst = [], 0.0
        for pb in (True, False):
            pruned = fxprune.prune(model, x, sparsity=0.5, prune_bias=pb).eval()
            report = pruned.meta["fxprune"]
            masked = fxprune.apply_masks(model, x, masks=report.masks, prune_bias=pb).eval()
            with torch.no_grad():
                for seed in (1, 2):
                    xs = fresh(x, seed)
                    worst = max(worst, report.compare(masked(*xs), pruned(*xs)))
            after.append(report.params_after)
        times = []
        for _ in range(args.runs):
            t = time.perf_counter()
            fxprune.prune(model, x, sparsity=0.5)
            times.append(time.perf_counter() - t)
        params = sum(p.numel() for p in model.parameters())
        print(f"| {name} | {params:,} | {after[0]:,} | {after[1]:,} | {worst:.1e} | "
              f"{1000 * statistics.median(times):.0f} |")


if __name__ == "__main__":
    main()
