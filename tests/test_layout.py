"""The package's layout: imports run only downward, through the pipeline's stages.

The import graph is read from the import statements (``ast``), not listed by hand. Three checks:
1. every module sits in one of the layers below, and imports only from its own layer or lower ones,
   with no cycle;
2. no fxprune import inside a function (those were the way around cycles);
3. in a fresh interpreter, each module imports in isolation, bottom to top: every package is a stub
   until its own turn, so importing a module loads nothing that is not already loaded. A module
   that needs one above it fails here.
"""
from __future__ import annotations

import ast
import fnmatch
import json
import os
import subprocess
import sys

import networkx as nx

import fxprune

ROOT = os.path.dirname(fxprune.__file__)

# bottom to top: the pipeline's stages in order, the public API and the command line on top
LAYERS = [
    ("fxprune.timing", "fxprune.flops", "fxprune.graph", "fxprune.channels", "fxprune.examples"),
    ("fxprune.rules.*", "fxprune.rules"),
    ("fxprune.capture.*", "fxprune.capture"),
    ("fxprune.analysis.*", "fxprune.analysis"),
    ("fxprune.saliency",),
    ("fxprune.masks",),
    ("fxprune.masked",),
    ("fxprune.interop",),
    ("fxprune.rewrite",),
    ("fxprune.verify",),
    ("fxprune.measure",),
    ("fxprune.report",),
    ("fxprune.dump.*", "fxprune.dump", "fxprune.saving"),
    ("fxprune.pipeline",),
    ("fxprune.api",),
    ("fxprune.cli",),
    ("fxprune",),
]

# imports allowed inside functions: optional dependencies only
OPTIONAL = {"matplotlib", "matplotlib.pyplot", "transformers"}


def _modules() -> dict[str, str]:
    out = {}
    for d, _, files in os.walk(ROOT):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(d, f)
                rel = os.path.relpath(path, os.path.dirname(ROOT))[:-3].replace(os.sep, ".")
                out[rel.removesuffix(".__init__")] = path
    return out


def _imports(name: str, path: str, modules: dict) -> tuple[set[str], list[tuple[int, str]]]:
    """(fxprune modules ``name`` imports, [(line, statement) of imports inside functions or classes])."""
    tree = ast.parse(open(path, encoding="utf-8").read())
    package = name.split(".") if path.endswith("__init__.py") else name.split(".")[:-1]
    found, nested = set(), []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = ".".join(package[:len(package) - node.level + 1]) if node.level else ""
            mod = ".".join(p for p in (base, node.module or "") if p)
            targets = [f"{mod}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            mod, targets = None, [a.name for a in node.names]
        else:
            continue
        if node.col_offset > 0:
            nested.append((node.lineno, ast.unparse(node)))
        hits = [t for t in targets if t in modules]
        if not hits and mod:
            while mod and mod not in modules:
                mod = mod.rpartition(".")[0]
            hits = [mod] if mod else []
        found |= {t for t in hits if t != name}
    return found, nested


def _graph():
    modules = _modules()
    g = nx.DiGraph()
    nested = {}
    for name, path in modules.items():
        g.add_node(name)
        deps, inner = _imports(name, path, modules)
        g.add_edges_from((name, d) for d in deps)
        nested[name] = inner
    return g, nested


def _layer(name: str) -> int:
    for i, patterns in enumerate(LAYERS):
        if any(fnmatch.fnmatchcase(name, p) for p in patterns):
            return i
    raise AssertionError(f"{name} is in no layer of tests/test_layout.py: place it in the pipeline")


def test_imports_run_downward_without_cycles():
    g, _ = _graph()
    cycles = list(nx.simple_cycles(g))
    assert not cycles, f"import cycles: {cycles[:5]}"
    upward = [f"{a} -> {b}" for a, b in g.edges if _layer(b) > _layer(a)]
    assert not upward, "imports that run up the pipeline: " + ", ".join(upward)


def test_no_fxprune_import_inside_a_function():
    _, nested = _graph()
    bad = [f"{name}:{line}: {stmt}" for name, inner in nested.items() for line, stmt in inner
           if not any(stmt.split()[1] == m for m in OPTIONAL)]
    assert not bad, "imports inside functions (only optional dependencies may be): " + "; ".join(bad)


_ISOLATION = r"""
import importlib, json, sys, types
order, packages, root = json.loads(sys.argv[1])
for pkg, path in packages.items():          # stubs: a package's __init__ runs at its own turn only
    stub = types.ModuleType(pkg)
    stub.__path__ = [path]
    sys.modules[pkg] = stub
problems = []
for name in order:
    before = {k for k in sys.modules if k.split(".")[0] == "fxprune"}
    if name in packages:
        del sys.modules[name]
    try:
        importlib.import_module(name)
    except Exception as e:
        problems.append(f"{name}: {type(e).__name__}: {e}")
        continue
    loaded = {k for k in sys.modules if k.split(".")[0] == "fxprune"} - before - {name}
    if loaded:
        problems.append(f"{name} loaded {sorted(loaded)}, which come after it")
print(json.dumps(problems))
"""


def test_each_module_imports_alone_bottom_to_top():
    g, _ = _graph()
    order = list(reversed(list(nx.lexicographical_topological_sort(g))))   # dependencies first
    packages = {name: os.path.dirname(path) for name, path in _modules().items() if path.endswith("__init__.py")}
    proc = subprocess.run([sys.executable, "-c", _ISOLATION, json.dumps([order, packages, ROOT])],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    problems = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not problems, "\n".join(problems)
    assert order[-1] == "fxprune" and len(order) == len(_modules())
