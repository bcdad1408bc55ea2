"""fxprune next to Torch-Pruning on networks of tests/zoo.py, at 50% of the channels.

    .venv/bin/pip install --no-deps torch-pruning==1.6.1     # never let pip resolve torch
    .venv/bin/python tools/compare_torch_pruning.py [--runs 3] [names ...]

Torch-Pruning is run as its README's default usage: ``GroupMagnitudeImportance(p=2)`` and
``MagnitudePruner`` (= ``BasePruner``) with ``pruning_ratio=0.5``, the layer(s) that produce the
model's output in ``ignored_layers`` (the README ignores the final classifier; fxprune keeps output
widths by default), no ``round_to``, no ``num_heads``, called on the model itself (``pruner.step()``
prunes it in place). fxprune: ``fxprune.prune(model, inputs, sparsity=0.5)`` (l1, verification on).

Per network it prints:

- ``ran``: ``ok``, or where it failed (building the pruner / pruning, or running the pruned model);
- ``params after``: parameters of the pruned model (before: the first column);
- ``input modified``: whether the model passed in changed (sha256 of its state_dict before/after);
- ``pruned vs masked``: max |pruned - masked| / max(1, max |masked|) over 3 fresh random inputs
  (not the example). The masked model is the original model with the removed channels zeroed
  (``fxprune.apply_masks``, prune_bias=True). For Torch-Pruning the removed channels are read from
  the groups its pruner removes (every out-channel pruning of a Conv/Linear/Embedding in a group);
  ``n/a`` when they cannot be expressed as such masks (it pruned head dims inside an
  nn.MultiheadAttention, or LSTM units). A value near 1e-7 means the pruned model
  computes what the masked model computes; a large one means the function changed otherwise;
- ``time``: median wall time of the pruning call over ``--runs`` runs (fresh model each run; for
  Torch-Pruning: building the pruner, i.e. its dependency graph, plus ``step()``).

Torch-Pruning is optional: without it this script says so and exits 0. It is not a dependency of
fxprune or of its tests.
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import os
import statistics
import sys
import time
import warnings

import torch
import torch.nn as nn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, os.path.join(ROOT, "src"))

import fxprune  # noqa: E402
from zoo import ZOO_BY_NAME  # noqa: E402

DEFAULT = ["resnet_basic", "resnext_bottleneck", "mobilenet_v2", "efficientnet", "densenet", "shufflenet_v2",
           "convnext", "vit", "gpt_manual", "unet", "lstm_last"]
PRODUCERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
             nn.Linear, nn.Embedding)
# per-channel modules that follow a producer's channels (a channel mask covers them)
FOLLOWERS = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm,
             nn.PReLU, nn.Parameter)


def digest(model: nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(str(tuple(v.shape)).encode())
        h.update(v.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes()
                 if v.dtype != torch.bool else v.to(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def fresh(inputs, seed):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(t.shape, generator=g) if t.dtype.is_floating_point
                 else torch.randint(0, int(t.max()) + 1, t.shape, generator=g, dtype=t.dtype) for t in inputs)


def rel_diff(a, b) -> float:
    a = a[0] if isinstance(a, (tuple, list)) else a
    b = b[0] if isinstance(b, (tuple, list)) else b
    if a.shape != b.shape:
        raise ValueError(f"output shape {tuple(b.shape)} != {tuple(a.shape)}")
    return float((a.double() - b.double()).abs().max()) / max(1.0, float(a.abs().max()))


def worst_diff(reference: nn.Module, pruned: nn.Module, inputs) -> float:
    reference.eval()
    pruned.eval()
    with torch.no_grad():
        return max(rel_diff(reference(*x), pruned(*x)) for x in (fresh(inputs, s) for s in (1, 2, 3)))


def output_modules(model: nn.Module) -> list[nn.Module]:
    """The modules whose outputs are the model's outputs (through flatten/view-like ops)."""
    try:
        gm = model if isinstance(model, torch.fx.GraphModule) else torch.fx.symbolic_trace(model)
    except Exception:
        layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
        return layers[-1:]
    out = next(n for n in gm.graph.nodes if n.op == "output")
    found, todo, seen = [], list(out.all_input_nodes), set()
    while todo:
        n = todo.pop()
        if n in seen:
            continue
        seen.add(n)
        if n.op == "call_module":
            found.append(model.get_submodule(n.target))
        elif n.op in ("call_function", "call_method"):
            todo += n.all_input_nodes
    return found


def torch_pruning_run(factory, inputs_factory):
    """(model after, seconds, removed out-channels per producer, modules whose removed channels are not
    a producer's output channels: nn.MultiheadAttention head dims, LSTM units)."""
    import torch_pruning as tp

    model, x = factory(), inputs_factory()
    example = x[0] if len(x) == 1 else x
    removed: dict[str, set[int]] = {}
    unmapped: set[str] = set()
    start = time.perf_counter()
    imp = tp.importance.GroupMagnitudeImportance(p=2)
    pruner = tp.pruner.MagnitudePruner(model, example, importance=imp, pruning_ratio=0.5,
                                       ignored_layers=output_modules(model))
    names = {m: n for n, m in model.named_modules()}
    for group in pruner.step(interactive=True):
        for dep, idxs in group:
            module = dep.target.module
            if not pruner.DG.is_out_channel_pruning_fn(dep.handler) or not len(idxs):
                continue
            depthwise = isinstance(module, nn.modules.conv._ConvNd) and module.groups > 1 \
                and module.groups == module.in_channels == module.out_channels
            if isinstance(module, PRODUCERS) and not depthwise:  # a depthwise conv follows its input's channels
                removed.setdefault(names[module], set()).update(int(getattr(i, "idx", i)) for i in idxs)
            elif module in names and not depthwise and not isinstance(module, FOLLOWERS):  # not Torch-Pruning's own op nodes
                unmapped.add(type(module).__name__)
        group.prune()
    took = time.perf_counter() - start
    return model, took, removed, unmapped


