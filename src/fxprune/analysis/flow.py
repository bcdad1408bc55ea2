"""The engine: a dataflow over the captured graph that propagates channel maps through the op rules.

:class:`ChannelFlow` is a :class:`~torch.fx.passes.shape_prop.ShapeProp`: it runs the graph (on real
tensors, guarded, where it may: :class:`RealChannelFlow`; else on fake ones: :class:`FakeChannelFlow`)
and, after each node, asks the node's rule how channels move through it (:class:`FlowContext`
is what a rule sees). It records the *sites* (producers' output rows, consumers' input columns,
members' per-channel parameters), the *uses* where pruned channels must be removable (consumers,
outputs, barriers), and the unions that couple elements.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.fx as fx
from torch.fx.node import map_aggregate

from ..channels import VARY, ZERO, ChannelMap, ParamView, UnionFind, maps_in
from ..graph import FakeShapeProp, RealShapeProp, attr
from ..rules import Rule, Unsupported, call_rule, module_rule, overridden_base
from ..timing import stage


@dataclass
class Site:
    """An index space of a module's parameters: a producer's output rows, a consumer's input columns
    or a member's per-channel parameters."""

    owner: str                 # module path (or node name for function ops)
    role: str                  # "out", "in", "h0", "channels", ...
    kind: str                  # "producer" | "consumer" | "member" | "param" (a get_attr sliced on a dim)
    node: fx.Node              # first node that used it
    rule: Rule
    ids: torch.Tensor          # element per index
    tensors: dict[str, int] = field(default_factory=dict)  # producer: param -> gates (rows = gates*n)
    biases: dict[str, int] = field(default_factory=dict)   # params masked only with prune_bias
    axes: dict[str, int] = field(default_factory=dict)     # producer: param -> dim holding the rows (0)
    params: tuple[str, ...] = ()                           # member: per-channel params (sliced)
    zeroed: tuple[str, ...] = ()                           # member: params masked with prune_bias

    @property
    def key(self):
        return (self.owner, self.role)

    def fqn(self, tensor: str) -> str:
        """Full name of one of the site's tensors (owner "" is the GraphModule itself)."""
        return f"{self.owner}.{tensor}" if self.owner else tensor

    def param_dim(self) -> tuple[str, int]:
        """(parameter name, dim) of a "param" site, whose role is "name:dimP"."""
        name, _, dim = self.role.rpartition(":dim")
        return name, int(dim)


@dataclass
class Use:
    """A place pruned channels reach; removal is allowed only if every use allows it."""

    node: fx.Node
    ids: torch.Tensor          # flattened
    carry: torch.Tensor        # flattened, what a pruned element holds here
    ok_zero: bool
    ok_const: bool
    what: str                  # for the report: "consumed by fc", "graph output", "barrier: ..."
    site: tuple | None = None  # consumer site, for constant folding
    dim: int | None = None     # channel dim of the input tensor (consumers)
    arg: int = 0               # the argument that input is (consumers)


