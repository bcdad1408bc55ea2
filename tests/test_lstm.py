"""Recurrent layers: pruned == masked exactly, and the pruned nn.LSTM / GRU / RNN really is smaller."""
import pytest
import torch
import torch.nn as nn
from torch.testing._internal import common_pruning as cp

import fxprune
from conftest import assert_pruned_equals_masked


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: intra-op threads only add OpenMP barriers (slow on a loaded 2-core machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


AO_LSTM = [cp.LSTMLinearModel, cp.LSTMLayerNormLinearModel]


def keep_mask(n, pruned):
    keep = torch.ones(n, dtype=torch.bool)
    keep[list(pruned)] = False
    return keep


def state_equal(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# -- torch.ao's seed models: they return the LSTM output, so masks + prune_outputs=True -----------

@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("form", ["H", "4H"])
@pytest.mark.parametrize("cls", AO_LSTM, ids=lambda c: c.__name__)
def test_ao_lstm_models_with_masks(cls, num_layers, form):
    model, x = cls(8, 16, 4, num_layers).eval(), torch.randn(5, 3, 8)
    keep = keep_mask(16, range(0, 16, 2))  # 8 of 16 units stay, in every layer
    mask = keep if form == "H" else keep.repeat(4)
    masks = {f"lstm.weight_ih_l{i}": mask for i in range(num_layers)}
    pruned = fxprune.prune(model, (x,), masks=masks, prune_outputs=True)
    report = pruned.meta["fxprune"]
    assert pruned.get_submodule("lstm").hidden_size == 8
    assert pruned.get_submodule("lstm").num_layers == num_layers
    assert pruned.get_submodule("linear").in_features == 8
    if cls is cp.LSTMLayerNormLinearModel:
        assert tuple(pruned.get_submodule("norm").normalized_shape) == (8,)
    assert report.params_after < report.params_before
    assert report.outputs_changed  # the LSTM output (and state) lost channels
    # the report gives the masks in the 4H (gates * hidden) form
    assert set(report.masks) == set(masks)
    assert all(torch.equal(m, keep.repeat(4)) for m in report.masks.values())
    assert_pruned_equals_masked(model, (x,), pruned, prune_outputs=True)


@pytest.mark.parametrize("cls", AO_LSTM, ids=lambda c: c.__name__)
def test_ao_lstm_masks_without_prune_outputs_keep_widths(cls):
    """The LSTM output is a graph output: without prune_outputs the masked units stay (still zero)."""
    model, x = cls(8, 16, 4, 1).eval(), torch.randn(5, 3, 8)
    pruned = fxprune.prune(model, (x,), masks={"lstm.weight_ih_l0": keep_mask(16, [1, 5, 9])})
    report = pruned.meta["fxprune"]
    assert pruned.get_submodule("lstm").hidden_size == 16
    assert report.params_after == report.params_before
    assert not report.outputs_changed
    lstm_group = next(g for g in report.groups if g.producers == ["lstm.weight_ih_l0"])
    assert lstm_group.status == "kept" and lstm_group.masked == 3 and "graph output" in lstm_group.reason
    assert_pruned_equals_masked(model, (x,), pruned)


@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("cls", AO_LSTM, ids=lambda c: c.__name__)
def test_ao_lstm_models_sparsity(cls, num_layers):
    """Sparsity mode never narrows a graph output; whatever it masks, pruned == masked."""
    model, x = cls(8, 16, 4, num_layers).eval(), torch.randn(5, 3, 8)
    pruned = fxprune.prune(model, (x,), sparsity=0.5)
    report = pruned.meta["fxprune"]
    assert not report.outputs_changed
    assert pruned.get_submodule("lstm").hidden_size == 16  # the last layer's units reach the output
    assert_pruned_equals_masked(model, (x,), pruned)


# -- own models: the LSTM output is not a graph output, so sparsity mode removes units -----------

class RNNNet(nn.Module):
    """linear -> relu -> rnn -> [layernorm] -> linear, on the last step or on every step."""

    def __init__(self, rnn=nn.LSTM, num_layers=1, batch_first=True, bidirectional=False, norm=False,
                 last=True, bias=True):
        super().__init__()
        d = 2 if bidirectional else 1
        self.inp = nn.Linear(6, 12)
        self.rnn = rnn(12, 10, num_layers=num_layers, batch_first=batch_first, bidirectional=bidirectional,
                       bias=bias)
        self.norm = nn.LayerNorm(10 * d) if norm else nn.Identity()
        self.head = nn.Linear(10 * d, 3)
        self.last, self.batch_first = last, batch_first

    def forward(self, x):
        out, _ = self.rnn(torch.relu(self.inp(x)))
        out = self.norm(out)
        if self.last:
            out = out[:, -1] if self.batch_first else out[-1]
        return self.head(out)


CONFIGS = {
    "lstm": dict(),
    "lstm-2layers": dict(num_layers=2),
    "lstm-layernorm": dict(norm=True),
    "lstm-2layers-layernorm": dict(num_layers=2, norm=True),
    "lstm-seq-first": dict(batch_first=False),
    "lstm-every-step": dict(last=False),
    "lstm-bidirectional": dict(bidirectional=True),
    "lstm-2layers-bidirectional-layernorm": dict(num_layers=2, bidirectional=True, norm=True),
    "lstm-no-bias": dict(bias=False),
    "gru": dict(rnn=nn.GRU),
    "gru-2layers-bidirectional": dict(rnn=nn.GRU, num_layers=2, bidirectional=True),
    "rnn-tanh": dict(rnn=nn.RNN),
}


KEEP_BIAS_TOO = {"lstm", "lstm-2layers-bidirectional-layernorm", "lstm-no-bias", "gru"}


@pytest.mark.parametrize("name,prune_bias", [(n, True) for n in CONFIGS] + [(n, False) for n in CONFIGS
                                                                           if n in KEEP_BIAS_TOO])
def test_own_recurrent_models_sparsity(name, prune_bias):
    cfg = CONFIGS[name]
    model = RNNNet(**cfg).eval()
    x = torch.randn(7, 3, 6) if cfg.get("batch_first") is False else torch.randn(3, 7, 6)
    pruned = fxprune.prune(model, (x,), sparsity=0.5, prune_bias=prune_bias)
    report = pruned.meta["fxprune"]
    rnn = pruned.get_submodule("rnn")
    d = 2 if cfg.get("bidirectional") else 1
    assert type(rnn) is cfg.get("rnn", nn.LSTM)
    assert rnn.hidden_size == 5 and rnn.input_size == 6
    assert rnn.num_layers == cfg.get("num_layers", 1) and rnn.bidirectional == (d == 2)
    assert rnn.batch_first == cfg.get("batch_first", True)
    assert pruned.get_submodule("inp").out_features == 6
    assert pruned.get_submodule("head").in_features == 5 * d
    if cfg.get("norm"):
        assert tuple(pruned.get_submodule("norm").normalized_shape) == (5 * d,)
    assert report.params_after < report.params_before
    assert report.flops_after < report.flops_before
    assert not report.outputs_changed
    rnn_groups = [g for g in report.groups if g.producers[0].startswith("rnn.")]
    assert len(rnn_groups) == cfg.get("num_layers", 1) * d
    assert all(g.status == "pruned" and g.width_after == 5 for g in rnn_groups)
    assert_pruned_equals_masked(model, (x,), pruned)


def test_lstm_pattern_names():
    model, x = RNNNet(num_layers=2, norm=True), torch.randn(3, 7, 6)
    assert [g["pattern"] for g in fxprune.find_patterns(model, (x,))] == [
        "linear-relu-lstm", "lstm", "lstm-layernorm-linear", "linear-output"]


# -- masks: 4H rows or H units ---------------------------------------------------------------------

class TwoLayer(nn.Module):
    def __init__(self, rnn=nn.LSTM):
        super().__init__()
        self.rnn = rnn(6, 8, num_layers=2)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out)


@pytest.mark.parametrize("rnn,gates", [(nn.LSTM, 4), (nn.GRU, 3)], ids=["lstm", "gru"])
def test_gate_rows_and_unit_masks_agree(rnn, gates):
    model, x = TwoLayer(rnn).eval(), torch.randn(5, 2, 6)
    k0, k1 = keep_mask(8, [1, 4, 5]), keep_mask(8, [0, 4, 7])
    by_unit = fxprune.prune(model, (x,), masks={"rnn.weight_ih_l0": k0, "rnn.weight_ih_l1": k1})
    by_rows = fxprune.prune(model, (x,), masks={"rnn.weight_ih_l0": k0.repeat(gates),
                                                "rnn.weight_ih_l1": k1.repeat(gates)})
    assert by_unit.get_submodule("rnn").hidden_size == 5
    assert by_unit.get_submodule("head").in_features == 5
    assert state_equal(by_unit, by_rows)
    r1, r2 = by_unit.meta["fxprune"], by_rows.meta["fxprune"]
    assert r1.masks.keys() == r2.masks.keys()
    assert all(torch.equal(r1.masks[k], r2.masks[k]) for k in r1.masks)
    assert torch.equal(r1.masks["rnn.weight_ih_l0"], k0.repeat(gates))
    assert_pruned_equals_masked(model, (x,), by_unit)
    xx = torch.randn(4, 3, 6)
    with torch.no_grad():
        assert torch.equal(by_unit(xx), by_rows(xx))


def test_any_gate_tensor_names_the_unit():
    """weight_hh / biases of a layer are keys for the same units as its weight_ih."""
    model, x = TwoLayer().eval(), torch.randn(5, 2, 6)
    k0, k1 = keep_mask(8, [2, 3]), keep_mask(8, [0, 6])
    a = fxprune.prune(model, (x,), masks={"rnn.weight_ih_l0": k0, "rnn.weight_ih_l1": k1})
    b = fxprune.prune(model, (x,), masks={"rnn.weight_hh_l0": k0.repeat(4), "rnn.bias_ih_l1": k1})
    assert a.get_submodule("rnn").hidden_size == 6
    assert state_equal(a, b)


@pytest.mark.parametrize("rnn,gates", [(nn.LSTM, 4), (nn.GRU, 3)], ids=["lstm", "gru"])
def test_gates_that_disagree_raise(rnn, gates):
    model, x = TwoLayer(rnn).eval(), torch.randn(5, 2, 6)
    rows = keep_mask(8, [1, 4]).repeat(gates)
    rows[8 + 2] = False  # unit 2 pruned in the second gate only
    with pytest.raises(ValueError, match=r"rnn\.weight_ih_l0.*gates must keep the same units"):
        fxprune.prune(model, (x,), masks={"rnn.weight_ih_l0": rows})


def test_layers_with_different_counts_keep_the_largest():
    """nn.LSTM has one hidden_size: the layer that prunes more keeps some masked (zero) units."""
    model, x = TwoLayer().eval(), torch.randn(5, 2, 6)
    pruned = fxprune.prune(model, (x,), masks={"rnn.weight_ih_l0": keep_mask(8, [1, 4, 5]),
                                               "rnn.weight_ih_l1": keep_mask(8, [6, 7])})
    report = pruned.meta["fxprune"]
    assert pruned.get_submodule("rnn").hidden_size == 6
    assert pruned.get_submodule("head").in_features == 6
    g0 = next(g for g in report.groups if g.producers == ["rnn.weight_ih_l0"])
    assert g0.status == "pruned" and g0.masked == 3 and g0.width_after == 6
    assert "same number of units" in g0.reason
    assert_pruned_equals_masked(model, (x,), pruned)


# -- what blocks removal: exact anyway -------------------------------------------------------------

class WithInitialState(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(6, 8, batch_first=True)
        self.head = nn.Linear(8, 2)

    def forward(self, x, h, c):
        out, _ = self.lstm(x, (h, c))
        return self.head(out[:, -1])


def test_nonzero_initial_state_blocks_removal():
    model = WithInitialState().eval()
    inputs = (torch.randn(2, 5, 6), torch.randn(1, 2, 8), torch.randn(1, 2, 8))
    pruned = fxprune.prune(model, inputs, sparsity=0.5)
    report = pruned.meta["fxprune"]
    assert pruned.get_submodule("lstm").hidden_size == 8
    g = next(g for g in report.groups if g.producers == ["lstm.weight_ih_l0"])
    assert g.status == "unprunable" and "initial state" in g.reason
    assert_pruned_equals_masked(model, inputs, pruned)


class HiddenHead(nn.Module):
    """The classifier reads the final hidden state h_n[-1] rather than the output sequence."""

    def __init__(self, num_layers=1):
        super().__init__()
        self.lstm = nn.LSTM(6, 8, num_layers=num_layers, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        _, (h, _) = self.lstm(x)
        return self.head(h[-1])


@pytest.mark.parametrize("num_layers", [1, 2])
def test_final_hidden_state_to_linear_is_exact(num_layers):
    model, x = HiddenHead(num_layers).eval(), torch.randn(3, 7, 6)
    pruned = fxprune.prune(model, (x,), sparsity=0.5)
    report = pruned.meta["fxprune"]
    for g in report.groups:
        assert g.status in ("pruned", "unprunable", "kept", "unchanged")
        if g.status == "unprunable":
            assert g.reason
    assert_pruned_equals_masked(model, (x,), pruned)
