"""Graph utilities every stage uses: attribute paths, inputs, private copies, fake-tensor shapes.

The bottom of the package: it imports nothing of fxprune but the FLOP formulas.
"""
from __future__ import annotations

import collections
import contextlib
import copy
import types

import torch
import torch.fx as fx
import torch.nn as nn
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
from torch.func import functional_call
from torch._dispatch.python import enable_python_dispatcher
from torch.fx.passes.shape_prop import ShapeProp, TensorMetadata
from torch.nn.utils import parametrize
from torch.utils.flop_counter import FlopCounterMode
from torch.utils._python_dispatch import TorchDispatchMode

from .flops import formula

#: node.meta key on the nodes a masked model adds (keep buffers and their multiplications), so that
#: pruning a masked model can take them out again
MASK_TAG = "fxprune_param_mask"
#: node.meta key on the keep buffer's get_attr node of a producer's rows: the tensor fqn it masks
ROWS_TAG = "fxprune_rows_of"
#: node.meta key on a node whose target a masked model replaced: (original target, how many leading
#: args it takes)
RESTORE_TAG = "fxprune_restore"


def attr(module, dotted: str):
    """getattr through dots (``out_proj.weight``)."""
    for part in dotted.split("."):
        module = getattr(module, part)
    return module


def owner_of(module, dotted: str):
    """(submodule, leaf name) holding ``dotted``."""
    path, _, leaf = dotted.rpartition(".")
    return (module.get_submodule(path) if path else module), leaf


def normalize_inputs(example_inputs) -> tuple:
    if example_inputs is None:
        raise ValueError("example_inputs is required: a tensor or a tuple of the model's positional inputs")
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, list):
        return tuple(example_inputs)
    if not isinstance(example_inputs, tuple):
        raise ValueError(f"example_inputs must be a tensor or a tuple of inputs, got {type(example_inputs).__name__}")
    for i, t in enumerate(example_inputs):
        if isinstance(t, (tuple, list)):
            raise ValueError(f"example_inputs[{i}] is a {type(t).__name__}: pass the model's inputs themselves, "
                             "(x,) rather than ((x,),)")
    return example_inputs


def float_dtypes(module: nn.Module) -> dict[str, torch.dtype]:
    """{name: dtype} of ``module``'s floating parameters and buffers."""
    return {name: t.dtype for name, t in (*module.named_parameters(), *module.named_buffers())
            if t.is_floating_point()}


def _held_non_leaves(model: nn.Module) -> dict[int, torch.Tensor]:
    """Detached copies of the non-leaf tensors (which deepcopy refuses) that modules hold as plain
    attributes: torch.nn.utils.prune's weight = orig * mask, recurrent modules' cached _flat_weights."""
    memo = {}
    for m in model.modules():
        held = [v for v in vars(m).values() if isinstance(v, torch.Tensor)]
        held += [t for t in getattr(m, "_flat_weights", None) or () if isinstance(t, torch.Tensor)]
        for t in held:
            if t.grad_fn is not None:
                memo[id(t)] = t.detach().clone()
    return memo


def private_copy(model: nn.Module) -> nn.Module:
    """copy.deepcopy that leaves the original alone whatever is done to the copy.

    Parametrized modules get a class of their own: a deep copy shares torch's injected Parametrized*
    class, and adding or removing a parametrization edits that class. Non-leaf tensors (which
    deepcopy refuses) held by modules are copied detached."""
    new = copy.deepcopy(model, _held_non_leaves(model))
    for m in new.modules():
        if parametrize.is_parametrized(m):
            cls = type(m)
            m.__class__ = type(cls.__name__, cls.__bases__, dict(cls.__dict__))
    return new


