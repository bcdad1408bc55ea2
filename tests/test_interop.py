"""Masks that come with the model: torch.ao's structured pruners (FakeStructuredSparsity parametrizations
and bias hooks) and torch.nn.utils.prune structured masks."""
import copy

import pytest
import torch
import torch.nn as nn
from torch.ao.pruning._experimental.pruner import FakeStructuredSparsity, FPGMPruner, LSTMSaliencyPruner, SaliencyPruner
from torch.nn.utils import prune as nn_prune
from torch.testing._internal import common_pruning as cp

import fxprune
from conftest import RTOL, assert_pruned_equals_masked, fresh_like, model_digest


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: intra-op threads only add OpenMP barriers (slow on a loaded 2-core machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# (model class, input shape, tensors torch.ao prunes): every producer but the last
AO_CASES = {
    "LinearBias": (cp.LinearBias, (4, 7), ["seq.0.weight", "seq.1.weight", "seq.2.weight"]),
    "LinearActivation": (cp.LinearActivation, (4, 7), ["seq.0.weight", "seq.2.weight", "seq.4.weight",
                                                       "linear1.weight"]),
    "Conv2dActivation": (cp.Conv2dActivation, (2, 1, 12, 12), ["seq.0.weight", "seq.2.weight", "seq.4.weight",
                                                               "conv2d1.weight"]),
    "Conv2dPoolFlatten": (cp.Conv2dPoolFlatten, (2, 1, 8, 8), ["seq.0.weight", "seq.3.weight",
                                                               "conv2d1.weight", "conv2d2.weight"]),
}


def ao_masks(model) -> dict:
    """{tensor fqn: mask} read from the FakeStructuredSparsity parametrizations."""
    out = {}
    for name, mod in model.named_modules():
        for pname, plist in getattr(mod, "parametrizations", {}).items():
            for p in plist:
                if isinstance(p, FakeStructuredSparsity):
                    out[f"{name}.{pname}" if name else pname] = p.mask.detach().clone()
    return out


def state_equal(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def run(model, inputs):
    """Outputs, run as a user would (grad enabled): a no_grad forward would also turn the weights that
    torch.nn.utils.prune / parametrized LSTMs cache into leaves, which hides what prune() must cope with."""
    out = [model(*x) for x in inputs]
    return [tuple(t.detach() for t in o) if isinstance(o, tuple) else o.detach() for o in out]


def prepared(case, pruner_cls):
    cls, shape, fqns = AO_CASES[case]
    torch.manual_seed(0)
    model = cls().eval()
    original = copy.deepcopy(model)
    pruner = SaliencyPruner({}) if pruner_cls is SaliencyPruner else FPGMPruner(0.5)
    pruner.prepare(model, [{"tensor_fqn": f, "sparsity_level": 0.5} for f in fqns])
    pruner.step()
    return original, model, torch.randn(shape)


@pytest.mark.parametrize("pruner_cls", [SaliencyPruner, FPGMPruner], ids=lambda c: c.__name__)
@pytest.mark.parametrize("case", list(AO_CASES))
def test_torch_ao_prepared_model(case, pruner_cls):
    original, model, x = prepared(case, pruner_cls)
    masks = ao_masks(model)
    assert masks and any(not bool(m.all()) for m in masks.values())
    fresh = [fresh_like((x,), seed=s) for s in range(3)]
    ao_out = run(model, fresh)  # torch.ao's masked model
    digest = model_digest(model)

    from_model = fxprune.prune(model, (x,))
    explicit = fxprune.prune(model, (x,), masks=masks)
    on_original = fxprune.prune(original, (x,), masks=masks)

    # the prepared model is untouched, and still computes what it computed
    assert model_digest(model) == digest
    after = run(model, fresh)
    assert all(torch.equal(a, b) for a, b in zip(after, ao_out))

    report = from_model.meta["fxprune"]
    assert report.params_after < report.params_before
    assert report.masks.keys() == {k for k, m in masks.items() if not bool(m.all())}
    assert all(torch.equal(report.masks[k], masks[k]) for k in report.masks)
    assert state_equal(from_model, explicit)
    assert state_equal(from_model, on_original)
    assert "_bias" not in dict(from_model.named_parameters())  # torch.ao's moved bias is a bias again
    for xx, want in zip(fresh, ao_out):
        with torch.no_grad():
            got = from_model(*xx)
            assert torch.equal(got, explicit(*xx))
        assert report.compare(want, got) <= RTOL


def test_torch_ao_prune_bias_false_matches_explicit():
    original, model, x = prepared("LinearBias", SaliencyPruner)
    a = fxprune.prune(model, (x,), prune_bias=False)
    b = fxprune.prune(original, (x,), masks=ao_masks(model), prune_bias=False)
    assert state_equal(a, b)


def test_torch_ao_lstm_with_agreeing_gates():
    """torch.ao masks LSTM weight rows only (its gate biases stay, so a masked unit is not 0 there); fxprune
    masks a unit's biases with it, as torch.ao's own convert (which slices the biases) does. The pruned
    LSTM is the same as with the masks given explicitly, and equals fxprune's masked model."""
    torch.manual_seed(0)
    model, x = cp.LSTMLinearModel(8, 16, 4, 2).eval(), torch.randn(5, 3, 8)
    original = copy.deepcopy(model)
    pruner = LSTMSaliencyPruner({})
    fqns = ["lstm.weight_ih_l0", "lstm.weight_hh_l0", "lstm.weight_ih_l1", "lstm.weight_hh_l1"]
    pruner.prepare(model, [{"tensor_fqn": f, "sparsity_level": 0.25} for f in fqns])
    pruner.step()
    keep = torch.ones(16, dtype=torch.bool)
    keep[[0, 3, 9, 12]] = False
    for p in ao_masks_params(model):  # a structured choice: the same units in all four gates
        p.mask.copy_(keep.repeat(4))
    fresh = [fresh_like((x,), seed=s) for s in range(2)]
    ao_out = run(model, fresh)  # with grad: the LSTM's cached flat weights are graph-attached
    digest = model_digest(model)
    pruned = fxprune.prune(model, (x,), prune_outputs=True)
    assert model_digest(model) == digest
    assert all(torch.equal(a[0], b[0]) for a, b in zip(run(model, fresh), ao_out))
    assert pruned.get_submodule("lstm").hidden_size == 12
    assert pruned.get_submodule("linear").in_features == 12
    report = pruned.meta["fxprune"]
    assert report.masks.keys() == {"lstm.weight_ih_l0", "lstm.weight_ih_l1"}
    explicit = fxprune.prune(original, (x,), masks=report.masks, prune_outputs=True)
    assert state_equal(pruned, explicit)
    assert_pruned_equals_masked(original, (x,), pruned, prune_outputs=True)


def ao_masks_params(model):
    return [p for mod in model.modules() for plist in getattr(mod, "parametrizations", {}).values()
            for p in plist if isinstance(p, FakeStructuredSparsity)]


def test_torch_ao_lstm_saliency_pruner_gates_disagree():
    """LSTMSaliencyPruner picks units per gate: not structured over hidden units, a clear error."""
    torch.manual_seed(0)
    model, x = cp.LSTMLinearModel(8, 16, 4, 1).eval(), torch.randn(5, 3, 8)
    pruner = LSTMSaliencyPruner({})
    pruner.prepare(model, [{"tensor_fqn": "lstm.weight_ih_l0", "sparsity_level": 0.5}])
    pruner.step()
    digest, out = model_digest(model), run(model, [(x,)])
    with pytest.raises(ValueError, match=r"'lstm\.weight_ih_l0'.*gates must keep the same units"):
        fxprune.prune(model, (x,), prune_outputs=True)
    assert model_digest(model) == digest
    assert torch.equal(run(model, [(x,)])[0][0], out[0][0])


# -- torch.nn.utils.prune ------------------------------------------------------------------------------

def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 10), nn.ReLU(), nn.Linear(10, 8), nn.Tanh(), nn.Linear(8, 3))


