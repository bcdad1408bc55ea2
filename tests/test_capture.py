"""capture never changes the user's model, also when it carries parametrizations of its own."""
import pytest
import torch
import torch.nn as nn
from torch.ao.pruning._experimental.pruner import BaseStructuredSparsifier
from torch.nn.utils import parametrize
from torch.testing._internal import common_pruning as cp

import fxprune
from conftest import model_digest, prune_both


class Scale(nn.Module):
    def forward(self, w):
        return 2 * w


class FirstHalfOfEachGate(BaseStructuredSparsifier):
    def update_mask(self, module, tensor_name, **kwargs):
        mask = getattr(module.parametrizations, tensor_name)[0].mask
        n = len(mask) // 4
        for g in range(4):
            mask[g * n + n // 2:(g + 1) * n] = False


def test_torchao_masks_next_to_a_user_parametrization():
    """torch.ao masks on layer 0, the user's own parametrization on layer 1 of the same LSTM."""
    m = cp.LSTMLinearModel(8, 8, 8, 2).eval()
    pruner = FirstHalfOfEachGate({})
    pruner.prepare(m, [{"tensor_fqn": "lstm.weight_ih_l0"}, {"tensor_fqn": "lstm.weight_hh_l0"}])
    pruner.enable_mask_update = True
    pruner.step()
    parametrize.register_parametrization(m.lstm, "weight_hh_l1", Scale())
    x = torch.randn(5, 8)
    with torch.no_grad():
        before = m(x)[0]
    digest = model_digest(m)
    pruned = fxprune.prune(m, (x,), prune_outputs=True)
    assert model_digest(m) == digest
    with torch.no_grad():
        assert torch.equal(m(x)[0], before)
    report = pruned.meta["fxprune"]
    assert pruned.lstm.hidden_size == 8  # layer 1 is not masked, so layer 0 keeps 8 units too
    assert report.rel_diff <= 1e-5
    # the user's parametrization is part of the model: still in force in the pruned one
    assert parametrize.is_parametrized(pruned.lstm, "weight_hh_l1")


class Upsampled(nn.Module):
    def __init__(self, mode, **kw):
        super().__init__()
        self.a, self.b, self.mode, self.kw = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 3, padding=1), mode, kw

    def forward(self, x):
        return self.b(torch.nn.functional.interpolate(torch.relu(self.a(x)), mode=self.mode, **self.kw))


def _pruned_program_equals_masked(model, x, program):
    """``program`` (model exported at x) pruned at 0.5 without barriers; equal to the masked model on
    another input of x's shape. Returns the pruned program."""
    pruned = fxprune.prune(program, sparsity=0.5)
    report = pruned.graph_module.meta["fxprune"]
    assert not report.barriers
    masked = fxprune.apply_masks(model, (x,), masks=report.masks)
    y = torch.randn(x.shape)
    with torch.no_grad():
        assert float((masked(y) - pruned.module()(y)).abs().max()) <= 1e-5 * float(masked(y).abs().max())
    return pruned


@pytest.mark.parametrize("mode, kw", [("bilinear", {"scale_factor": 2.0, "align_corners": False}),
                                      ("nearest", {"size": (9, 7)}),
                                      ("bicubic", {"scale_factor": 1.5, "align_corners": True})])
def test_exported_upsampling_is_interpolate(mode, kw):
    """aten.upsample_<mode>.vec in an exported program is F.interpolate: channels pass through it."""
    torch.manual_seed(0)
    model = Upsampled(mode, **kw).eval()
    x = torch.randn(2, 3, 6, 5)
    pruned = _pruned_program_equals_masked(model, x, torch.export.export(model, (x,)))
    assert pruned.state_dict["a.weight"].shape[0] == 4


class ComplementGate(nn.Module):
    """ConViT's gate: (1 - sigmoid(g)) * a + sigmoid(g) * b, per channel."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(3, 8, 1), nn.Conv2d(3, 8, 1), nn.Conv2d(8, 2, 1)
        self.g = nn.Parameter(torch.randn(1, 8, 1, 1))

    def forward(self, x):
        return self.c((1.0 - torch.sigmoid(self.g)) * self.a(x) + torch.sigmoid(self.g) * self.b(x))


def test_exported_rsub_is_a_subtraction():
    """aten.rsub.Scalar(x, 1) in an exported program is 1 - x: the gate is sliced with the channels."""
    torch.manual_seed(0)
    model = ComplementGate().eval()
    x = torch.randn(2, 3, 5, 5)
    program = torch.export.export(model, (x,))
    assert any(n.target is torch.ops.aten.rsub.Scalar for n in program.graph.nodes)
    pruned = _pruned_program_equals_masked(model, x, program)
    assert pruned.state_dict["g"].shape[1] == 4


class RefersToItsModules(nn.Module):
    """Picks its implementation in __init__ (timm's FasterNet: ``self.forward = self.forward_split_cat``)
    and keeps its blocks in a plain list too: the captured copy must call its own modules, not the
    caller's (else symbolic tracing fails and the export fallback takes over)."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 1), nn.Conv2d(8, 2, 1)
        self.order = [self.a, self.b]
        self.impl = self.forward_listed

    def forward(self, x):
        return self.impl(x)

    def forward_listed(self, x):
        for m in self.order:
            x = torch.relu(m(x))
        return self.c(x)


def test_copy_rebinds_methods_and_module_references():
    torch.manual_seed(0)
    model = RefersToItsModules().eval()
    x = torch.randn(2, 3, 5, 5)
    pruned, _ = prune_both(model, x)
    assert pruned.meta["fxprune"].capture.startswith("symbolic")
    assert pruned.a.out_channels == pruned.b.out_channels == 4
    assert model.order[0] is model.a and model.impl.__self__ is model
