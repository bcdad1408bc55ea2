"""Render the pictures in docs/ (the README's worked example), reproducibly.

    .venv/bin/python tools/render_docs.py [--out docs]

Needs the Graphviz ``dot`` binary (``apt-get install graphviz``). The networks come from
``tests/zoo.py`` (small, faithful versions of torchvision's ResNet, nanoGPT and ConvNeXt), pruned at
sparsity 0.5 with the default l1 criterion. Writes, for each picture, ``.svg`` and ``.png``:

- ``resnet_groups``: the ResNet's channel groups, coloured, with widths before -> after;
- ``resnet_pruned``: the pruned ResNet GraphModule, block ``layer2.0`` (with its downsample) opened;
- ``resnet_widths``: channels per layer before and after (``fxprune.plot_widths``);
- ``gpt_groups``: nanoGPT's groups (embedding width, attention heads, MLP widths);
- ``gpt_attention``: a one-block nanoGPT with its attention opened: q @ kᵀ, softmax, @ v per head;
- ``convnext_barriers``: ConvNeXt, whose hand-written channels-first LayerNorm stops the stem group.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, os.path.join(ROOT, "src"))

import fxprune  # noqa: E402
from fxprune import pipeline  # noqa: E402
from fxprune.dump import pruned_to_dot, to_dot  # noqa: E402
from fxprune.dump.dot import _render_files  # noqa: E402
from zoo import ZOO_BY_NAME  # noqa: E402


def _gpt_one_layer():
    """nanoGPT (tests/zoo.py) with one transformer block, on 2 sequences of 8 tokens."""
    import zoo
    torch = zoo.torch
    torch.manual_seed(0)
    model = zoo._finish(zoo.GPT(zoo.GPTConfig(n_layer=1, flash=False)))
    return model, (zoo._tokens(),)


def _prune(name: str, views: dict, sparsity: float = 0.5):
    """Prune zoo network ``name``; ``views``: {picture: to_dot kwargs} of the groups, drawn with the
    plan before the pipeline rewrites the captured graph in place. Returns (DOT texts, state, pruned)."""
    if name == "gpt_one_layer":
        model, inputs = _gpt_one_layer()
    else:
        factory, inputs_factory = ZOO_BY_NAME[name]
        model, inputs = factory(), inputs_factory()
    state = pipeline.prepare(model, inputs, None, sparsity, "l1", True, False, ())
    texts = {pic: to_dot(state.analysis, state.plan, **kw) for pic, kw in views.items()}
    pruned = pipeline.finish(state, prune_bias=True)
    return texts, state, pruned


def _write(out_dir: str, name: str, text: str) -> list[str]:
    path = os.path.join(out_dir, f"{name}.dot")
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    files = _render_files(path, ("svg", "png"))
    os.remove(path)
    return files


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join(ROOT, "docs"))
    args = ap.parse_args(argv)
    if shutil.which("dot") is None:
        print("render_docs: the Graphviz `dot` binary is needed (apt-get install graphviz)", file=sys.stderr)
        return 1
    os.makedirs(args.out, exist_ok=True)
    written = []

    texts, state, pruned = _prune("resnet_basic", {"resnet_groups": {}})
    texts["resnet_pruned"] = pruned_to_dot(pruned, state.analysis, state.plan, expand=("layer2.0",))
    for ext in ("svg", "png"):
        written.append(fxprune.plot_widths(pruned, os.path.join(args.out, f"resnet_widths.{ext}")))
    more, _, _ = _prune("gpt_manual", {"gpt_groups": {}})
    texts.update(more)
    more, _, _ = _prune("gpt_one_layer", {"gpt_attention": {"expand": ("transformer.h.0.attn",)}})
    texts.update(more)
    more, _, _ = _prune("convnext", {"convnext_barriers": {}})
    texts.update(more)
    for pic, text in texts.items():
        written += _write(args.out, pic, text)

    for path in written:
        print(os.path.relpath(path, ROOT))
    return 0


if __name__ == "__main__":
    sys.exit(main())
