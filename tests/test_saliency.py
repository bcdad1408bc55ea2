"""Saliency: fxprune's choices against torch.ao's SaliencyPruner, FPGMPruner and LSTMSaliencyPruner
(on the weights torch.ao's own tests use, and on random weights of every torch.ao test model), and
the rules of ``fxprune.saliency``: l2, several producers sum, ties go to the lower index, sparsity 0.
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
from torch.ao.pruning._experimental.pruner import FPGMPruner, LSTMSaliencyPruner, SaliencyPruner
from torch.testing._internal import common_pruning as cp

import fxprune
from conftest import assert_pruned_equals_masked, fresh_like

@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The tensors are tiny: intra-op threads only add overhead here."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


OUTPUT_LAYER = {
    cp.SimpleLinear: "linear2", cp.LinearBias: "seq.4", cp.LinearActivation: "linear2",
    cp.LinearActivationFunctional: "linear3", cp.SimpleConv2d: "conv2d2", cp.Conv2dBias: "conv2d2",
    cp.Conv2dActivation: "conv2d2", cp.Conv2dPadBias: "conv2d2", cp.Conv2dPool: "conv2d3",
    cp.Conv2dPoolFlatten: "fc", cp.Conv2dPoolFlattenFunctional: "fc",
}


def example_for(cls):
    linear = "Linear" in cls.__name__ and "Conv" not in cls.__name__
    return torch.ones(7, 7) if linear else torch.ones(1, 1, 28, 28)


def hidden_layers(model, output_layer):
    return [n for n, m in model.named_modules()
            if isinstance(m, (nn.Linear, nn.Conv2d)) and n != output_layer]


def ao_step(pruner, model, config):
    """torch.ao's choice: prepare a copy, step, and read the masks from its parametrizations."""
    model = copy.deepcopy(model)
    pruner.prepare(model, config)
    pruner.enable_mask_update = True
    pruner.step()
    masks = {g["tensor_fqn"]: getattr(g["module"].parametrizations, g["tensor_name"])[0].mask.clone()
             for g in pruner.groups}
    return masks, pruner


def pruned_rows(keep: torch.Tensor) -> set[int]:
    return set(torch.nonzero(~keep).flatten().tolist())


# ------------------------------------------------------------------------------------------------
# SaliencyPruner (L1)


def test_l1_matches_saliency_pruner_on_its_test_weights():
    """torch.ao's test: SimpleLinear.linear1 rows of 1s, 2s, 3s, 4s at sparsity 0.5 keep the 3s and 4s."""
    model = cp.SimpleLinear().eval()
    with torch.no_grad():
        model.linear1.weight.copy_(torch.arange(1.0, 5.0)[:, None].expand(4, 4))
    x = torch.ones(7, 7)

    config = [{"tensor_fqn": "linear1.weight", "sparsity_level": 0.5}]
    ao_masks, pruner = ao_step(SaliencyPruner({}), model, config)
    ao_pruned = pruner.prune()

    ours = fxprune.prune(model, (x,), sparsity=0.5, criterion="l1", ignore=("seq.0", "seq.1", "seq.2"))
    report = ours.meta["fxprune"]
    assert set(report.masks) == {"linear1.weight"}
    assert torch.equal(report.masks["linear1.weight"], ao_masks["linear1.weight"])
    assert torch.equal(report.masks["linear1.weight"], torch.tensor([False, False, True, True]))
    expected = torch.tensor([[3.0] * 4, [4.0] * 4])
    torch.testing.assert_close(ours.linear1.weight.detach(), expected, rtol=0, atol=0)
    torch.testing.assert_close(ao_pruned.linear1.weight.detach(), expected, rtol=0, atol=0)
    assert ours.linear2.weight.shape == ao_pruned.linear2.weight.shape == (10, 2)
    assert_pruned_equals_masked(model, (x,), ours)


@pytest.mark.parametrize("cls", list(OUTPUT_LAYER), ids=lambda c: c.__name__)
def test_l1_matches_saliency_pruner_on_every_seed_model(cls):
    """Random weights (seeded), every hidden Linear/Conv2d at sparsity 0.5: the same rows."""
    model = cls().eval()
    hidden = hidden_layers(model, OUTPUT_LAYER[cls])
    ao_masks, _ = ao_step(SaliencyPruner({"sparsity_level": 0.5}), model,
                          [{"tensor_fqn": f"{h}.weight"} for h in hidden])
    ours = fxprune.prune(model, (example_for(cls),), sparsity=0.5, criterion="l1").meta["fxprune"].masks
    assert set(ours) == set(ao_masks)
    for fqn, keep in ao_masks.items():
        assert torch.equal(ours[fqn], keep), fqn


