"""The ``fxprune`` command line.

    fxprune inspect MODEL --input-shape 1,3,224,224 [--dump-dir DIR]
    fxprune prune MODEL --input-shape 1,3,224,224 --sparsity 0.5 [--criterion l1|l2|fpgm] [--global]
                  [--round-to 8] [--ignore NAME ...] -o pruned.pt [--dump-dir DIR] [--json]
                  [--latency-runs N | --no-latency]
    fxprune prune program.pt2 -o pruned.pt2
    fxprune prune transformers:LlamaForCausalLM --config config.json --config num_hidden_layers=2 \
                  --input-shape 1,16:long:32000 -o pruned.pt2
    fxprune demo [--dump-dir DIR]

MODEL is ``path/to/file.py:factory`` or ``package.module:factory`` (the factory is called with no
arguments and returns an ``nn.Module``), a saved ``ExportedProgram`` (``.pt2``; its example inputs
are used unless ``--input-shape`` is given), or ``transformers:ModelClass``, built with random weights
from its config (``--config`` a JSON file and/or ``key=value`` overrides). ``-o x.pt2`` saves an
ExportedProgram (``torch.export.load``), any other name a GraphModule (``fxprune.load``). Steps that
take more than two seconds print a progress line on stderr. Errors are one line,
``fxprune: error: ...``: exit code 2 for a malformed command line (MODEL without ``:factory``, a bad
``--input-shape``), 1 when the model cannot be loaded, built, traced or run on the inputs.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import sys
import threading
import time
import warnings
from contextlib import contextmanager

import torch
import torch.nn as nn

from . import api, saving
from .analysis import analyze
from .capture.export import export_program
from .dump import plot_widths, stage_texts, write_stages
from .examples import demo_models


class UsageError(Exception):
    """A malformed command line (exit code 2)."""


class ModelError(Exception):
    """The model could not be loaded, built, traced or run (exit code 1)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, as for every other error
        raise UsageError(f"{message} (see `{self.prog} --help`)")


# -- MODEL and inputs ------------------------------------------------------------------------------

def load_model(spec: str, config=()):
    """``path/to/file.py:factory`` or ``package.module:factory`` -> the module the factory returns; a
    ``.pt2`` file -> its ExportedProgram; ``transformers:ModelClass`` -> that model built from its
    config (``config``: JSON files and ``key=value`` overrides)."""
    if spec.endswith(".pt2"):
        if not os.path.isfile(spec):
            raise ModelError(f"program file not found: {spec}")
        try:
            return torch.export.load(spec)
        except Exception as e:
            raise ModelError(f"loading {spec} failed: {type(e).__name__}: {_one_line(e)}") from e
    if spec.startswith("transformers:"):
        return _transformers_model(spec.partition(":")[2], config)
    if config:
        raise UsageError("--config is for MODEL transformers:ModelClass")
    where, sep, attr = spec.rpartition(":")
    if not sep or not where or not attr:
        raise UsageError(f"MODEL must be path/to/file.py:factory or package.module:factory, got {spec!r}")
    if where.endswith(".py") or os.sep in where or "/" in where:
        path = os.path.abspath(where)
        if not os.path.isfile(path):
            raise ModelError(f"model file not found: {where}")
        name = "_fxprune_model_" + "".join(c if c.isalnum() else "_" for c in os.path.splitext(os.path.basename(path))[0])
        try:
            mod_spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(mod_spec)
            sys.modules[name] = module
            sys.path.insert(0, os.path.dirname(path))  # as `python file.py` would: its siblings import
            mod_spec.loader.exec_module(module)
        except Exception as e:
            sys.modules.pop(name, None)
            raise ModelError(f"importing {where} failed: {type(e).__name__}: {_one_line(e)}") from e
    else:
        sys.path.insert(0, os.getcwd())
        try:
            module = importlib.import_module(where)
        except ModuleNotFoundError as e:
            raise ModelError(f"cannot import module {where!r}: {_one_line(e)}") from e
        except Exception as e:
            raise ModelError(f"importing {where} failed: {type(e).__name__}: {_one_line(e)}") from e
    if not hasattr(module, attr):
        public = sorted(k for k, v in vars(module).items() if callable(v) and not k.startswith("_"))
        hint = f"; it has: {', '.join(public[:12])}" if public else ""
        raise ModelError(f"{where} has no attribute {attr!r}{hint}")
    factory = getattr(module, attr)
    if not callable(factory):
        raise ModelError(f"{where}:{attr} is a {type(factory).__name__}, not a factory (a callable returning an nn.Module)")
    try:
        model = factory()
    except Exception as e:
        raise ModelError(f"{where}:{attr}() raised {type(e).__name__}: {_one_line(e)}") from e
    if not isinstance(model, nn.Module):
        kind = type(model).__name__
        article = "an" if kind[:1].lower() in "aeiou" else "a"
        raise ModelError(f"{where}:{attr}() returned {article} {kind} ({_one_line(model)[:40]}), not an nn.Module")
    return model


