"""Time fxprune.prune() on a ResNet-50-sized model (our own torchvision-style ResNet-50, 25.6 M
parameters, one 1x3x224x224 input), traced and shape-propagated included. Prints the median of
several runs, the stages' share, and the ratio to one forward pass of the model in the same process.

    .venv/bin/python tools/bench_resnet50.py [--runs 5]
"""
from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import time

import torch
import torch.nn as nn

import fxprune


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class ResNet50(nn.Module):
    def __init__(self, classes=1000):
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._layer(64, 3)
        self.layer2 = self._layer(128, 4, 2)
        self.layer3 = self._layer(256, 6, 2)
        self.layer4 = self._layer(512, 3, 2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(2048, classes)

    def _layer(self, planes, blocks, stride=1):
        down = None
        if stride != 1 or self.inplanes != planes * 4:
            down = nn.Sequential(nn.Conv2d(self.inplanes, planes * 4, 1, stride, bias=False),
                                 nn.BatchNorm2d(planes * 4))
        layers = [Bottleneck(self.inplanes, planes, stride, down)]
        self.inplanes = planes * 4
        layers += [Bottleneck(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def median_s(fn, runs):
    fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--profile", action="store_true", help="print where prune() spends its time")
    args = ap.parse_args()
    torch.manual_seed(0)
    model, x = ResNet50().eval(), torch.randn(1, 3, 224, 224)
    params = sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        forward = median_s(lambda: model(x), args.runs)
    t = median_s(lambda: fxprune.prune(model, (x,), sparsity=0.5), args.runs)
    t_nv = median_s(lambda: fxprune.prune(model, (x,), sparsity=0.5, verify=False), args.runs)
    t_find = median_s(lambda: fxprune.find_patterns(model, (x,)), args.runs)
    report = fxprune.prune(model, (x,), sparsity=0.5).meta["fxprune"]
    print(f"ResNet-50: {params / 1e6:.1f} M parameters, input 1x3x224x224, torch threads {torch.get_num_threads()}")
    print(f"one forward pass (reference):            median {forward * 1000:6.0f} ms")
    print(f"find_patterns (trace + shapes + groups): median {t_find * 1000:6.0f} ms ({t_find / forward:.1f}x forward)")
    print(f"prune(sparsity=0.5, verify=False):       median {t_nv * 1000:6.0f} ms ({t_nv / forward:.1f}x forward)")
    print(f"prune(sparsity=0.5) (verified):          median {t * 1000:6.0f} ms ({t / forward:.1f}x forward)")
    print(f"parameters {report.params_before:,} -> {report.params_after:,}; "
          f"max |pruned - masked| relative {report.rel_diff:.2e}")
    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        fxprune.prune(model, (x,), sparsity=0.5, verify=False)
        prof.disable()
        pstats.Stats(prof).sort_stats("cumulative").print_stats(25)


if __name__ == "__main__":
    main()
