"""Recurrent layers (LSTM, GRU, RNN): each layer's (and direction's) hidden units are a producer whose
rows sit in every gate. A masked unit has all its gate rows and biases zero, so its output is exactly
0 at every step; the next layer's input columns and its own recurrent columns are then dropped."""
from __future__ import annotations

import torch
import torch.nn as nn

from ..channels import ZERO, ChannelMap
from .common import add_folded, factory_kwargs
from .registry import Rule, Unsupported, register

GATES = {nn.LSTM: 4, nn.GRU: 3, nn.RNN: 1}


def _gates(m) -> int:
    for cls, g in GATES.items():
        if isinstance(m, cls):
            return g
    raise Unsupported(f"unknown recurrent module {type(m).__name__}")


def _suffixes(m):
    return [""] + (["_reverse"] if m.bidirectional else [])


@register(nn.LSTM, nn.GRU, nn.RNN)
class RecurrentRule(Rule):
    def flow(self, ctx):
        m = ctx.module
        if getattr(m, "proj_size", 0):
            raise Unsupported("LSTM with proj_size")
        x = ctx.arg(0, "input")
        if not isinstance(x, torch.Tensor):
            raise Unsupported("packed sequence input")
        g = _gates(m)
        ctx.consume("in", ctx.arg_map(0, "input"), dim=-1, fold=True)
        layers = []
        for layer in range(m.num_layers):
            dirs = []
            for sfx in _suffixes(m):
                tensors = {f"weight_ih_l{layer}{sfx}": g, f"weight_hh_l{layer}{sfx}": g}
                if m.bias:  # gate biases are always masked with the unit: its output must be 0
                    tensors.update({f"bias_ih_l{layer}{sfx}": g, f"bias_hh_l{layer}{sfx}": g})
                dirs.append(ctx.produce(f"h{layer}{sfx}", m.hidden_size, tensors))
            layers.append(dirs)
        out, state = ctx.out
        roles = [f"h{layer}{sfx}" for layer in range(m.num_layers) for sfx in _suffixes(m)]
        carries = [torch.as_tensor(ctx.producer_carry(r, ZERO), dtype=torch.int8).expand(m.hidden_size)
                   for r in roles]
        for r, c in zip(roles, carries):  # each layer's output is read by its recurrent and next-layer weights
            ctx.internal_use(ctx.flow.sites[(ctx.owner, r)].ids, c)
        last = len(_suffixes(m))
        out_map = ChannelMap.on_dim(-1, out.dim(), torch.cat(layers[-1]), torch.cat(carries[-last:]))
        hn = torch.stack([ids for dirs in layers for ids in dirs])  # (layers*dirs, hidden)
        h = state[0] if isinstance(state, tuple) else state
        state_map = ChannelMap((0, h.dim() - 1), hn, torch.stack(carries), h.dim())
        if ctx.arg(1, "hx") is not None:
            # a nonzero initial state keeps a masked unit's output nonzero
            ctx.block([out_map, ctx.arg_map(1, "hx")], f"{ctx.node.target}: initial state passed in")
        if isinstance(state, tuple):
            return (out_map, (state_map, state_map))
        return (out_map, state_map)

    def equal_roles(self, m) -> list[str]:
        """Roles that must keep the same number of units: nn.LSTM has one hidden_size."""
        return [f"h{layer}{sfx}" for layer in range(m.num_layers) for sfx in _suffixes(m)]

    def rewrite(self, m, keep, fold):
        g = _gates(m)
        H = m.hidden_size
        roles = self.equal_roles(m)
        keeps = {r: keep.get(r, torch.ones(H, dtype=torch.bool)) for r in roles}
        counts = {int(k.sum()) for k in keeps.values()}
        if len(counts) != 1:
            raise AssertionError(f"{type(m).__name__} layers keep different unit counts {counts}")
        new_h = counts.pop()
        keep_in = keep.get("in", torch.ones(m.input_size, dtype=torch.bool))
        c = fold.get("in")
        need_bias = m.bias or (c is not None and bool(c.any()))
        kwargs = dict(num_layers=m.num_layers, bias=need_bias, batch_first=m.batch_first,
                      dropout=m.dropout, bidirectional=m.bidirectional)
        new = type(m)(int(keep_in.sum()), new_h, **kwargs, **factory_kwargs(m))
        if isinstance(m, nn.RNN):
            new.nonlinearity = m.nonlinearity
        with torch.no_grad():
            for layer in range(m.num_layers):
                if layer == 0:
                    cols = keep_in
                else:
                    cols = torch.cat([keeps[f"h{layer - 1}{s}"] for s in _suffixes(m)])
                for sfx in _suffixes(m):
                    kh = keeps[f"h{layer}{sfx}"]
                    rows = kh.repeat(g)
                    w_ih = getattr(m, f"weight_ih_l{layer}{sfx}").detach()
                    w_hh = getattr(m, f"weight_hh_l{layer}{sfx}").detach()
                    getattr(new, f"weight_ih_l{layer}{sfx}").copy_(w_ih[rows][:, cols])
                    getattr(new, f"weight_hh_l{layer}{sfx}").copy_(w_hh[rows][:, kh])
                    if need_bias:
                        zeros = w_ih.new_zeros(g * H)
                        b_ih = getattr(m, f"bias_ih_l{layer}{sfx}").detach().clone() if m.bias else zeros
                        b_hh = getattr(m, f"bias_hh_l{layer}{sfx}").detach() if m.bias else zeros
                        if layer == 0 and c is not None:
                            b_ih = add_folded(b_ih, w_ih[:, ~keep_in], c[~keep_in])
                        getattr(new, f"bias_ih_l{layer}{sfx}").copy_(b_ih[rows])
                        getattr(new, f"bias_hh_l{layer}{sfx}").copy_(b_hh[rows])
        new.train(m.training)
        return new
