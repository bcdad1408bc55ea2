"""torch.export and Hugging Face transformers (issue 12).

Tiny random models of 15 architectures (tests/hf_models.py: hidden 64, 2 layers, 4 heads, 2 key/value
heads), exported with a dynamic batch and sequence dim. For each: ExportedProgram in, ExportedProgram
out, equal to the masked model at two other sizes; dead-channel elimination equal to the model; saved,
then loaded and run in a fresh process. Parameter counts derived by hand for LLaMA, BERT, GPT-2, T5
and ViT. Constant parameters (LayerNorm gains and biases) are perturbed first, and outputs checked to
depend on the input, so that no comparison is vacuous.
"""
from __future__ import annotations

import functools
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from torch.export import Dim
from torch.utils._pytree import tree_leaves

import fxprune
import hf_models
import real_zoos as rz
from conftest import RTOL, model_digest

ARCHS = ["llama", "qwen2", "mistral", "gemma2", "phi3", "mixtral", "gpt2", "bloom", "bert", "albert", "deberta_v2", "t5", "bart",
         "vit", "convnext"]
SIZES = [(3, 12), (1, 20)]      # (batch, sequence length) other than the example's (2, 16)


pytestmark = pytest.mark.usefixtures("one_thread")   # real models: one thread each, steadier on CI


def _dynamic_shapes(kwargs: dict) -> dict:
    batch = Dim("batch", min=1, max=8)
    dims = {"input_ids": {0: batch, 1: Dim("seq", min=2, max=32)},
            "decoder_input_ids": {0: batch, 1: Dim("decoder_seq", min=2, max=32)},
            "pixel_values": {0: batch}}
    return {k: dims[k] for k in kwargs}


