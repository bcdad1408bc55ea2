"""Fine-tuning the masked model: masks stay in force under SGD (momentum, weight decay) and Adam,
update_masks only adds pruned rows, and prune(masked) computes what the trained masked model computes."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils import parametrize

import fxprune
from conftest import RTOL, fresh_like
from fxprune.masks import RowMask


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: intra-op threads only add OpenMP barriers (slow on a loaded 2-core machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 24, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d((2, 2))
        self.fc1 = nn.Linear(24 * 4, 32)
        self.fc2 = nn.Linear(32, 5)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        x = torch.flatten(self.pool(F.relu(self.conv2(x))), 1)
        return self.fc2(F.relu(self.fc1(x)))


class LSTMNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(8, 16)
        self.lstm = nn.LSTM(16, 20, num_layers=2, batch_first=True)
        self.norm = nn.LayerNorm(20)
        self.head = nn.Linear(20, 5)

    def forward(self, x):
        out, _ = self.lstm(torch.tanh(self.embed(x)))
        return self.head(self.norm(out[:, -1]))


NETS = {
    "conv": (ConvNet, lambda: torch.randn(8, 3, 12, 12)),
    "lstm": (LSTMNet, lambda: torch.randn(8, 6, 8)),
}
OPTIMIZERS = {
    "sgd": lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=1e-2),
    "adam": lambda params: torch.optim.Adam(params, lr=1e-2, weight_decay=1e-2),
}


def setup(net, opt):
    cls, make_x = NETS[net]
    model, x = cls(), make_x()
    y = torch.randint(0, 5, (x.shape[0],))
    masked = fxprune.apply_masks(model, (x,), sparsity=0.3)
    return cls, model, x, y, masked, OPTIMIZERS[opt](masked.parameters())


def train(masked, opt, x, y, steps):
    masked.train()
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(masked(x), y).backward()
        opt.step()


def row_masks(masked) -> dict:
    """{"conv1.weight": keep, ...}: the RowMask parametrizations of the masked model."""
    out = {}
    for name, mod in masked.named_modules():
        if parametrize.is_parametrized(mod):
            for pname, plist in mod.parametrizations.items():
                for p in plist:
                    if isinstance(p, RowMask):
                        out[f"{name}.{pname}"] = p.keep.clone()
    return out


def assert_masked_rows_zero(masked) -> int:
    """Every masked row of every parametrized weight and bias is exactly 0; returns how many rows."""
    n = 0
    for fqn, keep in row_masks(masked).items():
        owner, _, pname = fqn.rpartition(".")
        t = getattr(masked.get_submodule(owner), pname).detach()
        rows = t.reshape(t.shape[0], -1)[~keep]
        assert bool((rows == 0).all()), f"{fqn}: masked rows are not zero after training"
        n += int((~keep).sum())
    return n


def unit_masks(masks: dict) -> dict:
    """Report / update_masks masks reduced to one bool per unit (the 4H LSTM rows -> H)."""
    out = {}
    for k, v in masks.items():
        gates = 4 if ".weight_" in k and "lstm" in k else 1
        out[k] = v.reshape(gates, -1)[0]
    return out


@pytest.mark.parametrize("opt", list(OPTIMIZERS))
@pytest.mark.parametrize("net", list(NETS))
def test_training_keeps_masked_rows_zero(net, opt):
    _, _, x, y, masked, optimizer = setup(net, opt)
    before = row_masks(masked)
    n_masked = assert_masked_rows_zero(masked)
    assert n_masked > 0
    originals = {k: v.clone() for k, v in masked.state_dict().items() if k.endswith(".original")}
    # gradients never reach masked rows of the stored parameters
    masked.train()
    F.cross_entropy(masked(x), y).backward()
    for fqn, keep in before.items():
        owner, _, pname = fqn.rpartition(".")
        grad = masked.get_submodule(owner).parametrizations[pname].original.grad
        assert grad is not None and bool((grad.reshape(grad.shape[0], -1)[~keep] == 0).all()), fqn
    train(masked, optimizer, x, y, steps=5)
    assert assert_masked_rows_zero(masked) == n_masked
    after = row_masks(masked)
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    # the kept weights did train
    changed = [k for k, v in masked.state_dict().items() if k in originals and not torch.equal(v, originals[k])]
    assert changed


@pytest.mark.parametrize("opt", list(OPTIMIZERS))
@pytest.mark.parametrize("net", list(NETS))
def test_prune_right_after_training_equals_masked(net, opt):
    """prune() straight after the last optimizer step (the LSTM still caches graph-attached weights)."""
    _, _, x, y, masked, optimizer = setup(net, opt)
    train(masked, optimizer, x, y, steps=5)
    masks = row_masks(masked)
    pruned = fxprune.prune(masked, (x,))  # the masks come with the model
    report = pruned.meta["fxprune"]
    assert report.params_after < report.params_before
    for k, v in unit_masks(report.masks).items():
        assert torch.equal(v, unit_masks({k: masks[k]})[k]), k
    masked.eval()
    pruned.eval()
    with torch.no_grad():
        for seed in range(3):
            xx = fresh_like((x,), seed=seed)
            assert report.compare(masked(*xx), pruned(*xx)) <= RTOL


@pytest.mark.parametrize("opt", list(OPTIMIZERS))
@pytest.mark.parametrize("net", list(NETS))
def test_train_update_masks_train_prune(net, opt):
    _, _, x, y, masked, optimizer = setup(net, opt)
    train(masked, optimizer, x, y, steps=4)
    n_before = assert_masked_rows_zero(masked)
    old = row_masks(masked)

    new = fxprune.update_masks(masked, sparsity=0.6)
    now = row_masks(masked)
    assert set(new) <= set(now)
    for k, keep in now.items():
        if k in new:
            assert torch.equal(keep, new[k]), k
        assert not bool((~old[k] & keep).any()), f"{k}: a pruned row came back"
    n_after = assert_masked_rows_zero(masked)
    assert n_after > n_before

    train(masked, optimizer, x, y, steps=4)  # the same optimizer keeps working on the same parameters
    assert assert_masked_rows_zero(masked) == n_after

    masked.eval()
    pruned = fxprune.prune(masked, (x,))
    report = pruned.meta["fxprune"]
    assert report.params_after < report.params_before
    assert unit_masks(report.masks).keys() == unit_masks(new).keys()
    assert all(torch.equal(a, unit_masks(new)[k]) for k, a in unit_masks(report.masks).items())
    pruned.eval()
    with torch.no_grad():
        for seed in range(3):
            xx = fresh_like((x,), seed=seed)
            assert report.compare(masked(*xx), pruned(*xx)) <= RTOL
    # the masked model is still a working masked model
    train(masked, optimizer, x, y, steps=1)
    assert assert_masked_rows_zero(masked) == n_after


def test_update_masks_minimal():
    """Regression: update_masks used to delete .weight from the masked model's Parametrized* class."""
    model, x = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)), torch.randn(3, 4)
    masked = fxprune.apply_masks(model, (x,), sparsity=0.25)
    old = row_masks(masked)["0.weight"]
    assert int((~old).sum()) == 2
    new = fxprune.update_masks(masked, sparsity=0.5)
    assert int((~new["0.weight"]).sum()) == 4 and not bool((~old & new["0.weight"]).any())
    assert torch.equal(row_masks(masked)["0.weight"], new["0.weight"])
    assert bool((masked(x) == masked(x)).all())


