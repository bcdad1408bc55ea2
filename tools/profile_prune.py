"""Where prune()'s time goes: exclusive wall time per pipeline stage, on a few torchvision models.

    PYTHONPATH=src .venv/bin/python tools/profile_prune.py [--runs 5] [--threads 2] [--no-verify]
        [--cprofile MODEL] [names ...]

Each model runs in a fresh process (1x3x224x224, random init, eval mode; the transformer is
torchvision's vit_b_16 at 112x112, 49 patches). One untimed warm-up, then ``--runs`` calls of
``fxprune.prune(model, (x,), sparsity=0.5)`` under :func:`fxprune.timing.record`; each stage's
median is printed in seconds and % of the median total, with one forward pass (median) and
prune()/forward. Stages are exclusive (``analysis`` is the rule flow and bookkeeping, without the
fake-tensor ``shapes`` of each node); ``other`` is the total minus the stages (argument checks,
dtype bookkeeping, the garbage collection after the pass). ``--cprofile MODEL`` instead prints
cProfile's top functions (cumulative) for one prune() of that model.
"""
from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import statistics
import subprocess
import sys
import time
import warnings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT = ["resnet50", "mobilenet_v2", "regnet_x_400mf", "vit_b_16"]
STAGES = ["capture", "shapes", "analysis", "saliency", "plan", "bake", "masked view", "verify: masked forward",
          "rewrite", "verify: pruned forward", "pruned forward", "verify: compare", "flops", "report"]


def build(name: str):
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    import torch
    import real_zoos
    torch.manual_seed(0)
    if name == "vit_b_16":
        model = real_zoos.import_torchvision().models.vit_b_16(image_size=112).eval()
        return model, torch.randn(1, 3, 112, 112)
    return real_zoos.build("torchvision", name), torch.randn(1, 3, 224, 224)


def child(name: str, runs: int, threads: int, verify: bool) -> dict:
    sys.path.insert(0, os.path.join(ROOT, "src"))
    import torch
    import fxprune
    from fxprune import timing
    warnings.simplefilter("ignore")
    torch.set_num_threads(threads)
    model, x = build(name)
    with torch.no_grad():
        model(x)
        forward = []
        for _ in range(runs):
            start = time.perf_counter()
            model(x)
            forward.append(time.perf_counter() - start)
    fxprune.prune(model, (x,), sparsity=0.5, verify=verify)   # warm-up
    totals, stages = [], []
    for _ in range(runs):
        with timing.record() as times:
            start = time.perf_counter()
            fxprune.prune(model, (x,), sparsity=0.5, verify=verify)
            totals.append(time.perf_counter() - start)
        stages.append(dict(times))
    names = sorted({k for s in stages for k in s}, key=lambda k: STAGES.index(k) if k in STAGES else len(STAGES))
    med = {k: statistics.median(s.get(k, 0.0) for s in stages) for k in names}
    return {"model": name, "forward": statistics.median(forward), "total": statistics.median(totals), "stages": med}


def profile(name: str, threads: int, verify: bool) -> None:
    sys.path.insert(0, os.path.join(ROOT, "src"))
    import torch
    import fxprune
    warnings.simplefilter("ignore")
    torch.set_num_threads(threads)
    model, x = build(name)
    fxprune.prune(model, (x,), sparsity=0.5, verify=verify)
    prof = cProfile.Profile()
    prof.enable()
    fxprune.prune(model, (x,), sparsity=0.5, verify=verify)
    prof.disable()
    pstats.Stats(prof).sort_stats("cumulative").print_stats(40)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-verify", action="store_true", help="prune(verify=False)")
    ap.add_argument("--cprofile", metavar="MODEL", help="cProfile one prune() of MODEL instead")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("names", nargs="*")
    args = ap.parse_args()
    verify = not args.no_verify
    if args.cprofile:
        profile(args.cprofile, args.threads, verify)
        return
    if args.child:
        print(json.dumps(child(args.child, args.runs, args.threads, verify)))
        return
    results = []
    for name in args.names or DEFAULT:
        cmd = [sys.executable, __file__, "--child", name, "--runs", str(args.runs), "--threads", str(args.threads)]
        proc = subprocess.run(cmd + (["--no-verify"] if not verify else []), capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"{name}: failed: {proc.stderr.strip()[-500:]}", file=sys.stderr)
            continue
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    if not results:
        return
    print(f"prune(sparsity=0.5{'' if verify else ', verify=False'}), {args.threads} threads, median of "
          f"{args.runs} runs; seconds (% of prune()), exclusive per stage")
    names = [k for k in STAGES if any(k in r["stages"] for r in results)]
    names += sorted({k for r in results for k in r["stages"]} - set(names))
    print("| stage | " + " | ".join(r["model"] for r in results) + " |")
    print("|---|" + "---|" * len(results))
    for k in names:
        cells = [f"{r['stages'].get(k, 0.0):.3f} ({100 * r['stages'].get(k, 0.0) / r['total']:.0f}%)" for r in results]
        print(f"| {k} | " + " | ".join(cells) + " |")
    other = [r["total"] - sum(r["stages"].values()) for r in results]
    print("| other | " + " | ".join(f"{o:.3f} ({100 * o / r['total']:.0f}%)" for o, r in zip(other, results)) + " |")
    print("| **prune()** | " + " | ".join(f"**{r['total']:.3f}**" for r in results) + " |")
    print("| forward | " + " | ".join(f"{r['forward'] * 1000:.0f} ms" for r in results) + " |")
    print("| prune() / forward | " + " | ".join(f"{r['total'] / r['forward']:.1f}" for r in results) + " |")


if __name__ == "__main__":
    main()