class FlowContext:
    """What a rule sees of one node: its inputs' channel maps and the engine's bookkeeping."""

    def __init__(self, flow: "ChannelFlow", node: fx.Node, module, args, kwargs, out):
        self.flow, self.node, self.module = flow, node, module
        self.args, self.kwargs, self.out = args, kwargs, out
        # dead-channel mode: producers carry what their weights hold, not what pruning would leave
        self.prune_bias = flow.prune_bias and not flow.dead

    # -- inputs ----------------------------------------------------------------------------------
    def map_of(self, value):
        """Channel maps of an argument as it appears in node.args (a Node, a list of Nodes, ...)."""
        return fx.node.map_arg(value, lambda n: self.flow.labels.get(n)) if value is not None else None

    def arg_map(self, i: int, name: str | None = None):
        if i < len(self.node.args):
            return self.map_of(self.node.args[i])
        if name is not None and name in self.node.kwargs:
            return self.map_of(self.node.kwargs[name])
        return None

    def arg(self, i: int, name: str | None = None, default=None):
        """The (fake) value of argument i / keyword ``name``."""
        if i < len(self.args):
            return self.args[i]
        if name is not None and name in self.kwargs:
            return self.kwargs[name]
        return default

    def constant(self, i: int, name: str | None = None) -> torch.Tensor | None:
        """The real value of argument i when it is a ``get_attr`` (a buffer, a tensor constant), else None."""
        return self.constant_of(self.node.args[i] if i < len(self.node.args) else self.node.kwargs.get(name))

    def constant_of(self, arg) -> torch.Tensor | None:
        """The real value of ``arg`` (as it appears in node.args) when it is a ``get_attr``, else None."""
        if isinstance(arg, fx.Node) and arg.op == "get_attr":
            return attr(self.flow.module, arg.target)
        return None

    @property
    def owner(self) -> str:
        """Who the op's sites belong to: the module called, or the node's name. A function op whose
        weights are get_attr parameters (``F.linear(x, self.w)``) sets ``ctx.site_owner = ""``: its
        sites belong to the GraphModule, their tensors named by fqn (``"w"``, ``"sub.weight"``)."""
        if self.site_owner is not None:
            return self.site_owner
        return self.node.target if self.node.op == "call_module" else self.node.name

    site_owner: str | None = None
    has_members = False   # the op registered per-channel members (see ChannelFlow.pin_partial_reads)

    # -- bookkeeping -----------------------------------------------------------------------------
    def produce(self, role: str, n: int, tensors: dict[str, int], biases: dict[str, int] | None = None,
                axes: dict[str, int] | None = None) -> torch.Tensor:
        """Fresh elements for the output rows of ``role`` (the same ones if the module is called again).
        ``tensors``: param -> gates (rows = gates * n); ``axes``: param -> the dim of those rows (0)."""
        key = (self.owner, role)
        site = self.flow.sites.get(key)
        if site is None:
            fresh = self.flow.uf.add(n)
            ids = torch.arange(fresh.start, fresh.stop, dtype=torch.long)
            site = Site(self.owner, role, "producer", self.node, self.flow.rule_of(self.node), ids,
                        dict(tensors), dict(biases or {}), dict(axes or {}))
            self.flow.sites[key] = site
            self.flow.element_site.extend([key] * n)
        return site.ids

    def producer_carry(self, role: str, default) -> torch.Tensor | int:
        """What the producer's channels of ``role`` hold when pruned (``default``); in dead-channel mode,
        ZERO where every row and bias of the element is already zero, else VARY."""
        if not self.flow.dead:
            return default
        site = self.flow.sites[(self.owner, role)]
        zero = _zero_elements(self.module, {**site.tensors, **site.biases}, site.axes, len(site.ids))
        return torch.where(zero, ZERO, VARY).to(torch.int8)

    def internal_use(self, ids: torch.Tensor, carry) -> None:
        """The op itself reads these elements (an LSTM's recurrent and next-layer weights, attention's
        out_proj reading its heads): removal needs them to hold ``carry`` = ZERO there."""
        carry = torch.as_tensor(carry, dtype=torch.int8).expand(ids.shape).reshape(-1)
        self.flow.uses.append(Use(self.node, ids.reshape(-1), carry, True, False,
                                  f"read inside {self._name()}"))

    def affine_carry(self, cmap: ChannelMap, params: tuple[str, ...], otherwise: ChannelMap) -> ChannelMap:
        """After a per-channel scale and shift (``params``, one or more rows per channel): with
        ``prune_bias`` they are masked, so pruned channels are ZERO; in dead-channel mode channels
        whose parameters are all zero are ZERO; else ``otherwise``."""
        if not params:
            return otherwise
        if self.flow.prune_bias and not self.flow.dead:
            return otherwise.with_carry(ZERO)
        if not self.flow.dead:
            return otherwise
        zero = _zero_elements(self.module, {p: 1 for p in params}, {}, cmap.ids.numel(), member=True)
        return otherwise.with_carry(torch.where(zero.reshape(otherwise.carry.shape), ZERO, otherwise.carry).to(torch.int8))

    def consume(self, role: str, cmap: ChannelMap | None, dim: int, fold: bool, what: str | None = None,
                arg: int = 0) -> None:
        """The op reads ``cmap``'s channels on ``dim`` of its argument ``arg`` through the parameter
        columns of ``role``."""
        key = (self.owner, role)
        if cmap is not None and cmap.dims != (dim % cmap.ndim,):
            self.block(cmap, f"channels spread over dims {cmap.dims}, {self._name()} reads dim {dim}")
            cmap = None
        if cmap is None:  # the columns read untracked channels here (see ChannelFlow.pin_partial_reads)
            self.flow.untracked_reads.add(key)
            return
        dim %= cmap.ndim
        site = self.flow.sites.get(key)
        if site is None:
            self.flow.sites[key] = Site(self.owner, role, "consumer", self.node, self.flow.rule_of(self.node), cmap.ids)
        else:  # a module called again reads the same columns: couple them, and no per-call folding
            self._union_ids(site.ids, cmap.ids)
            fold = False
            for use in self.flow.uses:
                if use.site == key:
                    use.ok_const = False
        self.flow.uses.append(Use(self.node, cmap.ids, cmap.carry, True, fold,
                                  what or f"consumed by {self._name()}", key, dim, arg))

    def member(self, role: str, cmap: ChannelMap, params: tuple[str, ...], zeroed: tuple[str, ...] = ()) -> None:
        """Per-channel parameters ``params`` of ``role`` are sliced with the channels of ``cmap`` (1 dim);
        ``zeroed`` ones are masked too when ``prune_bias`` (so a pruned channel is exactly 0 after it)."""
        self.has_members = True
        key = (self.owner, role)
        site = self.flow.sites.get(key)
        if site is None:
            self.flow.sites[key] = Site(self.owner, role, "member", self.node, self.flow.rule_of(self.node),
                                        cmap.ids, params=params, zeroed=zeroed)
        else:
            self._union_ids(site.ids, cmap.ids)

    def param_member(self, pv: ParamView, operand_dim: int, cmap: ChannelMap, zeroed: bool) -> None:
        """A parameter (seen through ``pv``) spans the channels of ``cmap`` on ``operand_dim``: slice it
        there; ``zeroed``: an additive parameter, masked with ``prune_bias`` so a pruned channel stays 0."""
        p = pv.param_dim(operand_dim)
        if p is None:
            return
        if zeroed and pv.derived:
            raise Unsupported(f"a function of {pv.target} where masking it must give zero")
        owner, _, name = pv.target.rpartition(".")
        role = f"{name}:dim{p}"
        key = (owner, role)
        site = self.flow.sites.get(key)
        if cmap.only_dim() is None or (site is not None and site.ids.dim() > 1):
            self._param_over_split(key, pv, name, operand_dim, cmap, zeroed)
            return
        if site is None:
            self.flow.sites[key] = Site(owner, role, "param", self.node, None, cmap.ids,
                                        params=(name,), zeroed=(name,) if zeroed else ())
        else:
            self._union_ids(site.ids, cmap.ids)
            if zeroed and not site.zeroed:
                site.zeroed = (name,)

    def _param_over_split(self, key, pv: ParamView, name: str, operand_dim: int, cmap: ChannelMap,
                          zeroed: bool) -> None:
        """A parameter along one of several channel dims (RoPE's cos/sin over head_dim of (heads,
        head_dim)) scales a whole slice of channels per entry; the kept channels form a rectangle there,
        so an entry is sliced away only when all the channels it scales are (Plan.site_keep)."""
        site = self.flow.sites.get(key)
        if zeroed or (site is not None and site.zeroed):
            raise Unsupported("an added parameter meets channels spread over several dims")
        axis = cmap.dims.index(operand_dim + cmap.ndim - len(pv.dims))   # the operand broadcasts from the right
        ids = cmap.ids.movedim(axis, 0).reshape(cmap.ids.shape[axis], -1)
        if site is None:
            self.flow.sites[key] = Site(key[0], key[1], "param", self.node, None, ids, params=(name,))
        elif site.ids.shape[0] == ids.shape[0]:
            site.ids = torch.cat([site.ids.reshape(ids.shape[0], -1), ids], 1)
        else:
            raise Unsupported(f"{pv.target} meets channels of different widths")

    def require_product(self, cmap: ChannelMap) -> None:
        """The kept channels of ``cmap`` (several dims) must form a product of per-dim index sets."""
        self.flow.products.append((self.node, cmap.ids))

    def slices_operand(self, arg: int, dims: list[int]) -> None:
        """Argument ``arg`` of this node is a tensor without tracked channels that spans the output's
        channel dims ``dims`` (ALiBi's per-head bias added to the scores): the rewrite keeps its entries
        of the kept channels there (RewriteContext.slice_operands)."""
        self.flow.sliced_operands[self.node] = (arg, tuple(dims))

    def permutes_channels(self, split: fx.Node, source: fx.Node, dim: int, perm: torch.Tensor) -> None:
        """This node ends a chain from ``split`` that only reorders ``source``'s channels on ``dim``
        (output channel j is source channel perm[j]). The rewrite can replace the chain with one
        index_select, so the split need not keep a rectangle."""
        self.flow.permutations[self.node] = (split, source, dim, perm)

    def couple(self, maps: list[ChannelMap], what: str) -> ChannelMap:
        """Tensors that meet position by position (operands of an elementwise op, tensors stacked or
        concatenated along a dim without channels) hold the same channels: prune them together. They
        must hold channels on the same dims; ``what`` names them in the error. Returns the first map."""
        first = maps[0]
        for m in maps[1:]:
            if m.dims != first.dims or m.shape != first.shape:
                raise Unsupported(f"{what} hold channels on different dims")
            self.union(first, m)
        return first

    def union_across(self, cmap: ChannelMap, dims: list[int]) -> torch.Tensor:
        """Channels of ``cmap`` that differ only in their positions on the channel dims ``dims`` are
        pruned together (a sum over those dims; dims that must keep every position). Returns the
        ids with those dims dropped (one representative per unit)."""
        across = [cmap.dims.index(d) for d in dims]
        rest = [a for a in range(len(cmap.dims)) if a not in across]
        rows = cmap.ids.permute(rest + across).reshape([cmap.ids.shape[a] for a in rest] + [-1])
        self.union_ids(rows[..., :1].expand_as(rows), rows)
        return rows[..., 0]

    def union(self, a: ChannelMap, b: ChannelMap) -> None:
        """Positions of a and b hold the same channel: prune them together."""
        self._union_ids(a.ids, b.ids)

    def union_ids(self, a: torch.Tensor, b: torch.Tensor) -> None:
        """Elements at equal positions of a and b are pruned together."""
        self._union_ids(a, b)

    def _union_ids(self, a: torch.Tensor, b: torch.Tensor) -> None:
        n = min(a.numel(), b.numel())
        a, b = a.reshape(-1)[:n], b.reshape(-1)[:n]
        # an element at the position of an untracked channel (the graph input's, say) is coupled with a
        # channel that always stays, so it stays too
        if bool((a < 0).any()) or bool((b < 0).any()):
            self.flow.pin(self.node, torch.cat([a[b < 0], b[a < 0]]),
                          f"coupled in {self._name()} with channels that no tracked producer makes")
        differ = (a != b) & (a >= 0) & (b >= 0)
        self.flow.uf.union_many(a[differ], b[differ])

    def block(self, cmaps, reason: str) -> None:
        """Channels in ``cmaps`` reach something that cannot drop them."""
        self.flow.block(self.node, cmaps, reason)

    def _name(self) -> str:
        return self.node.target if self.node.op == "call_module" else self.node.name


