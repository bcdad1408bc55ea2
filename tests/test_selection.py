"""Sparsity controls of ``prune`` / ``apply_masks`` / ``update_masks``: the uniform per-group rule,
``layer_sparsity`` (module names and prefixes), ``ignore``, ``round_to`` and ``global_ranking``.

Every case also checks the contract: pruned == masked on fresh inputs (``assert_pruned_equals_masked``)
and the input model is not modified (``model_digest``).
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import fxprune
from conftest import assert_pruned_equals_masked, fresh_like, model_digest


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The tensors are tiny: intra-op threads only add overhead here."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------------------
# models


class MLP(nn.Module):
    """fc1 -> relu -> fc2 -> relu -> fc3: two prunable groups (fc1, fc2); fc3 feeds the output."""

    def __init__(self, widths=(16, 24), d_in=6, d_out=4):
        super().__init__()
        self.fc1 = nn.Linear(d_in, widths[0])
        self.fc2 = nn.Linear(widths[0], widths[1])
        self.fc3 = nn.Linear(widths[1], d_out)

    def forward(self, x):
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


class CNN(nn.Module):
    def __init__(self, widths=(16, 32)):
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 3, padding=1)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.conv2 = nn.Conv2d(widths[0], widths[1], 3, padding=1)
        self.fc = nn.Linear(widths[1], 10)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.conv2(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class Block(nn.Module):
    def __init__(self, c_in, c_mid, c_out):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_mid, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(c_mid)
        self.conv2 = nn.Conv2d(c_mid, c_out, 1)

    def forward(self, x):
        return F.relu(self.conv2(F.relu(self.bn1(self.conv1(x)))))


class Staged(nn.Module):
    """Named like torchvision's ResNet, to exercise prefixes: "layer1" covers "layer1.0.conv1" but not
    "layer10". One group per conv (no residual), widths below."""

    WIDTHS = {"stem": 8, "layer1.0.conv1": 16, "layer1.0.conv2": 12, "layer2.0.conv1": 20,
              "layer2.0.conv2": 24, "layer10": 10}

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.layer1 = nn.Sequential(Block(8, 16, 12))
        self.layer2 = nn.Sequential(Block(12, 20, 24))
        self.layer10 = nn.Conv2d(24, 10, 1)
        self.head = nn.Linear(10, 5)

    def forward(self, x):
        x = F.relu(self.stem(x))
        x = self.layer2(self.layer1(x))
        x = F.relu(self.layer10(x))
        return self.head(x.mean((2, 3)))


class Residual(nn.Module):
    """a and b are added: one group with two producers."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(6, 12)
        self.b = nn.Linear(6, 12)
        self.c = nn.Linear(12, 8)
        self.out = nn.Linear(8, 3)

    def forward(self, x):
        return self.out(torch.relu(self.c(torch.relu(self.a(x) + self.b(x)))))


class Wide(nn.Module):
    """Widths chosen around multiples of 8 (and one narrower than 8) for round_to."""

    WIDTHS = {"l0": 20, "l1": 30, "l2": 48, "l3": 7, "l4": 64}

    def __init__(self):
        super().__init__()
        d = 6
        for name, w in self.WIDTHS.items():
            setattr(self, name, nn.Linear(d, w))
            d = w
        self.out = nn.Linear(d, 3)

    def forward(self, x):
        for name in self.WIDTHS:
            x = F.silu(getattr(self, name)(x))
        return self.out(x)


def randomize_bn(model):
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
                m.weight.normal_()
                m.bias.normal_()
    return model


def mlp_input():
    return (torch.randn(4, 6),)


def image_input():
    return (torch.randn(2, 3, 8, 8),)


# ------------------------------------------------------------------------------------------------
# helpers


def run(model, inputs, **kw):
    """prune with ``kw``; check the input model is untouched and pruned == masked on fresh inputs."""
    digest = model_digest(model)
    pruned = fxprune.prune(model, inputs, **kw)
    assert model_digest(model) == digest, "prune() modified its input model"
    assert_pruned_equals_masked(model, inputs, pruned, prune_outputs=False)
    return pruned, pruned.meta["fxprune"]


def widths(report):
    """{producer module: (width before, width after)} for single-producer groups."""
    out = {}
    for g in report.groups:
        for p in g.producers:
            out[p.rsplit(".", 1)[0]] = (g.width_before, g.width_after)
    return out


