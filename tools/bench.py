"""fxprune's prune() time and memory next to Torch-Pruning and one forward pass, on torchvision models.

    .venv/bin/pip install --no-deps torch-pruning==1.6.1     # optional; never let pip resolve torch
    .venv/bin/python tools/bench.py [--runs 3] [--threads 2] [names ...]

Each model runs in its own fresh process (so peak memory is its own). In that process, per model
(1x3x224x224, random init, eval mode):
- forward: median of ``--runs`` forward passes under no_grad (the reference);
- fxprune: median ``fxprune.prune(model, (x,), sparsity=0.5)`` (verified), and with ``verify=False``;
- Torch-Pruning: median ``MagnitudePruner(deepcopy(model), ..., pruning_ratio=0.5, ignored_layers=[the
  classifier]).step()`` (building the pruner and pruning; the copy is not timed);
- ratios: fxprune / Torch-Pruning, and fxprune / forward ("forward passes");
- peak RSS above the process's RSS with the model built (``resource.getrusage`` high-water mark, read
  once before and once after all fxprune calls; Torch-Pruning's runs come after and are not in it),
  as a multiple of the model's weights.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import warnings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT = ["resnet18", "resnet50", "resnext50_32x4d", "wide_resnet50_2", "mobilenet_v2", "mobilenet_v3_small",
           "efficientnet_b0", "efficientnet_v2_s", "regnet_x_400mf"]


def _median_time(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024   # Linux: kilobytes


def child(name: str, runs: int, threads: int) -> dict:
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    sys.path.insert(0, os.path.join(ROOT, "src"))
    import torch
    import real_zoos
    import fxprune
    warnings.simplefilter("ignore")
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = real_zoos.build("torchvision", name)
    x = torch.randn(1, 3, 224, 224)
    weights_mb = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers())) / 2**20
    with torch.no_grad():
        model(x)
        fwd = _median_time(lambda: model(x), runs)
    base = _rss_mb()
    fx_time = _median_time(lambda: fxprune.prune(model, (x,), sparsity=0.5), runs)
    fx_noverify = _median_time(lambda: fxprune.prune(model, (x,), sparsity=0.5, verify=False), runs)
    peak = _rss_mb() - base
    out = {"model": name, "params": sum(p.numel() for p in model.parameters()), "forward_s": fwd,
           "fxprune_s": fx_time, "fxprune_noverify_s": fx_noverify, "fxprune_peak_mb": peak,
           "weights_mb": weights_mb, "tp_s": None}
    try:
        import torch_pruning as tp
    except ImportError:
        return out
    classifier = [k for k, v in model.named_modules() if isinstance(v, torch.nn.Linear)][-1]

    def tp_step(m):
        pruner = tp.pruner.MagnitudePruner(m, x, importance=tp.importance.GroupMagnitudeImportance(p=2),
                                           pruning_ratio=0.5, ignored_layers=[m.get_submodule(classifier)])
        pruner.step()

    times = []
    for _ in range(runs):
        m = copy.deepcopy(model)
        start = time.perf_counter()
        try:
            tp_step(m)
        except Exception as e:
            out["tp_error"] = f"{type(e).__name__}: {str(e)[:80]}"
            return out
        times.append(time.perf_counter() - start)
    out["tp_s"] = statistics.median(times)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("names", nargs="*")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.runs, args.threads)))
        return
    print(f"torchvision models, 1x3x224x224, {args.threads} threads, medians of {args.runs} runs; "
          "fxprune = prune(sparsity=0.5) verified")
    print("| model | forward | fxprune | verify=False | Torch-Pruning | fxprune / TP | fxprune / forward "
          "| verify=False / forward | fxprune peak / weights |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in args.names or DEFAULT:
        proc = subprocess.run([sys.executable, __file__, "--child", name, "--runs", str(args.runs),
                               "--threads", str(args.threads)], capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"| {name} | failed: {proc.stderr.strip().splitlines()[-1][:100]} |")
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        tp = f"{r['tp_s']:.2f} s" if r["tp_s"] else r.get("tp_error", "not installed")
        ratio = f"{r['fxprune_s'] / r['tp_s']:.2f}x" if r["tp_s"] else "-"
        print(f"| {name} | {r['forward_s'] * 1000:.0f} ms | {r['fxprune_s']:.2f} s | {r['fxprune_noverify_s']:.2f} s "
              f"| {tp} | {ratio} | {r['fxprune_s'] / r['forward_s']:.1f} | {r['fxprune_noverify_s'] / r['forward_s']:.1f} "
              f"| {r['fxprune_peak_mb'] / r['weights_mb']:.2f} ({r['fxprune_peak_mb']:.0f} MB) |", flush=True)


if __name__ == "__main__":
    main()