class ChannelFlow:
    """Runs the graph and propagates channel maps through the op rules; counts its FLOPs
    (``self.flops``) on the way. A mixin over the two ways to run it: :class:`RealChannelFlow` and
    :class:`FakeChannelFlow`."""

    def __init__(self, gm: fx.GraphModule, prune_bias: bool = True, prune_outputs: bool = False,
                 dead: bool = False, **run):
        super().__init__(gm, **run)   # counting the model's FLOPs from the shapes (fxprune.flops)
        self.prune_bias, self.prune_outputs, self.dead = prune_bias, prune_outputs, dead
        self.labels: dict[fx.Node, object] = {}
        self.sites: dict[tuple, Site] = {}
        self.uses: list[Use] = []
        self.uf = UnionFind()
        self.element_site: list[tuple] = []
        self.barriers: list[tuple[fx.Node, str]] = []
        self.products: list[tuple[fx.Node, torch.Tensor]] = []
        self.permutations: dict[fx.Node, tuple] = {}   # see FlowContext.permutes_channels
        self.sliced_operands: dict[fx.Node, tuple] = {}   # see FlowContext.slices_operand
        self.untracked_reads: set[tuple] = set()   # consumer sites read with untracked channels by some call
        self.memberless: set[str] = set()          # modules with a call that registered no members
        self.opaque_params: dict[str, tuple] = {}  # parameter fqn -> (node, reason): see read_opaquely
        self.modules = dict(gm.named_modules())

    def rule_of(self, node: fx.Node) -> Rule | None:
        if node.op == "call_module":
            return module_rule(self.modules[node.target])
        if node.op in ("call_function", "call_method"):
            return call_rule(node.target)
        return None

    def pin(self, node, ids: torch.Tensor, reason: str) -> None:
        """Elements ``ids`` (-1 ignored) stay, whatever else allows."""
        ids = ids.reshape(-1)
        ids = ids[ids >= 0]
        if ids.numel():
            self.uses.append(Use(node, ids, torch.full(ids.shape, VARY, dtype=torch.int8), False, False, reason))
            self.barriers.append((node, reason))

    def propagate(self, *args):
        out = super().propagate(*args)
        self.pin_partial_reads()
        self.pin_params_read_directly()
        self.pin_params_read_opaquely()
        self.align_products()
        return out

    def free_splits(self) -> set[fx.Node]:
        """Splits whose chains only reorder channels: no rectangle needed there."""
        return {split for split, *_ in self.permutations.values()}

    def align_products(self) -> None:
        """Channels split over several dims (``view(b, t, heads, head_dim)``, split attention's
        ``view(b, radix, c, h, w)``) must keep a product of per-dim index sets; splits that a chain only
        reorders and merges back (a channel shuffle, see permutes_channels) need not. That holds for any
        choice of units when one dim is *whole*: each of its slices is one unit (a head, once attention
        has coupled it). Where no dim is whole, the slices of the longest dim are coupled: channel j of
        every group goes together, as in a grouped convolution, so saliency chooses rectangles and the
        kept widths do not depend on the weights. Repeated until nothing changes, since coupling one
        split can change the units of another."""
        free = self.free_splits()
        aligned = {i for i, (node, _) in enumerate(self.products) if node in free}
        changed = len(aligned) < len(self.products)
        while changed:
            changed = False
            roots = self.uf.roots()
            for i, (node, ids) in enumerate(self.products):
                ids = ids.reshape([s for s in ids.shape if s != 1])
                units = torch.where(ids >= 0, roots[ids.clamp(min=0)], -1)   # -1: an untracked channel
                if i in aligned or ids.dim() < 2 or any(_slices_whole(units, a) for a in range(ids.dim())):
                    continue
                aligned.add(i)
                axis = max(range(ids.dim()), key=lambda a: (ids.shape[a], a))
                for part in ids.movedim(axis, 0).reshape(ids.shape[axis], -1):
                    if bool((part < 0).any()):
                        self.pin(node, part, f"split over several dims ({node.name}) with channels no tracked "
                                             "producer makes")
                    labeled = part[part >= 0]
                    self.uf.union_many(labeled[:1].expand(len(labeled) - 1), labeled[1:])
                changed = True

    def read_opaquely(self, node, inputs, reason: str) -> None:
        """Parameters that reach ``node``, which cannot follow their slicing (no rule, or its rule refused):
        what it makes from them keeps their full size, so they must not be sliced for another reader."""
        def note(label):
            if isinstance(label, ParamView):
                self.opaque_params.setdefault(label.target, (node, reason))
        map_aggregate(inputs, note)

    def pin_params_read_opaquely(self) -> None:
        for s in self.sites.values():
            if s.kind != "param":
                continue
            for name in s.params:
                fqn = f"{s.owner}.{name}" if s.owner else name
                if fqn in self.opaque_params:
                    node, reason = self.opaque_params[fqn]
                    self.pin(node, s.ids, f"{fqn} is also read by {node.name} ({reason})")

    def pin_params_read_directly(self) -> None:
        """A module whose parameters the graph also reads directly (``get_attr``, as in
        ``out + self.fc.weight.mean()``) cannot have them sliced behind that reader's back."""
        reads = [n for n in self.module.graph.nodes if n.op == "get_attr"]
        for s in self.sites.values():
            if s.node.op != "call_module":
                continue
            reader = next((n for n in reads if n.target.startswith(s.owner + ".")), None)
            if reader is not None:
                self.pin(reader, s.ids, f"{reader.target} is also read directly by the graph ({reader.name})")

    def pin_partial_reads(self) -> None:
        """A module called again, on channels that are not tracked (the graph input's, or channels
        blocked there), has its full input width in that call: the consumer columns and per-channel
        members that its other calls read tracked channels through cannot be sliced."""
        for key, s in self.sites.items():
            consumer = s.kind == "consumer" and key in self.untracked_reads
            if consumer or (s.kind == "member" and s.owner in self.memberless):
                self.pin(s.node, s.ids, f"{s.owner} also reads channels that are not tracked")

    def block(self, node, cmaps, reason: str) -> None:
        found = False
        for cm in maps_in(cmaps):
            found = True
            self.uses.append(Use(node, cm.ids.reshape(-1), cm.carry.reshape(-1), False, False, reason))
        if found:
            self.barriers.append((node, reason))

    def run_node(self, n: fx.Node):
        self.current = n
        with stage("shapes"):
            out = super().run_node(n)
        self.labels[n] = self._flow(n, out)
        # an in-place op (relu_, add_) returns its input: later readers of that tensor (under any node
        # that returned it, e.g. an eval-mode dropout) see the op's result
        op = n.op != "output" and isinstance(out, torch.Tensor)
        if op and any(self.env.get(a) is out for a in n.all_input_nodes):
            for a, v in self.env.items():
                if v is out and a is not n:
                    self.labels[a] = self.labels[n]
        return out

    def _flow(self, n: fx.Node, out):
        if n.op == "get_attr":
            if isinstance(out, torch.Tensor) and out.dim() > 0:
                return ParamView(n.target, tuple(range(out.dim())), tuple(out.shape))
            return None
        if n.op == "placeholder":
            return None
        if n.op == "output":
            for cm in maps_in(fx.node.map_arg(n.args[0], lambda a: self.labels.get(a))):
                ok = self.prune_outputs
                self.uses.append(Use(n, cm.ids.reshape(-1), cm.carry.reshape(-1), ok, ok, "graph output"))
            return None
        inputs = fx.node.map_arg((n.args, n.kwargs), lambda a: self.labels.get(a))
        rule = self.rule_of(n)
        if rule is None:
            reason = f"no rule for {op_name(n, self.modules)}"
            base = overridden_base(self.modules[n.target]) if n.op == "call_module" else None
            if base is not None:
                reason += (f": it subclasses {base.__module__}.{base.__qualname__} but computes something else "
                           "(its own forward), which torch.fx cannot trace")
            self.block(n, inputs, reason)
            self.read_opaquely(n, inputs, reason)
            return None
        args, kwargs = self.fetch_args_kwargs_from_env(n)
        module = self.modules.get(n.target) if n.op == "call_module" else None
        ctx = FlowContext(self, n, module, args, kwargs, out)
        n_uses, n_sites = len(self.uses), len(self.sites)
        try:
            result = rule.flow(ctx)
        except Unsupported as e:
            self.block(n, inputs, f"{op_name(n, self.modules)}: {e}")
            self.read_opaquely(n, inputs, f"{op_name(n, self.modules)}: {e}")
            return None
        finally:
            if module is not None and not ctx.has_members:
                self.memberless.add(n.target)
        # a tensor came out, channels went in, and the rule neither passed them on nor consumed them:
        # they must not vanish unnoticed
        if (not maps_in(result) and len(self.uses) == n_uses and len(self.sites) == n_sites
                and _tensors_in(out) and maps_in(inputs)):
            self.block(n, inputs, f"{op_name(n, self.modules)}: its rule passes no channels on")
        return result


