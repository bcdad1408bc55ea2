"""fxprune's prune() time and memory next to Torch-Pruning and one forward pass: torchvision's models,
a transformer, a language model, and the analysis of a LLaMA-7B-sized model on the meta device.

    .venv/bin/pip install --no-deps torch-pruning==1.6.1     # optional; never let pip resolve torch
    .venv/bin/python tools/bench.py [--runs 3] [--threads 2] [names ...]

Each model runs in its own fresh process (so peak memory is its own). In that process, per model
(random init, eval mode; torchvision's at 1x3x224x224, vit_b_16 included):
- forward: median of ``--runs`` forward passes under no_grad (the reference);
- fxprune: median ``fxprune.prune(model, (x,), sparsity=0.5)`` (verified), and with ``verify=False``;
- Torch-Pruning: median ``MagnitudePruner(deepcopy(model), ..., pruning_ratio=0.5, ignored_layers=[the
  classifier]).step()`` (building the pruner and pruning; the copy is not timed; vit_b_16's attention
  modules with their head counts);
- ratios: fxprune / Torch-Pruning, and fxprune / forward ("forward passes");
- peak RSS above the process's RSS with the model built (``resource.getrusage`` high-water mark, read
  once before and once after all fxprune calls; Torch-Pruning's runs come after and are not in it),
  as a multiple of the model's weights.

``qwen2.5-0.5b``: transformers' ``Qwen2ForCausalLM`` with Qwen2.5-0.5B's sizes (24 layers, hidden 896,
14 query and 2 key/value heads, intermediate 4864, vocab 151936, tied embeddings; random weights,
about 2 GB), 1x32 tokens, captured through torch.export; one run of each (Torch-Pruning not run).
``llama-7b-meta``: a LLaMA-7B-sized ``LlamaForCausalLM`` (32 layers, hidden 4096, 32 heads,
intermediate 11008, vocab 32000) built on the meta device, no weights at all: the time of
``fxprune.find_patterns`` (capture and analysis; saliency needs weights), and its peak RSS.
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
           "efficientnet_b0", "efficientnet_v2_s", "regnet_x_400mf", "vit_b_16", "qwen2.5-0.5b", "llama-7b-meta"]


def _median_time(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024   # Linux: kilobytes


LLM = {"qwen2.5-0.5b": ("Qwen2Config", "Qwen2ForCausalLM", dict(
           hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
           intermediate_size=4864, vocab_size=151936, tie_word_embeddings=True)),
       "llama-7b-meta": ("LlamaConfig", "LlamaForCausalLM", dict(
           hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
           intermediate_size=11008, vocab_size=32000))}


def _weights_mb(model) -> float:
    return sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers())) / 2**20


def llm_child(name: str, runs: int) -> dict:
    import torch
    import hf_models
    import fxprune
    tr = hf_models.transformers()
    config_cls, model_cls, sizes = LLM[name]
    config = getattr(tr, config_cls)(**sizes, use_cache=False)
    meta = name.endswith("-meta")
    with torch.device("meta" if meta else "cpu"):
        model = getattr(tr, model_cls)(config).eval()
    ids = torch.randint(0, sizes["vocab_size"], (1, 32), device="meta" if meta else "cpu")
    out = {"model": name, "params": sum(p.numel() for p in model.parameters()), "tp_s": None,
           "tp_error": "not run"}
    if meta:
        base = _rss_mb()
        start = time.perf_counter()
        groups = fxprune.find_patterns(model, example_kwargs={"input_ids": ids})
        out.update(analysis_s=time.perf_counter() - start, analysis_peak_mb=_rss_mb() - base,
                   groups=len(groups), prunable=sum(g["prunable"] for g in groups))
        return out
    with torch.no_grad():
        model(input_ids=ids)
        fwd = _median_time(lambda: model(input_ids=ids), runs)
    base = _rss_mb()
    prune = lambda **kw: fxprune.prune(model, example_kwargs={"input_ids": ids}, sparsity=0.5, **kw)
    fx_time = _median_time(prune, 1)
    fx_noverify = _median_time(lambda: prune(verify=False), 1)
    out.update(forward_s=fwd, fxprune_s=fx_time, fxprune_noverify_s=fx_noverify, fxprune_peak_mb=_rss_mb() - base,
               weights_mb=_weights_mb(model))
    return out


def child(name: str, runs: int, threads: int) -> dict:
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    sys.path.insert(0, os.path.join(ROOT, "src"))
    import torch
    import real_zoos
    import fxprune
    warnings.simplefilter("ignore")
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    if name in LLM:
        return llm_child(name, runs)
    if name == "vit_b_16":
        model = real_zoos.import_torchvision().models.vit_b_16().eval()
    else:
        model = real_zoos.build("torchvision", name)
    x = torch.randn(1, 3, 224, 224)
    weights_mb = _weights_mb(model)
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
        heads = {a: a.num_heads for a in m.modules() if isinstance(a, torch.nn.MultiheadAttention)}
        pruner = tp.pruner.MagnitudePruner(m, x, importance=tp.importance.GroupMagnitudeImportance(p=2),
                                           pruning_ratio=0.5, ignored_layers=[m.get_submodule(classifier)],
                                           num_heads=heads)
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
    print(f"torchvision models at 1x3x224x224, language models at 1x32 tokens; {args.threads} threads, medians "
          f"of {args.runs} runs (language models: one prune() run); fxprune = prune(sparsity=0.5) verified")
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
        if "analysis_s" in r:
            print(f"| {name} ({r['params'] / 1e9:.1f} B parameters, meta device) | - | find_patterns: "
                  f"{r['analysis_s']:.1f} s ({r['groups']} groups, {r['prunable']} prunable channels) | - | - | - | - | - "
                  f"| {r['analysis_peak_mb']:.0f} MB |", flush=True)
            continue
        tp = f"{r['tp_s']:.2f} s" if r["tp_s"] else r.get("tp_error", "not installed")
        ratio = f"{r['fxprune_s'] / r['tp_s']:.2f}x" if r["tp_s"] else "-"
        print(f"| {name} | {r['forward_s'] * 1000:.0f} ms | {r['fxprune_s']:.2f} s | {r['fxprune_noverify_s']:.2f} s "
              f"| {tp} | {ratio} | {r['fxprune_s'] / r['forward_s']:.1f} | {r['fxprune_noverify_s'] / r['forward_s']:.1f} "
              f"| {r['fxprune_peak_mb'] / r['weights_mb']:.2f} ({r['fxprune_peak_mb']:.0f} MB) |", flush=True)


if __name__ == "__main__":
    main()
