"""FLOPs of an fx graph from its shapes, with ``torch.utils.flop_counter``'s registered formulas.

What :class:`~torch.utils.flop_counter.FlopCounterMode` counts when the graph runs (on fake
tensors), computed from the shapes a propagation already recorded instead of running the graph
again under the counter. Per node, :func:`formula` says how:

- a known producer (``nn.Conv*``, ``nn.ConvTranspose*``, ``nn.Linear`` of exactly that type, and
  ``F.linear``, ``F.conv*``, ``matmul``/``@``, ``mm``, ``bmm`` with operands of rank 2 or more): the
  aten op it runs (``convolution``, ``mm``/``addmm``/``bmm``) and that op's registered formula, on the
  input, weight and output shapes;
- an op that runs no counted aten op (elementwise, activations, norms, pooling, layout): 0;
- anything else (``nn.MultiheadAttention``, ``nn.LSTM``, ``F.scaled_dot_product_attention``, a
  module of a subclass, a function of the user's): ``None``, counted by running that node alone under
  ``FlopCounterMode`` (see :class:`fxprune.graph.FakeShapeProp`'s ``count_flops``).

Example::

    FakeShapeProp(gm, count_flops=True).propagate(x)     # shapes, and FLOPs of the nodes to run
    graph_flops(gm, counted)                              # == FlopCounterMode's count of gm(x) on fakes

The bottom of the package: it imports nothing of fxprune.
"""
from __future__ import annotations

import math
import operator

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.flop_counter import conv_flop_count, flop_registry

__all__ = ["formula", "node_flops", "graph_flops"]

_aten = torch.ops.aten

#: modules whose forward runs no aten op that FlopCounterMode counts (checked by exact type: a
#: subclass may compute something else)
ZERO_MODULES = frozenset({
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.InstanceNorm1d, nn.InstanceNorm2d,
    nn.InstanceNorm3d, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm,
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Sigmoid,
    nn.Tanh, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Softplus, nn.Softsign, nn.Softshrink, nn.Hardshrink,
    nn.Tanhshrink, nn.Threshold, nn.LogSigmoid, nn.Softmax, nn.Softmin, nn.LogSoftmax, nn.Softmax2d, nn.GLU,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout, nn.Identity,
    nn.Flatten, nn.Unflatten, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d, nn.LPPool1d, nn.LPPool2d, nn.Upsample, nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d,
    nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d, nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d,
    nn.ReflectionPad1d, nn.ReflectionPad2d, nn.ReflectionPad3d, nn.ReplicationPad1d, nn.ReplicationPad2d,
    nn.ReplicationPad3d, nn.CircularPad1d, nn.CircularPad2d, nn.CircularPad3d, nn.PixelShuffle,
    nn.PixelUnshuffle, nn.ChannelShuffle, nn.Embedding,
})

_ZERO_NAMES = """
add sub mul div true_divide floor_divide remainder fmod neg negative abs exp exp2 expm1 log log2 log10 log1p
sqrt rsqrt square pow reciprocal sign sin cos tan tanh sinh cosh sigmoid erf erfc relu relu_ clamp clip
clamp_min clamp_max maximum minimum where lerp addcmul addcdiv cat concat concatenate stack hstack vstack split
chunk tensor_split unbind flatten unflatten reshape permute transpose swapaxes movedim moveaxis squeeze unsqueeze
roll flip cumsum cumprod mean sum amax amin max min argmax argmin softmax log_softmax index_select gather
narrow select zeros ones full empty zeros_like ones_like full_like empty_like arange linspace tril triu
masked_fill eq ne lt le gt ge logical_not logical_and logical_or isnan isinf any all norm var std var_mean
std_mean broadcast_to t numel
relu6 gelu silu mish hardswish hardsigmoid hardtanh elu selu celu leaky_relu prelu softplus softsign
softshrink hardshrink tanhshrink threshold logsigmoid glu dropout dropout1d dropout2d dropout3d alpha_dropout
feature_alpha_dropout layer_norm batch_norm group_norm instance_norm rms_norm local_response_norm normalize
max_pool1d max_pool2d max_pool3d avg_pool1d avg_pool2d avg_pool3d adaptive_avg_pool1d adaptive_avg_pool2d
adaptive_avg_pool3d adaptive_max_pool1d adaptive_max_pool2d adaptive_max_pool3d lp_pool1d lp_pool2d interpolate
upsample pad pixel_shuffle pixel_unshuffle channel_shuffle native_channel_shuffle embedding one_hot
""".split()

