"""A zoo of small but faithful versions of real network architectures, for testing fxprune's generality.

torchvision is not available and HuggingFace models cannot be traced by torch.fx, so the blocks below are
re-written after the original code (torchvision, timm, facebookresearch/ConvNeXt, nanoGPT, milesial/Pytorch-UNet,
locuslab/TCN, the torchaudio M5 tutorial, ...), keeping the idioms of that code: in-place residual adds,
``x.size()`` unpacking, ``view``/``chunk``/``split``/``permute``/``flatten``, ``torch.cat`` of branches, layer
scale parameters, registered buffers, ``math.sqrt`` of a traced size, and so on. Only the sizes are small.

Every model:
  * is built by a factory that seeds torch itself (``torch.manual_seed``) and returns it in ``eval()`` mode;
  * has non-trivial normalization: BatchNorm running statistics are calibrated on random data (so activations
    stay O(1) through the depth) and then perturbed, and BN / LayerNorm affine parameters are randomized;
  * is traceable with ``torch.fx.symbolic_trace`` and has fewer than 300k parameters.

``ZOO`` is a list of ``(name, factory, example_inputs_factory)``; ``example_inputs_factory()`` returns a tuple.
Run ``python tests/zoo.py`` to check every model (``--prune`` also tries ``fxprune.prune(..., sparsity=0.5)``).
"""
from __future__ import annotations

import math
from collections import OrderedDict
from functools import partial

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor


# =====================================================================================================
# helpers
# =====================================================================================================

def _make_divisible(v: float, divisor: int, min_value: int | None = None) -> int:
    """torchvision.models._utils._make_divisible."""
    if min_value is None:
        min_value = divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


class Conv2dNormActivation(nn.Sequential):
    """torchvision.ops.misc.Conv2dNormActivation (conv -> norm -> activation, as a Sequential)."""

    def __init__(self, in_channels, out_channels, kernel_size=3, stride=1, padding=None, groups=1,
                 norm_layer=nn.BatchNorm2d, activation_layer=nn.ReLU, dilation=1, inplace=True, bias=None):
        if padding is None:
            padding = (kernel_size - 1) // 2 * dilation
        if bias is None:
            bias = norm_layer is None
        layers = [nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation=dilation,
                            groups=groups, bias=bias)]
        if norm_layer is not None:
            layers.append(norm_layer(out_channels))
        if activation_layer is not None:
            params = {} if inplace is None else {"inplace": inplace}
            layers.append(activation_layer(**params))
        super().__init__(*layers)
        self.out_channels = out_channels


class SqueezeExcitation(nn.Module):
    """torchvision.ops.misc.SqueezeExcitation: 1x1 convs, returns ``scale * input`` itself."""

    def __init__(self, input_channels, squeeze_channels, activation=nn.ReLU, scale_activation=nn.Sigmoid):
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(input_channels, squeeze_channels, 1)
        self.fc2 = nn.Conv2d(squeeze_channels, input_channels, 1)
        self.activation = activation()
        self.scale_activation = scale_activation()

    def _scale(self, input: Tensor) -> Tensor:
        scale = self.avgpool(input)
        scale = self.fc1(scale)
        scale = self.activation(scale)
        scale = self.fc2(scale)
        return self.scale_activation(scale)

    def forward(self, input: Tensor) -> Tensor:
        scale = self._scale(input)
        return scale * input


def _randomize_affine(model: nn.Module, gen: torch.Generator) -> None:
    """Random (non-identity) affine parameters for every norm layer, and perturbed BN running stats."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                c = m.num_features
                if m.affine:
                    m.weight.copy_(1.0 + 0.3 * torch.randn(c, generator=gen))
                    m.bias.copy_(0.2 * torch.randn(c, generator=gen))
                if m.track_running_stats:
                    std = m.running_var.sqrt()
                    m.running_mean.add_(0.2 * std * torch.randn(c, generator=gen))
                    m.running_var.mul_(0.6 + 0.8 * torch.rand(c, generator=gen))
            elif isinstance(m, (nn.LayerNorm, nn.GroupNorm)) or type(m).__name__ == "LayerNorm":
                w, b = getattr(m, "weight", None), getattr(m, "bias", None)
                if isinstance(w, torch.Tensor):
                    w.copy_(1.0 + 0.3 * torch.randn(w.shape, generator=gen))
                if isinstance(b, torch.Tensor):
                    b.copy_(0.2 * torch.randn(b.shape, generator=gen))


def _calibrate_bn(model: nn.Module, inputs: tuple) -> None:
    """Set BN running stats to the (cumulative) batch statistics of ``inputs``: activations stay O(1)."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    with torch.no_grad():
        model(*inputs)
    for m, mom in zip(bns, saved):
        m.momentum = mom


def _finish(model: nn.Module, calib_inputs: tuple | None = None, seed: int = 0) -> nn.Module:
    gen = torch.Generator().manual_seed(10_000 + seed)
    if calib_inputs is not None:
        _calibrate_bn(model, calib_inputs)
    _randomize_affine(model, gen)
    return model.eval()


def _images(n=1, c=3, h=32, w=32, seed=0):
    return torch.randn(n, c, h, w, generator=torch.Generator().manual_seed(seed))


# =====================================================================================================
# 1. ResNet (torchvision.models.resnet)
# =====================================================================================================

def conv3x3(in_planes, out_planes, stride=1, groups=1, dilation=1):
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=dilation, groups=groups,
                     bias=False, dilation=dilation)