def _export(model, kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.export.export(model, (), kwargs, strict=False, dynamic_shapes=_dynamic_shapes(kwargs))


def _program_digest(ep) -> str:
    return model_digest(nn.ParameterDict({k.replace(".", "/"): nn.Parameter(v.detach(), requires_grad=False)
                                          for k, v in ep.state_dict.items()}))


@functools.lru_cache(None)
def _case(name: str):
    """(model, example kwargs, exported program) of ``name``, with dead channels (see _zero_expansions)."""
    model, kwargs = hf_models.build(name)
    rz.perturbed(model)
    _zero_expansions(model)
    return model, kwargs, _export(model, kwargs)


@functools.lru_cache(None)
def _pruned(name: str):
    """(model, example kwargs, exported program, pruned program, masked GraphModule) of ``name``."""
    model, kwargs, ep = _case(name)
    digests = model_digest(model), _program_digest(ep)
    pruned = fxprune.prune(ep, sparsity=0.5)
    assert (model_digest(model), _program_digest(ep)) == digests, "the model or its program was modified"
    report = pruned.graph_module.meta["fxprune"]
    masked = fxprune.apply_masks(ep, masks=report.masks, prune_bias=report.prune_bias)
    return model, kwargs, ep, pruned, masked


def _compare(report, want, got) -> float:
    return report.compare(want, got)


def _outputs_vary(model, name):
    with torch.no_grad():
        a, b = model(**hf_models.inputs(name, seed=11)), model(**hf_models.inputs(name, seed=12))
    assert not all(torch.equal(x, y) for x, y in zip(tree_leaves(a), tree_leaves(b))), \
        "the output does not depend on the input: the comparison would be vacuous"


@pytest.mark.parametrize("name", ARCHS)
def test_exported_program_in_and_out(name):
    model, kwargs, ep, pruned, masked = _pruned(name)
    report = pruned.graph_module.meta["fxprune"]
    assert isinstance(pruned, torch.export.ExportedProgram)
    assert report.exact and not any("verification guard" in n for n in report.notes), "the guard fired"
    assert report.capture == "exported program"
    assert report.params_after < report.params_before
    # same parameter names; the signature: the same keyword inputs, a ModelOutput back
    assert set(pruned.state_dict) <= set(ep.state_dict)
    assert pruned.graph_signature.user_inputs == ep.graph_signature.user_inputs
    _outputs_vary(masked, name)
    with torch.no_grad():
        for batch, seq in SIZES:   # the dynamic dims survived
            x = hf_models.inputs(name, seed=3, batch=batch, seq=seq)
            want, got = masked(**x), pruned.module()(**x)
            assert type(got) is type(model(**x))
            assert _compare(report, want, got) <= RTOL


@pytest.mark.parametrize("name", ["llama", "t5"])   # GPT-2's own program fails run_decompositions
def test_run_decompositions(name):
    *_, pruned, masked = _pruned(name)
    report = pruned.graph_module.meta["fxprune"]
    core = pruned.run_decompositions()
    x = hf_models.inputs(name, seed=4, batch=3, seq=10)
    with torch.no_grad():
        assert _compare(report, masked(**x), core.module()(**x)) <= RTOL


def test_saved_and_loaded_in_a_fresh_process(tmp_path):
    """Every architecture's pruned program: torch.export.save here, torch.export.load and run in a new
    interpreter, equal to the masked model's outputs computed here."""
    for name in ARCHS:
        *_, pruned, masked = _pruned(name)
        x = hf_models.inputs(name, seed=5, batch=3, seq=12)
        with torch.no_grad():
            want = tree_leaves(masked(**x))
        torch.export.save(pruned, tmp_path / f"{name}.pt2")
        torch.save({"inputs": x, "want": want}, tmp_path / f"{name}.pt")
    script = f"""
import sys, torch
sys.path.insert(0, {str(Path(__file__).parent)!r})
import hf_models
hf_models.transformers()
import transformers.modeling_outputs   # registers the ModelOutput classes the programs return
import transformers.integrations.moe   # registers the custom op of Mixtral's experts (as for the original program)
from torch.utils._pytree import tree_leaves
for name in {ARCHS!r}:
    program = torch.export.load({str(tmp_path)!r} + f"/{{name}}.pt2")
    case = torch.load({str(tmp_path)!r} + f"/{{name}}.pt")
    with torch.no_grad():
        got = tree_leaves(program.module()(**case["inputs"]))
    scale = max(float(w.abs().max()) for w in case["want"])
    diff = max(float((w - g).abs().max()) for w, g in zip(case["want"], got))
    assert diff <= {RTOL} * scale, (name, diff, scale)
    print(name, "ok")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == [w for name in ARCHS for w in (name, "ok")]


def _zero_expansions(model: nn.Module) -> None:
    """A quarter of every widening layer's outputs (MLP up/gate/fc1, GPT-2's c_fc, the gate half of fused
    experts in every expert) and of every BatchNorm's channels zeroed, weights and biases: dead channels
    known without fxprune (pruning at a sparsity then removes them first)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Linear) and m.out_features > m.in_features:
                k = m.out_features // 4
                m.weight[:k] = 0
                if m.bias is not None:
                    m.bias[:k] = 0
            elif type(m).__name__ == "Conv1D" and m.weight.shape[1] > m.weight.shape[0]:   # GPT-2: (in, out)
                k = m.weight.shape[1] // 4
                m.weight[:, :k] = 0
                m.bias[:k] = 0
            elif isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine:
                k = m.num_features // 4
                m.weight[:k] = 0
                m.bias[:k] = 0
            elif isinstance(getattr(m, "gate_up_proj", None), nn.Parameter):   # Mixtral: (experts, 2 * inner, h)
                m.gate_up_proj[:, :m.gate_up_proj.shape[1] // 8] = 0           # silu(0) * up = 0


@pytest.mark.parametrize("name", ARCHS)
def test_dead_channels(name):
    model, kwargs, ep = _case(name)
    _outputs_vary(model, name)
    smaller = fxprune.eliminate_dead_channels(ep)
    report = smaller.graph_module.meta["fxprune"]
    assert report.params_after < report.params_before
    with torch.no_grad():
        for batch, seq in SIZES:
            x = hf_models.inputs(name, seed=6, batch=batch, seq=seq)
            assert _compare(report, model(**x), smaller.module()(**x)) <= RTOL


# --- parameter counts, derived by hand -------------------------------------------------------------
# Sparsity 0.5 halves every group: the hidden stream 64 -> 32 where it is no model output, MLP widths
# 128 -> 64, attention 4 -> 2 heads of 16 (LLaMA: 2 -> 1 key/value head, with its 2 query heads).

def _llama():
    h, inner, kv, vocab = 32, 64, 16, 100
    layer = (h * 32 + h * kv * 2 + 32 * h     # q (2 heads), k and v (1 head), o
             + 2 * inner * h + h * inner      # gate, up, down
             + 2 * h)                         # two RMSNorm gains
    return 2 * layer + vocab * h * 2 + h      # embed_tokens and lm_head (untied), final norm


def _mixtral():
    h, inner, kv, vocab, experts = 32, 64, 16, 100, 4
    layer = (h * 32 + h * kv * 2 + 32 * h                         # attention as in LLaMA
             + experts * h                                        # the router: 4 experts stay
             + experts * (2 * inner * h + h * inner)              # fused gate_up_proj and down_proj
             + 2 * h)
    return 2 * layer + vocab * h * 2 + h


def _bert():
    h, inner, vocab, pos = 32, 64, 100, 64
    embeddings = vocab * h + pos * h + 2 * h + 2 * h           # word, position, token type, LayerNorm
    layer = 4 * (h * h + h) + 2 * h + (inner * h + inner) + (h * inner + h) + 2 * h
    return embeddings + 2 * layer + (h * h + h) + (2 * h + 2)  # pooler, classifier (2 labels)


def _gpt2():
    h, inner, vocab, pos = 32, 64, 100, 64
    layer = 2 * h + (h * 3 * h + 3 * h) + (h * h + h) + 2 * h + (h * inner + inner) + (inner * h + h)
    return vocab * h + pos * h + 2 * layer + 2 * h   # wte tied with lm_head: counted once


def _t5():
    # T5EncoderModel: the hidden stream (64) is the model's output and stays; heads 4 -> 2 of d_kv 16
    d, inner, heads, vocab, buckets = 64, 64, 2, 100, 32
    layer = 3 * (heads * 16 * d) + d * heads * 16 + d + (inner * d + d * inner) + d
    return vocab * d + 2 * layer + buckets * heads + d   # relative attention bias (layer 0), final norm


def _vit():
    h, inner, patches, patch = 32, 64, 16, 8
    embeddings = (3 * patch * patch * h + h) + h + (patches + 1) * h   # patch conv, cls token, positions
    layer = 2 * 2 * h + 4 * (h * h + h) + (inner * h + inner) + (h * inner + h)   # two LayerNorms, q k v o, MLP
    return embeddings + 2 * layer + 2 * h + (2 * h + 2)               # final LayerNorm, classifier


@pytest.mark.parametrize("name, expected", [("llama", _llama), ("mixtral", _mixtral), ("bert", _bert),
                                            ("gpt2", _gpt2), ("t5", _t5), ("vit", _vit)])
def test_parameter_counts(name, expected):
    *_, pruned, _ = _pruned(name)
    report = pruned.graph_module.meta["fxprune"]
    assert report.params_after == expected()
    unique = {id(t): t for t in pruned.parameters()}     # tied embeddings: one tensor under two names
    assert sum(t.numel() for t in unique.values()) == expected()


# --- capture ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_module_falls_back_to_export(name):
    """An nn.Module symbolic tracing cannot follow is exported without being asked; the pruned
    GraphModule is called like the model (keyword inputs, a ModelOutput back), at any size."""
    model, kwargs = hf_models.build(name)
    rz.perturbed(model)
    digest = model_digest(model)
    for prune_bias in (True, False):
        pruned = fxprune.prune(model, example_kwargs=kwargs, sparsity=0.5, prune_bias=prune_bias)
        report = pruned.meta["fxprune"]
        assert report.capture.startswith("torch.export (symbolic trace failed: torch.fx cannot trace")
        assert "captured with: torch.export" in str(report)
        assert report.exact and report.params_after < report.params_before
        masked = fxprune.apply_masks(model, example_kwargs=kwargs, masks=report.masks, prune_bias=prune_bias)
        x = hf_models.inputs(name, seed=7, batch=3, seq=9)
        with torch.no_grad():
            got = pruned(**x)
            assert type(got) is type(model(**x))
            assert _compare(report, masked(**x), got) <= RTOL
    assert model_digest(model) == digest


def test_same_masks_on_module_and_program():
    """One mask dict, keyed by the original parameter names, prunes the nn.Module and its
    ExportedProgram to the same weights."""
    model, kwargs, ep, pruned, _ = _pruned("llama")
    masks = pruned.graph_module.meta["fxprune"].masks
    assert "model.layers.0.mlp.up_proj.weight" in masks
    from_module = fxprune.prune(model, example_kwargs=kwargs, masks=masks).state_dict()
    from_program = fxprune.prune(ep, masks=masks).state_dict
    assert set(from_program) <= set(from_module)
    for k, v in from_program.items():
        assert torch.equal(from_module[k], v), k


def test_same_masks_symbolic_and_exported():
    """A model symbolic tracing captures: its ExportedProgram prunes to the same weights, same names."""
    from zoo import ZOO
    _, factory, inputs = next(case for case in ZOO if case[0] == "resnet_basic")
    model, x = factory(), inputs()
    pruned = fxprune.prune(model, x, sparsity=0.5)
    masks = pruned.meta["fxprune"].masks
    program = fxprune.prune(torch.export.export(model, x), masks=masks)
    assert program.graph_module.meta["fxprune"].exact
    for k, v in program.state_dict.items():
        assert torch.equal(pruned.state_dict()[k], v), k


def test_aten_graph_modules():
    """GraphModules of ATen ops: ep.module() and make_fx graphs prune like the model."""
    from torch.fx.experimental.proxy_tensor import make_fx
    model, kwargs = hf_models.build("bert")
    rz.perturbed(model)
    gm = _export(model, kwargs).module()
    pruned = fxprune.prune(gm, example_kwargs=kwargs, sparsity=0.5)
    report = pruned.meta["fxprune"]
    assert report.capture == "graph module" and report.exact and report.params_after < report.params_before
    mlp = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 4)).eval()
    x = torch.randn(3, 8)
    traced = make_fx(mlp)(x)
    pruned = fxprune.prune(traced, (x,), sparsity=0.5)
    assert pruned.meta["fxprune"].params_after == 8 * 8 + 8 + 4 * 8 + 4
    masked = fxprune.apply_masks(traced, (x,), masks=pruned.meta["fxprune"].masks)
    y = torch.randn(5, 8)
    assert torch.allclose(pruned(y), masked(y), atol=1e-6)