def prunable(report):
    return [g for g in report.groups if g.status != "unprunable"]


def uniform_kept(width, s):
    return width - int(width * s)


def l1_rows(weight):
    return weight.detach().abs().flatten(1).sum(1)


def lowest(scores, n):
    """keep-mask that drops the n lowest scores (ties to the lower index), like fxprune's select."""
    order = sorted(range(len(scores)), key=lambda i: (float(scores[i]), i))
    keep = torch.ones(len(scores), dtype=torch.bool)
    keep[order[:n]] = False
    return keep


def set_row_norms(linear, norms):
    """Give each row of ``linear.weight`` equal entries, so that row i has L1 norm ``norms[i]``."""
    norms = torch.as_tensor(norms, dtype=torch.float32)
    with torch.no_grad():
        linear.weight.copy_((norms / linear.in_features)[:, None].expand_as(linear.weight))
        linear.bias.normal_()


# ------------------------------------------------------------------------------------------------
# uniform per group (the default)


@pytest.mark.parametrize("s", [0.0, 0.1, 0.25, 0.3, 0.5, 0.7, 0.9, 0.99])
def test_uniform_mlp(s):
    torch.manual_seed(1)
    model, x = MLP().eval(), mlp_input()
    pruned, report = run(model, x, sparsity=s)
    w = widths(report)
    assert w["fc1"] == (16, uniform_kept(16, s))
    assert w["fc2"] == (24, uniform_kept(24, s))
    assert w["fc3"] == (4, 4)                                   # graph output
    assert pruned.fc1.out_features == uniform_kept(16, s)
    assert pruned.fc2.in_features == uniform_kept(16, s)
    assert pruned.fc2.out_features == uniform_kept(24, s)
    # which channels: the lowest row L1 norms
    for name, width in (("fc1", 16), ("fc2", 24)):
        n = int(width * s)
        key = f"{name}.weight"
        if n == 0:
            assert key not in report.masks
        else:
            expected = lowest(l1_rows(getattr(model, name).weight), n)
            assert torch.equal(report.masks[key], expected)


@pytest.mark.parametrize("s", [0.2, 0.5, 0.8])
@pytest.mark.parametrize("prune_bias", [True, False])
def test_uniform_cnn(s, prune_bias):
    torch.manual_seed(2)
    model, x = randomize_bn(CNN()).eval(), image_input()
    pruned, report = run(model, x, sparsity=s, prune_bias=prune_bias)
    w = widths(report)
    if prune_bias:   # with prune_bias=False, the kept conv1 bias is a constant before a zero-padded conv
        assert w["conv1"] == (16, uniform_kept(16, s))
        assert pruned.conv1.out_channels == uniform_kept(16, s)
        assert pruned.bn1.num_features == uniform_kept(16, s)
    assert w["conv2"] == (32, uniform_kept(32, s))
    assert pruned.conv2.out_channels == uniform_kept(32, s)
    assert pruned.fc.in_features == uniform_kept(32, s)
    # the masks always follow the uniform rule, removed or not
    for g in prunable(report):
        assert g.masked == int(g.width_before * s)


def test_uniform_at_least_one_channel_stays():
    """width 2 at sparsity 0.9: int(1.8) = 1 pruned, one stays; width 1 never loses its channel."""
    torch.manual_seed(3)
    model, x = MLP(widths=(2, 1)).eval(), mlp_input()
    _, report = run(model, x, sparsity=0.9)
    assert widths(report)["fc1"] == (2, 1)
    assert widths(report)["fc2"] == (1, 1)


# ------------------------------------------------------------------------------------------------
# layer_sparsity and ignore


def expected_staged(default, overrides=None, ignored=()):
    """Kept widths of Staged under the uniform rule, with per-module sparsities."""
    overrides = overrides or {}
    out = {}
    for name, width in Staged.WIDTHS.items():
        if name in ignored:
            out[name] = (width, width)
        else:
            out[name] = (width, uniform_kept(width, overrides.get(name, default)))
    return out


def staged_widths(report):
    w = widths(report)
    return {name: w[name] for name in Staged.WIDTHS}


@pytest.fixture
def staged():
    torch.manual_seed(4)
    return randomize_bn(Staged()).eval(), image_input()