def conv1x1(in_planes, out_planes, stride=1):
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None, norm_layer=None):
        super().__init__()
        if norm_layer is None:
            norm_layer = nn.BatchNorm2d
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = norm_layer(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = norm_layer(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        identity = x

        out = self.conv1(x)
        out = self.bn1(out)
        out = self.relu(out)

        out = self.conv2(out)
        out = self.bn2(out)

        if self.downsample is not None:
            identity = self.downsample(x)

        out += identity
        out = self.relu(out)

        return out


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None, groups=1, base_width=64, norm_layer=None):
        super().__init__()
        if norm_layer is None:
            norm_layer = nn.BatchNorm2d
        width = int(planes * (base_width / 64.0)) * groups
        self.conv1 = conv1x1(inplanes, width)
        self.bn1 = norm_layer(width)
        self.conv2 = conv3x3(width, width, stride, groups)
        self.bn2 = norm_layer(width)
        self.conv3 = conv1x1(width, planes * self.expansion)
        self.bn3 = norm_layer(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        identity = x

        out = self.conv1(x)
        out = self.bn1(out)
        out = self.relu(out)

        out = self.conv2(out)
        out = self.bn2(out)
        out = self.relu(out)

        out = self.conv3(out)
        out = self.bn3(out)

        if self.downsample is not None:
            identity = self.downsample(x)

        out = out + identity
        out = self.relu(out)

        return out


class ResNet(nn.Module):
    """torchvision ResNet with two stages and a narrow base width."""

    def __init__(self, block, layers, widths=(16, 32), num_classes=10, groups=1, width_per_group=64):
        super().__init__()
        norm_layer = nn.BatchNorm2d
        self._norm_layer = norm_layer
        self.inplanes = widths[0]
        self.groups = groups
        self.base_width = width_per_group
        self.conv1 = nn.Conv2d(3, self.inplanes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = norm_layer(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, widths[0], layers[0])
        self.layer2 = self._make_layer(block, widths[1], layers[1], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(widths[1] * block.expansion, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _make_layer(self, block, planes, blocks, stride=1):
        norm_layer = self._norm_layer
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                conv1x1(self.inplanes, planes * block.expansion, stride),
                norm_layer(planes * block.expansion),
            )
        kw = {"groups": self.groups, "base_width": self.base_width} if block is Bottleneck else {}
        layers = [block(self.inplanes, planes, stride, downsample, norm_layer=norm_layer, **kw)]
        self.inplanes = planes * block.expansion
        for _ in range(1, blocks):
            layers.append(block(self.inplanes, planes, norm_layer=norm_layer, **kw))
        return nn.Sequential(*layers)

    def _forward_impl(self, x: Tensor) -> Tensor:
        x = self.conv1(x)
        x = self.bn1(x)
        x = self.relu(x)
        x = self.maxpool(x)

        x = self.layer1(x)
        x = self.layer2(x)

        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        x = self.fc(x)

        return x

    def forward(self, x: Tensor) -> Tensor:
        return self._forward_impl(x)


def resnet_basic():
    torch.manual_seed(0)
    m = ResNet(BasicBlock, [2, 2], widths=(16, 32))
    return _finish(m, (_images(8, seed=99),))


def resnet_bottleneck():
    torch.manual_seed(0)
    m = ResNet(Bottleneck, [2, 1], widths=(8, 16))
    return _finish(m, (_images(8, seed=99),))


def resnext_bottleneck():
    """ResNeXt: Bottleneck with grouped 3x3 convs (groups=4, width_per_group=4)."""
    torch.manual_seed(0)
    m = ResNet(Bottleneck, [1, 1], widths=(8, 16), groups=4, width_per_group=16)
    return _finish(m, (_images(8, seed=99),))


# =====================================================================================================
# 2. MobileNetV2 (torchvision.models.mobilenetv2)
# =====================================================================================================

class InvertedResidual(nn.Module):
    def __init__(self, inp, oup, stride, expand_ratio, norm_layer=None):
        super().__init__()
        self.stride = stride
        if norm_layer is None:
            norm_layer = nn.BatchNorm2d
        hidden_dim = int(round(inp * expand_ratio))
        self.use_res_connect = self.stride == 1 and inp == oup

        layers: list[nn.Module] = []
        if expand_ratio != 1:
            # pw
            layers.append(Conv2dNormActivation(inp, hidden_dim, kernel_size=1, norm_layer=norm_layer,
                                               activation_layer=nn.ReLU6))
        layers.extend([
            # dw
            Conv2dNormActivation(hidden_dim, hidden_dim, stride=stride, groups=hidden_dim, norm_layer=norm_layer,
                                 activation_layer=nn.ReLU6),
            # pw-linear
            nn.Conv2d(hidden_dim, oup, 1, 1, 0, bias=False),
            norm_layer(oup),
        ])
        self.conv = nn.Sequential(*layers)
        self.out_channels = oup
        self._is_cn = stride > 1

    def forward(self, x: Tensor) -> Tensor:
        if self.use_res_connect:
            return x + self.conv(x)
        else:
            return self.conv(x)


class MobileNetV2(nn.Module):
    def __init__(self, num_classes=10, width_mult=0.5, last_channel=256, dropout=0.2):
        super().__init__()
        input_channel = 32
        inverted_residual_setting = [
            # t, c, n, s
            [1, 16, 1, 1],
            [6, 24, 2, 2],
            [6, 32, 2, 2],
            [6, 64, 1, 2],
        ]
        round_nearest = 8
        input_channel = _make_divisible(input_channel * width_mult, round_nearest)
        self.last_channel = _make_divisible(last_channel * max(1.0, width_mult), round_nearest)
        features: list[nn.Module] = [
            Conv2dNormActivation(3, input_channel, stride=2, norm_layer=nn.BatchNorm2d, activation_layer=nn.ReLU6)
        ]
        for t, c, n, s in inverted_residual_setting:
            output_channel = _make_divisible(c * width_mult, round_nearest)
            for i in range(n):
                stride = s if i == 0 else 1
                features.append(InvertedResidual(input_channel, output_channel, stride, expand_ratio=t))
                input_channel = output_channel
        features.append(Conv2dNormActivation(input_channel, self.last_channel, kernel_size=1,
                                             norm_layer=nn.BatchNorm2d, activation_layer=nn.ReLU6))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout),
            nn.Linear(self.last_channel, num_classes),
        )

    def _forward_impl(self, x: Tensor) -> Tensor:
        x = self.features(x)
        # Cannot use "squeeze" as batch-size can be 1
        x = nn.functional.adaptive_avg_pool2d(x, (1, 1))
        x = torch.flatten(x, 1)
        x = self.classifier(x)
        return x

    def forward(self, x: Tensor) -> Tensor:
        return self._forward_impl(x)


def mobilenet_v2():
    torch.manual_seed(0)
    return _finish(MobileNetV2(), (_images(8, seed=99),))


# =====================================================================================================
# 3. Squeeze-excitation: MobileNetV3 (hardsigmoid, 1x1 convs, x * self.se(x), Hardswish) and
#    EfficientNet MBConv with the SENet SELayer (Linear layers, b, c, _, _ = x.size(), view, sigmoid, SiLU)
# =====================================================================================================

class HardSE(nn.Sequential):
    """MobileNetV3 squeeze-excite returning the scale: pool -> 1x1 conv -> ReLU -> 1x1 conv -> Hardsigmoid."""

    def __init__(self, channels, squeeze_channels):
        super().__init__(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(channels, squeeze_channels, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(squeeze_channels, channels, 1),
            nn.Hardsigmoid(inplace=True),
        )


class MobileNetV3Block(nn.Module):
    """MobileNetV3 bneck: expand 1x1 -> depthwise kxk -> (SE) -> project 1x1 (linear); residual if possible."""

    def __init__(self, inp, exp, out, kernel, stride, use_se, use_hs):
        super().__init__()
        act = nn.Hardswish if use_hs else nn.ReLU
        self.use_res_connect = stride == 1 and inp == out
        self.expand = (Conv2dNormActivation(inp, exp, kernel_size=1, activation_layer=act)
                       if exp != inp else nn.Identity())
        self.dw = Conv2dNormActivation(exp, exp, kernel_size=kernel, stride=stride, groups=exp, activation_layer=act)
        self.se = HardSE(exp, _make_divisible(exp // 4, 8)) if use_se else None
        self.project = Conv2dNormActivation(exp, out, kernel_size=1, activation_layer=None)

    def forward(self, x: Tensor) -> Tensor:
        out = self.expand(x)
        out = self.dw(out)
        if self.se is not None:
            out = out * self.se(out)
        out = self.project(out)
        if self.use_res_connect:
            out += x
        return out


class MobileNetV3(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        # inp, exp, out, k, s, se, hs
        setting = [
            (16, 16, 16, 3, 2, True, False),
            (16, 48, 24, 3, 2, False, False),
            (24, 72, 24, 3, 1, False, False),
            (24, 72, 40, 5, 2, True, True),
            (40, 120, 40, 5, 1, True, True),
        ]
        layers: list[nn.Module] = [Conv2dNormActivation(3, 16, stride=2, activation_layer=nn.Hardswish)]
        for cfg in setting:
            layers.append(MobileNetV3Block(*cfg))
        layers.append(Conv2dNormActivation(40, 240, kernel_size=1, activation_layer=nn.Hardswish))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Linear(240, 128),
            nn.Hardswish(inplace=True),
            nn.Dropout(p=0.2, inplace=True),
            nn.Linear(128, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        x = self.classifier(x)
        return x


def mobilenet_v3():
    torch.manual_seed(0)
    return _finish(MobileNetV3(), (_images(8, seed=99),))


class SELayer(nn.Module):
    """SENet (hujie-frank / moskomule senet.pytorch) SE layer: Linear layers on the pooled vector."""

    def __init__(self, channel, reduction=4):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(
            nn.Linear(channel, channel // reduction, bias=False),
            nn.ReLU(inplace=True),
            nn.Linear(channel // reduction, channel, bias=False),
            nn.Sigmoid(),
        )

    def forward(self, x):
        b, c, _, _ = x.size()
        y = self.avg_pool(x).view(b, c)
        y = self.fc(y).view(b, c, 1, 1)
        return x * y.expand_as(x)


class MBConv(nn.Module):
    """EfficientNet MBConv (SiLU, SE on the expanded width, linear projection, in-place residual)."""

    def __init__(self, inp, out, expand_ratio, kernel, stride):
        super().__init__()
        self.use_res_connect = stride == 1 and inp == out
        expanded = _make_divisible(inp * expand_ratio, 8)
        layers: list[nn.Module] = []
        if expanded != inp:
            layers.append(Conv2dNormActivation(inp, expanded, kernel_size=1, activation_layer=nn.SiLU))
        layers.append(Conv2dNormActivation(expanded, expanded, kernel_size=kernel, stride=stride, groups=expanded,
                                           activation_layer=nn.SiLU))
        layers.append(SELayer(expanded, reduction=4 * expand_ratio))
        layers.append(Conv2dNormActivation(expanded, out, kernel_size=1, activation_layer=None))
        self.block = nn.Sequential(*layers)

    def forward(self, input: Tensor) -> Tensor:
        result = self.block(input)
        if self.use_res_connect:
            result += input
        return result


class EfficientNet(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.features = nn.Sequential(
            Conv2dNormActivation(3, 16, stride=2, activation_layer=nn.SiLU),
            MBConv(16, 16, 1, 3, 1),
            MBConv(16, 24, 6, 3, 2),
            MBConv(24, 24, 6, 3, 1),
            MBConv(24, 40, 6, 5, 2),
            Conv2dNormActivation(40, 160, kernel_size=1, activation_layer=nn.SiLU),
        )
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(p=0.2, inplace=True), nn.Linear(160, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)


def efficientnet():
    torch.manual_seed(0)
    return _finish(EfficientNet(), (_images(8, seed=99),))


# =====================================================================================================
# 4. DenseNet: the original / kuangliu form (torch.cat([x, new], 1)) and the torchvision form
#    (a list of previous features, concatenated by each layer)
# =====================================================================================================

class DenseLayer(nn.Module):
    """BN-ReLU-Conv1x1-BN-ReLU-Conv3x3, output concatenated onto its input."""

    def __init__(self, in_planes, growth_rate, bn_size=4):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, bn_size * growth_rate, kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(bn_size * growth_rate)
        self.conv2 = nn.Conv2d(bn_size * growth_rate, growth_rate, kernel_size=3, padding=1, bias=False)

    def forward(self, x):
        out = self.conv1(F.relu(self.bn1(x)))
        out = self.conv2(F.relu(self.bn2(out)))
        out = torch.cat([x, out], 1)
        return out


class Transition(nn.Module):
    def __init__(self, in_planes, out_planes):
        super().__init__()
        self.bn = nn.BatchNorm2d(in_planes)
        self.conv = nn.Conv2d(in_planes, out_planes, kernel_size=1, bias=False)

    def forward(self, x):
        out = self.conv(F.relu(self.bn(x)))
        out = F.avg_pool2d(out, 2)
        return out


class DenseNet(nn.Module):
    def __init__(self, nblocks=(2, 3, 3), growth_rate=8, reduction=0.5, num_classes=10):
        super().__init__()
        num_planes = 2 * growth_rate
        self.conv1 = nn.Conv2d(3, num_planes, kernel_size=3, padding=1, bias=False)

        self.dense1 = self._make_dense_layers(num_planes, growth_rate, nblocks[0])
        num_planes += nblocks[0] * growth_rate
        out_planes = int(math.floor(num_planes * reduction))
        self.trans1 = Transition(num_planes, out_planes)
        num_planes = out_planes

        self.dense2 = self._make_dense_layers(num_planes, growth_rate, nblocks[1])
        num_planes += nblocks[1] * growth_rate
        out_planes = int(math.floor(num_planes * reduction))
        self.trans2 = Transition(num_planes, out_planes)
        num_planes = out_planes

        self.dense3 = self._make_dense_layers(num_planes, growth_rate, nblocks[2])
        num_planes += nblocks[2] * growth_rate

        self.bn = nn.BatchNorm2d(num_planes)
        self.linear = nn.Linear(num_planes, num_classes)

    @staticmethod
    def _make_dense_layers(in_planes, growth_rate, nblock):
        layers = []
        for _ in range(nblock):
            layers.append(DenseLayer(in_planes, growth_rate))
            in_planes += growth_rate
        return nn.Sequential(*layers)

    def forward(self, x):
        out = self.conv1(x)
        out = self.trans1(self.dense1(out))
        out = self.trans2(self.dense2(out))
        out = self.dense3(out)
        out = F.avg_pool2d(F.relu(self.bn(out)), 8)
        out = out.view(out.size(0), -1)
        out = self.linear(out)
        return out


def densenet():
    torch.manual_seed(0)
    return _finish(DenseNet(), (_images(8, seed=99),))


class _DenseLayerTV(nn.Module):
    """torchvision.models.densenet._DenseLayer (without memory-efficient checkpointing)."""

    def __init__(self, num_input_features, growth_rate, bn_size, drop_rate):
        super().__init__()
        self.norm1 = nn.BatchNorm2d(num_input_features)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(num_input_features, bn_size * growth_rate, kernel_size=1, stride=1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth_rate)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(bn_size * growth_rate, growth_rate, kernel_size=3, stride=1, padding=1, bias=False)
        self.drop_rate = float(drop_rate)

    def bn_function(self, inputs: list[Tensor]) -> Tensor:
        concated_features = torch.cat(inputs, 1)
        bottleneck_output = self.conv1(self.relu1(self.norm1(concated_features)))
        return bottleneck_output

    def forward(self, input):
        if isinstance(input, Tensor):
            prev_features = [input]
        else:
            prev_features = input
        bottleneck_output = self.bn_function(prev_features)
        new_features = self.conv2(self.relu2(self.norm2(bottleneck_output)))
        if self.drop_rate > 0:
            new_features = F.dropout(new_features, p=self.drop_rate, training=self.training)
        return new_features


class _DenseBlockTV(nn.ModuleDict):
    def __init__(self, num_layers, num_input_features, bn_size, growth_rate, drop_rate):
        super().__init__()
        for i in range(num_layers):
            layer = _DenseLayerTV(num_input_features + i * growth_rate, growth_rate, bn_size, drop_rate)
            self.add_module("denselayer%d" % (i + 1), layer)

    def forward(self, init_features: Tensor) -> Tensor:
        features = [init_features]
        for name, layer in self.items():
            new_features = layer(features)
            features.append(new_features)
        return torch.cat(features, 1)


class _TransitionTV(nn.Sequential):
    def __init__(self, num_input_features, num_output_features):
        super().__init__()
        self.norm = nn.BatchNorm2d(num_input_features)
        self.relu = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(num_input_features, num_output_features, kernel_size=1, stride=1, bias=False)
        self.pool = nn.AvgPool2d(kernel_size=2, stride=2)


class DenseNetTV(nn.Module):
    def __init__(self, growth_rate=8, block_config=(3, 3), num_init_features=16, bn_size=4, drop_rate=0.1,
                 num_classes=10):
        super().__init__()
        self.features = nn.Sequential(OrderedDict([
            ("conv0", nn.Conv2d(3, num_init_features, kernel_size=3, stride=1, padding=1, bias=False)),
            ("norm0", nn.BatchNorm2d(num_init_features)),
            ("relu0", nn.ReLU(inplace=True)),
            ("pool0", nn.MaxPool2d(kernel_size=3, stride=2, padding=1)),
        ]))
        num_features = num_init_features
        for i, num_layers in enumerate(block_config):
            block = _DenseBlockTV(num_layers, num_features, bn_size, growth_rate, drop_rate)
            self.features.add_module("denseblock%d" % (i + 1), block)
            num_features = num_features + num_layers * growth_rate
            if i != len(block_config) - 1:
                trans = _TransitionTV(num_features, num_features // 2)
                self.features.add_module("transition%d" % (i + 1), trans)
                num_features = num_features // 2
        self.features.add_module("norm5", nn.BatchNorm2d(num_features))
        self.classifier = nn.Linear(num_features, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        features = self.features(x)
        out = F.relu(features, inplace=True)
        out = F.adaptive_avg_pool2d(out, (1, 1))
        out = torch.flatten(out, 1)
        out = self.classifier(out)
        return out


def densenet_tv():
    torch.manual_seed(0)
    return _finish(DenseNetTV(), (_images(8, seed=99),))


# =====================================================================================================
# 5. Inception (torchvision GoogLeNet)
# =====================================================================================================

class BasicConv2d(nn.Module):
    def __init__(self, in_channels, out_channels, **kwargs):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **kwargs)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        x = self.bn(x)
        return F.relu(x, inplace=True)


class Inception(nn.Module):
    def __init__(self, in_channels, ch1x1, ch3x3red, ch3x3, ch5x5red, ch5x5, pool_proj, conv_block=None):
        super().__init__()
        if conv_block is None:
            conv_block = BasicConv2d
        self.branch1 = conv_block(in_channels, ch1x1, kernel_size=1)
        self.branch2 = nn.Sequential(
            conv_block(in_channels, ch3x3red, kernel_size=1), conv_block(ch3x3red, ch3x3, kernel_size=3, padding=1)
        )
        self.branch3 = nn.Sequential(
            conv_block(in_channels, ch5x5red, kernel_size=1),
            # torchvision uses 3x3 here too (a known bug kept for compatibility)
            conv_block(ch5x5red, ch5x5, kernel_size=3, padding=1),
        )
        self.branch4 = nn.Sequential(
            nn.MaxPool2d(kernel_size=3, stride=1, padding=1, ceil_mode=True),
            conv_block(in_channels, pool_proj, kernel_size=1),
        )

    def _forward(self, x: Tensor) -> list[Tensor]:
        branch1 = self.branch1(x)
        branch2 = self.branch2(x)
        branch3 = self.branch3(x)
        branch4 = self.branch4(x)
        outputs = [branch1, branch2, branch3, branch4]
        return outputs

    def forward(self, x: Tensor) -> Tensor:
        outputs = self._forward(x)
        return torch.cat(outputs, 1)


class GoogLeNet(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.conv1 = BasicConv2d(3, 32, kernel_size=3, stride=1, padding=1)
        self.maxpool1 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.inception3a = Inception(32, 16, 16, 24, 4, 8, 8)      # -> 56
        self.inception3b = Inception(56, 24, 24, 32, 8, 16, 16)    # -> 88
        self.maxpool3 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.inception4a = Inception(88, 32, 16, 32, 8, 16, 16)    # -> 96
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Dropout(p=0.2)
        self.fc = nn.Linear(96, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv1(x)
        x = self.maxpool1(x)
        x = self.inception3a(x)
        x = self.inception3b(x)
        x = self.maxpool3(x)
        x = self.inception4a(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        x = self.dropout(x)
        x = self.fc(x)
        return x


def googlenet():
    torch.manual_seed(0)
    return _finish(GoogLeNet(), (_images(8, seed=99),))


# =====================================================================================================
# 6. ShuffleNetV2 (torchvision.models.shufflenetv2)
# =====================================================================================================

def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    batchsize, num_channels, height, width = x.size()
    channels_per_group = num_channels // groups

    # reshape
    x = x.view(batchsize, groups, channels_per_group, height, width)

    x = torch.transpose(x, 1, 2).contiguous()

    # flatten
    x = x.view(batchsize, -1, height, width)

    return x


class ShuffleInvertedResidual(nn.Module):
    def __init__(self, inp: int, oup: int, stride: int) -> None:
        super().__init__()
        if not (1 <= stride <= 3):
            raise ValueError("illegal stride value")
        self.stride = stride

        branch_features = oup // 2
        if (self.stride == 1) and (inp != branch_features << 1):
            raise ValueError(f"Invalid combination of stride {stride}, inp {inp} and oup {oup} values.")

        if self.stride > 1:
            self.branch1 = nn.Sequential(
                self.depthwise_conv(inp, inp, kernel_size=3, stride=self.stride, padding=1),
                nn.BatchNorm2d(inp),
                nn.Conv2d(inp, branch_features, kernel_size=1, stride=1, padding=0, bias=False),
                nn.BatchNorm2d(branch_features),
                nn.ReLU(inplace=True),
            )
        else:
            self.branch1 = nn.Sequential()

        self.branch2 = nn.Sequential(
            nn.Conv2d(inp if (self.stride > 1) else branch_features, branch_features, kernel_size=1, stride=1,
                      padding=0, bias=False),
            nn.BatchNorm2d(branch_features),
            nn.ReLU(inplace=True),
            self.depthwise_conv(branch_features, branch_features, kernel_size=3, stride=self.stride, padding=1),
            nn.BatchNorm2d(branch_features),
            nn.Conv2d(branch_features, branch_features, kernel_size=1, stride=1, padding=0, bias=False),
            nn.BatchNorm2d(branch_features),
            nn.ReLU(inplace=True),
        )

    @staticmethod
    def depthwise_conv(i, o, kernel_size, stride=1, padding=0, bias=False) -> nn.Conv2d:
        return nn.Conv2d(i, o, kernel_size, stride, padding, bias=bias, groups=i)

    def forward(self, x: Tensor) -> Tensor:
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)

        out = channel_shuffle(out, 2)

        return out


class ShuffleNetV2(nn.Module):
    def __init__(self, stages_repeats=(2, 2), stages_out_channels=(24, 48, 96, 256), num_classes=10):
        """torchvision's shufflenet_v2_x1_0 is stages_repeats=(4, 8, 4),
        stages_out_channels=(24, 116, 232, 464, 1024), num_classes=1000."""
        super().__init__()
        self._stage_out_channels = stages_out_channels
        input_channels = 3
        output_channels = self._stage_out_channels[0]
        self.conv1 = nn.Sequential(
            nn.Conv2d(input_channels, output_channels, 3, 2, 1, bias=False),
            nn.BatchNorm2d(output_channels),
            nn.ReLU(inplace=True),
        )
        input_channels = output_channels
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)

        self._stage_names = stage_names = [f"stage{i}" for i in range(2, 2 + len(stages_repeats))]
        for name, repeats, output_channels in zip(stage_names, stages_repeats, self._stage_out_channels[1:]):
            seq = [ShuffleInvertedResidual(input_channels, output_channels, 2)]
            for i in range(repeats - 1):
                seq.append(ShuffleInvertedResidual(output_channels, output_channels, 1))
            setattr(self, name, nn.Sequential(*seq))
            input_channels = output_channels

        output_channels = self._stage_out_channels[-1]
        self.conv5 = nn.Sequential(
            nn.Conv2d(input_channels, output_channels, 1, 1, 0, bias=False),
            nn.BatchNorm2d(output_channels),
            nn.ReLU(inplace=True),
        )
        self.fc = nn.Linear(output_channels, num_classes)

    def _forward_impl(self, x: Tensor) -> Tensor:
        x = self.conv1(x)
        x = self.maxpool(x)
        for name in self._stage_names:
            x = getattr(self, name)(x)
        x = self.conv5(x)
        x = x.mean([2, 3])  # globalpool
        x = self.fc(x)
        return x

    def forward(self, x: Tensor) -> Tensor:
        return self._forward_impl(x)


def shufflenet_v2():
    torch.manual_seed(0)
    return _finish(ShuffleNetV2(), (_images(8, seed=99),))


# =====================================================================================================
# 7. VGG with BatchNorm (torchvision.models.vgg)
# =====================================================================================================

class VGG(nn.Module):
    def __init__(self, features: nn.Module, num_classes=10, dropout=0.5, pool=2, hidden=128):
        super().__init__()
        self.features = features
        self.avgpool = nn.AdaptiveAvgPool2d((pool, pool))
        self.classifier = nn.Sequential(
            nn.Linear(64 * pool * pool, hidden),
            nn.ReLU(True),
            nn.Dropout(p=dropout),
            nn.Linear(hidden, hidden),
            nn.ReLU(True),
            nn.Dropout(p=dropout),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        x = self.classifier(x)
        return x


def make_layers(cfg, batch_norm=False) -> nn.Sequential:
    layers: list[nn.Module] = []
    in_channels = 3
    for v in cfg:
        if v == "M":
            layers += [nn.MaxPool2d(kernel_size=2, stride=2)]
        else:
            conv2d = nn.Conv2d(in_channels, v, kernel_size=3, padding=1)
            if batch_norm:
                layers += [conv2d, nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
            else:
                layers += [conv2d, nn.ReLU(inplace=True)]
            in_channels = v
    return nn.Sequential(*layers)


def vgg_bn():
    torch.manual_seed(0)
    m = VGG(make_layers([16, "M", 32, "M", 64, 64, "M"], batch_norm=True))
    return _finish(m, (_images(8, seed=99),))


# =====================================================================================================
# 8. ConvNeXt (facebookresearch/ConvNeXt)
# =====================================================================================================

class LayerNorm(nn.Module):
    """ConvNeXt's LayerNorm supporting channels_last (N, H, W, C) or channels_first (N, C, H, W)."""

    def __init__(self, normalized_shape, eps=1e-6, data_format="channels_last"):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(normalized_shape))
        self.bias = nn.Parameter(torch.zeros(normalized_shape))
        self.eps = eps
        self.data_format = data_format
        if self.data_format not in ["channels_last", "channels_first"]:
            raise NotImplementedError
        self.normalized_shape = (normalized_shape,)

    def forward(self, x):
        if self.data_format == "channels_last":
            return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        elif self.data_format == "channels_first":
            u = x.mean(1, keepdim=True)
            s = (x - u).pow(2).mean(1, keepdim=True)
            x = (x - u) / torch.sqrt(s + self.eps)
            x = self.weight[:, None, None] * x + self.bias[:, None, None]
            return x


class ConvNeXtBlock(nn.Module):
    """dwconv 7x7 -> permute to NHWC -> LayerNorm -> Linear(C, 4C) -> GELU -> Linear(4C, C) -> gamma * x
    -> permute back -> residual."""

    def __init__(self, dim, drop_path=0.0, layer_scale_init_value=1e-6):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)  # depthwise conv
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)  # pointwise/1x1 convs, implemented with linear layers
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(layer_scale_init_value * torch.ones((dim)),
                                  requires_grad=True) if layer_scale_init_value > 0 else None
        self.drop_path = nn.Identity()

    def forward(self, x):
        input = x
        x = self.dwconv(x)
        x = x.permute(0, 2, 3, 1)  # (N, C, H, W) -> (N, H, W, C)
        x = self.norm(x)
        x = self.pwconv1(x)
        x = self.act(x)
        x = self.pwconv2(x)
        if self.gamma is not None:
            x = self.gamma * x
        x = x.permute(0, 3, 1, 2)  # (N, H, W, C) -> (N, C, H, W)

        x = input + self.drop_path(x)
        return x


class ConvNeXt(nn.Module):
    def __init__(self, in_chans=3, num_classes=10, depths=(2, 1), dims=(32, 64), layer_scale_init_value=1e-6):
        super().__init__()
        self.downsample_layers = nn.ModuleList()  # stem and intermediate downsampling conv layers
        stem = nn.Sequential(
            nn.Conv2d(in_chans, dims[0], kernel_size=4, stride=4),
            LayerNorm(dims[0], eps=1e-6, data_format="channels_first"),
        )
        self.downsample_layers.append(stem)
        for i in range(len(dims) - 1):
            downsample_layer = nn.Sequential(
                LayerNorm(dims[i], eps=1e-6, data_format="channels_first"),
                nn.Conv2d(dims[i], dims[i + 1], kernel_size=2, stride=2),
            )
            self.downsample_layers.append(downsample_layer)

        self.stages = nn.ModuleList()  # feature resolution stages, each consisting of multiple residual blocks
        for i in range(len(dims)):
            stage = nn.Sequential(*[ConvNeXtBlock(dim=dims[i], layer_scale_init_value=layer_scale_init_value)
                                    for _ in range(depths[i])])
            self.stages.append(stage)

        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)  # final norm layer
        self.head = nn.Linear(dims[-1], num_classes)

    def forward_features(self, x):
        for i in range(len(self.stages)):
            x = self.downsample_layers[i](x)
            x = self.stages[i](x)
        return self.norm(x.mean([-2, -1]))  # global average pooling, (N, C, H, W) -> (N, C)

    def forward(self, x):
        x = self.forward_features(x)
        x = self.head(x)
        return x


def convnext():
    torch.manual_seed(0)
    m = ConvNeXt()
    with torch.no_grad():  # trained layer scales are far from their 1e-6 init: make the blocks matter
        for blk in m.modules():
            if isinstance(blk, ConvNeXtBlock):
                blk.gamma.copy_(0.5 + torch.rand(blk.gamma.shape))
    return _finish(m)


# =====================================================================================================
# 9. ViT encoder (timm-style patch embedding and cls token, torchvision-style EncoderBlock with
#    nn.MultiheadAttention(batch_first=True))
# =====================================================================================================

class PatchEmbed(nn.Module):
    def __init__(self, img_size=32, patch_size=8, in_chans=3, embed_dim=64):
        super().__init__()
        self.num_patches = (img_size // patch_size) ** 2
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x):
        x = self.proj(x).flatten(2).transpose(1, 2)  # BCHW -> BNC
        return x


class MLPBlock(nn.Sequential):
    def __init__(self, in_dim, mlp_dim, dropout):
        super().__init__(
            nn.Linear(in_dim, mlp_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(mlp_dim, in_dim), nn.Dropout(dropout)
        )


class EncoderBlock(nn.Module):
    def __init__(self, num_heads, hidden_dim, mlp_dim, dropout=0.0, attention_dropout=0.0):
        super().__init__()
        self.num_heads = num_heads
        self.ln_1 = nn.LayerNorm(hidden_dim, eps=1e-6)
        self.self_attention = nn.MultiheadAttention(hidden_dim, num_heads, dropout=attention_dropout,
                                                    batch_first=True)
        self.dropout = nn.Dropout(dropout)
        self.ln_2 = nn.LayerNorm(hidden_dim, eps=1e-6)
        self.mlp = MLPBlock(hidden_dim, mlp_dim, dropout)

    def forward(self, input: Tensor):
        x = self.ln_1(input)
        x, _ = self.self_attention(x, x, x, need_weights=False)
        x = self.dropout(x)
        x = x + input

        y = self.ln_2(x)
        y = self.mlp(y)
        return x + y


class VisionTransformer(nn.Module):
    def __init__(self, img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, mlp_dim=128, num_classes=10):
        super().__init__()
        self.patch_embed = PatchEmbed(img_size, patch_size, 3, embed_dim)
        num_patches = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, embed_dim))
        self.pos_drop = nn.Dropout(p=0.1)
        self.blocks = nn.Sequential(*[EncoderBlock(num_heads, embed_dim, mlp_dim, dropout=0.1) for _ in range(depth)])
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head = nn.Linear(embed_dim, num_classes)
        nn.init.trunc_normal_(self.pos_embed, std=0.2)
        nn.init.trunc_normal_(self.cls_token, std=0.2)

    def forward_features(self, x):
        x = self.patch_embed(x)
        cls_token = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat((cls_token, x), dim=1)
        x = self.pos_drop(x + self.pos_embed)
        x = self.blocks(x)
        x = self.norm(x)
        return x[:, 0]

    def forward(self, x):
        x = self.forward_features(x)
        x = self.head(x)
        return x


def vit():
    torch.manual_seed(0)
    return _finish(VisionTransformer())


# =====================================================================================================
# 10. GPT (karpathy/nanoGPT model.py), hand-written causal attention or F.scaled_dot_product_attention
# =====================================================================================================

class GPTLayerNorm(nn.Module):
    """nanoGPT's LayerNorm with an optional bias (PyTorch's LayerNorm had no bias=False then)."""

    def __init__(self, ndim, bias):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, input):
        return F.layer_norm(input, self.weight.shape, self.weight, self.bias, 1e-5)


class GPTConfig:
    def __init__(self, block_size=16, vocab_size=96, n_layer=2, n_head=4, n_embd=64, dropout=0.0, bias=True,
                 flash=False, tie_weights=False):
        self.block_size = block_size
        self.vocab_size = vocab_size
        self.n_layer = n_layer
        self.n_head = n_head
        self.n_embd = n_embd
        self.dropout = dropout
        self.bias = bias
        self.flash = flash
        self.tie_weights = tie_weights


class CausalSelfAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        assert config.n_embd % config.n_head == 0
        # key, query, value projections for all heads, but in a batch
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        # output projection
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        # regularization
        self.attn_dropout = nn.Dropout(config.dropout)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout
        self.flash = config.flash
        if not self.flash:
            # causal mask to ensure that attention is only applied to the left in the input sequence
            self.register_buffer("bias", torch.tril(torch.ones(config.block_size, config.block_size))
                                 .view(1, 1, config.block_size, config.block_size))

    def forward(self, x):
        B, T, C = x.size()  # batch size, sequence length, embedding dimensionality (n_embd)

        # calculate query, key, values for all heads in batch and move head forward to be the batch dim
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)

        # causal self-attention; Self-attend: (B, nh, T, hs) x (B, nh, hs, T) -> (B, nh, T, T)
        if self.flash:
            y = torch.nn.functional.scaled_dot_product_attention(
                q, k, v, attn_mask=None, dropout_p=self.dropout if self.training else 0, is_causal=True)
        else:
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
            # nanoGPT writes self.bias[:, :, :T, :T]; torch.fx cannot slice a real buffer with a traced T, so the
            # same slice is taken with torch.narrow, which records T in the graph
            causal = torch.narrow(torch.narrow(self.bias, 2, 0, T), 3, 0, T)
            att = att.masked_fill(causal == 0, float("-inf"))
            att = F.softmax(att, dim=-1)
            att = self.attn_dropout(att)
            y = att @ v  # (B, nh, T, T) x (B, nh, T, hs) -> (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble all head outputs side by side

        # output projection
        y = self.resid_dropout(self.c_proj(y))
        return y


class GPTMLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        x = self.c_fc(x)
        x = self.gelu(x)
        x = self.c_proj(x)
        x = self.dropout(x)
        return x


class GPTBlock(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.ln_1 = GPTLayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = GPTLayerNorm(config.n_embd, bias=config.bias)
        self.mlp = GPTMLP(config)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([GPTBlock(config) for _ in range(config.n_layer)]),
            ln_f=GPTLayerNorm(config.n_embd, bias=config.bias),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_weights:
            # https://paperswithcode.com/method/weight-tying
            self.transformer.wte.weight = self.lm_head.weight

    def forward(self, idx):
        device = idx.device
        b, t = idx.size()
        pos = torch.arange(0, t, dtype=torch.long, device=device)  # shape (t)

        # forward the GPT model itself
        tok_emb = self.transformer.wte(idx)  # token embeddings of shape (b, t, n_embd)
        pos_emb = self.transformer.wpe(pos)  # position embeddings of shape (t, n_embd)
        x = self.transformer.drop(tok_emb + pos_emb)
        for block in self.transformer.h:
            x = block(x)
        x = self.transformer.ln_f(x)
        logits = self.lm_head(x)
        return logits


def gpt_manual():
    torch.manual_seed(0)
    return _finish(GPT(GPTConfig(flash=False)))


def gpt_sdpa():
    torch.manual_seed(0)
    return _finish(GPT(GPTConfig(flash=True)))


def gpt_tied():
    """nanoGPT as written: hand-written attention, no biases, lm_head tied to the token embedding."""
    torch.manual_seed(0)
    return _finish(GPT(GPTConfig(flash=False, bias=False, tie_weights=True)))


def _tokens(vocab=96, t=8, seed=0):
    return torch.randint(0, vocab, (2, t), generator=torch.Generator().manual_seed(seed))


# =====================================================================================================
# 10b. LLaMA (HuggingFace transformers' modeling_llama: RMSNorm, rotary embeddings computed at run time,
#      grouped-query attention with repeat_kv, SwiGLU MLP)
# =====================================================================================================

class LlamaRMSNorm(nn.Module):
    def __init__(self, hidden_size, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states):
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
        return self.weight * hidden_states


class LlamaRotaryEmbedding(nn.Module):
    def __init__(self, head_dim, base=10000.0):
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2).float() / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, x, position_ids):
        # transformers expands inv_freq to the batch size; a buffer cannot be expanded by a traced size,
        # and the matmul below broadcasts it anyway
        inv_freq_expanded = self.inv_freq[None, :, None].float()
        position_ids_expanded = position_ids[:, None, :].float()
        freqs = (inv_freq_expanded.float() @ position_ids_expanded.float()).transpose(1, 2)
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos(), emb.sin()


def rotate_half(x):
    x1 = x[..., : x.shape[-1] // 2]
    x2 = x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=1):
    cos = cos.unsqueeze(unsqueeze_dim)
    sin = sin.unsqueeze(unsqueeze_dim)
    q_embed = (q * cos) + (rotate_half(q) * sin)
    k_embed = (k * cos) + (rotate_half(k) * sin)
    return q_embed, k_embed


def repeat_kv(hidden_states, n_rep):
    batch, num_key_value_heads, slen, head_dim = hidden_states.shape
    if n_rep == 1:
        return hidden_states
    hidden_states = hidden_states[:, :, None, :, :].expand(batch, num_key_value_heads, n_rep, slen, head_dim)
    return hidden_states.reshape(batch, num_key_value_heads * n_rep, slen, head_dim)


class LlamaAttention(nn.Module):
    def __init__(self, hidden_size, num_heads, num_key_value_heads):
        super().__init__()
        self.head_dim = hidden_size // num_heads
        self.num_key_value_groups = num_heads // num_key_value_heads
        self.scaling = self.head_dim ** -0.5
        self.q_proj = nn.Linear(hidden_size, num_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(hidden_size, num_key_value_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(hidden_size, num_key_value_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(num_heads * self.head_dim, hidden_size, bias=False)

    def forward(self, hidden_states, cos, sin):
        # as transformers 4.3x wrote it (later versions unpack shapes, which fx cannot trace)
        bsz, q_len, _ = hidden_states.size()
        query_states = self.q_proj(hidden_states).view(bsz, q_len, -1, self.head_dim).transpose(1, 2)
        key_states = self.k_proj(hidden_states).view(bsz, q_len, -1, self.head_dim).transpose(1, 2)
        value_states = self.v_proj(hidden_states).view(bsz, q_len, -1, self.head_dim).transpose(1, 2)
        query_states, key_states = apply_rotary_pos_emb(query_states, key_states, cos, sin)
        key_states = repeat_kv(key_states, self.num_key_value_groups)
        value_states = repeat_kv(value_states, self.num_key_value_groups)
        attn_output = F.scaled_dot_product_attention(query_states, key_states, value_states, is_causal=True,
                                                     scale=self.scaling)
        attn_output = attn_output.transpose(1, 2).contiguous()
        attn_output = attn_output.reshape(bsz, q_len, -1).contiguous()
        return self.o_proj(attn_output)


class LlamaMLP(nn.Module):
    def __init__(self, hidden_size, intermediate_size):
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class LlamaDecoderLayer(nn.Module):
    def __init__(self, hidden_size, num_heads, num_key_value_heads, intermediate_size):
        super().__init__()
        self.self_attn = LlamaAttention(hidden_size, num_heads, num_key_value_heads)
        self.mlp = LlamaMLP(hidden_size, intermediate_size)
        self.input_layernorm = LlamaRMSNorm(hidden_size)
        self.post_attention_layernorm = LlamaRMSNorm(hidden_size)

    def forward(self, hidden_states, cos, sin):
        residual = hidden_states
        hidden_states = self.self_attn(self.input_layernorm(hidden_states), cos, sin)
        hidden_states = residual + hidden_states
        residual = hidden_states
        hidden_states = self.mlp(self.post_attention_layernorm(hidden_states))
        return residual + hidden_states


class LlamaForCausalLM(nn.Module):
    """vocab 96, hidden 64, 2 layers, 4 query heads sharing 2 key/value heads (head_dim 16), MLP 128."""

    def __init__(self, vocab_size=96, hidden_size=64, num_layers=2, num_heads=4, num_key_value_heads=2,
                 intermediate_size=128):
        super().__init__()
        self.embed_tokens = nn.Embedding(vocab_size, hidden_size)
        self.layers = nn.ModuleList([LlamaDecoderLayer(hidden_size, num_heads, num_key_value_heads,
                                                       intermediate_size) for _ in range(num_layers)])
        self.norm = LlamaRMSNorm(hidden_size)
        self.rotary_emb = LlamaRotaryEmbedding(hidden_size // num_heads)
        self.lm_head = nn.Linear(hidden_size, vocab_size, bias=False)

    def forward(self, input_ids):
        hidden_states = self.embed_tokens(input_ids)
        position_ids = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)
        cos, sin = self.rotary_emb(hidden_states, position_ids)
        for layer in self.layers:
            hidden_states = layer(hidden_states, cos, sin)
        return self.lm_head(self.norm(hidden_states))


def _with_rms_gains(cls) -> nn.Module:
    """``cls()`` (seed 0, eval mode) with its RMSNorm gains moved off 1, so that they matter."""
    torch.manual_seed(0)
    model = cls()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, LlamaRMSNorm):
                m.weight.add_(0.1 * torch.randn(m.weight.shape))
    return model.eval()


def llama():
    return _with_rms_gains(LlamaForCausalLM)


@torch.library.custom_op("fxprune_zoo::grouped_mm", mutates_args=())
def grouped_mm(input: Tensor, weight: Tensor, offs: Tensor) -> Tensor:
    """transformers' grouped_mm_fallback: rows of ``input`` (sorted by expert) up to ``offs[e]`` times
    ``weight[e]``. A custom op because torch's own grouped_mm accepts only bfloat16 on fake tensors."""
    out = input.new_zeros(input.shape[0], weight.shape[2])
    start = 0
    for e, end in enumerate(offs.tolist()):
        out[start:end] = input[start:end] @ weight[e]
        start = end
    return out


@grouped_mm.register_fake
def _(input, weight, offs):
    return input.new_empty(input.shape[0], weight.shape[2])


# a custom op of the user's: its rule is registered by name, as the README shows
import fxprune.rules  # noqa: E402
import fxprune.rules.experts  # noqa: E402

fxprune.rules.register("fxprune_zoo::grouped_mm")(fxprune.rules.experts.GroupedMMRule)


class SparseMoeBlock(nn.Module):
    """Mixtral's sparse MoE block as transformers 5.x writes it: a router picks the top-k of the experts per
    token, tokens are sorted by expert, and the fused expert weights (experts, 2 * inter, hidden) and
    (experts, hidden, inter) are applied with one grouped matmul each."""

    def __init__(self, hidden_size=64, intermediate_size=48, num_experts=4, top_k=2):
        super().__init__()
        self.top_k, self.num_experts = top_k, num_experts
        self.gate = nn.Linear(hidden_size, num_experts, bias=False)
        self.gate_up_proj = nn.Parameter(0.1 * torch.randn(num_experts, 2 * intermediate_size, hidden_size))
        self.down_proj = nn.Parameter(0.1 * torch.randn(num_experts, hidden_size, intermediate_size))

    def forward(self, x):
        hidden = x.reshape(-1, x.shape[-1])
        weights, experts = self.gate(hidden).softmax(-1).topk(self.top_k, dim=-1)
        weights = weights / weights.sum(-1, keepdim=True)
        flat = experts.reshape(-1)
        order = flat.argsort(stable=True)
        offs = torch.histc(flat.float(), bins=self.num_experts, min=0, max=self.num_experts - 1).cumsum(0).to(torch.int32)
        gate, up = torch.ops.fxprune_zoo.grouped_mm(hidden[order // self.top_k], self.gate_up_proj.transpose(-2, -1),
                                                    offs).chunk(2, dim=-1)
        out = torch.ops.fxprune_zoo.grouped_mm(F.silu(gate) * up, self.down_proj.transpose(-2, -1), offs)
        out = (out * weights.reshape(-1)[order].unsqueeze(-1))[order.argsort()]
        return out.view(-1, self.top_k, x.shape[-1]).sum(1).reshape(x.shape)


class MoeForCausalLM(nn.Module):
    """vocab 96, hidden 64, 2 layers of RMSNorm + sparse MoE (4 experts, top 2, expert width 48)."""

    def __init__(self, vocab_size=96, hidden_size=64, num_layers=2):
        super().__init__()
        self.embed_tokens = nn.Embedding(vocab_size, hidden_size)
        self.norms = nn.ModuleList([LlamaRMSNorm(hidden_size) for _ in range(num_layers)])
        self.moes = nn.ModuleList([SparseMoeBlock(hidden_size) for _ in range(num_layers)])
        self.norm = LlamaRMSNorm(hidden_size)
        self.lm_head = nn.Linear(hidden_size, vocab_size, bias=False)

    def forward(self, input_ids):
        h = self.embed_tokens(input_ids)
        for norm, moe in zip(self.norms, self.moes):
            h = h + moe(norm(h))
        return self.lm_head(self.norm(h))


def moe():
    return _with_rms_gains(MoeForCausalLM)


# =====================================================================================================
# 10c. Swin Transformer (microsoft/Swin-Transformer: window partition, shifted windows with torch.roll and
#      an attention mask buffer, relative position bias gathered from a table by an index buffer)
# =====================================================================================================


def window_partition(x, ws):
    B, H, W, C = x.shape
    x = x.view(B, H // ws, ws, W // ws, ws, C)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, ws, ws, C)


def window_reverse(windows, ws, H, W):
    C = windows.shape[-1]
    x = windows.view(-1, H // ws, W // ws, ws, ws, C)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, H, W, C)


class SwinWindowAttention(nn.Module):
    def __init__(self, dim, ws, heads):
        super().__init__()
        self.dim, self.ws, self.heads = dim, ws, heads
        hd = dim // heads
        self.scale = hd ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.randn((2 * ws - 1) * (2 * ws - 1), heads) * 0.02)
        coords = torch.stack(torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij"))
        cf = torch.flatten(coords, 1)
        rel = (cf[:, :, None] - cf[:, None, :]).permute(1, 2, 0).contiguous()
        rel[:, :, 0] += ws - 1
        rel[:, :, 1] += ws - 1
        rel[:, :, 0] *= 2 * ws - 1
        self.register_buffer("relative_position_index", rel.sum(-1))
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
    def forward(self, x, mask=None):
        B_, N, C = x.shape
        qkv = self.qkv(x).reshape(B_, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        q = q * self.scale
        attn = q @ k.transpose(-2, -1)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)].view(
            self.ws * self.ws, self.ws * self.ws, -1)
        bias = bias.permute(2, 0, 1).contiguous()
        attn = attn + bias.unsqueeze(0)
        if mask is not None:
            nW = mask.shape[0]
            attn = attn.view(B_ // nW, nW, self.heads, N, N) + mask.unsqueeze(1).unsqueeze(0)
            attn = attn.view(-1, self.heads, N, N)
        attn = attn.softmax(dim=-1)
        x = (attn @ v).transpose(1, 2).reshape(B_, N, C)
        return self.proj(x)


class SwinBlock(nn.Module):
    def __init__(self, dim=32, res=8, heads=4, ws=4, shift=0):
        super().__init__()
        self.res, self.ws, self.shift = res, ws, shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SwinWindowAttention(dim, ws, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        if shift > 0:
            img = torch.zeros((1, res, res, 1))
            cnt = 0
            for h in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
                for w in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
                    img[:, h, w, :] = cnt
                    cnt += 1
            mw = window_partition(img, ws).view(-1, ws * ws)
            am = mw.unsqueeze(1) - mw.unsqueeze(2)
            am = am.masked_fill(am != 0, -100.0).masked_fill(am == 0, 0.0)
        else:
            am = None
        self.register_buffer("attn_mask", am)
    def forward(self, x):
        H = W = self.res
        B, L, C = x.shape
        sc = x
        x = self.norm1(x).view(B, H, W, C)
        if self.shift > 0:
            x = torch.roll(x, shifts=(-self.shift, -self.shift), dims=(1, 2))
        xw = window_partition(x, self.ws).view(-1, self.ws * self.ws, C)
        aw = self.attn(xw, mask=self.attn_mask).view(-1, self.ws, self.ws, C)
        x = window_reverse(aw, self.ws, H, W)
        if self.shift > 0:
            x = torch.roll(x, shifts=(self.shift, self.shift), dims=(1, 2))
        x = sc + x.view(B, H * W, C)
        return x + self.mlp(self.norm2(x))


class Swin(nn.Module):
    """patch embedding 4x4 -> 32 channels on 8x8 tokens, two blocks (window 4, 4 heads; the second
    shifted by 2 with its attention mask), LayerNorm, mean over tokens, classifier."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Conv2d(3, 32, 4, 4)
        self.blocks = nn.Sequential(SwinBlock(shift=0), SwinBlock(shift=2))
        self.norm = nn.LayerNorm(32)
        self.head = nn.Linear(32, 10)
    def forward(self, x):
        x = self.embed(x).flatten(2).transpose(1, 2)
        x = self.blocks(x)
        return self.head(self.norm(x).mean(1))


def swin():
    torch.manual_seed(0)
    return _finish(Swin())


# =====================================================================================================
# 11. RegNet (torchvision.models.regnet: ResBottleneckBlock with group convs and SE)
# =====================================================================================================

class SimpleStemIN(Conv2dNormActivation):
    def __init__(self, width_in, width_out, norm_layer, activation_layer):
        super().__init__(width_in, width_out, kernel_size=3, stride=2, norm_layer=norm_layer,
                         activation_layer=activation_layer)


class BottleneckTransform(nn.Sequential):
    def __init__(self, width_in, width_out, stride, norm_layer, activation_layer, group_width,
                 bottleneck_multiplier, se_ratio):
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        w_b = int(round(width_out * bottleneck_multiplier))
        g = w_b // group_width

        layers["a"] = Conv2dNormActivation(width_in, w_b, kernel_size=1, stride=1, norm_layer=norm_layer,
                                           activation_layer=activation_layer)
        layers["b"] = Conv2dNormActivation(w_b, w_b, kernel_size=3, stride=stride, groups=g, norm_layer=norm_layer,
                                           activation_layer=activation_layer)

        if se_ratio:
            # The SE reduction ratio is defined with respect to the
            # beginning of the block
            width_se_out = int(round(se_ratio * width_in))
            layers["se"] = SqueezeExcitation(input_channels=w_b, squeeze_channels=width_se_out,
                                             activation=activation_layer)

        layers["c"] = Conv2dNormActivation(w_b, width_out, kernel_size=1, stride=1, norm_layer=norm_layer,
                                           activation_layer=None)
        super().__init__(layers)


class ResBottleneckBlock(nn.Module):
    def __init__(self, width_in, width_out, stride, norm_layer, activation_layer, group_width=1,
                 bottleneck_multiplier=1.0, se_ratio=None):
        super().__init__()
        # Use skip connection with projection if shape changes
        self.proj = None
        should_proj = (width_in != width_out) or (stride != 1)
        if should_proj:
            self.proj = Conv2dNormActivation(width_in, width_out, kernel_size=1, stride=stride,
                                             norm_layer=norm_layer, activation_layer=None)
        self.f = BottleneckTransform(width_in, width_out, stride, norm_layer, activation_layer, group_width,
                                     bottleneck_multiplier, se_ratio)
        self.activation = activation_layer(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        if self.proj is not None:
            x = self.proj(x) + self.f(x)
        else:
            x = x + self.f(x)
        return self.activation(x)


class RegNet(nn.Module):
    def __init__(self, stem_width=16, widths=(32, 64), depths=(2, 2), group_width=8, se_ratio=0.25,
                 num_classes=10):
        super().__init__()
        norm_layer = partial(nn.BatchNorm2d, eps=1e-05, momentum=0.1)
        activation = nn.ReLU
        self.stem = SimpleStemIN(3, stem_width, norm_layer, activation)
        current_width = stem_width
        blocks = []
        for i, (width_out, depth) in enumerate(zip(widths, depths)):
            stage = nn.Sequential(OrderedDict(
                (f"block{i + 1}-{j}", ResBottleneckBlock(current_width if j == 0 else width_out, width_out,
                                                         2 if j == 0 else 1, norm_layer, activation, group_width,
                                                         1.0, se_ratio))
                for j in range(depth)))
            blocks.append((f"block{i + 1}", stage))
            current_width = width_out
        self.trunk_output = nn.Sequential(OrderedDict(blocks))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(in_features=current_width, out_features=num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        x = self.trunk_output(x)

        x = self.avgpool(x)
        x = x.flatten(start_dim=1)
        x = self.fc(x)

        return x


def regnet():
    torch.manual_seed(0)
    return _finish(RegNet(), (_images(8, seed=99),))


# =====================================================================================================
# 12. UNet (milesial/Pytorch-UNet, bilinear=False: ConvTranspose2d upsampling)
# =====================================================================================================

class DoubleConv(nn.Module):
    """(convolution => [BN] => ReLU) * 2"""

    def __init__(self, in_channels, out_channels, mid_channels=None):
        super().__init__()
        if not mid_channels:
            mid_channels = out_channels
        self.double_conv = nn.Sequential(
            nn.Conv2d(in_channels, mid_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(mid_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x):
        return self.double_conv(x)


class Down(nn.Module):
    """Downscaling with maxpool then double conv"""

    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.maxpool_conv = nn.Sequential(nn.MaxPool2d(2), DoubleConv(in_channels, out_channels))

    def forward(self, x):
        return self.maxpool_conv(x)


class Up(nn.Module):
    """Upscaling then double conv"""

    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, in_channels // 2, kernel_size=2, stride=2)
        self.conv = DoubleConv(in_channels, out_channels)

    def forward(self, x1, x2):
        x1 = self.up(x1)
        # input is CHW
        diffY = x2.size()[2] - x1.size()[2]
        diffX = x2.size()[3] - x1.size()[3]

        x1 = F.pad(x1, [diffX // 2, diffX - diffX // 2, diffY // 2, diffY - diffY // 2])
        # milesial concatenates [skip, up]; the order is the only difference to torch.cat([up, skip], 1)
        x = torch.cat([x2, x1], dim=1)
        return self.conv(x)


class UNet(nn.Module):
    def __init__(self, n_channels=3, n_classes=2, base=8):
        super().__init__()
        self.n_channels = n_channels
        self.n_classes = n_classes
        self.inc = DoubleConv(n_channels, base)
        self.down1 = Down(base, base * 2)
        self.down2 = Down(base * 2, base * 4)
        self.down3 = Down(base * 4, base * 8)
        self.up1 = Up(base * 8, base * 4)
        self.up2 = Up(base * 4, base * 2)
        self.up3 = Up(base * 2, base)
        self.outc = nn.Conv2d(base, n_classes, kernel_size=1)

    def forward(self, x):
        x1 = self.inc(x)
        x2 = self.down1(x1)
        x3 = self.down2(x2)
        x4 = self.down3(x3)
        x = self.up1(x4, x3)
        x = self.up2(x, x2)
        x = self.up3(x, x1)
        logits = self.outc(x)
        return logits


def unet():
    torch.manual_seed(0)
    return _finish(UNet(), (_images(4, seed=99),))


# =====================================================================================================
# 13. Conv1d: a TCN (locuslab/TCN, BatchNorm1d instead of weight_norm) and the torchaudio M5 audio net;
#     Conv3d: a small R3D video ResNet (torchvision.models.video.resnet) with BatchNorm3d
# =====================================================================================================

class Chomp1d(nn.Module):
    def __init__(self, chomp_size):
        super().__init__()
        self.chomp_size = chomp_size

    def forward(self, x):
        return x[:, :, :-self.chomp_size].contiguous()


class TemporalBlock(nn.Module):
    def __init__(self, n_inputs, n_outputs, kernel_size, stride, dilation, padding, dropout=0.2):
        super().__init__()
        self.conv1 = nn.Conv1d(n_inputs, n_outputs, kernel_size, stride=stride, padding=padding, dilation=dilation)
        self.bn1 = nn.BatchNorm1d(n_outputs)
        self.chomp1 = Chomp1d(padding)
        self.relu1 = nn.ReLU()
        self.dropout1 = nn.Dropout(dropout)

        self.conv2 = nn.Conv1d(n_outputs, n_outputs, kernel_size, stride=stride, padding=padding, dilation=dilation)
        self.bn2 = nn.BatchNorm1d(n_outputs)
        self.chomp2 = Chomp1d(padding)
        self.relu2 = nn.ReLU()
        self.dropout2 = nn.Dropout(dropout)

        self.net = nn.Sequential(self.conv1, self.chomp1, self.bn1, self.relu1, self.dropout1,
                                 self.conv2, self.chomp2, self.bn2, self.relu2, self.dropout2)
        self.downsample = nn.Conv1d(n_inputs, n_outputs, 1) if n_inputs != n_outputs else None
        self.relu = nn.ReLU()

    def forward(self, x):
        out = self.net(x)
        res = x if self.downsample is None else self.downsample(x)
        return self.relu(out + res)


class TemporalConvNet(nn.Module):
    def __init__(self, num_inputs, num_channels, kernel_size=2, dropout=0.2):
        super().__init__()
        layers = []
        num_levels = len(num_channels)
        for i in range(num_levels):
            dilation_size = 2 ** i
            in_channels = num_inputs if i == 0 else num_channels[i - 1]
            out_channels = num_channels[i]
            layers += [TemporalBlock(in_channels, out_channels, kernel_size, stride=1, dilation=dilation_size,
                                     padding=(kernel_size - 1) * dilation_size, dropout=dropout)]
        self.network = nn.Sequential(*layers)

    def forward(self, x):
        return self.network(x)


class TCN(nn.Module):
    """locuslab/TCN sequence classifier: TCN over (N, C_in, L) and a Linear on the last time step."""

    def __init__(self, input_size=4, output_size=10, num_channels=(16, 32, 32), kernel_size=3, dropout=0.2):
        super().__init__()
        self.tcn = TemporalConvNet(input_size, list(num_channels), kernel_size=kernel_size, dropout=dropout)
        self.linear = nn.Linear(num_channels[-1], output_size)

    def forward(self, inputs):
        """Inputs have to have dimension (N, C_in, L_in)"""
        y1 = self.tcn(inputs)  # input should have dimension (N, C_in, L_in)
        o = self.linear(y1[:, :, -1])
        return F.log_softmax(o, dim=1)


def tcn():
    torch.manual_seed(0)
    return _finish(TCN(), (torch.randn(8, 4, 32, generator=torch.Generator().manual_seed(99)),))


class M5(nn.Module):
    """torchaudio speech-command tutorial M5 net on raw 8 kHz audio."""

    def __init__(self, n_input=1, n_output=35, stride=16, n_channel=32):
        super().__init__()
        self.conv1 = nn.Conv1d(n_input, n_channel, kernel_size=80, stride=stride)
        self.bn1 = nn.BatchNorm1d(n_channel)
        self.pool1 = nn.MaxPool1d(4)
        self.conv2 = nn.Conv1d(n_channel, n_channel, kernel_size=3)
        self.bn2 = nn.BatchNorm1d(n_channel)
        self.pool2 = nn.MaxPool1d(4)
        self.conv3 = nn.Conv1d(n_channel, 2 * n_channel, kernel_size=3)
        self.bn3 = nn.BatchNorm1d(2 * n_channel)
        self.pool3 = nn.MaxPool1d(4)
        self.conv4 = nn.Conv1d(2 * n_channel, 2 * n_channel, kernel_size=3)
        self.bn4 = nn.BatchNorm1d(2 * n_channel)
        self.pool4 = nn.MaxPool1d(4)
        self.fc1 = nn.Linear(2 * n_channel, n_output)

    def forward(self, x):
        x = self.conv1(x)
        x = F.relu(self.bn1(x))
        x = self.pool1(x)
        x = self.conv2(x)
        x = F.relu(self.bn2(x))
        x = self.pool2(x)
        x = self.conv3(x)
        x = F.relu(self.bn3(x))
        x = self.pool3(x)
        x = self.conv4(x)
        x = F.relu(self.bn4(x))
        x = self.pool4(x)
        x = F.avg_pool1d(x, x.shape[-1])
        x = x.permute(0, 2, 1)
        x = self.fc1(x)
        return F.log_softmax(x, dim=2)


def m5_audio():
    torch.manual_seed(0)
    return _finish(M5(), (torch.randn(4, 1, 8000, generator=torch.Generator().manual_seed(99)),))


class Conv3DSimple(nn.Conv3d):
    def __init__(self, in_planes, out_planes, midplanes=None, stride=1, padding=1):
        super().__init__(in_channels=in_planes, out_channels=out_planes, kernel_size=(3, 3, 3), stride=stride,
                         padding=padding, bias=False)

    @staticmethod
    def get_downsample_stride(stride):
        return stride, stride, stride


class BasicBlock3d(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, conv_builder, stride=1, downsample=None):
        midplanes = (inplanes * planes * 3 * 3 * 3) // (inplanes * 3 * 3 + 3 * planes)
        super().__init__()
        self.conv1 = nn.Sequential(conv_builder(inplanes, planes, midplanes, stride), nn.BatchNorm3d(planes),
                                   nn.ReLU(inplace=True))
        self.conv2 = nn.Sequential(conv_builder(planes, planes, midplanes), nn.BatchNorm3d(planes))
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        residual = x

        out = self.conv1(x)
        out = self.conv2(out)
        if self.downsample is not None:
            residual = self.downsample(x)

        out += residual
        out = self.relu(out)

        return out


class BasicStem(nn.Sequential):
    """The default conv-batchnorm-relu stem"""

    def __init__(self, width=16):
        super().__init__(
            nn.Conv3d(3, width, kernel_size=(3, 7, 7), stride=(1, 2, 2), padding=(1, 3, 3), bias=False),
            nn.BatchNorm3d(width),
            nn.ReLU(inplace=True),
        )


class VideoResNet(nn.Module):
    def __init__(self, widths=(16, 32), num_classes=10):
        super().__init__()
        self.inplanes = widths[0]
        self.stem = BasicStem(widths[0])
        self.layer1 = self._make_layer(BasicBlock3d, Conv3DSimple, widths[0], 1, stride=1)
        self.layer2 = self._make_layer(BasicBlock3d, Conv3DSimple, widths[1], 1, stride=2)
        self.avgpool = nn.AdaptiveAvgPool3d((1, 1, 1))
        self.fc = nn.Linear(widths[1] * BasicBlock3d.expansion, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.avgpool(x)
        # Flatten the layer to fc
        x = x.flatten(1)
        x = self.fc(x)
        return x

    def _make_layer(self, block, conv_builder, planes, blocks, stride=1):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            ds_stride = conv_builder.get_downsample_stride(stride)
            downsample = nn.Sequential(
                nn.Conv3d(self.inplanes, planes * block.expansion, kernel_size=1, stride=ds_stride, bias=False),
                nn.BatchNorm3d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, conv_builder, stride, downsample)]
        self.inplanes = planes * block.expansion
        for _ in range(1, blocks):
            layers.append(block(self.inplanes, planes, conv_builder))
        return nn.Sequential(*layers)


def _video(n=1, seed=0):
    return torch.randn(n, 3, 4, 16, 16, generator=torch.Generator().manual_seed(seed))


def r3d_video():
    torch.manual_seed(0)
    return _finish(VideoResNet(), (_video(4, seed=99),))


# =====================================================================================================
# 14. Embedding -> LSTM(batch_first) -> Linear text classifiers
# =====================================================================================================

class LSTMClassifier(nn.Module):
    def __init__(self, vocab_size=100, embedding_dim=32, hidden_dim=48, num_classes=5, num_layers=1,
                 bidirectional=False, pooling="last", dropout=0.1):
        super().__init__()
        self.pooling = pooling
        self.embedding = nn.Embedding(vocab_size, embedding_dim, padding_idx=0)
        self.lstm = nn.LSTM(embedding_dim, hidden_dim, num_layers=num_layers, bidirectional=bidirectional,
                            batch_first=True, dropout=dropout if num_layers > 1 else 0.0)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(hidden_dim * (2 if bidirectional else 1), num_classes)

    def forward(self, text):
        # text = [batch size, sent len]
        embedded = self.dropout(self.embedding(text))
        # output = [batch size, sent len, hid dim * num directions]
        output, (hidden, cell) = self.lstm(embedded)
        if self.pooling == "last":
            feat = output[:, -1, :]
        else:
            feat = output.mean(dim=1)
        return self.fc(self.dropout(feat))


def lstm_last():
    torch.manual_seed(0)
    return _finish(LSTMClassifier(pooling="last"))


def lstm_bi_mean():
    torch.manual_seed(0)
    return _finish(LSTMClassifier(num_layers=2, bidirectional=True, pooling="mean"))


def _text(vocab=100, t=8, seed=0):
    return torch.randint(1, vocab, (2, t), generator=torch.Generator().manual_seed(seed))


# =====================================================================================================
# 15. The small ResNet after torch.fx.experimental.optimization.fuse (conv + bn folded), in eval mode
# =====================================================================================================

def fused_resnet() -> torch.fx.GraphModule:
    from torch.fx.experimental.optimization import fuse
    return fuse(resnet_basic().eval())


# =====================================================================================================
# the zoo
# =====================================================================================================

ZOO = [
    ("resnet_basic", resnet_basic, lambda: (_images(),)),
    ("resnet_bottleneck", resnet_bottleneck, lambda: (_images(),)),
    ("resnext_bottleneck", resnext_bottleneck, lambda: (_images(),)),
    ("mobilenet_v2", mobilenet_v2, lambda: (_images(),)),
    ("mobilenet_v3", mobilenet_v3, lambda: (_images(),)),
    ("efficientnet", efficientnet, lambda: (_images(),)),
    ("densenet", densenet, lambda: (_images(),)),
    ("densenet_tv", densenet_tv, lambda: (_images(),)),
    ("googlenet", googlenet, lambda: (_images(),)),
    ("shufflenet_v2", shufflenet_v2, lambda: (_images(),)),
    ("vgg_bn", vgg_bn, lambda: (_images(),)),
    ("convnext", convnext, lambda: (_images(),)),
    ("vit", vit, lambda: (_images(),)),
    ("gpt_manual", gpt_manual, lambda: (_tokens(),)),
    ("gpt_sdpa", gpt_sdpa, lambda: (_tokens(),)),
    ("gpt_tied", gpt_tied, lambda: (_tokens(),)),
    ("llama", llama, lambda: (_tokens(),)),
    ("moe", moe, lambda: (_tokens(),)),
    ("swin", swin, lambda: (_images(),)),
    ("regnet", regnet, lambda: (_images(),)),
    ("unet", unet, lambda: (_images(),)),
    ("tcn", tcn, lambda: (torch.randn(1, 4, 32, generator=torch.Generator().manual_seed(0)),)),
    ("m5_audio", m5_audio, lambda: (torch.randn(1, 1, 8000, generator=torch.Generator().manual_seed(0)),)),
    ("r3d_video", r3d_video, lambda: (_video(),)),
    ("lstm_last", lstm_last, lambda: (_text(),)),
    ("lstm_bi_mean", lstm_bi_mean, lambda: (_text(),)),
    ("resnet_fused", fused_resnet, lambda: (_images(),)),
]

ZOO_BY_NAME = {name: (factory, inputs) for name, factory, inputs in ZOO}


def check_model(name, factory, inputs_factory, reps=20):
    """Runs, traces and compares one zoo model; returns (params, output shape, max |out|, ms per forward)."""
    import time
    model = factory()
    inputs = inputs_factory()
    params = sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        out = model(*inputs)
        traced = torch.fx.symbolic_trace(model)
        traced_out = traced(*inputs)
        assert torch.allclose(out, traced_out, rtol=1e-5, atol=1e-6), f"{name}: traced output differs"
        assert torch.isfinite(out).all(), f"{name}: non-finite output"
        t0 = time.perf_counter()
        for _ in range(reps):
            model(*inputs)
        ms = (time.perf_counter() - t0) / reps * 1e3
    assert params < 300_000, f"{name}: {params} parameters"
    return params, tuple(out.shape), float(out.abs().max()), ms


def _main(argv=None):
    import argparse
    import traceback
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prune", action="store_true", help="also try fxprune.prune(model, inputs, sparsity=0.5)")
    p.add_argument("names", nargs="*")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    rows = [("name", "params", "output", "max|out|", "ms")]
    results = []
    for name, factory, inputs_factory in ZOO:
        if args.names and name not in args.names:
            continue
        params, shape, mag, ms = check_model(name, factory, inputs_factory)
        rows.append((name, str(params), str(shape), f"{mag:.3g}", f"{ms:.2f}"))
        if args.prune:
            import fxprune
            model, inputs = factory(), inputs_factory()
            try:
                pruned = fxprune.prune(model, inputs, sparsity=0.5)
                r = pruned.meta["fxprune"]
                status = {}
                for g in r.groups:
                    status[g.status] = status.get(g.status, 0) + 1
                what = "PRUNED" if r.params_after < r.params_before else "NO PRUNING"
                results.append((name, f"{what}: params {r.params_before} -> {r.params_after}, rel_diff "
                                      f"{r.rel_diff:.2g}, groups {status}"))
            except Exception as e:  # noqa: BLE001 -- informative only
                tb = traceback.extract_tb(e.__traceback__)[-1]
                results.append((name, f"RAISES {type(e).__name__}: {e} [{tb.filename.split('/')[-1]}:{tb.lineno}]"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))
    if results:
        print()
        for name, msg in results:
            print(f"{name}: {msg}")


if __name__ == "__main__":
    _main()
