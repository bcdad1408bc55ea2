"""The ``fxprune`` command line."""
from __future__ import annotations

import argparse
import sys


def _demo(args) -> int:
    import time

    import fxprune
    from fxprune.examples import demo_models

    for name, model, inputs in demo_models():
        start = time.perf_counter()
        pruned = fxprune.prune(model, inputs, sparsity=args.sparsity, criterion=args.criterion)
        took = time.perf_counter() - start
        print(f"== {name}: prune(sparsity={args.sparsity}, criterion={args.criterion!r}) in {took * 1000:.0f} ms")
        print(pruned.meta["fxprune"])
        print()
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="fxprune", description="Exact structured pruning as a torch.fx pass")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="prune the bundled example models and print the reports")
    demo.add_argument("--sparsity", type=float, default=0.5)
    demo.add_argument("--criterion", default="l1", choices=["l1", "l2", "fpgm"])
    demo.set_defaults(func=_demo)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
