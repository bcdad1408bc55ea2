"""Mixture-of-experts: fused expert weights applied with a grouped matmul (rules/experts.py), on the zoo's
Mixtral-style model (a custom op with transformers' grouped_mm_fallback semantics, its rule registered by
name). Mixtral itself, captured with torch.export, is in test_hf_export.py."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import fxprune
import zoo
from conftest import RTOL, fresh_like, model_digest


def _rel(a, b) -> float:
    return float((a - b).abs().max() / a.abs().max())


class _Stored(zoo.SparseMoeBlock):
    """The same block with the fused weights stored as (experts, in, out): read without a transpose."""

    def __init__(self):
        super().__init__()
        self.gate_up_proj = torch.nn.Parameter(self.gate_up_proj.detach().transpose(1, 2).contiguous())
        self.down_proj = torch.nn.Parameter(self.down_proj.detach().transpose(1, 2).contiguous())

    def forward(self, x):
        hidden = x.reshape(-1, x.shape[-1])
        weights, experts = self.gate(hidden).softmax(-1).topk(self.top_k, dim=-1)
        flat = experts.reshape(-1)
        order = flat.argsort(stable=True)
        offs = torch.histc(flat.float(), bins=self.num_experts, min=0, max=self.num_experts - 1).cumsum(0).to(torch.int32)
        gate, up = torch.ops.fxprune_zoo.grouped_mm(hidden[order // self.top_k], self.gate_up_proj, offs).chunk(2, -1)
        out = torch.ops.fxprune_zoo.grouped_mm(F.silu(gate) * up, self.down_proj, offs)
        out = (out * weights.reshape(-1)[order].unsqueeze(-1))[order.argsort()]
        return out.view(-1, self.top_k, x.shape[-1]).sum(1).reshape(x.shape)


def _block(stored: bool):
    torch.manual_seed(0)
    block = _Stored() if stored else zoo.SparseMoeBlock()
    return torch.nn.Sequential(torch.nn.Linear(16, 64), block, torch.nn.Linear(64, 8)).eval()


@pytest.mark.parametrize("stored", [False, True], ids=["transposed", "stored_in_out"])
def test_expert_width_pruned_in_every_expert(stored):
    model = _block(stored)
    x = (torch.randn(2, 5, 16),)
    digest = model_digest(model)
    pruned = fxprune.prune(model, x, sparsity=0.5)
    assert model_digest(model) == digest
    moe = pruned.get_submodule("1")
    inner_axis = 2 if stored else 1
    assert moe.gate_up_proj.shape[inner_axis] == 48 and moe.gate_up_proj.shape[0] == 4   # 96 -> 48, 4 experts
    assert moe.down_proj.shape[0] == 4 and moe.down_proj.shape[1 if stored else 2] == 24
    masked = fxprune.apply_masks(model, x, masks=pruned.meta["fxprune"].masks)
    y = fresh_like(x, seed=3)
    with torch.no_grad():
        assert masked(*y).std() > 0
        assert _rel(masked(*y), pruned(*y)) <= RTOL


def test_dead_expert_channels():
    """An expert channel is dead only when it is dead in every expert (the experts share one width)."""
    model = zoo.moe()
    x = zoo._tokens()
    with torch.no_grad():
        for moe in model.moes:
            moe.gate_up_proj[:, :6] = 0            # gate rows 0-5 in every expert: silu(0) * up = 0
            moe.gate_up_proj[0, 10:12] = 0         # in one expert only: alive in the others
    smaller = fxprune.eliminate_dead_channels(model, (x,))
    for i in range(2):
        moe = smaller.get_submodule(f"moes.{i}")
        assert moe.gate_up_proj.shape == (4, 2 * 42, 64) and moe.down_proj.shape == (4, 64, 42)
    y = fresh_like((x,), seed=2)
    with torch.no_grad():
        assert _rel(model(*y), smaller(*y)) <= RTOL


def test_fused_weight_read_elsewhere_is_a_barrier():
    class Regularised(zoo.SparseMoeBlock):
        def forward(self, x):
            return super().forward(x) + self.gate_up_proj.mean()

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 64), Regularised(), torch.nn.Linear(64, 8)).eval()
    report = fxprune.prune(model, (torch.randn(2, 5, 16),), sparsity=0.5).meta["fxprune"]
    assert any("gate_up_proj is also read by" in why for _, why in report.barriers), report