class RealChannelFlow(ChannelFlow, RealShapeProp):
    """ChannelFlow on the model's own tensors, guarded (:meth:`RealShapeProp.propagate`): at batch 1 a
    real op costs a tenth of a fake one's dispatch. Raises when the run is refused."""

    def __init__(self, gm: fx.GraphModule, **options):
        super().__init__(gm, guarded=True, **options)


class FakeChannelFlow(ChannelFlow, FakeShapeProp):
    """ChannelFlow on fake tensors: for models on the meta device, in float16/bfloat16, or whose run on
    real tensors was refused."""

    def __init__(self, gm: fx.GraphModule, **options):
        super().__init__(gm, count_flops=True, **options)


def _zero_elements(module, params: dict[str, int], axes: dict[str, int], n: int, member: bool = False) -> torch.Tensor:
    """Per element: are all its rows (gate-major, possibly several per element) zero in every param?"""
    zero = torch.ones(n, dtype=torch.bool)
    for name, gates in params.items():
        p = attr(module, name).detach().movedim(axes.get(name, 0), 0)
        if member:  # adjacent rows per channel
            rows = p.reshape(n, -1)
        else:
            rows = p.reshape(gates, n, -1).permute(1, 0, 2).reshape(n, -1)
        zero &= (rows == 0).all(1)
    return zero


def _slices_whole(units: torch.Tensor, axis: int) -> bool:
    """Is every slice of ``units`` along ``axis`` a single unit?"""
    rows = units.movedim(axis, 0).reshape(units.shape[axis], -1)
    return bool((rows == rows[:, :1]).all())


def _tensors_in(tree) -> bool:
    found = []
    map_aggregate(tree, lambda x: found.append(x) if isinstance(x, torch.Tensor) else None)
    return bool(found)


def op_name(n: fx.Node, modules) -> str:
    if n.op == "call_module":
        return f"{n.target} ({type(modules[n.target]).__name__})"
    if n.op == "call_method":
        return f".{n.target}()"
    return getattr(n.target, "__name__", str(n.target))
