"""Prune tiny random Hugging Face transformers models (tests/hf_models.py: hidden 64, 2 layers, 4 heads,
2 key/value heads) the way a user would: ``fxprune.prune(model, example_kwargs=..., sparsity=0.5)``,
which falls back to torch.export. Prints one row per architecture: parameters before and after, the
max relative |pruned - masked| on inputs of another batch and length than the example's, prune()
time, the capture used and the barriers.

    .venv/bin/python tools/sweep_hf.py [--match llama,bert] [--markdown]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

import torch  # noqa: E402

import fxprune  # noqa: E402
import hf_models  # noqa: E402
import real_zoos  # noqa: E402


def row(name: str) -> dict:
    model, kwargs = hf_models.build(name)
    real_zoos.perturbed(model)
    start = time.perf_counter()
    pruned = fxprune.prune(model, example_kwargs=kwargs, sparsity=0.5)
    took = time.perf_counter() - start
    report = pruned.meta["fxprune"]
    masked = fxprune.apply_masks(model, example_kwargs=kwargs, masks=report.masks)
    x = hf_models.inputs(name, seed=9, batch=3, seq=12)
    with torch.no_grad():
        rel = report.compare(masked(**x), pruned(**x))
    barriers = sorted({why for _, why in report.barriers})
    return {"arch": name, "class": type(model).__name__, "before": report.params_before,
            "after": report.params_after, "rel": rel, "time": took, "capture": report.capture.split(" (")[0],
            "barriers": barriers}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--match", help="comma-separated architecture names (default: all)")
    ap.add_argument("--markdown", action="store_true", help="print a markdown table")
    args = ap.parse_args(argv)
    names = args.match.split(",") if args.match else list(hf_models.ALL)
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    if args.markdown:
        print("| architecture | model class | parameters before -> after | left | max rel. diff | prune() time | capture | barriers |")
        print("|---|---|---|---|---|---|---|---|")
    for name in names:
        try:
            r = row(name)
        except Exception as e:
            print(f"| {name} | | failed: {type(e).__name__}: {' '.join(str(e).split())[:150]} | | | | | |"
                  if args.markdown else f"{name:12s} FAILED {type(e).__name__}: {' '.join(str(e).split())[:200]}",
                  flush=True)
            continue
        left = r["after"] / r["before"]
        b = "; ".join(r["barriers"][:3]) + (f" (+{len(r['barriers']) - 3})" if len(r["barriers"]) > 3 else "")
        if args.markdown:
            print(f"| {name} | {r['class']} | {r['before']:,} -> {r['after']:,} | {left:.2f} | {r['rel']:.1e} | "
                  f"{r['time']:.1f} s | {r['capture']} | {b or 'none'} |", flush=True)
        else:
            print(f"{name:12s} {r['before']:>9,} -> {r['after']:>9,} ({left:.2f})  rel {r['rel']:.1e}  "
                  f"{r['time']:5.1f} s  {r['capture']}  {b}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