class _DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        if x.sum() > 0:     # a branch on a value: neither symbolic tracing nor torch.export follows it
            return self.fc(x)
        return -x


def test_capture_fails_both_ways():
    with pytest.raises(fxprune.capture.CaptureError) as e:
        fxprune.prune(_DataDependent(), (torch.randn(2, 4),), sparsity=0.5)
    message = str(e.value)
    assert "_DataDependent cannot be captured" in message
    assert "torch.fx cannot trace" in message and "torch.export cannot export" in message


# --- command line, reports -------------------------------------------------------------------------

def test_cli_transformers_model_and_saved_programs(tmp_path, capsys):
    """`fxprune prune transformers:Class --config ...` writes a .pt2; `fxprune prune x.pt2` prunes a
    saved program again; both load and run at another size."""
    from fxprune import cli
    hf_models.transformers()   # imported the way this machine needs (see real_zoos.import_torchvision)
    config = tmp_path / "config.json"
    config.write_text('{"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4, "vocab_size": 100}')
    first, second = tmp_path / "pruned.pt2", tmp_path / "again.pt2"
    assert cli.main(["prune", "transformers:LlamaForCausalLM", "--config", str(config), "--config",
                     "num_hidden_layers=1", "--config", "num_key_value_heads=2", "--input-shape", "2,16:long:100",
                     "-o", str(first), "--no-latency"]) == 0
    out = capsys.readouterr().out
    assert "captured with: torch.export" in out and f"saved the pruned model to {first}" in out
    assert cli.main(["prune", str(first), "-o", str(second), "--no-latency"]) == 0
    assert "captured with: exported program" in capsys.readouterr().out
    ids = torch.randint(0, 100, (3, 9))
    sizes = []
    for path in (first, second):
        program = torch.export.load(path)
        assert program.module()(ids).logits.shape == (3, 9, 100)   # positional, as --input-shape gave it
        sizes.append(sum(v.numel() for v in program.state_dict.values()))
    assert sizes[1] < sizes[0]
    assert cli.main(["prune", "transformers:NoSuchModel", "--input-shape", "2,16:long:100"]) == 1
    assert "transformers has no model class 'NoSuchModel'" in capsys.readouterr().err


