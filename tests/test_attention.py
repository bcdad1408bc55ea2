"""Hand-written and SDPA attention with the biases kept (prune_bias=False): a pruned head's v channels
carry v's bias, softmax rows sum to 1, so the head's output is that constant and folds into the
output projection's bias; the head goes."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import fxprune
import zoo
from conftest import assert_pruned_equals_masked

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