#: functions that run no counted aten op: ``operator``'s (but ``@``), ``getattr``, and torch's and
#: torch.nn.functional's elementwise, reduction, layout, norm and pooling functions
ZERO_FUNCTIONS = frozenset(
    {f for name in dir(operator) if not name.startswith("_") and "matmul" not in name and name != "call"
     for f in [getattr(operator, name)] if callable(f)}
    | {getattr, len, torch._assert}
    | {f for name in dir(math) if not name.startswith("_") for f in [getattr(math, name)] if callable(f)}
    | {getattr(mod, name) for mod in (torch, F) for name in _ZERO_NAMES if callable(getattr(mod, name, None))})

#: method names (``x.view(...)``) that run no counted aten op
ZERO_METHODS = frozenset(set(_ZERO_NAMES) | {
    "view", "view_as", "reshape_as", "expand", "expand_as", "repeat", "contiguous", "size", "dim", "float",
    "double", "half", "bfloat16", "int", "long", "bool", "to", "type", "type_as", "detach", "clone", "new_zeros",
    "new_ones", "new_full", "new_empty", "zero_", "fill_", "copy_", "masked_fill_", "add_", "sub_", "mul_", "div_",
    "relu_", "sigmoid_", "clamp_", "clamp_min_", "__getitem__", "__setitem__", "item", "tolist", "numel",
})

#: functions of other libraries (by module and name) that run no counted aten op
ZERO_QUALNAMES = frozenset({
    ("torchvision.ops.stochastic_depth", "stochastic_depth"),   # bernoulli and mul (identity in eval)
    ("torchvision.models.swin_transformer", "_patch_merging_pad"),       # pad, slices, cat
    ("torchvision.models.swin_transformer", "_get_relative_position_bias"),   # indexing, permute
})

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONV_T = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_F_CONV = {F.conv1d, F.conv2d, F.conv3d}
_F_CONV_T = {F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d}
_MATMUL_FUNCTIONS = {torch.matmul, operator.matmul, torch.mm, torch.bmm}
_MATMUL_METHODS = {"matmul", "mm", "bmm", "__matmul__"}


def _shape(arg):
    """The shape recorded for a node argument (a tensor's tensor_meta), else None."""
    if isinstance(arg, fx.Node):
        meta = arg.meta.get("tensor_meta")
        shape = getattr(meta, "shape", None)
        return tuple(shape) if shape is not None else None
    if isinstance(arg, torch.Tensor):
        return tuple(arg.shape)
    return None


def _arg(node: fx.Node, i: int, name: str):
    if i < len(node.args):
        return node.args[i]
    return node.kwargs.get(name)


def _conv(x, w, transposed: bool):
    """aten.convolution's formula, for a batched input (an unbatched one is unsqueezed inside: run it)."""
    if x is None or w is None or len(x) != len(w):
        return None
    formula = flop_registry[_aten.convolution]
    return lambda out: formula(torch.Size(x), torch.Size(w), None, None, None, None, transposed, out_val=out)


def _linear(x, w):
    """F.linear runs addmm, mm or bmm on the input folded to (-1, in) and the (in, out) weight."""
    if x is None or w is None or len(w) != 2 or not x or x[-1] != w[1]:
        return None
    rows = math.prod(x[:-1])
    mm = flop_registry[_aten.mm]
    return lambda out: mm(torch.Size((rows, w[1])), torch.Size((w[1], w[0])))


def _matmul(a, b):
    """matmul of operands of rank >= 2: mm on folded operands or bmm over the broadcast batch dims, the
    same count either way. A rank-1 operand may run mv or dot (not counted) or a bmm, by strides: run it."""
    if a is None or b is None or len(a) < 2 or len(b) < 2 or a[-1] != b[-2]:
        return None
    batch = math.prod(torch.broadcast_shapes(torch.Size(a[:-2]), torch.Size(b[:-2])))
    bmm = flop_registry[_aten.bmm]
    return lambda out: bmm(torch.Size((batch, a[-2], a[-1])), torch.Size((batch, b[-2], b[-1])))


