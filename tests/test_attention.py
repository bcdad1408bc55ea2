"""Hand-written and SDPA attention with the biases kept (prune_bias=False): a pruned head's v channels
carry v's bias, softmax rows sum to 1, so the head's output is that constant and folds into the
output projection's bias; the head goes."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import fxprune
import zoo
from conftest import RTOL, assert_pruned_equals_masked

ZOO = {name: (make, inputs) for name, make, inputs in zoo.ZOO}


@pytest.mark.parametrize("name", ["gpt_manual", "gpt_sdpa"])
def test_heads_go_with_biases_kept(name):
    make, inputs = ZOO[name]
    model, x = make(), inputs()
    x = x if isinstance(x, tuple) else (x,)
    pruned = fxprune.prune(model, x, sparsity=0.5, prune_bias=False)
    heads = [g for g in pruned.meta["fxprune"].groups if g.producers[0].endswith("attn.c_attn.weight")]
    assert len(heads) == 2 and all(g.width_before == 4 and g.width_after == 2 for g in heads)
    assert_pruned_equals_masked(model, x, pruned)


class DropoutAfterSoftmax(nn.Module):
    """Attention whose weights go through dropout in training mode: rows no longer sum to 1, so a
    head whose v holds a constant cannot be dropped with prune_bias=False."""

    def __init__(self):
        super().__init__()
        self.qkv, self.proj, self.drop = nn.Linear(8, 24), nn.Linear(8, 8), nn.Dropout(0.5)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(8, dim=2)
        q, k, v = (q.view(B, T, 2, 4).transpose(1, 2), k.view(B, T, 2, 4).transpose(1, 2),
                   v.view(B, T, 2, 4).transpose(1, 2))
        att = self.drop((q @ k.transpose(-2, -1)).softmax(-1))
        return self.proj((att @ v).transpose(1, 2).reshape(B, T, C))


def test_attention_weights_that_do_not_sum_to_one_keep_constant_heads():
    model, x = DropoutAfterSoftmax().eval(), torch.randn(2, 5, 8)
    pruned = fxprune.prune(model, (x,), sparsity=0.5, prune_bias=False)
    heads = next(g for g in pruned.meta["fxprune"].groups if g.producers == ["qkv.weight"])
    assert heads.width_after == 1          # eval mode: dropout is the identity, rows sum to 1
    assert_pruned_equals_masked(model, (x,), pruned)
    model.train()
    report = fxprune.prune(model, (x,), sparsity=0.5, prune_bias=False, verify=False).meta["fxprune"]
    heads = next(g for g in report.groups if g.producers == ["qkv.weight"])
    assert heads.width_after == 2 and "input-dependent" in heads.reason


class SingleHead(nn.Module):
    """SegFormer's first stage: attention with one head, whose size-1 head dim holds no channels; the
    head dim is pruned inside (q and k together, v on its own)."""

    def __init__(self, scale=None, q_bias=True):
        super().__init__()
        self.q, self.k = nn.Linear(32, 32, bias=q_bias), nn.Linear(32, 32, bias=q_bias)
        self.v, self.o, self.fc = nn.Linear(32, 32), nn.Linear(32, 32), nn.Linear(32, 16)
        self.scale = scale

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = (f(x).view(b, t, 1, 32).transpose(1, 2) for f in (self.q, self.k, self.v))
        extra = {} if self.scale is None else {"scale": self.scale}
        y = torch.nn.functional.scaled_dot_product_attention(q, k, v, **extra)
        return self.fc(torch.relu(self.o(y.transpose(1, 2).reshape(b, t, c))))


@pytest.mark.parametrize("prune_bias", [True, False])
@pytest.mark.parametrize("scale", [None, 0.3])
def test_single_head_pruned_inside(scale, prune_bias):
    torch.manual_seed(0)
    model = SingleHead(scale).eval()
    x = (torch.randn(2, 7, 32),)
    pruned = fxprune.prune(model, x, sparsity=0.5, prune_bias=prune_bias)
    assert pruned.get_submodule("q").out_features == 16 == pruned.get_submodule("k").out_features
    assert pruned.get_submodule("v").out_features == 16
    sdpa = [n for n in pruned.graph.nodes if n.target is torch.nn.functional.scaled_dot_product_attention]
    assert sdpa[0].kwargs["scale"] == pytest.approx(scale or 32 ** -0.5)   # the original head dim's
    assert_pruned_equals_masked(model, x, pruned)


class GatedKeys(SingleHead):
    def forward(self, x):
        b, t, c = x.shape
        q, v = (f(x).view(b, t, 1, 32).transpose(1, 2) for f in (self.q, self.v))
        k = (self.k(x) * torch.sigmoid(x[..., :1])).view(b, t, 1, 32).transpose(1, 2)   # varies per key
        y = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        return self.fc(torch.relu(self.o(y.transpose(1, 2).reshape(b, t, c))))


def test_single_head_keeps_a_varying_pruned_term():
    """With the biases kept, a pruned q channel holds its bias and the gated k channel varies per key:
    their term is not the same for every key, so the channels stay."""
    torch.manual_seed(0)
    model = GatedKeys().eval()
    report = fxprune.prune(model, (torch.randn(2, 7, 32),), sparsity=0.5, prune_bias=False).meta["fxprune"]
    qk = [g for g in report.groups if any(p.startswith("q") for p in g.producers)]
    assert qk and qk[0].width_after == 32


class AlibiAttention(nn.Module):
    """Bloom's attention as transformers writes it: the heads merged with the batch, (batch * heads, t,
    head_dim), scores made by baddbmm onto ALiBi's per-head bias, computed from the head count."""

    def __init__(self, hidden=32, heads=4):
        super().__init__()
        self.heads, self.head_dim = heads, hidden // heads
        self.qkv, self.dense, self.fc = nn.Linear(hidden, 3 * hidden), nn.Linear(hidden, hidden), nn.Linear(hidden, 8)

    def forward(self, x):
        b, t = x.size(0), x.size(1)
        slopes = torch.pow(torch.tensor(0.5), torch.arange(1, self.heads + 1, dtype=torch.float32))
        alibi = (slopes[:, None, None] * torch.arange(t, dtype=torch.float32)).repeat(b, 1, 1)   # (b * heads, 1, t)
        fused = self.qkv(x).view(b, t, self.heads, 3, self.head_dim)
        q, k, v = (fused[..., i, :].transpose(1, 2).reshape(b * self.heads, t, self.head_dim) for i in range(3))
        scores = torch.baddbmm(alibi, q, k.transpose(-1, -2), beta=1.0, alpha=self.head_dim ** -0.5)
        probs = scores.view(b, self.heads, t, t).softmax(-1).view(b * self.heads, t, t)
        out = torch.bmm(probs, v).view(b, self.heads, t, self.head_dim).permute(0, 2, 1, 3).reshape(b, t, -1)
        return self.fc(torch.relu(self.dense(out)))


