"""Graph dumps, networkx export, the widths picture, save/load and the ``fxprune`` command line.

The CLI runs end to end in subprocesses (``python -m fxprune.cli``) on a model defined in a
temporary file; the saved model is loaded in a fresh process that never imported that file.
"""
from __future__ import annotations

import html
import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch

import fxprune
from fxprune.analysis import analyze
from fxprune.capture import capture
from fxprune.dump import digraph, widths
from zoo import ZOO_BY_NAME

dump_module = importlib.import_module("fxprune.dump")  # fxprune.dump is the function

MODEL_SOURCE = textwrap.dedent('''
    import torch
    import torch.nn as nn
    import torch.nn.functional as F


    class Block(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.conv1 = nn.Conv2d(c, c, 3, padding=1)
            self.bn1 = nn.BatchNorm2d(c)
            self.conv2 = nn.Conv2d(c, c, 3, padding=1)
            self.bn2 = nn.BatchNorm2d(c)

        def forward(self, x):
            return F.relu(x + self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))


    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 16, 3, padding=1)
            self.bn = nn.BatchNorm2d(16)
            self.block = Block(16)
            self.side = nn.Conv2d(16, 8, 1)
            self.fc1 = nn.Linear(24, 32)
            self.fc2 = nn.Linear(32, 5)

        def forward(self, x):
            x = self.block(F.relu(self.bn(self.stem(x))))
            y = torch.cumsum(self.side(x), 1)             # mixes channels: a barrier
            z = torch.cat([x.mean((2, 3)), y.mean((2, 3))], 1)
            return self.fc2(F.relu(self.fc1(z)))


    def make():
        torch.manual_seed(0)
        return Net().eval()


    def broken():
        raise ValueError("the factory is broken")


    class Untraceable(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            if x.sum() > 0:                               # control flow on a tensor value
                return self.fc(x)
            return x


    def untraceable():
        return Untraceable()


    def not_a_module():
        return 42


    class TwoInputs(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(50, 16)
            self.img = nn.Conv2d(3, 16, 3, padding=1)
            self.fc = nn.Linear(16, 12)
            self.out = nn.Linear(12, 3)

        def forward(self, tokens, image):
            h = self.emb(tokens).mean(1) + self.img(image).mean((2, 3))
            return self.out(F.relu(self.fc(h)))


    def two_inputs():
        torch.manual_seed(0)
        return TwoInputs().eval()
''')

SHAPE = "2,3,8,8"


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    d = tmp_path_factory.mktemp("model")
    path = d / "my_net.py"
    path.write_text(MODEL_SOURCE)
    return path