def hooked_mlp(method):
    model = mlp()
    plain = copy.deepcopy(model)
    method(model)
    return plain, model


def ln_structured(model):
    nn_prune.ln_structured(model[0], "weight", amount=0.4, n=1, dim=0)
    nn_prune.ln_structured(model[2], "weight", amount=0.5, n=2, dim=0)


def test_nn_utils_prune_ln_structured():
    plain, model = hooked_mlp(ln_structured)
    x = torch.randn(5, 6)
    masks = {"0.weight": model[0].weight_mask[:, 0].bool(), "2.weight": model[2].weight_mask[:, 0].bool()}
    assert int((~masks["0.weight"]).sum()) == 4 and int((~masks["2.weight"]).sum()) == 4
    fresh = [fresh_like((x,), seed=s) for s in range(3)]
    hooked_out = run(model, fresh)
    digest = model_digest(model)

    for prune_bias in (True, False):
        from_model = fxprune.prune(model, (x,), prune_bias=prune_bias)
        explicit = fxprune.prune(plain, (x,), masks=masks, prune_bias=prune_bias)
        report = from_model.meta["fxprune"]
        assert from_model.get_submodule("0").out_features == 6
        assert from_model.get_submodule("2").out_features == 4
        assert report.masks.keys() == masks.keys()
        assert all(torch.equal(report.masks[k], masks[k]) for k in masks)
        assert state_equal(from_model, explicit)
        if not prune_bias:
            # torch.nn.utils.prune keeps the biases: so does prune_bias=False (folded into the consumers)
            for xx, want in zip(fresh, hooked_out):
                with torch.no_grad():
                    assert report.compare(want, from_model(*xx)) <= RTOL

    assert model_digest(model) == digest
    assert hasattr(model[0], "weight_orig") and hasattr(model[0], "weight_mask")  # still pruned by torch
    after = run(model, fresh)
    assert all(torch.equal(a, b) for a, b in zip(after, hooked_out))


