"""The bug finder: prune one model of every timm family and every torchvision classification model.

    PYTHONPATH=src .venv/bin/python tools/sweep.py [--only timm|torchvision] [--match SUBSTR] [--limit N]
        [--size S] [--timeout SECONDS] [--mem-gb G] [--jobs N] [--dead] [--perturb] [--json out.jsonl [--resume]]
    .venv/bin/python tools/sweep.py --render out.jsonl      # the table and lists again, from the JSON lines

Each model (random init, eval mode, batch 1, the model's own input size unless ``--size``) runs in its own
subprocess (bounded time and memory; one JSON line comes back) and is pruned with the public API only:

    pruned = fxprune.prune(model, (x,), sparsity=0.5); report = pruned.meta["fxprune"]
    masked = fxprune.apply_masks(model, (x,), masks=report.masks, prune_bias=report.prune_bias)

Columns: captured (yes, or the stage and the exception's type and first line), exact (pruned vs masked on
a FRESH random input: max|a-b| / max(1e-12, max|masked|) <= 1e-5, with a warning when the masked output
does not depend on the input, which makes the comparison vacuous), fraction of parameters left, barriers
(node names without their _N suffix, with counts), prune() seconds. ``--dead`` adds an independent
check of ``fxprune.eliminate_dead_channels``: the weight and bias of the first quarter of every
BatchNorm's channels are zeroed in a copy, and the result is compared with that copy on a fresh input
(float64 when the model runs in it, else float32). The timm representative of a family is chosen by
``tests/real_zoos.py``. ``--size S`` uses S x S inputs where the model accepts them (else its own size).
``--perturb`` adds noise to constant parameters and random BatchNorm statistics first
(``real_zoos.perturbed``), for models whose zero-initialised head makes the comparison vacuous.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

RTOL = 1e-5        # float32
SMALL = 0.40       # "pruned well": at most this fraction of the parameters left


# ----------------------------------------------------------------------------------------------------
# child: one model
# ----------------------------------------------------------------------------------------------------

def _leaves(out):
    import torch
    from torch.utils._pytree import tree_leaves
    return [t for t in tree_leaves(out) if isinstance(t, torch.Tensor)]


def _rel(ref, out) -> tuple[float, str | None]:
    """max |out - ref| / max(1e-12, max |ref|) over the output tensors; (nan, why) on a mismatch."""
    a, b = _leaves(ref), _leaves(out)
    if len(a) != len(b):
        return float("nan"), f"{len(a)} vs {len(b)} outputs"
    num = den = 0.0
    for r, o in zip(a, b):
        if r.shape != o.shape:
            return float("nan"), f"shape {tuple(r.shape)} vs {tuple(o.shape)}"
        r, o = r.double(), o.double()
        if r.numel():
            num = max(num, float((r - o).abs().max()))
            den = max(den, float(r.abs().max()))
    return num / max(1e-12, den), None


def _same(a, b) -> bool:
    return all(x.shape == y.shape and bool((x == y).all()) for x, y in zip(_leaves(a), _leaves(b)))


def _barriers(report) -> tuple[str, list]:
    counts: dict[str, int] = {}
    raw = []
    for b in report.barriers:
        node, why = (b if isinstance(b, (tuple, list)) else (getattr(b, "node", str(b)), getattr(b, "reason", "")))
        if isinstance(b, dict):
            node, why = b.get("node") or b.get("op"), b.get("reason") or b.get("why")
        op = re.sub(r"_\d+$", "", str(node))
        counts[op] = counts.get(op, 0) + 1
        raw.append([str(node), str(why)])
    short = ", ".join(f"{op} x{n}" if n > 1 else op for op, n in sorted(counts.items(), key=lambda kv: -kv[1]))
    return short, raw


def _dead_check(model, x, xf, res):
    """Zero the first quarter of every BatchNorm's weight and bias in a copy; eliminate; compare."""
    import copy

    import torch
    import fxprune
    ref = copy.deepcopy(model)
    n_bn = 0
    with torch.no_grad():
        for m in ref.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.affine and m.weight is not None:
                q = max(1, m.num_features // 4)
                m.weight[:q] = 0
                m.bias[:q] = 0
                n_bn += 1
    if not n_bn:
        res["dead"] = "no BN"
        return
    errors = []
    for dtype in (torch.float64, torch.float32):
        try:
            r = copy.deepcopy(ref).to(dtype).eval()
            xd, xfd = x.to(dtype), xf.to(dtype)
            with torch.no_grad():
                r(xd)  # the model runs in this dtype
            t = time.perf_counter()
            small = fxprune.eliminate_dead_channels(r, (xd,))
            res["dead_s"] = time.perf_counter() - t
            small.eval()
            with torch.no_grad():
                rel, why = _rel(r(xfd), small(xfd))
            rep = small.meta["fxprune"]
            res.update(dead_rel=rel, dead_dtype=str(dtype).replace("torch.", ""), dead_why=why,
                       dead_left=rep.params_after / max(1, rep.params_before), dead_bn=n_bn)
            tol = 1e-10 if dtype == torch.float64 else RTOL
            res["dead"] = (f"{'yes' if rel <= tol else 'NO'} {rel:.0e} f{res['dead_dtype'][5:]}, "
                           f"{res['dead_left']:.2f} left") + (f" ({why})" if why else "")
            if errors:
                res["dead_errors"] = errors  # why float64 did not work
            return
        except Exception as e:  # noqa: BLE001
            import real_zoos as rz
            errors.append(f"{dtype}: {rz.short_error(e, 80)}")
    res["dead"] = "error: " + errors[-1]
    res["dead_errors"] = errors


def child(spec: dict) -> dict:
    import resource
    if spec.get("mem_gb"):
        lim = int(spec["mem_gb"] * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (lim, lim))
    import warnings
    warnings.filterwarnings("ignore")
    import torch
    torch.set_num_threads(1)
    import real_zoos as rz
    if spec["source"] == "timm":
        rz.import_timm()
    else:
        rz.import_torchvision()
    import fxprune
    res = {k: spec[k] for k in ("source", "name", "family")}
    stage = "build"
    try:
        torch.manual_seed(0)
        model = rz.build(spec["source"], spec["name"])
        if spec.get("perturb"):
            rz.perturbed(model)   # zero-initialised heads and gains make every comparison vacuous
        res["params"] = sum(p.numel() for p in model.parameters())
        size = rz.input_size(spec["source"], spec["name"], model)
        if spec.get("size"):
            small = (size[0], spec["size"], spec["size"])
            try:
                with torch.no_grad():
                    model(torch.randn(1, *small))
                size = small
            except Exception:  # noqa: BLE001
                res["size_note"] = f"own size: {spec['size']} fails"
        res["input"] = list(size)
        x = torch.randn(1, *size, generator=torch.Generator().manual_seed(0))
        xf = rz.fresh_inputs((x,), seed=1)[0]
        stage = "prune"
        t = time.perf_counter()
        pruned = fxprune.prune(model, (x,), sparsity=0.5)
        res["prune_s"] = time.perf_counter() - t
        res["captured"] = True
        report = pruned.meta["fxprune"]
        res["params_before"], res["params_after"] = report.params_before, report.params_after
        res["left"] = report.params_after / max(1, report.params_before)
        res["example_rel"] = report.rel_diff
        res["barriers"], res["barriers_raw"] = _barriers(report)
        res["groups"] = len(report.groups)
        blocked: dict[str, int] = {}  # groups not pruned, and why (channels they hold)
        for g in report.groups:
            if g.status in ("unprunable", "kept"):
                why = f"{g.status}: {re.sub(r'[0-9]+', 'N', str(g.reason))[:100]}"
                blocked[why] = blocked.get(why, 0) + g.width_before
        res["blocked"] = sorted(blocked.items(), key=lambda kv: -kv[1])
        stage = "verify"
        masked = fxprune.apply_masks(model, (x,), masks=report.masks, prune_bias=report.prune_bias).eval()
        pruned.eval()
        with torch.no_grad():
            ref = masked(xf)
            rel, why = _rel(ref, pruned(xf))
            res["constant"] = _same(ref, masked(rz.fresh_inputs((x,), seed=2)[0]))
        res["rel"], res["rel_why"] = rel, why
        res["out_max"] = max((float(t.abs().max()) for t in _leaves(ref) if t.numel()), default=0.0)
        res["abs_diff"] = rel * max(1e-12, res["out_max"])
        res["exact"] = bool(rel <= RTOL)
    except Exception as e:  # noqa: BLE001
        res["stage"], res["error"] = stage, rz.short_error(e)
        res.setdefault("captured", False)
    if spec.get("dead") and "input" in res:
        stage = "dead"
        try:
            _dead_check(model, x, xf, res)
        except Exception as e:  # noqa: BLE001
            res["dead"] = "error: " + rz.short_error(e, 80)
    return res


# ----------------------------------------------------------------------------------------------------
# parent: the table
# ----------------------------------------------------------------------------------------------------

def run_one(spec: dict, timeout: float) -> dict:
    base = {k: spec[k] for k in ("source", "name", "family")}
    t = time.perf_counter()
    try:
        p = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", json.dumps(spec)],
                           capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {**base, "captured": False, "stage": "timeout", "error": f"timeout after {timeout:.0f} s"}
    for line in reversed(p.stdout.splitlines()):
        if line.startswith("{"):
            res = json.loads(line)
            res["wall_s"] = time.perf_counter() - t
            return res
    last = (p.stderr.strip().splitlines() or ["(no stderr)"])[-1][:120]
    return {**base, "captured": False, "stage": "crash", "error": f"exit {p.returncode}: {last}"}


def short(err: str, n: int = 110) -> str:
    """Clip an error for the table, keeping a source location ("at file.py:123") when there is one."""
    err = re.sub(r"/\S*/site-packages/", "", err)
    loc = re.search(r"(?:at|File) \"?(\S+\.py\"?(?::|, line )\d+)", err)
    if len(err) <= n:
        return err
    return err[:n] + "..." + (f" at {loc.group(1)}" if loc and loc.group(1) not in err[:n] else "")


def cell_captured(r) -> str:
    if r.get("captured"):
        return "yes" if "error" not in r else f"yes; {r['stage']} failed: {short(r['error'])}"
    return f"{r.get('stage', '?')}: {short(r.get('error', '?'))}"


def cell_exact(r) -> str:
    if "rel" not in r:
        return "-"
    s = f"{'yes' if r['exact'] else 'NO'} {r['rel']:.1e}"
    if r.get("rel_why"):
        s += f" ({r['rel_why']})"
    if r.get("constant"):
        s += " CONSTANT OUTPUT (vacuous)"
    return s


def row(r, dead: bool) -> str:
    cells = [r["name"], f"{r['source'][:2]}/{r['family']}", "x".join(map(str, r.get("input", [])[1:])) or "-",
             cell_captured(r), cell_exact(r), f"{r['left']:.2f}" if "left" in r else "-",
             r.get("barriers", "-") or "", f"{r['prune_s']:.1f}" if "prune_s" in r else "-"]
    if dead:
        cells.append(r.get("dead", "-"))
    return "| " + " | ".join(c.replace("|", "/") for c in cells) + " |"


def print_head(dead: bool):
    head = ["model", "family", "input", "captured", "exact (rel)", "params left", "barriers", "prune s"]
    if dead:
        head.append("dead channels")
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head), flush=True)