def _import_model_file(path):
    spec = importlib.util.spec_from_file_location("_test_dump_cli_model", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _cli(*args, cwd=None, env=None):
    return subprocess.Popen([sys.executable, "-m", "fxprune.cli", *map(str, args)], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _done(proc, timeout=120):
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def _example_inputs():
    from fxprune.cli import make_inputs, parse_input_shape
    return make_inputs([parse_input_shape(SHAPE)], seed=0)


# -- the command line, end to end -------------------------------------------------------------------

def test_cli_inspect_and_prune_then_load_in_a_fresh_process(model_file, tmp_path):
    out_pt = tmp_path / "pruned.pt"
    dumps = tmp_path / "dumps"
    # inspect and prune run side by side (each is a fresh interpreter)
    inspect = _cli("inspect", f"{model_file}:make", "--input-shape", SHAPE, "--dump-dir", tmp_path / "inspect")
    prune = _cli("prune", f"{model_file}:make", "--input-shape", SHAPE, "--sparsity", "0.5", "--criterion", "l2",
                 "-o", out_pt, "--dump-dir", dumps, "--json")
    rc, out, err = _done(inspect)
    assert rc == 0, err
    module = _import_model_file(model_file)
    model = module.make()
    inputs = _example_inputs()
    gm = capture(model)
    analysis = analyze(gm, inputs)
    for g in analysis.groups:
        assert g.pattern in out
    assert "barriers (channels that reach these are not pruned)" in out
    for node, why in analysis.barriers:
        assert node.name in out and why in out
    assert "Traceback" not in err
    assert (tmp_path / "inspect" / "groups.dot").exists() and (tmp_path / "inspect" / "captured.dot").exists()

    rc, out, err = _done(prune)
    assert rc == 0, err
    d = json.loads(out)
    ref = fxprune.prune(model, inputs, sparsity=0.5, criterion="l2")
    report = ref.meta["fxprune"]
    assert d["params_before"] == report.params_before and d["params_after"] == report.params_after
    assert d["params_after"] < d["params_before"]
    assert [g["pattern"] for g in d["groups"]] == [g.pattern for g in report.groups]
    assert [g["width_after"] for g in d["groups"]] == [g.width_after for g in report.groups]
    assert {f"{s}.dot" for s in ("captured", "groups", "pruned")} <= set(os.listdir(dumps))

    # the saved model in a process that never imported the model file, from another directory
    x = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        y = ref(x)
    io_path = tmp_path / "io.pt"
    torch.save({"x": x, "y": y}, io_path)
    script = textwrap.dedent(f"""
        import sys, torch, fxprune
        m = fxprune.load({str(out_pt)!r})
        io = torch.load({str(io_path)!r})
        with torch.no_grad():
            y = m(io["x"])
        assert not any(k.startswith("_fxprune_model_") for k in sys.modules)
        print(type(m).__name__, float((y - io["y"]).abs().max()), m.meta["fxprune"].params_after)
    """)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = subprocess.run([sys.executable, "-c", script], cwd=elsewhere, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    kind, diff, params = proc.stdout.split()
    assert kind == "GraphModule"
    assert float(diff) <= 1e-5 * max(1.0, float(y.abs().max()))
    assert int(params) == report.params_after


def _widths(d):
    return {tuple(g["producers"]): (g["width_before"], g["width_after"]) for g in d["groups"]}


def _masks_equal(json_masks, masks):
    return set(json_masks) == set(masks) and all(json_masks[k] == masks[k].tolist() for k in masks)


def test_cli_prune_flags_end_to_end(model_file):
    """--global, --criterion fpgm, --ignore with several names, --round-to and the size and latency
    totals in --json, in one run of the installed `fxprune` console script (python -m fxprune.cli
    without it); each flag is checked against prune() in this process, with and without that flag."""
    script = os.path.join(os.path.dirname(sys.executable), "fxprune")
    exe = [script] if os.path.exists(script) else [sys.executable, "-m", "fxprune.cli"]
    proc = subprocess.Popen([*exe, "prune", f"{model_file}:make", "--input-shape", SHAPE, "--sparsity", "0.5",
                             "--global", "--criterion", "fpgm", "--ignore", "block.conv1", "side",
                             "--round-to", "4", "--json", "--latency-runs", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    model, inputs = _import_model_file(model_file).make(), _example_inputs()
    kw = dict(sparsity=0.5, global_ranking=True, criterion="fpgm", ignore=("block.conv1", "side"), round_to=4)
    ref = fxprune.prune(model, inputs, **kw).meta["fxprune"]
    without = {k: fxprune.prune(model, inputs, **{**kw, k: v}).meta["fxprune"]
               for k, v in [("global_ranking", False), ("criterion", "l1"), ("ignore", ("side",)), ("round_to", 1)]}
    rc, out, err = _done(proc)
    assert rc == 0, err
    d = json.loads(out)
    assert _masks_equal(d["masks"], ref.masks) and _widths(d) == _widths(ref.to_dict())
    widths = _widths(d)
    # --round-to 4: every kept width of a pruned group is a multiple of 4 (without it: 9 and 15)
    pruned = [a for b, a in widths.values() if a != b]
    assert pruned and all(a % 4 == 0 for a in pruned)
    assert any(g.width_after % 4 for g in without["round_to"].groups if g.width_after != g.width_before)
    # --ignore block.conv1 side: block.conv1 keeps its width, and is pruned without the flag
    assert widths[("block.conv1.weight",)] == (16, 16)
    assert _widths(without["ignore"].to_dict())[("block.conv1.weight",)][1] < 16
    assert widths[("stem.weight", "block.conv2.weight")][1] < 16
    # --global changes the widths; --criterion fpgm the channels chosen
    assert _widths(d) != _widths(without["global_ranking"].to_dict())
    assert not _masks_equal(d["masks"], without["criterion"].masks)
    # totals: bytes always, latency measured by the CLI
    assert d["bytes_before"] == ref.bytes_before and d["bytes_after"] == ref.bytes_after < d["bytes_before"]
    for k in ("latency_before_ms", "latency_after_ms"):
        assert isinstance(d[k], float) and d[k] > 0
    assert d["latency_runs"] == 2 and d["latency_device"] == "cpu"


def test_cli_several_input_shapes_and_no_latency(model_file, capsys):
    from fxprune.cli import main
    spec = f"{model_file}:two_inputs"
    assert main(["prune", spec, "--input-shape", "2,5:long:50", "--input-shape", SHAPE, "--no-latency"]) == 0
    out = capsys.readouterr().out
    assert "parameters:" in out and "size:" in out and "latency:" not in out
    assert main(["prune", spec, "--input-shape", "2,5:long:50", "--input-shape", SHAPE, "--json",
                 "--latency-runs", "1"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["latency_runs"] == 1 and d["latency_after_ms"] > 0 and d["params_after"] < d["params_before"]
    assert main(["prune", spec, "--input-shape", "2,5:long:50", "--input-shape", SHAPE, "--latency-runs", "0"]) == 2
    assert "--latency-runs must be a positive integer" in capsys.readouterr().err


BAD_MODELS = [
    # (MODEL, extra args, exit code, words of the message)
    ("missing_file.py:make", (), 1, "model file not found: missing_file.py"),
    ("{file}:nope", (), 1, "has no attribute 'nope'"),
    ("{file}:broken", (), 1, "raised ValueError: the factory is broken"),
    ("{file}:untraceable", (), 1, "cannot trace Untraceable"),
    ("{file}:not_a_module", (), 1, "returned an int (42), not an nn.Module"),
    ("no_such_package_fxprune:make", (), 1, "cannot import module 'no_such_package_fxprune'"),
    ("{file}", (), 2, "MODEL must be path/to/file.py:factory or package.module:factory"),
    ("{file}:make", ("--input-shape", "2,three,8"), 2, "bad --input-shape '2,three,8'"),
    ("{file}:make", ("--input-shape", "2,4,8,8"), 1, "running the model on example_inputs failed"),
    ("{file}:make", ("--sparsity", "1.5"), 2, "--sparsity must be in [0, 1)"),
]


def test_cli_bad_models_one_line_and_exit_code(model_file, tmp_path):
    procs = []
    for spec, extra, code, msg in BAD_MODELS:
        args = ["prune" if "--sparsity" in extra else "inspect", spec.format(file=model_file)]
        args += list(extra) if "--input-shape" in extra else ["--input-shape", SHAPE, *extra]
        procs.append((spec, code, msg, _cli(*args, cwd=tmp_path)))
    for spec, code, msg, proc in procs:
        rc, out, err = _done(proc)
        # progress lines of slow steps ("fxprune: capturing and analysing ...", "...: 2.3 s") aside
        lines = [ln for ln in err.strip().splitlines() if not re.match(r"fxprune: [^:]+( \.\.\.|: [0-9.]+ s)$", ln)]
        assert rc == code, (spec, rc, err)
        assert len(lines) == 1, (spec, err)
        assert lines[0].startswith("fxprune: error: "), (spec, err)
        assert msg in lines[0], (spec, err)
        assert "Traceback" not in err


def test_cli_usage_errors_in_process(capsys):
    from fxprune.cli import main
    assert main(["prune"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fxprune: error: the following arguments are required")
    assert main(["inspect", "x.py:f"]) == 2
    assert "--input-shape" in capsys.readouterr().err


def test_cli_demo_writes_dumps(tmp_path):
    rc, out, err = _done(_cli("demo", "--dump-dir", tmp_path), timeout=180)
    assert rc == 0, err
    assert "== TinyCNN" in out and "== TinyLSTM" in out
    for name in ("TinyCNN", "TinyLSTM"):
        files = set(os.listdir(tmp_path / name))
        assert {"captured.dot", "groups.dot", "pruned.dot", "widths.svg"} <= files


# -- dumps -------------------------------------------------------------------------------------------

def _barrier_model():
    return _import_model_file_cached().make(), _example_inputs()


_MODULE = []


def _import_model_file_cached():
    if not _MODULE:
        import tempfile
        d = tempfile.mkdtemp()
        path = os.path.join(d, "barrier_net.py")
        with open(path, "w") as f:
            f.write(MODEL_SOURCE)
        _MODULE.append(_import_model_file(path))
    return _MODULE[0]


def _contains_every_group_and_barrier(text, analysis):
    for g in analysis.groups:
        assert g.pattern in text, g.pattern
        assert f"g{g.index}" in text
    for node, why in analysis.barriers:
        assert node.name in text
        assert why in text or html.escape(why, quote=False) in text


@pytest.mark.parametrize("collapse", [True, False, 1])
def test_to_dot_has_every_group_and_barrier(collapse):
    for model, inputs in [_barrier_model(), (ZOO_BY_NAME["resnet_basic"][0](), ZOO_BY_NAME["resnet_basic"][1]())]:
        gm = capture(model)
        analysis = analyze(gm, inputs)
        text = dump_module.to_dot(analysis, collapse=collapse)
        assert text.startswith("digraph")
        _contains_every_group_and_barrier(text, analysis)
    assert len(analysis.groups) > 3


def test_collapse_boxes_blocks():
    f, inp = ZOO_BY_NAME["resnet_basic"]
    gm = capture(f())
    analysis = analyze(gm, inp())
    collapsed = dump_module.to_dot(analysis)
    expanded = dump_module.to_dot(analysis, collapse=False)
    assert '"box:layer1.0"' in collapsed and "layer1.0.conv1" not in collapsed
    assert "layer1.0.conv1" in expanded and "box:" not in expanded
    assert collapsed.count("->") < expanded.count("->")


def test_expand_opens_one_block_in_a_dashed_frame():
    f, inp = ZOO_BY_NAME["resnet_basic"]
    gm = capture(f())
    analysis = analyze(gm, inp())
    text = dump_module.to_dot(analysis, expand=("layer2.0",))
    assert '"box:layer2.0"' not in text and '"box:layer1.0"' in text and '"box:layer2.1"' in text
    assert "layer2.0.conv1" in text and "layer2.0.downsample.0" in text
    assert 'label="layer2.0 (BasicBlock) (expanded)"' in text and "cluster_open0" in text
    _contains_every_group_and_barrier(text, analysis)
    # the legend sits above the graph: tied to the input by an invisible edge
    assert '-> "x" [style=invis]' in text


@pytest.mark.filterwarnings("ignore:fxprune.dump")
def test_dump_writes_stages_with_plan(tmp_path):
    model, inputs = _barrier_model()
    written = fxprune.dump(model, inputs, tmp_path, sparsity=0.5, formats=("svg",))
    assert set(written) == {"captured", "groups", "pruned"}
    gm = capture(model)
    analysis = analyze(gm, inputs)
    groups = (tmp_path / "groups.dot").read_text()
    _contains_every_group_and_barrier(groups, analysis)
    assert "→" in groups  # widths before→after
    pruned_dot = (tmp_path / "pruned.dot").read_text()
    _contains_every_group_and_barrier(pruned_dot, analysis)
    if shutil.which("dot"):
        for stage in ("captured", "groups", "pruned"):
            svg = (tmp_path / f"{stage}.svg").read_text()
            assert svg.lstrip().startswith(("<?xml", "<svg"))
            assert "</svg>" in svg


@pytest.mark.filterwarnings("ignore:fxprune.dump")
def test_prune_dump_dir(tmp_path):
    model, inputs = _barrier_model()
    pruned = fxprune.prune(model, inputs, sparsity=0.5, dump_dir=tmp_path)
    assert {"captured.dot", "groups.dot", "pruned.dot"} <= set(os.listdir(tmp_path))
    report = pruned.meta["fxprune"]
    groups = (tmp_path / "groups.dot").read_text()
    for g in report.groups:
        assert g.pattern in groups
    for node, why in report.barriers:
        assert node in groups and why in groups


@pytest.mark.skipif(shutil.which("dot") is None, reason="the Graphviz dot binary is not installed")
def test_svg_and_png_render(tmp_path):
    f, inp = ZOO_BY_NAME["vit"]
    written = fxprune.dump(f(), inp(), tmp_path, stages=("groups",), sparsity=0.5)
    svg = tmp_path / "groups.svg"
    png = tmp_path / "groups.png"
    assert str(svg) in written["groups"] and svg.read_text().lstrip().startswith(("<?xml", "<svg"))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_without_dot_one_warning_and_dot_files_only(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    model, inputs = _barrier_model()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fxprune.dump(model, inputs, tmp_path, sparsity=0.5)
    mine = [w for w in caught if "Graphviz" in str(w.message)]
    assert len(mine) == 1
    assert "`dot`" in str(mine[0].message) and "apt-get install graphviz" in str(mine[0].message)
    assert sorted(os.listdir(tmp_path)) == ["captured.dot", "groups.dot", "pruned.dot"]


@pytest.mark.filterwarnings("ignore:fxprune.dump")
def test_dump_from_a_pruned_model_matches_its_plan(tmp_path):
    model, inputs = _barrier_model()
    pruned = fxprune.prune(model, inputs, sparsity=0.5)
    fxprune.dump(model, inputs, tmp_path, pruned=pruned, formats=())
    groups = (tmp_path / "groups.dot").read_text()
    for g in pruned.meta["fxprune"].groups:
        if g.width_after != g.width_before:
            assert f"{g.width_before}→{g.width_after}" in groups


# -- networkx, widths picture, save/load ---------------------------------------------------------------

def test_to_networkx_groups_and_widths():
    for model, inputs in [_barrier_model(), (ZOO_BY_NAME["gpt_manual"][0](), ZOO_BY_NAME["gpt_manual"][1]())]:
        gm = capture(model)
        analysis = analyze(gm, inputs)
        g = fxprune.to_networkx(analysis)
        groups = {n: d for n, d in g.nodes(data=True) if d["type"] == "group"}
        assert len(groups) == len(analysis.groups)
        for grp in analysis.groups:
            d = groups[f"group:{grp.index}"]
            assert d["width"] == grp.width and d["pattern"] == grp.pattern and d["blocked"] == grp.blocked
            # every producer of the group points at it, with an index map into the group's units
            covered = set()
            for s in grp.producers:
                sid = digraph._site_id(s)
                e = g.edges[sid, f"group:{grp.index}"]
                assert e["kind"] == "producer" and len(e["index_map"]) == s.ids.numel()
                assert all(0 <= j < grp.width for j in e["index_map"])  # a producer's rows are all in its group
                covered |= set(e["index_map"])
            assert covered == set(range(grp.width))  # each unit has rows in some producer
        for u, v, e in g.edges(data=True):
            if g.nodes[u]["type"] == "site":
                assert len(e["index_map"]) == g.nodes[u]["width"]
                assert e["width"] == sum(1 for j in e["index_map"] if j >= 0)
        barriers = [n for n, d in g.nodes(data=True) if d["type"] == "barrier"]
        assert len(barriers) == len({n.name for n, _ in analysis.barriers})


def test_plot_widths_svg_and_png(tmp_path):
    model, inputs = _barrier_model()
    pruned = fxprune.prune(model, inputs, sparsity=0.5)
    svg = fxprune.plot_widths(pruned, tmp_path / "w.svg")
    text = open(svg).read()
    assert text.lstrip().startswith(("<?xml", "<svg"))
    assert "block.conv1" in text and "stem" in text
    svg2 = widths._svg_widths(widths._width_rows(pruned.meta["fxprune"].to_dict()), "t")
    assert "stem" in svg2
    if shutil.which("dot") or importlib.util.find_spec("matplotlib"):
        png = fxprune.plot_widths(pruned, tmp_path / "w.png")
        assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_save_load_in_process(tmp_path):
    model, inputs = _barrier_model()
    pruned = fxprune.prune(model, inputs, sparsity=0.5)
    fxprune.save(pruned, tmp_path / "p.pt")
    loaded = fxprune.load(tmp_path / "p.pt")
    with torch.no_grad():
        assert torch.equal(loaded(*inputs), pruned(*inputs))
    assert loaded.meta["fxprune"].params_after == pruned.meta["fxprune"].params_after
    # a model whose annotations are strings (`from __future__ import annotations`, as in tests/zoo.py)
    f, inp = ZOO_BY_NAME["resnet_basic"]
    pruned = fxprune.prune(f(), inp(), sparsity=0.5)
    assert any(isinstance(n.type, str) for n in pruned.graph.nodes)
    fxprune.save(pruned, tmp_path / "r.pt")
    with torch.no_grad():
        assert torch.equal(fxprune.load(tmp_path / "r.pt")(*inp()), pruned(*inp()))
    # a plain torch.save of a module loads too
    torch.save(pruned, tmp_path / "plain.pt")
    assert isinstance(fxprune.load(tmp_path / "plain.pt"), torch.nn.Module)
