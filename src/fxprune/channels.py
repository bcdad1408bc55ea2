"""Channel maps: which channel elements a tensor's dims hold, and what a pruned element carries there.

Every producer (a Linear's output features, a Conv's filters, an LSTM layer's hidden units) creates
fresh *elements*, one per channel. A tensor's :class:`ChannelMap` says, for the tensor dims that
hold channels, which element sits at each position (``-1``: none) and what that position holds when
its element is pruned (``ZERO``, a ``CONST`` that does not depend on the input, or ``VARY``).
Rules transform maps the way their op transforms the tensor; the engine never looks inside an op.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.fx.node import map_aggregate

# What a pruned element holds at a given tensor position. Ordered: combining takes the max.
ZERO, CONST, VARY = 0, 1, 2
CARRY_NAMES = {ZERO: "zero", CONST: "constant", VARY: "input-dependent"}


@dataclass(frozen=True)
class ChannelMap:
    """Channel elements on some dims of one tensor.

    ``dims`` are the tensor dims that hold channels, ascending; ``ids`` and ``carry`` have one axis
    per entry of ``dims`` with that dim's size. ``ndim`` is the tensor's rank.
    """

    dims: tuple[int, ...]
    ids: torch.Tensor
    carry: torch.Tensor
    ndim: int
    #: a tensor dim along which the values sum to 1 at every position (softmax output), else None;
    #: transforms drop it unless they keep it true
    sums_to_one: int | None = None

    # -- construction -------------------------------------------------------------------------
    @staticmethod
    def on_dim(dim: int, ndim: int, ids: torch.Tensor, carry: int | torch.Tensor) -> "ChannelMap":
        dim = dim % ndim
        if not isinstance(carry, torch.Tensor):
            carry = torch.full(ids.shape, carry, dtype=torch.int8)
        return ChannelMap((dim,), ids, carry, ndim)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.ids.shape)

    def only_dim(self) -> int | None:
        """The single channel dim, or None if channels sit on several dims."""
        return self.dims[0] if len(self.dims) == 1 else None

    def labeled(self) -> bool:
        return bool((self.ids >= 0).any())

    # -- value transforms -----------------------------------------------------------------------
    def with_carry(self, carry: torch.Tensor | int) -> "ChannelMap":
        if not isinstance(carry, torch.Tensor):
            carry = torch.full(self.ids.shape, carry, dtype=torch.int8)
        return ChannelMap(self.dims, self.ids, carry, self.ndim)

    def map_carry(self, zero: int, const: int, vary: int = VARY) -> "ChannelMap":
        """Apply a pointwise op: what ZERO, CONST and VARY become."""
        table = torch.tensor([zero, const, vary], dtype=torch.int8)
        return self.with_carry(table[self.carry.long()])

    # -- layout transforms ----------------------------------------------------------------------
    def with_ndim(self, dims: tuple[int, ...], ndim: int) -> "ChannelMap":
        return ChannelMap(dims, self.ids, self.carry, ndim)

    def align_to(self, out_ndim: int) -> "ChannelMap":
        """Broadcasting: a rank-r operand's dims move right when the output has more dims."""
        shift = out_ndim - self.ndim
        stochastic = None if self.sums_to_one is None else self.sums_to_one + shift
        return ChannelMap(tuple(d + shift for d in self.dims), self.ids, self.carry, out_ndim, stochastic)

    def permute(self, perm: list[int]) -> "ChannelMap":
        """Output dim i is input dim perm[i]."""
        where = {p % self.ndim: i for i, p in enumerate(perm)}
        new_dims = [where[d] for d in self.dims]
        order = sorted(range(len(new_dims)), key=lambda i: new_dims[i])
        return ChannelMap(
            tuple(new_dims[i] for i in order),
            self.ids.permute(order),
            self.carry.permute(order),
            len(perm),
        )

    def select(self, dim: int, index: torch.Tensor | slice) -> "ChannelMap":
        """Keep positions ``index`` of tensor dim ``dim`` (a channel dim or not)."""
        if dim not in self.dims:
            return self
        axis = self.dims.index(dim)
        sl = [slice(None)] * len(self.dims)
        if isinstance(index, slice):
            sl[axis] = index
            return ChannelMap(self.dims, self.ids[tuple(sl)], self.carry[tuple(sl)], self.ndim)
        return ChannelMap(
            self.dims, self.ids.index_select(axis, index), self.carry.index_select(axis, index), self.ndim
        )

    def drop_dim(self, dim: int, index: int) -> "ChannelMap | None":
        """Index a dim away with an integer (x[..., i, ...])."""
        if dim in self.dims:
            axis = self.dims.index(dim)
            ids, carry = self.ids.select(axis, index), self.carry.select(axis, index)
            dims = self.dims[:axis] + self.dims[axis + 1:]
        else:
            ids, carry, dims = self.ids, self.carry, self.dims
        dims = tuple(d - (d > dim) for d in dims)
        if not dims:
            return None
        return ChannelMap(dims, ids, carry, self.ndim - 1)

    def insert_dim(self, dim: int) -> "ChannelMap":
        """A new size-1 dim at output position ``dim`` (unsqueeze)."""
        return ChannelMap(tuple(d + (d >= dim) for d in self.dims), self.ids, self.carry, self.ndim + 1)

    def reshape(self, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> "ChannelMap | None":
        """view/reshape/flatten/unflatten: split the shapes into runs of dims with equal products;
        a run that holds channel dims holds them after the reshape too (a channel merged with
        spatial dims becomes the block of features it maps to). None if the runs cannot be found."""
        runs = _reshape_runs(in_shape, out_shape)
        if runs is None:
            return None
        ids, carry = self.ids, self.carry
        # Expand ids over every input dim of a run that holds a channel dim, so that each such run
        # is a contiguous block of axes; then reshape block by block.
        keep_in = [d for (ins, _outs) in runs if any(d in self.dims for d in ins) for d in ins]
        full_shape = [in_shape[d] for d in keep_in]
        view_shape = [in_shape[d] if d in self.dims else 1 for d in keep_in]
        order = [self.dims.index(d) for d in keep_in if d in self.dims]
        ids = ids.permute(order).reshape(view_shape).expand(full_shape)
        carry = carry.permute(order).reshape(view_shape).expand(full_shape)
        new_dims = [d for (ins, outs) in runs if any(d in self.dims for d in ins) for d in outs]
        new_shape = [out_shape[d] for d in new_dims]
        ids, carry = ids.reshape(new_shape), carry.reshape(new_shape)
        # a dim along which every position holds the same channels holds none of its own: the batch that
        # heads were merged with ((b * heads, t, d) viewed as (b, heads, t, d)), split off again
        same = [i for i in range(len(new_dims)) if new_shape[i] > 1 and bool((ids == ids.narrow(i, 0, 1)).all())]
        if same and len(same) < len(new_dims):
            for i in reversed(same):
                ids, carry = ids.select(i, 0), carry.amax(i)
                new_shape.pop(i)
                new_dims.pop(i)
        # size-1 dims that a run absorbed hold no channels (view(b, c) -> view(b, c, 1, 1))
        wide = [i for i, d in enumerate(new_dims) if out_shape[d] != 1] or [0]
        if len(wide) < len(new_dims):
            ids = ids.reshape([new_shape[i] for i in wide])
            carry = carry.reshape([new_shape[i] for i in wide])
            new_dims = [new_dims[i] for i in wide]
        return ChannelMap(tuple(new_dims), ids, carry, len(out_shape))

    @staticmethod
    def cat(maps: list["ChannelMap | None"], sizes: list[int], dim: int, ndim: int) -> "ChannelMap | None":
        """torch.cat along a channel dim: positions of unlabeled inputs get id -1. Along one of several
        channel dims (RoPE's rotate_half: cat(-x2, x1) along head_dim of (heads, head_dim)), every input
        must hold channels on the same dims."""
        labeled = [m for m in maps if m is not None]
        if labeled and len(labeled[0].dims) > 1:
            first = labeled[0]
            if len(labeled) < len(maps) or any(m.dims != first.dims for m in labeled):
                return None
            axis = first.dims.index(dim)
            return ChannelMap(first.dims, torch.cat([m.ids for m in maps], axis),
                              torch.cat([m.carry for m in maps], axis), ndim)
        parts_ids, parts_carry = [], []
        for m, size in zip(maps, sizes):
            if m is not None and m.dims != (dim,):
                return None
            if m is None:
                parts_ids.append(torch.full((size,), -1, dtype=torch.long))
                parts_carry.append(torch.full((size,), VARY, dtype=torch.int8))
            else:
                parts_ids.append(m.ids)
                parts_carry.append(m.carry)
        if all(m is None for m in maps):
            return None
        return ChannelMap((dim,), torch.cat(parts_ids), torch.cat(parts_carry), ndim)


def _reshape_runs(in_shape, out_shape):
    """Pair runs of input dims with runs of output dims of equal product: [([0], [0]), ([1,2,3], [1])]."""
    runs, i, j = [], 0, 0
    n, m = len(in_shape), len(out_shape)
    while i < n or j < m:
        ins, outs = [], []
        pi = pj = 1
        # take at least one dim from each side unless it is exhausted; size-1 dims attach freely
        if i < n:
            ins.append(i); pi *= in_shape[i]; i += 1
        if j < m:
            outs.append(j); pj *= out_shape[j]; j += 1
        while pi != pj:
            if pi < pj and i < n:
                ins.append(i); pi *= in_shape[i]; i += 1
            elif pj < pi and j < m:
                outs.append(j); pj *= out_shape[j]; j += 1
            else:
                return None
        # absorb trailing size-1 dims into this run so each run stays contiguous
        while i < n and in_shape[i] == 1 and (j >= m or out_shape[j] != 1):
            ins.append(i); i += 1
        while j < m and out_shape[j] == 1 and (i >= n or in_shape[i] != 1):
            outs.append(j); j += 1
        runs.append((ins, outs))
    if math.prod(in_shape) != math.prod(out_shape):
        return None
    return runs


class UnionFind:
    """Union-find over element ids (ints), grown on demand. Unions are recorded as edges and resolved
    together, vectorised, when roots are asked for: a model couples its channels millions of times
    (every residual add, every grouped conv), too many for one Python call each. Each element's root
    is the smallest id of its set.

    Example::

        uf = UnionFind(); uf.add(4)
        uf.union_many(torch.tensor([0, 3]), torch.tensor([2, 2]))
        uf.roots()          # tensor([0, 1, 0, 0])
    """

    def __init__(self) -> None:
        self.n = 0
        self._edges: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._roots = torch.zeros(0, dtype=torch.long)

    def __len__(self) -> int:
        return self.n

    def add(self, n: int) -> range:
        start = self.n
        self.n += n
        return range(start, start + n)

    def union_many(self, a: torch.Tensor, b: torch.Tensor) -> None:
        """Element a[i] and element b[i] are in one set, for every i."""
        if a.numel():
            self._edges.append((a.reshape(-1).long(), b.reshape(-1).long()))

    def roots(self) -> torch.Tensor:
        """The root of every element: connected components by hooking each root onto the smallest root
        an edge reaches, then pointer jumping (Shiloach-Vishkin)."""
        labels = torch.cat([self._roots, torch.arange(len(self._roots), self.n)])
        if self._edges:
            a = torch.cat([e[0] for e in self._edges])
            b = torch.cat([e[1] for e in self._edges])
            self._edges = [(a, b)]
            while True:
                la, lb = labels[a], labels[b]
                if torch.equal(la, lb):
                    break
                low = torch.minimum(la, lb)
                labels = labels.scatter_reduce(0, la, low, "amin").scatter_reduce(0, lb, low, "amin")
                while True:   # every label to its root
                    jumped = labels[labels]
                    if torch.equal(jumped, labels):
                        break
                    labels = jumped
        self._roots = labels
        return labels.clone()


@dataclass(frozen=True)
class ParamView:
    """A tensor that is a view of a parameter or buffer (a ``get_attr``): tensor dim i is the
    parameter's dim ``dims[i]``, or None where the tensor dim is new or broadcast (size 1 in the
    parameter). When it meets channels, the parameter is sliced along that dim."""

    target: str
    dims: tuple[int | None, ...]
    shape: tuple[int, ...]          # the parameter's shape
    #: an elementwise function of the parameter (``1 + w``, ``w.sigmoid()``): sliced with the parameter,
    #: but a masked (zeroed) parameter does not make it zero
    derived: bool = False

    @property
    def ndim(self) -> int:
        return len(self.dims)

    def param_dim(self, tensor_dim: int) -> int | None:
        p = self.dims[tensor_dim]
        return p if p is not None and self.shape[p] > 1 else None

    def permute(self, perm) -> "ParamView":
        return ParamView(self.target, tuple(self.dims[p] for p in perm), self.shape, self.derived)

    def reshape(self, in_shape, out_shape) -> "ParamView | None":
        """A parameter dim keeps being tracked where the reshape leaves it alone (only size-1 dims
        added or dropped next to it); dims that are no parameter dim (gathered by an index) may be split
        or merged freely. None if a parameter dim is split or merged."""
        runs = _reshape_runs(in_shape, out_shape)
        if runs is None:
            return None
        dims: list[int | None] = [None] * len(out_shape)
        for ins, outs in runs:
            big_in = [i for i in ins if in_shape[i] != 1]
            big_out = [j for j in outs if out_shape[j] != 1]
            if not any(self.dims[i] is not None for i in big_in):
                continue
            if len(big_in) != 1 or len(big_out) != 1:
                return None
            dims[big_out[0]] = self.dims[big_in[0]]
        return ParamView(self.target, tuple(dims), self.shape, self.derived)


def maps_in(tree) -> list[ChannelMap]:
    """The channel maps in a nested structure of labels (a node's label, or its args' labels)."""
    found: list[ChannelMap] = []
    map_aggregate(tree, lambda x: found.append(x) if isinstance(x, ChannelMap) else None)
    return found
