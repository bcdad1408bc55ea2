"""Idioms of LLaMA-style attention, one at a time:

- rotary embeddings: cos/sin buffers (a parameter along head_dim of (heads, head_dim)) or computed at
  run time (an untracked operand that spans head_dim), rotate_half's slices (bounds read from run-time
  sizes) and its cat along head_dim;
- grouped-query attention: key/value heads repeated by expand + reshape, whose literal sizes are
  rewritten;
- slices whose bounds are computed from sizes read at run time, on a pruned channel dim.

Each model: pruned == masked for both prune_bias settings, the model unchanged, widths asserted."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from conftest import prune_both


def rotate_half(x):
    return torch.cat((-x[..., x.shape[-1] // 2:], x[..., : x.shape[-1] // 2]), dim=-1)


class BufferRope(nn.Module):
    """Attention with cos/sin held in buffers of shape (T, head_dim); kv heads repeated with literal
    sizes (expand(B, kv_heads, rep, T, head_dim))."""

    def __init__(self, d=32, heads=4, kv_heads=2, t=6):
        super().__init__()
        self.heads, self.kv_heads, self.hd = heads, kv_heads, d // heads
        self.q = nn.Linear(d, d, bias=True)
        self.k = nn.Linear(d, kv_heads * self.hd, bias=True)
        self.v = nn.Linear(d, kv_heads * self.hd, bias=True)
        self.o = nn.Linear(d, d)
        inv = 1.0 / (10000 ** (torch.arange(0, self.hd, 2).float() / self.hd))
        emb = torch.outer(torch.arange(t).float(), inv).repeat(1, 2)
        self.register_buffer("cos", emb.cos())
        self.register_buffer("sin", emb.sin())

    def forward(self, x):
        B, T, C = x.shape
        q = self.q(x).view(B, T, self.heads, self.hd).transpose(1, 2)
        k = self.k(x).view(B, T, self.kv_heads, self.hd).transpose(1, 2)
        v = self.v(x).view(B, T, self.kv_heads, self.hd).transpose(1, 2)
        q = q * self.cos + rotate_half(q) * self.sin
        k = k * self.cos + rotate_half(k) * self.sin
        rep = self.heads // self.kv_heads
        k = k[:, :, None].expand(B, self.kv_heads, rep, T, self.hd).reshape(B, self.heads, T, self.hd)
        v = v[:, :, None].expand(B, self.kv_heads, rep, T, self.hd).reshape(B, self.heads, T, self.hd)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o(y.transpose(1, 2).reshape(B, T, C))


def test_rope_buffers_and_grouped_query_heads():
    torch.manual_seed(0)
    model = BufferRope().eval()
    x = torch.randn(2, 6, 32)
    for pruned in prune_both(model, (x,), sparsity=0.5):
        # 2 kv heads -> 1, with the 2 query heads that share it; head_dim (8) and the buffers stay
        assert (pruned.q.out_features, pruned.k.out_features, pruned.o.in_features) == (16, 8, 16)
        assert pruned.cos.shape == model.cos.shape


def test_rope_buffers_one_kv_head_per_query_head():
    torch.manual_seed(1)
    model = BufferRope(kv_heads=4).eval()
    pruned, _ = prune_both(model, (torch.randn(2, 6, 32),), sparsity=0.5)
    assert (pruned.q.out_features, pruned.k.out_features) == (16, 16)


class RuntimeBoundSlices(nn.Module):
    """The two halves of a conv's channels, cut at y.shape[1] // 2 (a size read at run time keeps its
    original value after pruning, so the bounds are recomputed from the channel maps)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.left, self.right = nn.Conv2d(4, 5, 1), nn.Conv2d(4, 5, 1)

    def forward(self, x):
        y = torch.relu(self.a(x))
        return self.left(y[:, : y.shape[1] // 2]) + self.right(y[:, y.shape[1] // 2:])


def test_slice_bounds_read_at_run_time():
    model = RuntimeBoundSlices().eval()
    with torch.no_grad():   # the first half outscores the second: each half still keeps 2 channels
        model.a.weight[:4] *= 50
    for pruned in prune_both(model, (torch.randn(2, 3, 6, 6),), sparsity=0.5):
        assert pruned.a.out_channels == 4
        assert pruned.left.in_channels == pruned.right.in_channels == 2


class UntrackedOverHeadDim(nn.Module):
    """q (heads, head_dim) times a tensor computed at run time that spans head_dim; then a sum over
    head_dim per head: the heads prune, head_dim keeps every position."""

    def __init__(self):
        super().__init__()
        self.q = nn.Linear(16, 16)
        self.o = nn.Linear(4, 3)

    def forward(self, x):
        B, T, C = x.shape
        q = self.q(x).view(B, T, 4, 4)
        scale = torch.arange(4, device=x.device).float().exp()   # varies along head_dim
        return self.o((q * scale).sum(-1))


def test_untracked_operand_spanning_head_dim_keeps_it_whole():
    torch.manual_seed(2)
    model = UntrackedOverHeadDim().eval()
    pruned, _ = prune_both(model, (torch.randn(2, 5, 16),), sparsity=0.5)
    # (with prune_bias=False a pruned head's kept bias times the run-time tensor is not known to be
    # one constant, so the heads stay)
    assert pruned.q.out_features == 8 and pruned.o.in_features == 2