# ------------------------------------------------------------------------------------------------
# FPGMPruner


class FPGMConvs(nn.Module):
    """torch.ao's FPGM test model: filters of constant 3, 2, 0.1, then 6, 7, 0.4, 0.5."""

    def __init__(self):
        super().__init__()
        self.conv2d1 = nn.Conv2d(1, 3, 3, padding=1, bias=False)
        self.conv2d2 = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        with torch.no_grad():
            self.conv2d1.weight.copy_(torch.tensor([3.0, 2.0, 0.1]).reshape(3, 1, 1, 1).expand(3, 1, 3, 3))
            self.conv2d2.weight.copy_(torch.tensor([6.0, 7.0, 0.4, 0.5]).reshape(4, 1, 1, 1).expand(4, 3, 3, 3))

    def forward(self, x):
        return self.conv2d2(self.conv2d1(x))


def test_fpgm_scores_match_fpgm_pruner_distances():
    from fxprune.saliency import element_scores

    w = FPGMConvs().conv2d1.weight
    ours = element_scores(w, 1, "fpgm")
    torch.testing.assert_close(ours, FPGMPruner(0.3)._compute_distance(w).detach())
    # 9 equal entries per filter: distances 3*|a - b|, summed per filter
    torch.testing.assert_close(ours, torch.tensor([11.7, 8.7, 14.4]), rtol=1e-5, atol=1e-5)


def test_fpgm_matches_fpgm_pruner_on_its_test_weights():
    """FPGM prunes the filter nearest the others (2.0), not the smallest (0.1); with conv2d2 at 0.5
    it keeps 7 and 0.4. torch.ao uses sparsity 0.3 and rounds (round(0.9) = 1 filter); fxprune
    truncates (int(3 * 0.5) = 1, int(4 * 0.5) = 2), so 0.5 asks for the same counts."""
    x = torch.ones(1, 1, 32, 32)
    model = FPGMConvs()

    # conv2d1 alone; conv2d2 produces the graph output, which fxprune keeps by default
    ao_masks, pruner = ao_step(FPGMPruner(0.3), model, [{"tensor_fqn": "conv2d1.weight"}])
    ao_pruned = pruner.prune()
    ours = fxprune.prune(model, (x,), sparsity=0.5, criterion="fpgm")
    report = ours.meta["fxprune"]
    assert set(report.masks) == {"conv2d1.weight"}
    assert torch.equal(report.masks["conv2d1.weight"], ao_masks["conv2d1.weight"])
    assert torch.equal(report.masks["conv2d1.weight"], torch.tensor([True, False, True]))
    torch.testing.assert_close(ours.conv2d1.weight, ao_pruned.conv2d1.weight, rtol=0, atol=0)
    assert ours.conv2d2.weight.shape == (4, 2, 3, 3)

    # both layers, the output narrowed too
    config = [{"tensor_fqn": "conv2d1.weight"}, {"tensor_fqn": "conv2d2.weight", "sparsity_level": 0.5}]
    ao_masks, pruner = ao_step(FPGMPruner(0.3), model, config)
    ao_pruned = pruner.prune()
    ours = fxprune.prune(model, (x,), sparsity=0.5, criterion="fpgm", prune_outputs=True)
    masks = ours.meta["fxprune"].masks
    assert set(masks) == set(ao_masks)
    for fqn, keep in ao_masks.items():
        assert torch.equal(masks[fqn], keep), fqn
    assert torch.equal(masks["conv2d2.weight"], torch.tensor([False, True, True, False]))
    for name in ("conv2d1", "conv2d2"):
        torch.testing.assert_close(getattr(ours, name).weight, getattr(ao_pruned, name).weight,
                                   rtol=0, atol=0)
    with torch.no_grad():
        assert ours(x).shape == ao_pruned(x).shape == (1, 2, 32, 32)