@pytest.mark.parametrize("method", [
    lambda m: nn_prune.l1_unstructured(m[0], "weight", amount=0.3),
    lambda m: nn_prune.random_unstructured(m[2], "weight", amount=0.5),
    lambda m: nn_prune.ln_structured(m[2], "weight", amount=0.5, n=1, dim=1),  # input columns
], ids=["l1_unstructured", "random_unstructured", "ln_structured-dim1"])
def test_nn_utils_prune_unstructured_is_a_clear_error(method):
    _, model = hooked_mlp(method)
    x = torch.randn(5, 6)
    digest, out = model_digest(model), run(model, [(x,)])
    with pytest.raises(ValueError, match=r"weight: torch\.nn\.utils\.prune mask is not structured over output "
                                         r"rows.*ln_structured\(\.\.\., dim=0\)"):
        fxprune.prune(model, (x,))
    assert model_digest(model) == digest
    assert torch.equal(run(model, [(x,)])[0], out[0])


class WeightNormedMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(6, 10), nn.Linear(10, 12), nn.Linear(12, 3)
        nn.utils.parametrizations.weight_norm(self.fc2)

    def forward(self, x):
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def test_weight_normed_linear_prunes_its_output_rows_exactly():
    """weight_norm's weight is computed at each read (g * v / |v|), so there is no tensor to mask where it
    is read: its mask joins the parametrizations. The group is pruned, not kept whole by the
    verification guard, and the pruned model equals the masked one."""
    import warnings
    from conftest import prune_both
    torch.manual_seed(0)
    model = WeightNormedMLP().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # the guard warns when it keeps a group
        pruned = prune_both(model, torch.randn(4, 6))
    for p in pruned:
        assert p.fc2.out_features == p.fc3.in_features == 6
        assert p.meta["fxprune"].exact
    assert nn.utils.parametrize.is_parametrized(model.fc2, "weight")