def test_layer_sparsity_prefix_covers_submodules(staged):
    model, x = staged
    _, report = run(model, x, sparsity=0.25, layer_sparsity={"layer1": 0.75})
    # "layer1" covers layer1.0.conv1 and layer1.0.conv2, but not layer10
    assert staged_widths(report) == expected_staged(
        0.25, {"layer1.0.conv1": 0.75, "layer1.0.conv2": 0.75})


def test_layer_sparsity_exact_name_and_zero(staged):
    model, x = staged
    _, report = run(model, x, sparsity=0.5, layer_sparsity={"layer2.0.conv2": 0.1, "stem": 0.0})
    expected = expected_staged(0.5, {"layer2.0.conv2": 0.1, "stem": 0.0})
    assert staged_widths(report) == expected
    assert expected["stem"] == (8, 8) and expected["layer2.0.conv2"] == (24, 22)


def test_layer_sparsity_without_default(staged):
    """sparsity=0 as default: only the named modules are pruned."""
    model, x = staged
    _, report = run(model, x, sparsity=0.0, layer_sparsity={"layer2": 0.5, "layer10": 0.3})
    assert staged_widths(report) == expected_staged(
        0.0, {"layer2.0.conv1": 0.5, "layer2.0.conv2": 0.5, "layer10": 0.3})


def test_layer_sparsity_prefix_is_dot_bounded(staged):
    """"layer1" is not a prefix of "layer10"; "layer1.0.conv" covers neither conv1 nor conv2."""
    model, x = staged
    _, report = run(model, x, sparsity=0.0, layer_sparsity={"layer1": 0.5, "layer2.0.conv": 0.5})
    w = staged_widths(report)
    assert w["layer10"] == (10, 10)
    assert w["layer2.0.conv1"] == (20, 20) and w["layer2.0.conv2"] == (24, 24)
    assert w["layer1.0.conv1"] == (16, 8) and w["layer1.0.conv2"] == (12, 6)


@pytest.mark.parametrize("ignore", [["layer1"], ("layer1.0.conv1", "layer1.0.conv2"), ["layer1", "stem"],
                                    ["layer10"]])
def test_ignore_keeps_width(staged, ignore):
    model, x = staged
    _, report = run(model, x, sparsity=0.5, ignore=ignore)
    ignored = {name for name in Staged.WIDTHS if any(name == i or name.startswith(i + ".") for i in ignore)}
    assert staged_widths(report) == expected_staged(0.5, ignored=ignored)
    for g in report.groups:
        if any(p.rsplit(".", 1)[0] in ignored for p in g.producers):
            assert g.masked == 0


def test_ignore_wins_over_layer_sparsity(staged):
    model, x = staged
    _, report = run(model, x, sparsity=0.5, ignore=["layer1"], layer_sparsity={"layer1.0.conv1": 0.75})
    assert staged_widths(report) == expected_staged(0.5, ignored={"layer1.0.conv1", "layer1.0.conv2"})


def test_residual_group_follows_any_producer():
    """A group with several producers: ignoring (or overriding) one of them covers the whole group."""
    torch.manual_seed(5)
    model, x = Residual().eval(), mlp_input()
    _, report = run(model, x, sparsity=0.5)
    assert widths(report)["a"] == widths(report)["b"] == (12, 6)
    _, report = run(model, x, sparsity=0.5, ignore=["b"])
    assert widths(report)["a"] == (12, 12) and widths(report)["c"] == (8, 4)
    _, report = run(model, x, sparsity=0.5, layer_sparsity={"a": 0.25})
    assert widths(report)["b"] == (12, 9) and widths(report)["c"] == (8, 4)


