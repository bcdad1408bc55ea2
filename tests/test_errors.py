"""Bad input gives a clear error naming the culprit, and no call ever modifies the model passed in."""
import inspect

import pytest
import torch
import torch.fx as fx
import torch.nn as nn
from torch.nn.utils import parametrizations, parametrize

import fxprune
from conftest import model_digest


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: intra-op threads only add OpenMP barriers (slow on a loaded 2-core machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(6, 10)
        self.fc2 = nn.Linear(10, 8)
        self.fc3 = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


class Residual(nn.Module):
    """fc_a and fc_b are added: their output channels are coupled."""

    def __init__(self):
        super().__init__()
        self.fc_a = nn.Linear(6, 8)
        self.fc_b = nn.Linear(6, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(torch.relu(self.fc_a(x) + self.fc_b(x)))


class Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 6)

    def forward(self, x):
        if x.sum() > 0:
            return self.fc(x)
        return -x


class RNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(6, 8, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        out, _ = self.lstm(x)
        return self.head(out[:, -1])


X = torch.randn(4, 6)


def keep(n, pruned=(0,)):
    k = torch.ones(n, dtype=torch.bool)
    k[list(pruned)] = False
    return k


def make(kind):
    """The same MLP as a module, a GraphModule, fxprune's masked model and a weight-normed module."""
    torch.manual_seed(0)
    model = MLP()
    if kind == "graphmodule":
        return fx.symbolic_trace(model)
    if kind == "masked":
        return fxprune.apply_masks(model, (X,), masks={"fc1.weight": keep(10, [2, 7])})
    if kind == "weight_norm":
        parametrizations.weight_norm(model.fc2)
    return model


class Snapshot:
    """model_digest plus the model's output: the model is the same and still computes the same."""

    def __init__(self, model, inputs):
        self.model, self.inputs = model, inputs
        self.digest = model_digest(model)
        self.out = model(*inputs).detach()  # grad enabled, as a user runs it

    def assert_unchanged(self):
        assert model_digest(self.model) == self.digest, "the model passed in was modified"
        out = self.model(*self.inputs).detach()  # raises if its modules were broken
        assert torch.equal(out, self.out), "the model passed in computes something else now"


# -- the error cases on the MLP: (call, exception, message regex) ------------------------------------

ERRORS = {
    "sparsity-negative": (lambda m: fxprune.prune(m, (X,), sparsity=-0.1),
                          ValueError, r"sparsity must be a number in \[0, 1\), got -0\.1"),
    "sparsity-one": (lambda m: fxprune.prune(m, (X,), sparsity=1.0),
                     ValueError, r"sparsity .*\[0, 1\).*got 1\.0"),
    "sparsity-above-one": (lambda m: fxprune.prune(m, (X,), sparsity=1.5),
                           ValueError, r"sparsity .*got 1\.5"),
    "sparsity-string": (lambda m: fxprune.prune(m, (X,), sparsity="0.5"),
                        ValueError, r"sparsity .*got '0\.5'"),
    "sparsity-bool": (lambda m: fxprune.prune(m, (X,), sparsity=True),
                      ValueError, r"sparsity .*got True"),
    "sparsity-nan": (lambda m: fxprune.prune(m, (X,), sparsity=float("nan")),
                     ValueError, r"sparsity .*got nan"),
    "apply-masks-sparsity": (lambda m: fxprune.apply_masks(m, (X,), sparsity=1.0),
                             ValueError, r"sparsity .*got 1\.0"),
    "masks-and-sparsity": (lambda m: fxprune.prune(m, (X,), sparsity=0.5, masks={"fc1.weight": keep(10)}),
                           ValueError, r"either masks= or sparsity="),
    "example-inputs-none": (lambda m: fxprune.prune(m, None, sparsity=0.5),
                            ValueError, r"example_inputs is required"),
    "example-inputs-missing": (lambda m: fxprune.prune(m, sparsity=0.5),   # optional for ExportedPrograms
                               ValueError, r"example_inputs is required"),
    "example-inputs-str": (lambda m: fxprune.prune(m, "x", sparsity=0.5),
                           ValueError, r"example_inputs must be a tensor or a tuple"),
    "masks-not-a-dict": (lambda m: fxprune.prune(m, (X,), masks=[keep(10)]),
                         ValueError, r"masks must be a dict"),
    "mask-too-short": (lambda m: fxprune.prune(m, (X,), masks={"fc1.weight": keep(9)}),
                       ValueError, r"mask 'fc1\.weight' has shape \(9,\); expected length 10"),
    "mask-too-long": (lambda m: fxprune.prune(m, (X,), masks={"fc2.weight": keep(10)}),
                      ValueError, r"mask 'fc2\.weight' has shape \(10,\); expected length 8"),
    "mask-2d": (lambda m: fxprune.prune(m, (X,), masks={"fc1.weight": keep(10).reshape(2, 5)}),
                ValueError, r"mask 'fc1\.weight' has shape \(2, 5\)"),
    "mask-float": (lambda m: fxprune.prune(m, (X,), masks={"fc1.weight": keep(10).float()}),
                   ValueError, r"mask 'fc1\.weight' must have dtype torch\.bool, got torch\.float32"),
    "mask-int": (lambda m: fxprune.prune(m, (X,), masks={"fc1.weight": keep(10).long()}),
                 ValueError, r"mask 'fc1\.weight' must have dtype torch\.bool, got torch\.int64"),
    "mask-list": (lambda m: fxprune.prune(m, (X,), masks={"fc1.weight": keep(10).tolist()}),
                  ValueError, r"mask 'fc1\.weight' must be a torch\.bool tensor, got list"),
    "mask-typo": (lambda m: fxprune.prune(m, (X,), masks={"fc1.weigth": keep(10)}),
                  ValueError, r"'fc1\.weigth' is not a prunable weight.*did you mean 'fc1\.weight'"),
    "mask-bias-key": (lambda m: fxprune.prune(m, (X,), masks={"fc1.bias": keep(10)}),
                      ValueError, r"'fc1\.bias' is not a prunable weight.*'fc1\.weight'"),
    "mask-all-false": (lambda m: fxprune.prune(m, (X,), masks={"fc2.weight": torch.zeros(8, dtype=torch.bool)}),
                       ValueError, r"mask 'fc2\.weight' prunes every row"),
    "apply-masks-bad-mask": (lambda m: fxprune.apply_masks(m, (X,), masks={"fc2.weight": keep(8).int()}),
                             ValueError, r"mask 'fc2\.weight' must have dtype torch\.bool"),
    "criterion": (lambda m: fxprune.prune(m, (X,), sparsity=0.5, criterion="l3"),
                  ValueError, r"unknown criterion 'l3'"),
    "inputs-wrong-shape": (lambda m: fxprune.prune(m, (torch.randn(4, 7),), sparsity=0.5),
                           ValueError, r"example_inputs"),
    "inputs-too-many": (lambda m: fxprune.prune(m, (X, X), sparsity=0.5),
                        ValueError, r"example_inputs has 2"),
}
KINDS = ("module", "graphmodule", "masked", "weight_norm")
def error_params():
    for kind in KINDS:
        for case in ERRORS:
            yield pytest.param(kind, case, id=f"{kind}-{case}")


@pytest.mark.parametrize("kind,case", list(error_params()))
def test_error_is_clear_and_model_unchanged(kind, case):
    call, exc, message = ERRORS[case]
    model = make(kind)
    snap = Snapshot(model, (X,))
    with pytest.raises(exc, match=message):
        call(model)
    snap.assert_unchanged()


def test_coupled_masks_that_disagree():
    model = Residual()
    snap = Snapshot(model, (X,))
    with pytest.raises(ValueError, match=r"'fc_a\.weight' and 'fc_b\.weight' disagree on coupled channels"):
        fxprune.prune(model, (X,), masks={"fc_a.weight": keep(8, [0]), "fc_b.weight": keep(8, [1])})
    snap.assert_unchanged()
    gm = fx.symbolic_trace(model)
    snap = Snapshot(gm, (X,))
    with pytest.raises(ValueError, match=r"disagree on coupled channels"):
        fxprune.apply_masks(gm, (X,), masks={"fc_a.weight": keep(8, [0]), "fc_b.weight": keep(8, [1])})
    snap.assert_unchanged()
    # agreeing masks, or one of the two, prune both producers
    for masks in ({"fc_a.weight": keep(8, [3])}, {"fc_a.weight": keep(8, [3]), "fc_b.weight": keep(8, [3])}):
        pruned = fxprune.prune(model, (X,), masks=masks)
        assert pruned.fc_a.out_features == pruned.fc_b.out_features == pruned.head.in_features == 7
    snap.assert_unchanged()


def test_lstm_mask_errors():
    model, x = RNN(), torch.randn(2, 5, 6)
    snap = Snapshot(model, (x,))
    with pytest.raises(ValueError, match=r"'lstm\.weight_ih_l0' has shape \(10,\); expected length "
                                         r"32 \(4 gates x 8 units\) or 8"):
        fxprune.prune(model, (x,), masks={"lstm.weight_ih_l0": keep(10)})
    with pytest.raises(ValueError, match=r"'lstm\.weight_ih_l0'.*4 gates must keep the same units"):
        rows = keep(32, [0, 8, 16])  # unit 0 pruned in three gates, kept in the fourth
        fxprune.prune(model, (x,), masks={"lstm.weight_ih_l0": rows})
    with pytest.raises(ValueError, match=r"disagree"):  # two tensors of one layer: the same units
        fxprune.prune(model, (x,), masks={"lstm.weight_ih_l0": keep(8, [1]), "lstm.weight_hh_l0": keep(8, [2])})
    with pytest.raises(ValueError, match=r"did you mean 'lstm\.weight_ih_l0'"):
        fxprune.prune(model, (x,), masks={"lstm.weight_ih_10": keep(8)})
    snap.assert_unchanged()


def test_untraceable_model_names_file_and_line():
    model = Untraceable()
    lines, start = inspect.getsourcelines(Untraceable.forward)
    lineno = start + next(i for i, line in enumerate(lines) if "if x.sum() > 0:" in line)
    snap = Snapshot(model, (torch.randn(2, 6),))
    for call in (lambda: fxprune.prune(model, (torch.randn(2, 6),), sparsity=0.5),
                 lambda: fxprune.apply_masks(model, (torch.randn(2, 6),), sparsity=0.5),
                 lambda: fxprune.find_patterns(model, (torch.randn(2, 6),))):
        with pytest.raises(fxprune.CaptureError) as info:
            call()
        msg = str(info.value)
        assert "Untraceable" in msg
        assert f"test_errors.py:{lineno}" in msg
        assert "if x.sum() > 0:" in msg
    snap.assert_unchanged()


def test_not_a_module():
    with pytest.raises(TypeError, match=r"nn\.Module"):
        fxprune.prune(lambda x: x, (X,), sparsity=0.5)


def test_update_masks_needs_a_masked_model():
    model = MLP()
    snap = Snapshot(model, (X,))
    with pytest.raises(ValueError, match=r"fxprune\.apply_masks"):
        fxprune.update_masks(model, sparsity=0.5)
    snap.assert_unchanged()


def test_update_masks_bad_sparsity_leaves_masked_model():
    masked = make("masked")
    snap = Snapshot(masked, (X,))
    with pytest.raises(ValueError, match=r"sparsity .*got 1\.5"):
        fxprune.update_masks(masked, sparsity=1.5)
    snap.assert_unchanged()


def test_nothing_to_prune():
    model = MLP()
    snap = Snapshot(model, (X,))
    with pytest.raises(ValueError, match=r"nothing to prune: give sparsity= or masks="):
        fxprune.prune(model, (X,))
    snap.assert_unchanged()


def test_pass_needs_example_inputs():
    with pytest.raises(TypeError, match=r"example_inputs"):
        fxprune.PrunePass(sparsity=0.5)


# -- successful calls never modify the model either -------------------------------------------------

SUCCESS = {
    "prune-sparsity": lambda m: fxprune.prune(m, (X,), sparsity=0.5),
    "prune-sparsity-keep-bias": lambda m: fxprune.prune(m, (X,), sparsity=0.5, prune_bias=False),
    "prune-masks": lambda m: fxprune.prune(m, (X,), masks={"fc2.weight": keep(8, [1, 2, 3])}),
    "apply-masks": lambda m: fxprune.apply_masks(m, (X,), sparsity=0.5),
    "find-patterns": lambda m: fxprune.find_patterns(m, (X,)),
    "prune-pass": lambda m: fxprune.PrunePass(example_inputs=(X,), sparsity=0.5)(
        m if isinstance(m, fx.GraphModule) else fx.symbolic_trace(m)),
}


def success_params():
    for kind in KINDS:
        for case in SUCCESS:
            yield pytest.param(kind, case, id=f"{kind}-{case}")


@pytest.mark.parametrize("kind,case", list(success_params()))
def test_success_leaves_model_unchanged(kind, case):
    model = make(kind)
    snap = Snapshot(model, (X,))
    result = SUCCESS[case](model)
    assert result is not model
    snap.assert_unchanged()


class Positive(nn.Module):
    """A user's own parametrization."""

    def forward(self, b):
        return b.abs()


def test_masked_model_with_a_user_parametrization_on_another_tensor():
    """Regression: removing fc1.weight's RowMask from the private copy, while fc1.bias keeps a user
    parametrization, used to edit the Parametrized* class the copy shared with the caller's model."""
    masked = fxprune.apply_masks(MLP(), (X,), masks={"fc1.weight": keep(10, [2, 7])}, prune_bias=False)
    parametrize.register_parametrization(masked.fc1, "bias", Positive())
    snap = Snapshot(masked, (X,))
    pruned = fxprune.prune(masked, (X,))
    assert pruned.fc1.out_features == 8
    snap.assert_unchanged()


@pytest.mark.parametrize("kind", ["module", "graphmodule"])
def test_repeated_calls_give_the_same_result(kind):
    """Nothing is cached on or taken from the model between calls."""
    model = make(kind)
    a = fxprune.prune(model, (X,), sparsity=0.5)
    b = fxprune.prune(model, (X,), sparsity=0.5)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
