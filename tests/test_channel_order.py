"""Channels split over several dims, and groups whose channels part ways.

- A chain view -> transpose -> view that only reorders channels (a channel shuffle) becomes one
  index_select when the kept channels are not a rectangle over the split view.
- A split that is not merged back by such a chain (a sum over the split dim) couples channel j of
  every slice, so the kept channels always form a rectangle.
- A group whose channels go to different layers (the halves of a chunk) prunes each part alike.
Each model: pruned == masked for both prune_bias settings, the model left unchanged."""
import pytest
import torch
import torch.nn as nn

import fxprune
from conftest import model_digest, prune_both


def shuffle(x, groups):
    b, c, h, w = x.size()                 # sizes read at run time, as torchvision does
    x = x.view(b, groups, c // groups, h, w)
    return torch.transpose(x, 1, 2).contiguous().view(b, -1, h, w)


class Shuffle(nn.Module):
    """conv a (4) and conv b (4) -> cat -> shuffle(2) -> conv c."""

    def __init__(self, literal=False):
        super().__init__()
        self.literal = literal
        self.a, self.b = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(3, 4, 1)
        self.c = nn.Conv2d(8, 5, 1)   # 1x1: constants of pruned channels fold (prune_bias=False)

    def forward(self, x):
        y = torch.cat([torch.relu(self.a(x)), torch.relu(self.b(x))], 1)
        if self.literal:
            y = y.view(-1, 2, 4, 6, 6).permute(0, 2, 1, 3, 4).reshape(-1, 8, 6, 6)
        else:
            y = shuffle(y, 2)
        return self.c(y)


@pytest.mark.parametrize("literal", [False, True])
def test_shuffle_not_rectangular_becomes_index_select(literal):
    model = Shuffle(literal).eval()
    x = torch.randn(2, 3, 6, 6)
    # a keeps channels 0, 1; b keeps 2, 3: over the (2, 4) view the kept set is no rectangle
    masks = {"a.weight": torch.tensor([True, True, False, False]),
             "b.weight": torch.tensor([False, False, True, True])}
    for pruned in prune_both(model, x, sparsity=None, masks=masks):
        targets = [n.target for n in pruned.graph.nodes]
        assert torch.index_select in targets
        assert not {torch.transpose, "transpose", "permute", "view", "reshape"} & set(targets)
        assert pruned.a.out_channels == pruned.b.out_channels == 2 and pruned.c.in_channels == 4


def test_shuffle_rectangular_keeps_the_reshapes():
    model = Shuffle().eval()
    x = torch.randn(2, 3, 6, 6)
    masks = {"a.weight": torch.tensor([True, False, True, False]),
             "b.weight": torch.tensor([True, False, True, False])}
    pruned, _ = prune_both(model, x, sparsity=None, masks=masks)
    targets = [n.target for n in pruned.graph.nodes]
    assert torch.index_select not in targets and torch.transpose in targets
    assert pruned.c.in_channels == 4


def test_shuffle_sparsity_prunes_each_branch():
    torch.manual_seed(3)
    model = Shuffle().eval()
    with torch.no_grad():   # saliencies that pick different channels in the two branches
        model.a.weight[:2] *= 10
        model.b.weight[2:] *= 10
    for pruned in prune_both(model, torch.randn(2, 3, 6, 6), sparsity=0.5):
        assert pruned.a.out_channels == pruned.b.out_channels == 2 and pruned.c.in_channels == 4


class SpatialTooChain(nn.Module):
    """view -> transpose -> transpose of h and w -> reshape: moves more than channels (h == w)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.c = nn.Conv2d(8, 5, 1)   # 1x1: constants of pruned channels fold (prune_bias=False)

    def forward(self, x):
        y = torch.relu(self.a(x)).view(-1, 2, 4, 6, 6).transpose(1, 2).transpose(3, 4).reshape(-1, 8, 6, 6)
        return self.c(y)


def test_chain_that_moves_more_than_channels_stays_rectangular():
    model = SpatialTooChain().eval()
    x = torch.randn(2, 3, 6, 6)
    for pruned in prune_both(model, x, sparsity=0.5):
        targets = [n.target for n in pruned.graph.nodes]
        assert torch.index_select not in targets
        # channel j of both slices goes together: 4 units of 2 channels, half of them pruned
        assert pruned.a.out_channels == 4 and pruned.c.in_channels == 4


class SumOverSplit(nn.Module):
    """Split attention's radix sum: conv (2 x 6) -> view(b, 2, 6, h, w) -> sum over the radix dim."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 12, 3, padding=1)
        self.c = nn.Conv2d(6, 5, 1)

    def forward(self, x):
        b = x.shape[0]
        y = torch.relu(self.a(x)).view(b, 2, 6, 6, 6).sum(1)
        return self.c(y)


def test_split_summed_couples_channel_j_of_every_slice():
    torch.manual_seed(5)
    model = SumOverSplit().eval()
    with torch.no_grad():   # the two slices favour different channels
        model.a.weight[:3] *= 10
        model.a.weight[9:] *= 10
    x = torch.randn(2, 3, 6, 6)
    for pruned in prune_both(model, x, sparsity=0.5):
        assert pruned.a.out_channels == 6 and pruned.c.in_channels == 3
    # explicit masks must prune channel j of both slices together
    with pytest.raises(ValueError, match="disagree on coupled channels"):
        fxprune.prune(model, (x,), masks={"a.weight": torch.tensor([True] * 3 + [False] * 6 + [True] * 3)})
    pruned, _ = prune_both(model, x, sparsity=None, masks={"a.weight": torch.tensor([True, False] * 3 * 2)})
    assert pruned.a.out_channels == 6


class ChunkToTwoConvs(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.left, self.right = nn.Conv2d(4, 5, 1), nn.Conv2d(4, 6, 1)

    def forward(self, x):
        l, r = torch.relu(self.a(x)).chunk(2, dim=1)
        return self.left(l) + self.right(r).sum(1, keepdim=True)


def test_chunk_halves_shrink_alike():
    model = ChunkToTwoConvs().eval()
    with torch.no_grad():   # every channel of the first half outscores the second half
        model.a.weight[:4] *= 100
    for pruned in prune_both(model, torch.randn(2, 3, 6, 6), sparsity=0.5):
        assert pruned.a.out_channels == 4
        assert pruned.left.in_channels == pruned.right.in_channels == 2


class ChunkOdd(ChunkToTwoConvs):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 6, 3, padding=1)
        self.left, self.right = nn.Conv2d(3, 5, 1), nn.Conv2d(3, 6, 1)


def test_odd_parts_still_prune_the_group_total():
    # int(6 * 0.5) = 3 channels pruned in all: 2 from one half and 1 from the other, not 1 + 1
    for pruned in prune_both(ChunkOdd().eval(), torch.randn(2, 3, 6, 6), sparsity=0.5):
        assert pruned.a.out_channels == 3
        assert sorted([pruned.left.in_channels, pruned.right.in_channels]) == [1, 2]


def test_pruned_shuffle_saves_and_loads(tmp_path):
    model = Shuffle().eval()
    x = torch.randn(2, 3, 6, 6)
    masks = {"a.weight": torch.tensor([True, True, False, False]),
             "b.weight": torch.tensor([False, False, True, True])}
    pruned = fxprune.prune(model, (x,), masks=masks)
    path = tmp_path / "pruned.pt"
    fxprune.save(pruned, path)
    loaded = fxprune.load(path)
    with torch.no_grad():
        y = torch.randn(2, 3, 6, 6)
        assert torch.equal(loaded(y), pruned(y))


class PermuteWithBuffer(nn.Module):
    """A fixed channel order kept in a buffer; a selection along time from a buffer too."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv1d(3, 8, 3, padding=1)
        self.c = nn.Conv1d(10, 4, 1)
        self.register_buffer("order", torch.tensor([5, 2, 7, 0, 2, 1, 6, 3, 4, 5]))   # 2 and 5 twice
        self.register_buffer("steps", torch.tensor([0, 2, 4, 6]))

    def forward(self, x):
        y = torch.relu(self.a(x)).index_select(1, self.order)
        return self.c(torch.index_select(y, 2, self.steps))


def test_index_select_from_a_buffer():
    model = PermuteWithBuffer().eval()
    x = torch.randn(2, 3, 8)
    for pruned in prune_both(model, x, sparsity=0.5):
        keep = pruned.meta["fxprune"].masks["a.weight"]
        assert pruned.a.out_channels == 4
        # the buffer now picks the kept channels, in the same order, from the pruned conv's output
        assert pruned.order.numel() == int(keep[model.order].sum()) == pruned.c.in_channels
        assert torch.equal(pruned.steps, model.steps)


class RuntimeIndex(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv1d(3, 8, 1)
        self.c = nn.Conv1d(8, 4, 1)

    def forward(self, x):
        y = self.a(x)
        return self.c(y.index_select(1, torch.argsort(y.mean((0, 2)))))


def test_index_computed_at_run_time_is_a_barrier():
    model = RuntimeIndex().eval()
    pruned, _ = prune_both(model, torch.randn(2, 3, 8), sparsity=0.5)
    assert pruned.a.out_channels == 8
    assert any("index computed at run time" in why for _, why in pruned.meta["fxprune"].barriers)


def test_pruned_shufflenet_prunes_again():
    """prune() of its own output: the channel shuffles are index_selects by then."""
    from test_zoo import ZOO_BY_NAME
    factory, inputs = ZOO_BY_NAME["shufflenet_v2"]
    model, (x,) = factory(), inputs()
    once = fxprune.prune(model, (x,), sparsity=0.5)
    twice = prune_both(once, x, sparsity=0.5)[0]
    assert twice.meta["fxprune"].params_after < once.meta["fxprune"].params_after
    assert [m.out_channels for m in twice.modules() if isinstance(m, nn.Conv2d)] == [
        -(-m.out_channels // 2) for m in once.modules() if isinstance(m, nn.Conv2d)]


class GatheredBias(nn.Module):
    """A bias gathered from a table by an index buffer, added over the channels: which table entry a
    channel reads is fixed by the index, so the table cannot be sliced with the channels."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 6)
        self.c = nn.Linear(6, 3)
        self.table = nn.Parameter(torch.randn(5))
        self.register_buffer("index", torch.tensor([4, 0, 0, 3, 1, 2]))

    def forward(self, x):
        return self.c(torch.relu(self.a(x) + self.table[self.index]))


def test_gathered_parameter_over_channels_is_a_barrier():
    model = GatheredBias().eval()
    pruned, _ = prune_both(model, torch.randn(3, 4), sparsity=0.5)
    assert pruned.a.out_features == 6
    assert any("gathered by an index" in why for _, why in pruned.meta["fxprune"].barriers)


class TokenPooling(nn.Module):
    """CLIP's text pooling: the features of one token per row, picked by advanced indexing on the
    batch and token dims (x[torch.arange(b), tokens.argmax(-1)]), then a projection."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(20, 16)
        self.fc = nn.Linear(16, 16)
        self.proj = nn.Linear(16, 4)

    def forward(self, tokens):
        x = self.embed(tokens)
        x = x + self.fc(torch.relu(x))
        return self.proj(x[torch.arange(x.shape[0]), tokens.argmax(dim=-1)])


def test_advanced_indexing_on_other_dims_passes_channels():
    model = TokenPooling().eval()
    tokens = torch.randint(0, 20, (3, 7))
    for pruned in prune_both(model, tokens, sparsity=0.5):
        assert pruned.embed.embedding_dim == 8 and pruned.proj.in_features == 8


class IndexChannelsByBuffer(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.c = nn.Conv2d(9, 4, 1)
        self.register_buffer("pick", torch.tensor([7, 0, 3, 3, 5, 1, 6, 2, 4]))   # channel 3 twice

    def forward(self, x):
        return self.c(torch.relu(self.a(x))[:, self.pick])


def test_advanced_indexing_of_channels_by_a_buffer():
    model = IndexChannelsByBuffer().eval()
    for pruned in prune_both(model, torch.randn(2, 3, 6, 6), sparsity=0.5):
        keep = pruned.meta["fxprune"].masks["a.weight"]
        assert pruned.a.out_channels == 4
        assert pruned.c.in_channels == int(keep[model.pick].sum())   # the picked channels that stay


class IndexChannelsAtRunTime(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 1)
        self.c = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = self.a(x)
        return self.c(y[:, torch.argsort(y.mean((0, 2, 3)))])


def test_advanced_indexing_of_channels_at_run_time_is_a_barrier():
    pruned, _ = prune_both(IndexChannelsAtRunTime().eval(), torch.randn(2, 3, 6, 6), sparsity=0.5)
    assert pruned.a.out_channels == 8


class BoolMaskIndex(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 1)
        self.register_buffer("pick", torch.tensor([1, 0, 1, 1, 0, 0, 1, 1], dtype=torch.bool))

    def forward(self, x):
        return self.a(x)[:, self.pick]


def test_boolean_mask_index_gets_a_clear_error():
    model = BoolMaskIndex().eval()
    digest = model_digest(model)
    with pytest.raises(ValueError, match="depends on tensor values at node getitem.*integer indices"):
        fxprune.prune(model, (torch.randn(2, 3, 4, 4),), sparsity=0.5)
    assert model_digest(model) == digest