def shared_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` that shares its parameters (the same Parameter objects); modules and buffers
    are copied (:func:`_structural_copy`, or copy.deepcopy for a tree holding a GraphModule or a module
    that copies itself its own way). For a pipeline that never writes into a parameter, only replaces it
    (the rewrite slices into new tensors; baking multiplies into new ones): the caller's model stays
    as it was without a copy of every weight. What still shares a parameter at the end is copied then
    (see fxprune.pipeline). Not for a parametrized model (:func:`private_copy`).

    Example::

        own = shared_copy(model)
        own.fc.weight is model.fc.weight        # True; own.bn.running_mean is a copy
    """
    if any(isinstance(m, fx.GraphModule) or hasattr(type(m), "__deepcopy__") or hasattr(type(m), "__slots__")
           for m in model.modules()):   # they copy themselves their own way
        memo = _held_non_leaves(model)
        memo.update({id(p): p for p in model.parameters()})
        return copy.deepcopy(model, memo)
    return _structural_copy(model)


_CONTAINERS = (list, dict, set, collections.OrderedDict)


def _structural_copy(model: nn.Module) -> nn.Module:
    """The module tree of ``model`` copied without deep-copying what it holds (a tenth of
    copy.deepcopy's time): each module a new object with its own attribute dict, its own containers
    (parameter, buffer, module and hook dicts, lists such as an RNN's flat weights) and copied
    buffers; references to modules of the tree (plain attributes, lists of them, bound methods)
    pointing at their copies; parameters and other values are the same objects."""
    copies: dict[int, nn.Module] = {}
    memo: dict[int, object] = {}

    def one(m: nn.Module) -> nn.Module:
        new = copies.get(id(m))
        if new is not None:
            return new
        new = copies[id(m)] = object.__new__(type(m))
        state = {k: v.copy() if type(v) in _CONTAINERS else v for k, v in m.__dict__.items()}
        state["_buffers"] = type(m._buffers)(
            (k, None if b is None else copy.deepcopy(b, memo)) for k, b in m._buffers.items())
        state["_modules"] = type(m._modules)((k, None if c is None else one(c)) for k, c in m._modules.items())
        new.__dict__.update(state)
        return new

    def rebound(v):
        """``v`` with modules of the tree, methods bound to them (``self.forward = self.forward_x``)
        and plain lists, tuples and dicts of those, pointing at the copies."""
        if isinstance(v, nn.Module):
            return copies.get(id(v), v)
        if isinstance(v, types.MethodType) and id(v.__self__) in copies:
            return types.MethodType(v.__func__, copies[id(v.__self__)])
        if type(v) in (list, tuple):
            return type(v)(rebound(x) for x in v)
        if type(v) in (dict, collections.OrderedDict):
            return type(v)((k, rebound(x)) for k, x in v.items())
        return v

    root = one(model)
    for new in copies.values():
        for k, v in new.__dict__.items():
            if k not in ("_parameters", "_buffers", "_modules"):
                new.__dict__[k] = rebound(v)
    return root


@contextlib.contextmanager
def buffers_restored(*modules: nn.Module):
    """The buffers of ``modules`` (BatchNorm's running statistics) hold on exit what they held on entry,
    whatever a run in between wrote into them."""
    saved = [(b, b.detach().clone()) for m in modules for b in m.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, v in saved:
                b.copy_(v)


def call_with(module: nn.Module, state: dict[str, torch.Tensor], args, kwargs):
    """``module(*args, **kwargs)`` with its tensors named in ``state`` (as ``named_parameters`` and
    ``named_buffers`` name them) read as the tensors given there: ``torch.func.functional_call``, at a
    tenth of its cost by swapping the entries of the modules' own dicts while the call runs. Modules
    that watch their attributes (an RNN's cached flat weights) go through functional_call itself."""
    if any(type(m).__setattr__ is not nn.Module.__setattr__ for m in module.modules()):
        return functional_call(module, state, args, kwargs)
    swapped = []
    try:
        for name, t in state.items():
            owner, leaf = owner_of(module, name)
            slots = owner._parameters if leaf in owner._parameters else owner._buffers
            swapped.append((slots, leaf, slots[leaf]))
            slots[leaf] = t
        return module(*args, **kwargs)
    finally:
        for slots, leaf, t in reversed(swapped):
            slots[leaf] = t


class FakeShapeProp(ShapeProp):
    """torch's ShapeProp on fake tensors, without its deep copy of the module.

    ``ShapeProp(gm, fake_mode)`` first deep-copies the whole module into fake tensors (a third of
    prune()'s time on a 25 M parameter model). Here each parameter and buffer gets a fake twin (no
    data copied) that modules are called with (:func:`call_with`) and ``get_attr``
    returns; the module itself keeps its real tensors, which rules read. Buffers are restored
    afterwards in case an op with only real inputs ran for real.

    ``count_flops``: ``self.flops`` becomes the FLOPs FlopCounterMode would count over the run, from
    each node's shapes (:mod:`fxprune.flops`); only nodes without a formula run under the counter.

    Example::

        FakeShapeProp(gm).propagate(x)      # node.meta["tensor_meta"] as with ShapeProp
    """

    def __init__(self, gm: fx.GraphModule, count_flops: bool = False):
        super().__init__(gm)  # no fake mode active here: ShapeProp makes no fake copy
        self.fake_mode = FakeTensorMode(allow_non_fake_inputs=True)
        self._fakes: dict[int, torch.Tensor] = {}   # id(real tensor) -> its fake twin
        # made here, outside the fake and FLOP-counting modes that propagate() runs under
        for t in (*gm.parameters(), *gm.buffers()):
            self._fake(t)
        self.count_flops, self.flops = count_flops, 0
        self._by_name = dict(gm.named_modules()) if count_flops else {}

    def _fake(self, t):
        if not isinstance(t, torch.Tensor) or isinstance(t, FakeTensor):
            return t
        fake = self._fakes.get(id(t))
        if fake is None:  # same metadata on the meta device, no data (10x cheaper than from_tensor)
            fake = self._twin(t)
            self._fakes[id(t)] = fake
        return fake

    def _twin(self, t):
        """A fake tensor with ``t``'s metadata (parameters and buffers: their cached twins)."""
        if not isinstance(t, torch.Tensor) or isinstance(t, FakeTensor):
            return t
        fake = self._fakes.get(id(t))
        if fake is not None:
            return fake
        meta = torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device="meta")
        return FakeTensor(self.fake_mode, meta, t.device).requires_grad_(t.requires_grad)

    def get_attr(self, target, args, kwargs):
        return self._fake(super().get_attr(target, args, kwargs))

    def call_module(self, target, args, kwargs):
        module = self.fetch_attr(target)
        state = {name: self._fake(t) for name, t in
                 [*module.named_parameters(remove_duplicate=False), *module.named_buffers(remove_duplicate=False)]}
        return call_with(module, state, args, kwargs)

    def run_node(self, n):
        if not self.count_flops:
            return super().run_node(n)
        count = formula(n, self._by_name)
        if count is None:
            with FlopCounterMode(display=False) as counter:
                out = super().run_node(n)
            self.flops += counter.get_total_flops()
            return out
        out = super().run_node(n)
        if not isinstance(count, int):
            self.flops += int(count(out.shape))
        return out

    def node_flops(self, n: fx.Node, env: dict, requires_grad) -> int:
        """FLOPs FlopCounterMode counts for node ``n`` run alone, with grad enabled, on fake twins of
        its inputs' real values ``env[input node]``, as :meth:`run_node` would run it.
        ``requires_grad(input node)``: the flags (:func:`grad_flags_of`) its twins take (with grad
        enabled an LSTM runs other kernels than without)."""
        def twin(value, flags):
            if isinstance(value, torch.Tensor):
                fake = self._twin(value)
                if flags is True and not fake.requires_grad:   # a non-leaf, as in a run with grad
                    with self.fake_mode, torch.enable_grad():
                        fake = fake.detach().requires_grad_(True).clone()
                return fake
            if isinstance(value, (tuple, list)) and not hasattr(value, "_fields"):
                return type(value)(twin(v, flags[i] if isinstance(flags, (tuple, list)) else None)
                                   for i, v in enumerate(value))
            return value

        args, kwargs = fx.node.map_arg((n.args, n.kwargs), lambda a: twin(env[a], requires_grad(a)))
        with FlopCounterMode(display=False) as counter:
            with self.fake_mode, enable_python_dispatcher(), torch.enable_grad():
                getattr(self, n.op)(n.target, args, kwargs)
        return counter.get_total_flops()

    def propagate(self, *args):
        with buffers_restored(self.module):
            return super().propagate(*args)


class RealRunRefused(RuntimeError):
    """A guarded run on real tensors met an op it must not run for real: one that writes into the
    caller's tensors, or whose output shape depends on tensor values (which fake tensors refuse)."""


class _RealRunGuard(TorchDispatchMode):
    """Refuses (:class:`RealRunRefused`), before it runs, an ATen op that writes into a tensor whose
    storage is in ``protected``, or whose output shape or value depends on tensor values."""

    def __init__(self, protected: frozenset[int]):
        super().__init__()
        self.protected = protected

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if torch.Tag.data_dependent_output in func.tags or (
                torch.Tag.dynamic_output_shape in func.tags and not _fixed_shape(func, args, kwargs)):
            raise RealRunRefused(f"{func}: its output depends on tensor values")
        schema = func._schema
        if schema.is_mutable:
            for i, a in enumerate(schema.arguments):
                if a.alias_info is None or not a.alias_info.is_write:
                    continue
                value = args[i] if i < len(args) else kwargs.get(a.name)
                for t in value if isinstance(value, (tuple, list)) else (value,):
                    if isinstance(t, torch.Tensor) and _storage(t) in self.protected:
                        raise RealRunRefused(f"{func} writes into a tensor of the caller")
        return func(*args, **kwargs)


def _fixed_shape(func, args, kwargs) -> bool:
    """An op tagged dynamic_output_shape whose output shape is known here, as fake tensors know it:
    indexing with integer tensors, repeat_interleave given its output size."""
    if func is torch.ops.aten.index.Tensor:
        return all(i is None or i.dtype not in (torch.bool, torch.uint8) for i in args[1])
    if func is torch.ops.aten.repeat_interleave.Tensor:
        return kwargs.get("output_size") is not None
    return False


def _storage(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


class RealShapeProp(ShapeProp):
    """torch's ShapeProp on real tensors: the model's output, every node's tensor_meta, and in
    ``self.flops`` the FLOPs :class:`FakeShapeProp` counts with ``count_flops`` (each node from its
    shapes; a node without a formula run alone on fake twins of its inputs). For a model that runs
    anyway (verification, under no_grad): its shapes and FLOPs come with that run; and, ``guarded``,
    for the caller's model in place of :class:`FakeShapeProp` (see :meth:`propagate`).

    ``requires_grad``: node name -> the requires_grad flags of its tensor_meta from a propagation with
    grad enabled (:func:`grad_flags`, taken before a rewrite): the metadata says what such a
    propagation says, not what the no_grad run saw; a node without flags (new, or of another
    structure) requires grad when a tensor it reads does.

    Example::

        out = RealShapeProp(pruned).propagate(x)   # pruned(x), and node.meta["tensor_meta"]
    """

    def __init__(self, gm: fx.GraphModule, requires_grad: dict | None = None, guarded: bool = False):
        super().__init__(gm)
        self.flops = 0
        self.requires_grad = requires_grad or {}
        self.guarded = guarded
        self._protected: frozenset[int] = frozenset()
        self._by_name = dict(gm.named_modules())
        self._fakes: FakeShapeProp | None = None
        self._counted: dict[str, int] = {}   # signature of a node run alone -> its FLOPs

    @staticmethod
    def can_run(gm: fx.GraphModule, inputs) -> bool:
        """Whether a guarded run may take the place of fake tensors: every tensor of ``gm`` and of
        ``inputs`` holds data on the CPU in float32 or float64 (or an integer or bool dtype); float16
        and bfloat16 kernels are slow or missing on the CPU."""
        tensors = [*gm.parameters(), *gm.buffers(), *(t for t in inputs if isinstance(t, torch.Tensor))]
        return all(t.device.type == "cpu" and not isinstance(t, FakeTensor)
                   and t.dtype not in (torch.float16, torch.bfloat16) for t in tensors)

    def propagate(self, *args):
        """``guarded``: run as fake tensors would, leaving no trace: under no_grad, with the buffers
        (BatchNorm's statistics) and the random number generator restored afterwards, and any op that
        would write into a parameter, a constant or an input, or whose shape depends on values,
        refused before it runs (:class:`RealRunRefused`; the caller falls back to fake tensors)."""
        if not self.guarded:
            return super().propagate(*args)
        gm = self.module
        constants = [attr(gm, n.target) for n in gm.graph.nodes if n.op == "get_attr"]
        self._protected = frozenset(
            _storage(t) for t in (*gm.parameters(), *constants, *args) if isinstance(t, torch.Tensor)) - {0}
        rng = torch.get_rng_state()
        try:
            with buffers_restored(gm), torch.no_grad():
                return super().propagate(*args)
        finally:
            torch.set_rng_state(rng)

    def run_node(self, n):
        count = formula(n, self._by_name)
        if count is None:
            key = self._signature(n)
            if key not in self._counted:   # a transformer's layers are alike: each kind runs once
                if self._fakes is None:
                    self._fakes = FakeShapeProp(self.module)
                self._counted[key] = self._fakes.node_flops(
                    n, self.env, lambda a: grad_flags_of(a.meta.get("tensor_meta")))
            self.flops += self._counted[key]
        if self.guarded and n.op in ("call_function", "call_method", "call_module"):
            with _RealRunGuard(self._protected):
                out = super().run_node(n)
        else:
            out = super().run_node(n)
        if count is not None and not isinstance(count, int):
            self.flops += int(count(out.shape))
        meta = n.meta.get("tensor_meta")
        if meta is not None and n.op not in ("placeholder", "get_attr"):
            flags = self.requires_grad.get(n.name)
            if _structure(flags) != _structure(grad_flags_of(meta)):
                flags = self._reads_grad(n)
            n.meta["tensor_meta"] = _set_grad(meta, flags)
        return out

    def _signature(self, n: fx.Node) -> str:
        """What the FLOPs of ``n`` run alone depend on: its op and target (for a module: its class, its
        plain attributes and its tensors' shapes, submodules included), and its arguments (tensors by
        shape, stride, dtype and requires_grad flags)."""
        def arg(a):
            value, flags = self.env[a], grad_flags_of(a.meta.get("tensor_meta"))
            return _describe(value), flags

        if n.op == "call_module":
            module = self._by_name[n.target]
            target = [(type(m).__module__, type(m).__qualname__, sorted(
                (k, v) for k, v in vars(m).items() if isinstance(v, (int, float, bool, str, tuple, type(None)))))
                for m in module.modules()]
            target.append([(k, _describe(t)) for k, t in (*module.named_parameters(), *module.named_buffers())])
        else:
            target = (getattr(n.target, "__module__", None), getattr(n.target, "__qualname__", repr(n.target)))
        return repr((n.op, target, fx.node.map_arg((n.args, n.kwargs), arg)))

    def _reads_grad(self, n: fx.Node) -> bool:
        """Would ``n``'s floating outputs require grad with grad enabled: does a tensor it reads?"""
        if n.op == "call_method" and n.target == "detach":
            return False
        reads = any(any_grad(grad_flags_of(a.meta.get("tensor_meta"))) for a in n.all_input_nodes)
        if n.op == "call_module":
            reads = reads or any(p.requires_grad for p in self._by_name[n.target].parameters())
        return reads


def _describe(value):
    """A tensor by its shape, stride, dtype and device; containers item by item; other values as they are."""
    if isinstance(value, torch.Tensor):
        return ("tensor", tuple(value.shape), value.stride(), str(value.dtype), str(value.device))
    if isinstance(value, (tuple, list)):
        return type(value).__name__, [_describe(v) for v in value]
    if isinstance(value, dict):
        return {k: _describe(v) for k, v in value.items()}
    return value


def grad_flags_of(meta):
    """The requires_grad flags of a (nested) tensor_meta, in its structure (None where no tensor)."""
    if isinstance(meta, TensorMetadata):
        return meta.requires_grad
    if isinstance(meta, (tuple, list)):
        return type(meta)(grad_flags_of(m) for m in meta) if not hasattr(meta, "_fields") else \
            type(meta)(*(grad_flags_of(m) for m in meta))
    if isinstance(meta, dict):
        return {k: grad_flags_of(v) for k, v in meta.items()}
    return None


def grad_flags(gm: fx.GraphModule) -> dict:
    """node name -> :func:`grad_flags_of` its tensor_meta, for :class:`RealShapeProp`."""
    return {n.name: grad_flags_of(n.meta["tensor_meta"]) for n in gm.graph.nodes if "tensor_meta" in n.meta}


def any_grad(flags) -> bool:
    if isinstance(flags, bool):
        return flags
    if isinstance(flags, dict):
        return any(any_grad(v) for v in flags.values())
    if isinstance(flags, (tuple, list)):
        return any(any_grad(v) for v in flags)
    return False


def _structure(flags):
    """``flags`` with every flag replaced by True: two metadata of the same structure compare equal."""
    if isinstance(flags, bool):
        return True
    if isinstance(flags, dict):
        return {k: _structure(v) for k, v in flags.items()}
    if isinstance(flags, (tuple, list)):
        return [_structure(v) for v in flags]
    return flags


def _set_grad(meta, flags):
    """``meta`` with requires_grad from ``flags`` (its structure), or ``flags`` itself for a bool with
    only floating tensors taking it (integer and bool tensors never require grad)."""
    if isinstance(meta, TensorMetadata):
        if not isinstance(flags, bool):
            return meta
        return meta._replace(requires_grad=flags and (meta.dtype.is_floating_point or meta.dtype.is_complex))
    pick = (lambda i, k: flags[k]) if isinstance(flags, (tuple, list, dict)) else (lambda i, k: flags)
    if isinstance(meta, dict):
        return {k: _set_grad(v, pick(None, k)) for k, v in meta.items()}
    if isinstance(meta, (tuple, list)):
        items = [_set_grad(v, pick(None, i)) for i, v in enumerate(meta)]
        return type(meta)(*items) if hasattr(meta, "_fields") else type(meta)(items)
    return meta