class _NoRule(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(8, 8))

    def forward(self, x):
        return torch.special.xlogy(x, 2.0) @ self.w     # a weight no rule makes channels with


def test_nothing_pruned_says_why():
    x = torch.rand(2, 8)
    report = fxprune.prune(_NoRule(), (x,), sparsity=0.5).meta["fxprune"]
    assert report.notes[-1].startswith("nothing pruned: no op with a rule makes channels")
    assert report.notes[-1] in str(report)
    program = fxprune.prune(torch.export.export(_NoRule(), (x,)), sparsity=0.5)
    assert program.graph_module.meta["fxprune"].notes[-1].startswith("nothing pruned: no op with a rule")
    report = fxprune.prune(nn.Sequential(nn.Linear(4, 4)), (torch.rand(2, 4),), sparsity=0.5).meta["fxprune"]
    assert report.notes[-1] == "nothing pruned: 1 of 1 groups cannot be pruned, most because graph output"


def test_dump_and_find_patterns_of_programs_and_models(tmp_path):
    model, kwargs, ep = _case("bert")
    files = fxprune.dump(ep, None, tmp_path, sparsity=0.5, formats=())
    assert sorted(files) == ["captured", "groups", "pruned"]
    assert "scaled_dot_product_attention" in (tmp_path / "groups.dot").read_text()
    groups = fxprune.find_patterns(model, example_kwargs=kwargs)
    mlp = [g for g in groups if g["pattern"] == "linear-gelu-linear"]
    assert len(mlp) == 2 and all(g["width"] == 128 and g["prunable"] == 128 for g in mlp)