_KNOWN_MODULES = ZERO_MODULES | set(_CONV) | set(_CONV_T) | {nn.Linear}
_KIND: dict[type, type | None] = {}


def module_kind(m: nn.Module) -> type | None:
    """The known module class ``m`` computes as: its own class, or a base class of it whose forward
    (and, for convolutions, ``_conv_forward``) the subclass does not override (torchvision's
    Conv3DSimple is an nn.Conv3d); None if neither."""
    cls = type(m)
    if cls not in _KIND:
        _KIND[cls] = next((base for base in cls.__mro__ if base in _KNOWN_MODULES and cls.forward is base.forward
                           and getattr(cls, "_conv_forward", None) is getattr(base, "_conv_forward", None)), None)
    return _KIND[cls]


def formula(node: fx.Node, modules: dict):
    """How to count ``node``'s FLOPs from shapes, decided before it runs (its inputs have their
    tensor_meta): a function of its output (a tensor or its tensor_meta) giving the FLOPs, 0 for an op
    that runs no counted aten op, or None when the node must run under FlopCounterMode to be counted."""
    op, target = node.op, node.target
    if op in ("placeholder", "get_attr", "output"):
        return 0
    if op == "call_module":
        m = modules.get(target)
        kind = module_kind(m)
        if kind in ZERO_MODULES:
            return 0
        x = _shape(_arg(node, 0, "input"))
        if kind in _CONV or kind in _CONV_T:
            return _conv(x, tuple(m.weight.shape), kind in _CONV_T)
        if kind is nn.Linear:
            return _linear(x, tuple(m.weight.shape))
        return None
    if op == "call_function":
        if target in ZERO_FUNCTIONS or (getattr(target, "__module__", None), getattr(target, "__name__", None)) \
                in ZERO_QUALNAMES:
            return 0
        if target is F.linear:
            return _linear(_shape(_arg(node, 0, "input")), _shape(_arg(node, 1, "weight")))
        if target in _F_CONV or target in _F_CONV_T:
            return _conv(_shape(_arg(node, 0, "input")), _shape(_arg(node, 1, "weight")), target in _F_CONV_T)
        if target in _MATMUL_FUNCTIONS:
            a, b = _shape(_arg(node, 0, "input")), _shape(_arg(node, 1, "other"))
            if target in (torch.mm, torch.bmm) and (a is None or b is None or len(a) != len(b)):
                return None
            return _matmul(a, b)
        return None
    if op == "call_method":
        if target in ZERO_METHODS:
            return 0
        if target in _MATMUL_METHODS:
            a, b = _shape(_arg(node, 0, "self")), _shape(_arg(node, 1, "other"))
            if target in ("mm", "bmm") and (a is None or b is None or len(a) != len(b)):
                return None
            return _matmul(a, b)
    return None


def _out_shape(node: fx.Node):
    meta = node.meta.get("tensor_meta")
    return getattr(meta, "shape", None)


def node_flops(node: fx.Node, modules: dict) -> int | None:
    """FLOPs of ``node`` from the shapes recorded in the graph (tensor_meta), or None when it must be
    run to be counted (:func:`formula`)."""
    f = formula(node, modules)
    if f is None or isinstance(f, int):
        return f
    out = _out_shape(node)
    return None if out is None else int(f(torch.Size(out)))


def graph_flops(gm: fx.GraphModule, counted: dict[str, int] | None = None) -> int:
    """FLOPs of ``gm`` from its nodes' tensor_meta; ``counted[node name]`` for the nodes that had to be
    run under FlopCounterMode (ValueError for such a node not in ``counted``)."""
    counted = counted or {}
    modules = dict(gm.named_modules())
    total = 0
    for node in gm.graph.nodes:
        if node.name in counted:
            total += counted[node.name]
            continue
        f = node_flops(node, modules)
        if f is None:
            raise ValueError(f"no FLOP formula for {node.format_node()}: run it under FlopCounterMode")
        total += f
    return total