@pytest.mark.parametrize("cls", list(OUTPUT_LAYER), ids=lambda c: c.__name__)
def test_fpgm_matches_fpgm_pruner_on_every_seed_model(cls):
    """Random weights, every hidden layer at sparsity 0.3. torch.ao prunes round(0.3 * n) rows,
    fxprune int(0.3 * n): where the counts agree the rows are the same, elsewhere one choice is the
    other's prefix (the same order by distance)."""
    model = cls().eval()
    hidden = hidden_layers(model, OUTPUT_LAYER[cls])
    ao_masks, _ = ao_step(FPGMPruner(0.3), model, [{"tensor_fqn": f"{h}.weight"} for h in hidden])
    ours = fxprune.prune(model, (example_for(cls),), sparsity=0.3, criterion="fpgm").meta["fxprune"].masks
    assert set(ours) <= set(ao_masks)
    for fqn, ao_keep in ao_masks.items():
        n = len(ao_keep)
        ours_keep = ours.get(fqn, torch.ones(n, dtype=torch.bool))
        a, o = pruned_rows(ao_keep), pruned_rows(ours_keep)
        assert len(a) == round(0.3 * n) and len(o) == int(0.3 * n), fqn
        assert (o <= a) if len(o) <= len(a) else (a <= o), (fqn, sorted(a), sorted(o))


# ------------------------------------------------------------------------------------------------
# LSTMSaliencyPruner

LSTM_TEST_ROWS = torch.tensor([[1.0, 1], [2, 2], [2, 2], [1, 1], [-1, -1], [-2, -2], [-2, -2], [-1, -1]])


def lstm_with_test_weights():
    model = cp.LSTMLinearModel(input_dim=2, hidden_dim=2, output_dim=2, num_layers=1).eval()
    with torch.no_grad():
        for name in ("weight_ih_l0", "weight_hh_l0"):
            getattr(model.lstm, name).copy_(LSTM_TEST_ROWS)
        for name in ("bias_ih_l0", "bias_hh_l0"):
            getattr(model.lstm, name).copy_(LSTM_TEST_ROWS[:, 0])
    return model


def test_lstm_saliency_pruner_test_weights_are_not_unit_consistent():
    """On torch.ao's LSTM test weights LSTMSaliencyPruner picks per gate: gates i and g drop unit 0,
    gates f and o drop unit 1, so no hidden unit is pruned as a whole (its pruned model mixes units
    across gates). fxprune prunes whole units only: it refuses that mask, and its l1 score of a unit
    sums all 4 gates of weight_ih and weight_hh: both units score 24, the tie goes to the lower
    index, so unit 0 is pruned in every gate."""
    model = lstm_with_test_weights()
    x = torch.ones(1, 2)
    config = [{"tensor_fqn": "lstm.weight_ih_l0"}, {"tensor_fqn": "lstm.weight_hh_l0"}]
    ao_masks, pruner = ao_step(LSTMSaliencyPruner({"sparsity_level": 0.5}), model, config)
    per_gate = torch.tensor([False, True, True, False, False, True, True, False])
    assert torch.equal(ao_masks["lstm.weight_ih_l0"], per_gate)
    assert torch.equal(ao_masks["lstm.weight_hh_l0"], per_gate)
    ao_pruned = pruner.prune()
    torch.testing.assert_close(ao_pruned.lstm.weight_ih_l0.detach(),
                               torch.tensor([[2.0, 2], [2, 2], [-2, -2], [-2, -2]]), rtol=0, atol=0)

    with pytest.raises(ValueError, match="gates must keep the same units"):
        fxprune.prune(model, (x,), masks=ao_masks, prune_outputs=True)

    ours = fxprune.prune(model, (x,), sparsity=0.5, criterion="l1", prune_outputs=True)
    keep_unit_1 = torch.tensor([False, True]).repeat(4)
    assert torch.equal(ours.meta["fxprune"].masks["lstm.weight_ih_l0"], keep_unit_1)
    torch.testing.assert_close(ours.lstm.weight_ih_l0.detach(), LSTM_TEST_ROWS[keep_unit_1], rtol=0, atol=0)
    torch.testing.assert_close(ours.lstm.weight_hh_l0.detach(), LSTM_TEST_ROWS[keep_unit_1][:, 1:],
                               rtol=0, atol=0)
    assert_pruned_equals_masked(model, (x,), ours, prune_outputs=True)