def tp_masks(original: nn.Module, removed: dict[str, set[int]]) -> dict[str, torch.Tensor]:
    masks = {}
    for name, idxs in removed.items():
        module = original.get_submodule(name)
        if isinstance(module, nn.Embedding):
            width = module.embedding_dim
        elif isinstance(module, nn.Linear):
            width = module.out_features
        else:
            width = module.out_channels
        keep = torch.ones(width, dtype=torch.bool)
        keep[sorted(idxs)] = False
        masks[f"{name}.weight"] = keep
    return masks


def short(e: BaseException, n: int = 60) -> str:
    text = " ".join(f"{type(e).__name__}: {e}".split())
    return text if len(text) <= n else text[: n - 1] + "…"


def compare(name: str, runs: int) -> dict:
    factory, inputs_factory = ZOO_BY_NAME[name]
    model, x = factory(), inputs_factory()
    row = {"network": name, "params": sum(p.numel() for p in model.parameters())}

    # fxprune
    before = digest(model)
    times = []
    try:
        for i in range(runs):
            m = model if i == 0 else factory()
            start = time.perf_counter()
            pruned = fxprune.prune(m, x, sparsity=0.5)
            times.append(time.perf_counter() - start)
        report = pruned.meta["fxprune"]
        masked = fxprune.apply_masks(model, x, masks=report.masks, prune_bias=report.prune_bias)
        row["fx"] = dict(ran="ok", params=report.params_after, modified=digest(model) != before,
                         diff=f"{worst_diff(masked, pruned, x):.1e}", ms=1000 * statistics.median(times))
    except Exception as e:
        row["fx"] = dict(ran=f"error: {short(e)}", params=None, modified=digest(model) != before, diff="-", ms=None)

    # Torch-Pruning
    original = factory()
    before = digest(original)
    times, tp_model, removed, unmapped, stage = [], None, None, set(), "prune"
    try:
        for _ in range(runs):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                tp_model, took, removed, unmapped = torch_pruning_run(factory, inputs_factory)
            times.append(took)
        modified = digest(tp_model) != before
        stage = "forward"
        tp_model.eval()
        with torch.no_grad():
            tp_model(*fresh(x, 1))
        if unmapped:
            diff = f"n/a (pruned inside {', '.join(sorted(unmapped))})"
            old = {n: m for n, m in original.named_modules() if isinstance(m, nn.MultiheadAttention)}
            for n, m in tp_model.named_modules():
                if n in old and isinstance(m, nn.MultiheadAttention):
                    o = old[n]
                    row.setdefault("notes", []).append(
                        f"{name}: Torch-Pruning's {n}: embed_dim {o.embed_dim}->{m.embed_dim}, num_heads "
                        f"{o.num_heads}->{m.num_heads}, head_dim {o.head_dim}->{m.head_dim}")
        else:
            try:
                masked = fxprune.apply_masks(original, x, masks=tp_masks(original, removed), prune_bias=True)
                diff = f"{worst_diff(masked, tp_model, x):.1e}"
            except Exception as e:
                diff = f"n/a ({short(e, 40)})"
        row["tp"] = dict(ran="ok", params=sum(p.numel() for p in tp_model.parameters()), modified=modified,
                         diff=diff, ms=1000 * statistics.median(times))
    except Exception as e:
        params = sum(p.numel() for p in tp_model.parameters()) if tp_model is not None else None
        row["tp"] = dict(ran=f"{stage} error: {short(e)}", params=params,
                         modified=(digest(tp_model) != before) if tp_model is not None else None, diff="-",
                         ms=1000 * statistics.median(times) if times else None)
    return row


def fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3, help="timed runs per tool and network (median)")
    ap.add_argument("names", nargs="*", help=f"zoo networks (default: {' '.join(DEFAULT)})")
    args = ap.parse_args(argv)
    try:
        import torch_pruning as tp
    except ImportError:
        print("compare_torch_pruning: torch_pruning is not installed; skipping "
              "(`.venv/bin/pip install --no-deps torch-pruning==1.6.1` to run the comparison)")
        return 0
    from importlib.metadata import version
    # warm-up (first-call costs of both tools are not counted against either)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch_pruning_run(*ZOO_BY_NAME["resnet_basic"])
        fxprune.prune(ZOO_BY_NAME["resnet_basic"][0](), ZOO_BY_NAME["resnet_basic"][1](), sparsity=0.5)
    print(f"torch {torch.__version__}, torch-pruning {version('torch-pruning')}, fxprune {version('fxprune')}; "
          f"sparsity / pruning_ratio 0.5; {torch.get_num_threads()} CPU threads")
    print()
    head = ["network", "params", "tool", "ran", "params after", "input modified", "pruned vs masked", "time ms"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    notes = []
    for name in args.names or DEFAULT:
        if name not in ZOO_BY_NAME:
            print(f"unknown network {name!r}; choose from {', '.join(ZOO_BY_NAME)}", file=sys.stderr)
            return 2
        row = compare(name, args.runs)
        notes += row.get("notes", [])
        for tool, key in (("fxprune", "fx"), ("Torch-Pruning", "tp")):
            r = row[key]
            cells = [name if key == "fx" else "", fmt(row["params"]) if key == "fx" else "", tool, r["ran"],
                     fmt(r["params"]), fmt(r["modified"]), r["diff"], fmt(r["ms"])]
            print("| " + " | ".join(cells) + " |", flush=True)
    if notes:
        print()
        print("\n".join(f"- {n}" for n in notes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