def _config_value(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return text


def _transformers_model(name: str, config) -> nn.Module:
    """A Hugging Face model class built from its config class with random weights (no download)."""
    try:
        import transformers   # optional: only for MODEL transformers:ModelClass
    except Exception as e:
        raise ModelError(f"transformers:{name} needs the transformers package: {_one_line(e)}") from e
    cls = getattr(transformers, name, None)
    if cls is None or not hasattr(cls, "config_class"):
        raise ModelError(f"transformers has no model class {name!r} (e.g. LlamaForCausalLM, BertModel)")
    values: dict = {}
    for item in config:
        if "=" in item:
            key, _, value = item.partition("=")
            values[key.strip()] = _config_value(value.strip())
        else:
            try:
                with open(item) as f:
                    values.update(json.load(f))
            except (OSError, ValueError) as e:
                raise ModelError(f"--config {item}: {_one_line(e)}") from e
    try:
        cfg = cls.config_class(**values)
        if hasattr(cfg, "use_cache"):
            cfg.use_cache = False      # no key/value cache in the captured graph
        return cls(cfg).eval()
    except Exception as e:
        raise ModelError(f"building {name} from its config failed: {type(e).__name__}: {_one_line(e)}") from e


@contextmanager
def progress(what: str, after: float = 2.0):
    """A line on stderr when ``what`` takes more than ``after`` seconds: its start, then its time."""
    start = time.perf_counter()
    shown = threading.Event()

    def announce():
        shown.set()
        print(f"fxprune: {what} ...", file=sys.stderr, flush=True)

    timer = threading.Timer(after, announce)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
        if shown.is_set():
            print(f"fxprune: {what}: {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)


_DTYPES = {"float": "float32", "float32": "float32", "float64": "float64", "double": "float64",
           "float16": "float16", "half": "float16", "bfloat16": "bfloat16",
           "long": "int64", "int64": "int64", "int": "int64", "int32": "int32", "bool": "bool"}


def parse_input_shape(text: str):
    """``1,3,224,224`` (float32, standard normal), ``2,8:long`` (integers in [0, 2)) or
    ``2,8:long:96`` (integers in [0, 96), e.g. token ids)."""
    parts = text.split(":")
    if len(parts) > 3:
        raise UsageError(f"bad --input-shape {text!r}: expected SHAPE[:DTYPE[:HIGH]] like 1,3,224,224 or 2,8:long:96")
    try:
        shape = tuple(int(s) for s in parts[0].replace("x", ",").split(",") if s.strip() != "")
    except ValueError:
        raise UsageError(f"bad --input-shape {text!r}: the shape must be integers separated by commas, "
                         "like 1,3,224,224") from None
    if not shape or any(s <= 0 for s in shape):
        raise UsageError(f"bad --input-shape {text!r}: every size must be a positive integer")
    dtype_name = _DTYPES.get(parts[1].strip().lower() if len(parts) > 1 else "float32")
    if dtype_name is None:
        raise UsageError(f"bad --input-shape {text!r}: unknown dtype {parts[1]!r} (use one of {', '.join(sorted(_DTYPES))})")
    dtype = getattr(torch, dtype_name)
    high = 2
    if len(parts) > 2:
        try:
            high = int(parts[2])
        except ValueError:
            raise UsageError(f"bad --input-shape {text!r}: HIGH must be an integer") from None
        if high <= 0:
            raise UsageError(f"bad --input-shape {text!r}: HIGH must be positive")
    return shape, dtype, high


def make_inputs(shapes, seed: int = 0) -> tuple:
    g = torch.Generator().manual_seed(seed)
    out = []
    for shape, dtype, high in shapes:
        if dtype.is_floating_point:
            out.append(torch.randn(shape, generator=g).to(dtype))
        elif dtype == torch.bool:
            out.append(torch.randint(0, 2, shape, generator=g).bool())
        else:
            out.append(torch.randint(0, high, shape, generator=g, dtype=dtype))
    return tuple(out)


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


# -- commands --------------------------------------------------------------------------------------

def _model_and_inputs(args):
    """The model and its example inputs (None for a program: its own example inputs)."""
    shapes = [parse_input_shape(s) for s in (args.input_shape or [])]
    if not shapes and not args.model.endswith(".pt2"):
        raise UsageError("give the model's input shape(s) with --input-shape, e.g. --input-shape 1,3,224,224")
    with progress(f"loading {args.model}"):
        model = load_model(args.model, args.config or ())
    return model, make_inputs(shapes, args.seed) if shapes else None


def _analyze(model, inputs):
    try:
        with progress("capturing and analysing"):
            gm, _ = api.capture_model(model, inputs)
            return gm, analyze(gm, api.captured_inputs(gm))
    except Exception as e:
        raise ModelError(_one_line(e)) from e


def _table(rows: list[tuple]) -> str:
    rows = [tuple(str(c) for c in r) for r in rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join("  ".join(r[i].ljust(widths[i]) for i in range(len(widths))) + "  " + r[-1] for r in rows)


def _inspect(args) -> int:
    model, inputs = _model_and_inputs(args)
    gm, analysis = _analyze(model, inputs)
    rows = [("group", "pattern", "width", "prunable", "producers", "blocked")]
    for g in analysis.groups:
        prunable = sum(1 for u in g.units if u.blocked is None)
        producers = ", ".join(s.owner or s.role for s in g.producers)
        reason = g.blocked or next((u.blocked for u in g.units if u.blocked), "")
        rows.append((g.index, g.pattern, g.width, prunable, producers, reason or ""))
    n_nodes = sum(1 for _ in gm.graph.nodes)
    print(f"{type(model).__name__}: {n_nodes} graph nodes, {len(analysis.groups)} channel groups, "
          f"{sum(p.numel() for p in gm.parameters()):,} parameters, {analysis.flops:,} FLOPs")
    print()
    print(_table(rows))
    print()
    if analysis.barriers:
        print("barriers (channels that reach these are not pruned):")
        print(_table([("node", "reason")] + [(n.name, why) for n, why in analysis.barriers]))
    else:
        print("barriers: none")
    if args.dump_dir:
        written = write_stages(args.dump_dir, stage_texts(analysis, None, None, ("captured", "groups"), True))
        print()
        print("dumps: " + ", ".join(p for files in written.values() for p in files))
    return 0


def _prune(args) -> int:
    if not 0 <= args.sparsity < 1:
        raise UsageError(f"--sparsity must be in [0, 1), got {args.sparsity}")
    if args.round_to < 1:
        raise UsageError(f"--round-to must be a positive integer, got {args.round_to}")
    if args.latency_runs < 1:
        raise UsageError(f"--latency-runs must be a positive integer, got {args.latency_runs}")
    model, inputs = _model_and_inputs(args)
    program = isinstance(model, torch.export.ExportedProgram)
    try:
        with progress("pruning"):
            pruned = api.prune(model, inputs, sparsity=args.sparsity, criterion=args.criterion,
                               global_ranking=args.global_ranking, round_to=args.round_to,
                               ignore=tuple(args.ignore or ()), dump_dir=args.dump_dir)
    except (ValueError, TypeError, RuntimeError) as e:
        raise ModelError(_one_line(e)) from e
    report = (pruned.graph_module if program else pruned).meta["fxprune"]
    if not args.no_latency:  # forward passes of both models: measured here, not by prune()
        if inputs is None:
            inputs, kwargs = model.example_inputs
            if kwargs:
                raise UsageError("the program takes keyword inputs: time it yourself or pass --no-latency")
        try:
            with progress("timing the models"):
                report.measure_latency(model.module() if program else model,
                                       pruned.module() if program else pruned, inputs, runs=args.latency_runs)
        except Exception as e:
            raise ModelError(f"timing the models failed: {_one_line(e)}") from e
    if args.output:
        with progress(f"saving {args.output}"):
            _save(pruned, args.output, inputs)
    if args.json:
        d = report.to_dict()
        d["output"] = args.output
        d["dump_dir"] = args.dump_dir
        print(json.dumps(d, default=_json_default))
    else:
        print(report)
        if args.output:
            how = "torch.export.load" if args.output.endswith(".pt2") else "fxprune.load"
            print(f"\nsaved the pruned model to {args.output} (load it with {how})")
        if args.dump_dir:
            print(f"dumps in {args.dump_dir}")
    return 0


def _save(pruned, path: str, inputs) -> None:
    """``.pt2``: an ExportedProgram (a pruned GraphModule is exported on the example inputs first);
    anything else: fxprune.save of the GraphModule."""
    if path.endswith(".pt2"):
        if not isinstance(pruned, torch.export.ExportedProgram):
            try:   # every dim that the graph allows stays dynamic
                pruned = export_program(pruned, tuple(inputs), None)
            except Exception as e:
                raise ModelError(f"exporting the pruned model for {path} failed: {_one_line(e)}") from e
        torch.export.save(pruned, path)
    elif isinstance(pruned, torch.export.ExportedProgram):
        raise UsageError(f"the pruned model is an ExportedProgram: save it as .pt2, not {path}")
    else:
        saving.save(pruned, path)


def _json_default(o):
    if isinstance(o, torch.Tensor):
        return o.tolist()
    return str(o)


def _demo(args) -> int:
    for name, model, inputs in demo_models():
        start = time.perf_counter()
        pruned = api.prune(model, inputs, sparsity=args.sparsity, criterion=args.criterion)
        took = time.perf_counter() - start
        api.measure_latency(model, pruned, inputs, runs=10)
        print(f"== {name}: prune(sparsity={args.sparsity}, criterion={args.criterion!r}) in {took * 1000:.0f} ms")
        print(pruned.meta["fxprune"])
        if args.dump_dir:
            out = os.path.join(args.dump_dir, name)
            api.dump(model, inputs, out, pruned=pruned)
            plot_widths(pruned, os.path.join(out, "widths.svg"))
            print(f"dumps in {out}")
        print()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="fxprune", description="Exact structured pruning as a torch.fx pass")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    model_help = ("path/to/file.py:factory or package.module:factory (called with no arguments, returns an "
                  "nn.Module), a saved ExportedProgram (.pt2), or transformers:ModelClass (see --config)")
    config_help = ("for MODEL transformers:ModelClass: a config JSON file or key=value (JSON values), repeatable; "
                   "the model is built from its config with random weights")
    shape_help = ("an input's shape, repeated for several inputs: 1,3,224,224 (float32), 2,8:long:96 "
                  "(int64 in [0, 96), e.g. token ids)")

    ins = sub.add_parser("inspect", help="show the channel groups, patterns and barriers of a model (no pruning)")
    ins.add_argument("model", metavar="MODEL", help=model_help)
    ins.add_argument("--input-shape", action="append", metavar="SHAPE", help=shape_help)
    ins.add_argument("--dump-dir", metavar="DIR", help="write captured/groups .dot (and .svg/.png with Graphviz) here")
    ins.add_argument("--seed", type=int, default=0, help="seed of the random example inputs")
    ins.add_argument("--config", action="append", metavar="FILE|KEY=VALUE", help=config_help)
    ins.set_defaults(func=_inspect)

    pr = sub.add_parser("prune", help="prune a model, print the report and save the pruned GraphModule")
    pr.add_argument("model", metavar="MODEL", help=model_help)
    pr.add_argument("--input-shape", action="append", metavar="SHAPE", help=shape_help)
    pr.add_argument("--sparsity", type=float, default=0.5, help="fraction of each group's channels to prune (0.5)")
    pr.add_argument("--criterion", default="l1", choices=["l1", "l2", "fpgm"])
    pr.add_argument("--global", dest="global_ranking", action="store_true", help="rank all groups' channels together")
    pr.add_argument("--round-to", type=int, default=1, metavar="N", help="kept widths are multiples of N")
    pr.add_argument("--ignore", nargs="+", action="extend", metavar="NAME",
                    help="module names or prefixes whose output channels are never pruned")
    pr.add_argument("--config", action="append", metavar="FILE|KEY=VALUE", help=config_help)
    pr.add_argument("-o", "--output", metavar="PATH",
                    help="save the pruned model here: PATH.pt2 an ExportedProgram (torch.export.load), "
                         "else a GraphModule (fxprune.load)")
    pr.add_argument("--dump-dir", metavar="DIR", help="write captured/groups/pruned dumps here")
    pr.add_argument("--json", action="store_true", help="print the report as JSON (report.to_dict())")
    pr.add_argument("--latency-runs", type=int, default=10, metavar="N",
                    help="CPU latency before and after: median of N forward passes on the example inputs (10)")
    pr.add_argument("--no-latency", action="store_true", help="do not time the models (faster)")
    pr.add_argument("--seed", type=int, default=0, help="seed of the random example inputs")
    pr.set_defaults(func=_prune)

    demo = sub.add_parser("demo", help="prune the bundled example models and print the reports")
    demo.add_argument("--sparsity", type=float, default=0.5)
    demo.add_argument("--criterion", default="l1", choices=["l1", "l2", "fpgm"])
    demo.add_argument("--dump-dir", metavar="DIR", help="write the dumps of each example to DIR/<name>/")
    demo.set_defaults(func=_demo)
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None):
    print(f"fxprune: warning: {message}", file=sys.stderr)


def main(argv=None) -> int:
    warnings.showwarning = _show_warning
    debug = bool(os.environ.get("FXPRUNE_DEBUG"))
    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except UsageError as e:
        print(f"fxprune: error: {e}", file=sys.stderr)
        return 2
    except ModelError as e:
        if debug:
            raise
        print(f"fxprune: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("fxprune: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug of ours: still one line (FXPRUNE_DEBUG=1 shows the traceback)
        if debug:
            raise
        print(f"fxprune: error: {type(e).__name__}: {_one_line(e)} (set FXPRUNE_DEBUG=1 for the traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
