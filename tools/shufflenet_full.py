"""Prune a torchvision-sized ShuffleNetV2 1.0x (stages 4, 8, 4; built from tests/zoo.py, since
torchvision does not run here) at sparsity 0.5 and print parameters, exactness and branch widths.

    .venv/bin/python tools/shufflenet_full.py [--size 64]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
import zoo  # noqa: E402

import fxprune  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=64, help="input height and width")
    args = ap.parse_args()
    torch.manual_seed(0)
    model = zoo.ShuffleNetV2(stages_repeats=(4, 8, 4), stages_out_channels=(24, 116, 232, 464, 1024),
                             num_classes=1000)
    for m in model.modules():   # BatchNorm statistics away from the identity, as in a trained net
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5)
            m.running_var.uniform_(0.5, 1.5)
            m.running_mean.normal_()
    model.eval()
    x = torch.randn(1, 3, args.size, args.size)
    start = time.perf_counter()
    pruned = fxprune.prune(model, (x,), sparsity=0.5)
    seconds = time.perf_counter() - start
    report = pruned.meta["fxprune"]
    print(f"ShuffleNetV2 1.0x, input 1x3x{args.size}x{args.size}, sparsity 0.5")
    print(f"parameters {report.params_before:,} -> {report.params_after:,}; "
          f"max |pruned - masked| relative {report.rel_diff:.1e}; prune() {seconds:.2f} s")
    before = dict(model.named_modules())
    for part in ("branch1.2", "branch2.0", "branch2.5"):
        widths = [f"{before[n].out_channels}->{m.out_channels}" for n, m in pruned.named_modules()
                  if n.endswith(part)]
        print(f"{part} out_channels per unit: {' '.join(widths)}")


if __name__ == "__main__":
    main()