@pytest.mark.parametrize("layers", [1, 2])
def test_lstm_l1_matches_lstm_saliency_pruner_when_gates_agree(layers):
    """Weights whose unit ranking is the same in every gate and in weight_ih / weight_hh (each
    unit's rows are its own scale times random signs): LSTMSaliencyPruner and fxprune prune the same
    units in every layer."""
    model = cp.LSTMLinearModel(input_dim=8, hidden_dim=8, output_dim=8, num_layers=layers).eval()
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for i in range(layers):
            scale = torch.randperm(8, generator=g).double() + 1.0
            for kind in ("ih", "hh"):
                w = getattr(model.lstm, f"weight_{kind}_l{i}")
                signs = torch.randint(0, 2, w.shape, generator=g) * 2 - 1
                w.copy_(scale.repeat(4)[:, None] * signs)
    config = [{"tensor_fqn": f"lstm.weight_{k}_l{i}"} for i in range(layers) for k in ("ih", "hh")]
    ao_masks, _ = ao_step(LSTMSaliencyPruner({"sparsity_level": 0.5}), model, config)
    x = torch.ones(6, 8)
    ours = fxprune.prune(model, (x,), sparsity=0.5, criterion="l1", prune_outputs=True)
    masks = ours.meta["fxprune"].masks
    for i in range(layers):
        ih, hh = ao_masks[f"lstm.weight_ih_l{i}"], ao_masks[f"lstm.weight_hh_l{i}"]
        assert torch.equal(ih, hh)
        assert torch.equal(masks[f"lstm.weight_ih_l{i}"], ih), i
        assert int((~ih.reshape(4, 8)[0]).sum()) == 4
    assert_pruned_equals_masked(model, (x,), ours, prune_outputs=True)


# ------------------------------------------------------------------------------------------------
# fxprune's own rules


class OneHidden(nn.Module):
    def __init__(self, rows):
        super().__init__()
        self.fc = nn.Linear(rows.shape[1], rows.shape[0], bias=False)
        self.head = nn.Linear(rows.shape[0], 3)
        with torch.no_grad():
            self.fc.weight.copy_(rows)

    def forward(self, x):
        return self.head(torch.relu(self.fc(x)))


def test_l2_criterion_hand_made_weight():
    """Row 0 is one big entry (l1 3, l2 3); row 1 is spread (l1 4, l2 2); row 2 (l1 4.5, l2 2.87)."""
    rows = torch.tensor([[3.0, 0, 0, 0], [1, 1, 1, 1], [2, 2, 0.5, 0], [5, 5, 5, 5]])
    model = OneHidden(rows).eval()
    x = torch.randn(2, 4)
    l1 = fxprune.prune(model, (x,), sparsity=0.5, criterion="l1")
    l2 = fxprune.prune(model, (x,), sparsity=0.5, criterion="l2")
    assert pruned_rows(l1.meta["fxprune"].masks["fc.weight"]) == {0, 1}
    assert pruned_rows(l2.meta["fxprune"].masks["fc.weight"]) == {1, 2}
    norms = torch.linalg.vector_norm(rows, dim=1)
    assert set(norms.argsort()[:2].tolist()) == {1, 2}
    torch.testing.assert_close(l2.fc.weight.detach(), rows[[0, 3]], rtol=0, atol=0)
    assert_pruned_equals_masked(model, (x,), l2)


class TwoProducers(nn.Module):
    """relu(a(x) + b(x)) -> head: a and b produce one group."""

    def __init__(self, a_rows, b_rows):
        super().__init__()
        self.a = nn.Linear(4, 4, bias=False)
        self.b = nn.Linear(4, 4, bias=False)
        self.head = nn.Linear(4, 3)
        with torch.no_grad():
            self.a.weight.copy_(a_rows[:, None].expand(4, 4))
            self.b.weight.copy_(b_rows[:, None].expand(4, 4))

    def forward(self, x):
        return self.head(torch.relu(self.a(x) + self.b(x)))