@pytest.mark.parametrize("kw, what", [
    (dict(layer_sparsity={"fc1": 1.0}), r"layer_sparsity\['fc1'\]"),
    (dict(layer_sparsity={"fc1": -0.1}), r"layer_sparsity\['fc1'\]"),
    (dict(layer_sparsity={"fc2": "0.5"}), r"layer_sparsity\['fc2'\]"),
    (dict(layer_sparsity={"fc2": True}), r"layer_sparsity\['fc2'\]"),
    (dict(layer_sparsity={"fc2": float("nan")}), r"layer_sparsity\['fc2'\]"),
    (dict(layer_sparsity={1: 0.5}), r"layer_sparsity"),
    (dict(round_to=0), r"round_to"),
    (dict(round_to=-8), r"round_to"),
    (dict(round_to=8.0), r"round_to"),
    (dict(round_to="8"), r"round_to"),
    (dict(round_to=True), r"round_to"),
    (dict(ignore="fc1"), r"ignore"),
    (dict(sparsity=1.0), r"sparsity"),
])
def test_bad_selection_arguments(kw, what):
    model, x = MLP().eval(), mlp_input()
    kw = {"sparsity": 0.5, **kw}
    digest = model_digest(model)
    with pytest.raises(ValueError, match=what):
        fxprune.prune(model, x, **kw)
    with pytest.raises(ValueError, match=what):
        fxprune.apply_masks(model, x, **kw)
    masked = fxprune.apply_masks(model, x, sparsity=0.25)
    masked_digest = model_digest(masked)
    with pytest.raises(ValueError, match=what):
        fxprune.update_masks(masked, **kw)
    assert model_digest(masked) == masked_digest, "a rejected update_masks modified the masked model"
    assert model_digest(model) == digest


# ------------------------------------------------------------------------------------------------
# round_to