def summary(results: list[dict], detail: bool = False) -> str:
    parts = []
    for src, unit in (("timm", "families"), ("torchvision", "models")):
        rs = [r for r in results if r["source"] == src]
        if rs:
            parts.append(f"{src}: {len(rs)} {unit} tried, {sum(bool(r.get('captured')) for r in rs)} captured, "
                         f"{sum(bool(r.get('exact')) for r in rs)} exact, "
                         f"{sum(r.get('left', 1) <= SMALL for r in rs)} with <= {SMALL:.2f} params left")
    if len(parts) > 1:
        parts.append(f"total: {len(results)} tried, {sum(bool(r.get('captured')) for r in results)} captured, "
                     f"{sum(bool(r.get('exact')) for r in results)} exact, "
                     f"{sum(r.get('left', 1) <= SMALL for r in results)} <= {SMALL:.2f}")
    consts = [r["name"] for r in results if r.get("constant")]
    if consts:
        parts.append("constant outputs (exactness vacuous): " + ", ".join(consts))
    if detail:
        parts.append("\nINEXACT (rel diff on a fresh input):")
        parts += [f"  {r['name']} ({r['family']}): {r['rel']:.2g}" + (f" ({r['rel_why']})" if r.get("rel_why") else "")
                  + (f"; max|diff| {r['abs_diff']:.2g}, max|masked out| {r['out_max']:.2g}" if "out_max" in r else "")
                  + f"; report.rel_diff on the example {r['example_rel']:.2g}"
                  for r in results if "rel" in r and not r["exact"]]
        parts.append("FAILED (stage: error):")
        parts += [f"  {r['name']} ({r['family']}): {r.get('stage')}: {short(r['error'], 160)}"
                  for r in results if "error" in r]
        parts.append(f"MORE THAN {SMALL:.2f} OF THE PARAMETERS LEFT (top barriers):")
        parts += [f"  {r['name']} ({r['family']}): {r['left']:.2f}; barriers: "
                  f"{', '.join(r['barriers'].split(', ')[:4]) or '-'}; groups not pruned (channels): "
                  + ("; ".join(f"{why} ({n})" for why, n in [b for b in r["blocked"] if "graph output" not in b[0]][:2])
                     if "blocked" in r else "?")
                  for r in results if r.get("left", 0) > SMALL]
    return "\n".join(parts)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", choices=["timm", "torchvision"])
    ap.add_argument("--match", help="only model or family names containing this (a,b: either)")
    ap.add_argument("--limit", type=int)
    ap.add_argument("--size", type=int, help="S x S inputs where the model accepts them")
    ap.add_argument("--timeout", type=float, default=300, help="seconds per model (default 300)")
    ap.add_argument("--mem-gb", type=float, default=12, help="address-space limit per model (0: none)")
    ap.add_argument("--jobs", type=int, default=1, help="models at once (each single-threaded)")
    ap.add_argument("--dead", action="store_true", help="also check eliminate_dead_channels")
    ap.add_argument("--perturb", action="store_true",
                    help="add noise to constant parameters first (zero-initialised heads make outputs constant)")
    ap.add_argument("--json", help="write one JSON line per model here")
    ap.add_argument("--resume", action="store_true", help="append to --json, skipping models already in it")
    ap.add_argument("--render", metavar="IN_JSONL", help="only print the table and summary of an earlier --json "
                    "(a model listed twice: the last line wins)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))), flush=True)
        return
    if args.render:
        with open(args.render) as f:
            results = {(r["source"], r["name"]): r for r in map(json.loads, filter(str.strip, f))}
        results = list(results.values())
        dead = any("dead" in r for r in results)
        print_head(dead)
        for r in results:
            print(row(r, dead))
        print("\n" + summary(results, detail=True))
        return

    import real_zoos as rz
    specs = []
    if args.only in (None, "timm"):
        specs += [("timm", n, f) for n, f in sorted(rz.timm_representatives().items(), key=lambda kv: kv[1])]
    if args.only in (None, "torchvision"):
        specs += [("torchvision", n, f) for n, f in rz.torchvision_models().items()]
    if args.match:
        subs = args.match.split(",")
        specs = [s for s in specs if any(m in s[1] or m in s[2] for m in subs)]
    specs = specs[:args.limit]
    specs = [{"source": s, "name": n, "family": f, "size": args.size, "dead": args.dead, "mem_gb": args.mem_gb,
              "perturb": args.perturb}
             for s, n, f in specs]

    if args.resume and args.json and os.path.exists(args.json):
        with open(args.json) as f:
            done = {(r["source"], r["name"]) for r in map(json.loads, filter(str.strip, f))}
        specs = [s for s in specs if (s["source"], s["name"]) not in done]
    print(f"# {len(specs)} models, sparsity 0.5, exact: rel <= {RTOL:g} on a fresh input", flush=True)
    print_head(args.dead)
    out = open(args.json, "a" if args.resume else "w") if args.json else None
    results = []
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        for r in pool.map(lambda s: run_one(s, args.timeout), specs):
            results.append(r)
            print(row(r, args.dead), flush=True)
            if out:
                out.write(json.dumps(r) + "\n")
                out.flush()
    print("\n" + summary(results, detail=True), flush=True)


if __name__ == "__main__":
    main()