@pytest.mark.parametrize("prune_bias, batch", [(True, 2), (False, 2), (True, 1)])
def test_alibi_heads_merged_with_the_batch(prune_bias, batch):
    """Heads pruned through (batch * heads) dims: ALiBi's bias loses the pruned heads' rows in every
    batch entry, and ``b * heads`` sizes keep the batch free (checked at batch sizes 1 and 3). An
    example of batch 1 shows no repetition of the heads along (batch * heads): the slices hold anyway."""
    torch.manual_seed(0)
    model = AlibiAttention().eval()
    x = (torch.randn(batch, 6, 32),)
    pruned = fxprune.prune(model, x, sparsity=0.5, prune_bias=prune_bias)
    if prune_bias:   # with the biases kept, a pruned head's v holds its bias (the softmax rows' sum is lost in the views)
        assert pruned.get_submodule("qkv").out_features == 48 and pruned.get_submodule("dense").in_features == 16
    masked = fxprune.apply_masks(model, x, masks=pruned.meta["fxprune"].masks, prune_bias=prune_bias)
    with torch.no_grad():
        for shape in [(3, 5, 32), (1, 9, 32)]:
            y = torch.randn(shape)
            assert float((masked(y) - pruned(y)).abs().max()) <= RTOL * float(masked(y).abs().max())


def test_alibi_exported_with_a_dynamic_batch():
    torch.manual_seed(0)
    model = AlibiAttention().eval()
    x = (torch.randn(2, 6, 32),)
    program = torch.export.export(model, x, dynamic_shapes=({0: torch.export.Dim("b", max=8),
                                                             1: torch.export.Dim("t", max=32)},))
    pruned = fxprune.prune(program, sparsity=0.5)
    masked = fxprune.apply_masks(model, x, masks=pruned.graph_module.meta["fxprune"].masks)
    with torch.no_grad():
        for shape in [(3, 5, 32), (1, 9, 32)]:
            y = torch.randn(shape)
            assert float((masked(y) - pruned.module()(y)).abs().max()) <= RTOL * float(masked(y).abs().max())
    assert pruned.graph_module.meta["fxprune"].params_after < pruned.graph_module.meta["fxprune"].params_before


class GatedByTheInput(nn.Module):
    """Channels multiplied by a tensor without tracked channels that spans them (the input, repeated):
    a pruned channel stays zero, and the operand is sliced with the channels."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(8, 16), nn.Linear(16, 4)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)) * torch.cat([x, x], -1))


def test_untracked_operand_sliced_with_the_channels():
    torch.manual_seed(0)
    model = GatedByTheInput().eval()
    x = (torch.randn(5, 8),)
    pruned = fxprune.prune(model, x, sparsity=0.5)
    assert pruned.get_submodule("fc1").out_features == 8
    assert_pruned_equals_masked(model, x, pruned)