def test_group_with_two_producers_sums_scores():
    """a alone would prune {0, 2}, b alone {1, 3}; the sums (28, 24, 32, 38) prune {0, 1}."""
    a_rows, b_rows = torch.tensor([1.0, 5, 2, 9]), torch.tensor([6.0, 1, 6, 0.5])
    model = TwoProducers(a_rows, b_rows).eval()
    x = torch.randn(2, 4)
    pruned = fxprune.prune(model, (x,), sparsity=0.5, criterion="l1")
    report = pruned.meta["fxprune"]
    group = next(g for g in report.groups if g.status == "pruned")
    assert sorted(group.producers) == ["a.weight", "b.weight"]
    assert pruned_rows(report.masks["a.weight"]) == pruned_rows(report.masks["b.weight"]) == {0, 1}
    zeros = torch.zeros(4)
    for alone, rows in ((TwoProducers(a_rows, zeros), {0, 2}), (TwoProducers(zeros, b_rows), {1, 3})):
        masks = fxprune.prune(alone, (x,), sparsity=0.5, criterion="l1").meta["fxprune"].masks
        assert pruned_rows(masks["a.weight"]) == rows
    assert_pruned_equals_masked(model, (x,), pruned)


class OneAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.attn(x, x, x, need_weights=False)[0])


@pytest.mark.parametrize("criterion", ["l1", "l2"])
def test_head_scored_over_all_its_rows(criterion):
    """A head's score counts every q, k and v row of the head: head 0's first row is tiny but its
    other rows are large, so head 1 (all rows medium) goes."""
    model = OneAttention().eval()
    with torch.no_grad():
        w = model.attn.in_proj_weight            # rows (q|k|v, head, head_dim=4)
        w.fill_(1.0)
        w.view(3, 2, 4, 8)[:, 0] = 5.0
        w.view(3, 2, 4, 8)[:, 0, 0] = 0.01
    x = torch.randn(2, 5, 8)
    pruned = fxprune.prune(model, (x,), sparsity=0.5, criterion=criterion)
    keep = pruned.meta["fxprune"].masks["attn.in_proj_weight"]
    assert keep.view(3, 2).tolist() == [[True, False]] * 3     # (q|k|v, head)
    assert_pruned_equals_masked(model, (x,), pruned)


@pytest.mark.parametrize("criterion", ["l1", "l2", "fpgm"])
def test_ties_go_to_the_lower_index(criterion):
    """Rows 1..5 are equal (row 0 and 6 differ): the lowest indices among the tied rows are pruned,
    the same on every call."""
    rows = torch.ones(7, 4)
    rows[0] *= 9.0
    rows[6] *= 9.0
    model = OneHidden(rows).eval()
    x = torch.randn(2, 4)
    chosen = [fxprune.prune(model, (x,), sparsity=0.3, criterion=criterion).meta["fxprune"].masks["fc.weight"]
              for _ in range(2)]
    chosen = [pruned_rows(keep) for keep in chosen]
    assert chosen[0] == chosen[1] == {1, 2}


def test_ties_go_to_the_lower_index_all_equal():
    model = OneHidden(torch.ones(6, 3)).eval()
    masks = fxprune.prune(model, (torch.randn(2, 3),), sparsity=0.5).meta["fxprune"].masks
    assert pruned_rows(masks["fc.weight"]) == {0, 1, 2}


SPARSITY_ZERO_MODELS = [
    (cp.LinearActivation, lambda: (torch.randn(4, 7),)),
    (cp.Conv2dPoolFlatten, lambda: (torch.randn(1, 1, 28, 28),)),
    (lambda: cp.LSTMLayerNormLinearModel(input_dim=8, hidden_dim=8, output_dim=8, num_layers=2),
     lambda: (torch.randn(5, 8),)),
]


@pytest.mark.parametrize("criterion", ["l1", "l2", "fpgm"])
@pytest.mark.parametrize("make,inputs", SPARSITY_ZERO_MODELS, ids=["linear", "conv", "lstm"])
def test_sparsity_zero_prunes_nothing(make, inputs, criterion):
    model = make().eval()
    x = inputs()
    pruned = fxprune.prune(model, x, sparsity=0.0, criterion=criterion, prune_outputs=True)
    report = pruned.meta["fxprune"]
    assert report.masks == {}
    assert report.params_after == report.params_before
    assert all(g.status in ("unchanged", "unprunable") and g.masked == 0 for g in report.groups)
    assert all(g.width_after == g.width_before for g in report.groups)
    fresh = fresh_like(x, seed=5)
    with torch.no_grad():
        torch.testing.assert_close(pruned(*fresh), model(*fresh), rtol=1e-6, atol=1e-6)