def rounded(width, kept_uniform, r):
    return min(width, -(-kept_uniform // r) * r)


@pytest.mark.parametrize("s", [0.1, 0.3, 0.5, 0.8, 0.95])
def test_round_to_8(s):
    torch.manual_seed(6)
    model, x = Wide().eval(), mlp_input()
    _, report = run(model, x, sparsity=s, round_to=8)
    w = widths(report)
    for name, width in Wide.WIDTHS.items():
        before, after = w[name]
        assert before == width
        assert after % 8 == 0 or after == width, (name, after)
        assert after >= uniform_kept(width, s), "round_to pruned more than the uniform rule"
        assert after < uniform_kept(width, s) + 8
        assert after == rounded(width, uniform_kept(width, s), 8)
    # the masks in force are the removed ones: kept rows are the highest-scoring
    for name, width in Wide.WIDTHS.items():
        n = width - w[name][1]
        key = f"{name}.weight"
        if n:
            assert torch.equal(report.masks[key], lowest(l1_rows(getattr(model, name).weight), n))
        else:
            assert key not in report.masks


def test_round_to_with_layer_sparsity_and_ignore():
    torch.manual_seed(7)
    model, x = Wide().eval(), mlp_input()
    _, report = run(model, x, sparsity=0.5, round_to=8, layer_sparsity={"l4": 0.9}, ignore=["l2"])
    w = widths(report)
    assert w["l2"] == (48, 48)
    assert w["l4"] == (64, rounded(64, uniform_kept(64, 0.9), 8)) == (64, 8)
    assert w["l0"] == (20, 16) and w["l1"] == (30, 16) and w["l3"] == (7, 7)


def test_round_to_1_is_the_uniform_rule():
    torch.manual_seed(8)
    model, x = Wide().eval(), mlp_input()
    _, r1 = run(model, x, sparsity=0.4, round_to=1)
    _, r0 = run(model, x, sparsity=0.4)
    assert widths(r1) == widths(r0)
    assert r1.masks.keys() == r0.masks.keys()
    assert all(torch.equal(r1.masks[k], r0.masks[k]) for k in r0.masks)


# ------------------------------------------------------------------------------------------------
# global_ranking


def two_group_mlp(a_norms, b_norms):
    """fc1 (group A) and fc2 (group B) rows with the given L1 norms; fc3 feeds the output."""
    torch.manual_seed(9)
    model = MLP(widths=(len(a_norms), len(b_norms))).eval()
    set_row_norms(model.fc1, a_norms)
    set_row_norms(model.fc2, b_norms)
    return model


def global_total(report):
    return sum(g.masked for g in prunable(report))


# A's scores are tiny (1e-3) but six of its rows are at 0.31x its mean; B's are large (100) and all
# within 3.5% of its mean. Normalised scores: A = [0.308]*6 + [3.08]*2, B = [0.966 ... 1.034].
TINY_SPREAD = 1e-3 * torch.tensor([1, 1.001, 1.002, 1.003, 1.004, 1.005, 10, 10])
LARGE_FLAT = 100 * (1 + 0.01 * torch.arange(8.0))


def test_global_tiny_group_with_low_relative_scores_loses_more():
    model, x = two_group_mlp(TINY_SPREAD, LARGE_FLAT), mlp_input()
    _, report = run(model, x, sparsity=0.5, global_ranking=True)
    # 16 prunable channels (fc3 feeds the output and does not count): int(16 * 0.5) = 8 pruned:
    # A's six low rows (0.31), then B's two lowest (0.966, 0.976)
    assert torch.equal(report.masks["fc1.weight"], torch.tensor([False] * 6 + [True] * 2))
    assert torch.equal(report.masks["fc2.weight"], torch.tensor([False] * 2 + [True] * 6))
    assert widths(report)["fc1"] == (8, 2) and widths(report)["fc2"] == (8, 6)
    assert global_total(report) == 8


def test_global_tiny_group_with_flat_relative_scores_loses_less():
    """The same weights with the roles swapped: A is now tiny (1e-3) but flat, B large but spread;
    per-group normalisation makes the absolute scale irrelevant, so B loses six and A two."""
    tiny_flat = 1e-3 * (1 + 0.01 * torch.arange(8.0))
    large_spread = 1e5 * TINY_SPREAD
    model, x = two_group_mlp(tiny_flat, large_spread), mlp_input()
    _, report = run(model, x, sparsity=0.5, global_ranking=True)
    assert torch.equal(report.masks["fc1.weight"], torch.tensor([False] * 2 + [True] * 6))
    assert torch.equal(report.masks["fc2.weight"], torch.tensor([False] * 6 + [True] * 2))
    assert global_total(report) == 8
    # the uniform rule, for contrast: four each
    _, uniform = run(model, x, sparsity=0.5)
    assert widths(uniform)["fc1"] == (8, 4) and widths(uniform)["fc2"] == (8, 4)


def test_global_keeps_one_channel_per_group():
    """A has two rows near its mean (0.995, 1.005); B has five rows at 0.06x its mean and one at 5.7x.
    int(8 * 0.875) = 7 would take B's five, A's two; A must keep one, B must keep one: 6 pruned."""
    a = torch.tensor([1.0, 1.01])
    b = torch.tensor([0.1, 0.101, 0.102, 0.103, 0.104, 10.0])
    model, x = two_group_mlp(a, b), mlp_input()
    _, report = run(model, x, sparsity=0.875, global_ranking=True)
    assert torch.equal(report.masks["fc1.weight"], torch.tensor([False, True]))
    assert torch.equal(report.masks["fc2.weight"], torch.tensor([False] * 5 + [True]))
    assert widths(report)["fc1"] == (2, 1) and widths(report)["fc2"] == (6, 1)
    assert global_total(report) == 6


def normalised_scores(model, report):
    """{producer: score / mean score} per prunable single-producer group, by row L1 norm."""
    out = {}
    for g in prunable(report):
        (producer,) = g.producers
        scores = l1_rows(model.get_submodule(producer.rsplit(".", 1)[0]).weight).double()
        out[producer] = scores / scores.mean()
    return out


@pytest.mark.parametrize("s", [0.2, 0.5, 0.8])
def test_global_random_weights(staged, s):
    """On random weights: exactly int(total * s) pruned over the prunable groups, groups lose different
    fractions, each keeps one, and no pruned channel scores above a kept one (after normalisation),
    except that a group's last channel always stays."""
    model, x = staged
    _, report = run(model, x, sparsity=s, global_ranking=True)
    groups = prunable(report)
    assert len(groups) == len(Staged.WIDTHS)
    total = sum(g.width_before for g in groups)
    assert global_total(report) == int(total * s)
    assert all(g.width_after >= 1 for g in groups)
    assert all(g.width_after == g.width_before - g.masked for g in groups)
    fractions = {round(g.masked / g.width_before, 6) for g in groups}
    assert len(fractions) > 1, "global ranking pruned every group by the same fraction"
    scores = normalised_scores(model, report)
    pruned_scores, kept_scores = [], []
    for producer, sc in scores.items():
        keep = report.masks.get(producer, torch.ones(len(sc), dtype=torch.bool))
        pruned_scores += sc[~keep].tolist()
        if int(keep.sum()) > 1:   # a group's last channel may score below pruned ones elsewhere
            kept_scores += sc[keep].tolist()
    if pruned_scores and kept_scores:
        assert max(pruned_scores) <= min(kept_scores)


def test_global_ignored_groups_do_not_count(staged):
    model, x = staged
    _, report = run(model, x, sparsity=0.5, global_ranking=True, ignore=["layer2"])
    w = staged_widths(report)
    assert w["layer2.0.conv1"] == (20, 20) and w["layer2.0.conv2"] == (24, 24)
    counted = sum(width for name, width in Staged.WIDTHS.items() if not name.startswith("layer2."))
    assert global_total(report) == int(counted * 0.5)


def test_global_with_round_to(staged):
    model, x = staged
    _, plain = run(model, x, sparsity=0.5, global_ranking=True)
    _, report = run(model, x, sparsity=0.5, global_ranking=True, round_to=8)
    before = staged_widths(plain)
    for name, (width, after) in staged_widths(report).items():
        assert after % 8 == 0 or after == width, (name, after)
        assert after == rounded(width, before[name][1], 8)


# ------------------------------------------------------------------------------------------------
# apply_masks / update_masks take the same keywords


SELECTIONS = [
    dict(sparsity=0.5),
    dict(sparsity=0.3, layer_sparsity={"layer1": 0.75, "layer10": 0.0}),
    dict(sparsity=0.5, ignore=["layer2", "stem"]),
    dict(sparsity=0.4, round_to=8),
    dict(sparsity=0.5, global_ranking=True),
    dict(sparsity=0.6, global_ranking=True, round_to=4, ignore=["layer10"]),
]


def same_masks(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("kw", SELECTIONS, ids=lambda kw: "-".join(kw))
def test_apply_masks_same_selection_as_prune(staged, kw):
    model, x = staged
    digest = model_digest(model)
    pruned, report = run(model, x, **kw)
    masked = fxprune.apply_masks(model, x, **kw)
    assert model_digest(model) == digest
    # the masked model carries the same masks, and prune() of it is the same pruned model
    again = fxprune.prune(masked, x)
    assert same_masks(again.meta["fxprune"].masks, report.masks)
    masked.eval()
    with torch.no_grad():
        for seed in (11, 12):
            xi = fresh_like(x, seed=seed)
            assert report.compare(masked(*xi), pruned(*xi)) <= 1e-5
            assert report.compare(masked(*xi), again(*xi)) <= 1e-5


@pytest.mark.parametrize("kw", SELECTIONS, ids=lambda kw: "-".join(kw))
def test_update_masks_same_selection_as_prune(staged, kw):
    """apply_masks at a low sparsity, then update_masks with the selection: update_masks scores the
    masked weights, so its choice is prune()'s on a copy of the model whose masked rows are zero."""
    model, x = staged
    masked = fxprune.apply_masks(model, x, sparsity=0.1)
    first = fxprune.prune(masked, x).meta["fxprune"].masks
    zeroed = copy.deepcopy(model)
    with torch.no_grad():
        for key, keep in first.items():
            zeroed.get_submodule(key.rsplit(".", 1)[0]).weight[~keep] = 0
    new = fxprune.update_masks(masked, **kw)
    _, report = run(zeroed, x, **kw)
    assert same_masks(new, report.masks)
    for key, keep in first.items():       # a group that prunes at least as many keeps the old choice
        if key in new and int((~new[key]).sum()) >= int((~keep).sum()):
            assert not bool((new[key] & ~keep).any())
    # the masked model now computes the masked model of the new masks (on the original weights)
    reference = fxprune.apply_masks(model, x, masks=new)
    masked.eval()
    reference.eval()
    with torch.no_grad():
        xi = fresh_like(x, seed=13)
        assert torch.allclose(masked(*xi), reference(*xi), rtol=1e-5, atol=1e-6)
    assert_pruned_equals_masked(model, x, fxprune.prune(masked, x))


def test_update_masks_round_to_8():
    torch.manual_seed(10)
    model, x = Wide().eval(), mlp_input()
    masked = fxprune.apply_masks(model, x, sparsity=0.2)
    new = fxprune.update_masks(masked, sparsity=0.5, round_to=8)
    for name, width in Wide.WIDTHS.items():
        kept = int(new[f"{name}.weight"].sum()) if f"{name}.weight" in new else width
        assert kept % 8 == 0 or kept == width
        assert kept == rounded(width, uniform_kept(width, 0.5), 8)
    pruned = fxprune.prune(masked, x)
    assert same_masks(pruned.meta["fxprune"].masks, new)
    assert pruned.l4.out_features == 32 and pruned.l0.out_features == 16