def test_masked_model_still_trains_after_prune():
    """Regression: prune(masked) used to delete .weight from the masked model's Parametrized* class."""
    _, _, x, y, masked, optimizer = setup("conv", "sgd")
    train(masked, optimizer, x, y, steps=2)
    n = assert_masked_rows_zero(masked)
    fxprune.prune(masked, (x,))
    train(masked, optimizer, x, y, steps=2)
    assert assert_masked_rows_zero(masked) == n


def test_prune_of_a_masked_model_keeps_its_prune_bias():
    """A masked model built with prune_bias=False keeps its biases; prune() of it, without saying
    prune_bias again, must fold them, not zero them."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Sigmoid(), nn.Linear(16, 4)).eval()
    x = torch.randn(3, 8)
    masked = fxprune.apply_masks(model, (x,), sparsity=0.5, prune_bias=False)
    pruned = fxprune.prune(masked, (x,))
    assert pruned.meta["fxprune"].prune_bias is False
    assert pruned.meta["fxprune"].params_after < pruned.meta["fxprune"].params_before
    with torch.no_grad():
        for seed in range(3):
            xi = torch.randn(5, 8, generator=torch.Generator().manual_seed(seed))
            assert torch.allclose(masked(xi), pruned(xi), rtol=0, atol=1e-6)