def test_core_aten_program():
    """A program after run_decompositions() (core ATen: native_layer_norm, addmm and bmm on permuted
    weights, attention written out with batch and heads merged into one dim, sized ``batch * 4``)
    prunes as the training IR does: the same parameter count, checked at another batch size."""
    model, kwargs, ep = _case("bert")
    core = ep.run_decompositions()
    pruned = fxprune.prune(core, sparsity=0.5)
    report = pruned.graph_module.meta["fxprune"]
    assert report.exact and report.params_after == _bert()
    masked = fxprune.apply_masks(core, masks=report.masks)
    x = hf_models.inputs("bert", seed=8, batch=3, seq=10)
    with torch.no_grad():
        assert _compare(report, masked(**x), pruned.module()(**x)) <= RTOL


def test_analysis_of_a_model_on_the_meta_device():
    """A model built under torch.device("meta") holds no weights: capture and analysis still run (on fake
    tensors) and find what they find on the same model with weights."""
    model, kwargs = hf_models.build("llama")
    with torch.device("meta"):
        meta = type(model)(model.config).eval()
    assert all(p.is_meta for p in meta.parameters())
    on_meta = fxprune.find_patterns(meta, example_kwargs={k: v.to("meta") for k, v in kwargs.items()})
    with_weights = fxprune.find_patterns(model, example_kwargs=kwargs)
    assert on_meta == with_weights
    assert sum(g["prunable"] for g in on_meta) > 0
