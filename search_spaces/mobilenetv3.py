"""``mobilenetv3``: the Once-for-All MobileNetV3 space, for images.

Dimensions (stages ``s`` count from 1 to 5, blocks ``b`` from 1 to 4):

- ``resolution``   the side the input is resized to (bilinear) before the stem
- ``depth.s``      blocks used in stage ``s`` (the first ``depth`` blocks run)
- ``kernel.s.b``   depthwise kernel size of block ``b``
- ``expand.s.b``   expansion ratio of block ``b`` (hidden width = ratio x block input width,
  rounded to a multiple of 8 as in Once-for-All)

The layout is Once-for-All's MobileNetV3-Large: a 3x3 stride-2 stem (hard-swish), a fixed
first block, five stages of widths 24, 40, 80, 112, 160 (x ``width_mult``), strides 2, 2, 2,
1, 2, ReLU in the first two stages and hard-swish after, squeeze-excite in stages 2, 4 and 5,
then a 1x1 expansion to 960, pooling, a 1x1 feature mix to 1280 and the classifier. Smaller
kernels use the centre of the 7x7 weights (no kernel transformation matrices). The subnet's
static form is ``standalone/mobilenetv3_net.MobileNetV3Net``, whose module names the
supernet's mirror.

Space options: ``width_mult`` scales every width (``make_divisible`` to 8) so that tests and
laptops can run a small copy; ``resolutions`` sets the resolution choices (``choices`` only
narrows them).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from search_spaces.base import (
    ConfigError,
    Dimension,
    SearchSpace,
    Supernet,
    layer_signature,
    register_space,
)
from search_spaces.elastic import ElasticBatchNorm, ElasticConv2d, first_channels
from search_spaces.global_batch_norm import with_global_batch_norms
from search_spaces.standalone.mobilenetv3_net import (
    ACTIVATIONS,
    Block,
    MobileNetV3Net,
    resize,
)

STEM_WIDTH = 16
FIRST_WIDTH = 16
#: (width, stride, activation, squeeze-excite) of each stage, at width_mult 1.
STAGES = (
    (24, 2, "relu", False),
    (40, 2, "relu", True),
    (80, 2, "hswish", False),
    (112, 1, "hswish", True),
    (160, 2, "hswish", True),
)
FINAL_EXPAND = 960
FEATURE_MIX = 1280
DEPTHS = (2, 3, 4)
KERNELS = (3, 5, 7)
EXPANDS = (3, 4, 6)
RESOLUTIONS = (128, 160, 192, 224)
SE_REDUCTION = 4


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round ``value`` to a multiple of ``divisor``, never below 90% of it (the MobileNet rule)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def se_width(channels: int) -> int:
    """Hidden width of the squeeze-excite on ``channels`` channels."""
    return make_divisible(channels // SE_REDUCTION)


def strided(size: int, stride: int) -> int:
    """Spatial size after a convolution with padding ``kernel // 2``."""
    return (size - 1) // stride + 1


@register_space("mobilenetv3")
class MobileNetV3Space(SearchSpace):
    """Resolution, depth per stage, kernel size and expansion ratio per block."""

    def __init__(
        self,
        input_shape: Sequence[int] = (3, 224, 224),
        num_classes: int = 1000,
        width_mult: float = 1.0,
        resolutions: Sequence[int] = RESOLUTIONS,
        choices: Mapping[str, Sequence[int]] | None = None,
    ):
        self.input_shape = [int(n) for n in input_shape]
        self.num_classes = int(num_classes)
        self.width_mult = float(width_mult)
        self.resolutions = sorted({int(r) for r in resolutions})
        self.choices = {k: list(v) for k, v in (choices or {}).items()}
        _channels(self.input_shape)
        if not self.width_mult > 0:
            raise ConfigError(f"width_mult must be positive, got width_mult={width_mult}")
        if not self.resolutions or min(self.resolutions) < 1:
            raise ConfigError(
                f"resolutions must be positive sizes, got resolutions={list(resolutions)}"
            )
        dimensions = [Dimension("resolution", tuple(self.resolutions))]
        for s in range(1, len(STAGES) + 1):
            dimensions.append(Dimension(f"depth.{s}", DEPTHS))
            for b in range(1, max(DEPTHS) + 1):
                dimensions.append(Dimension(f"kernel.{s}.{b}", KERNELS))
                dimensions.append(Dimension(f"expand.{s}.{b}", EXPANDS))
        super().__init__(dimensions, choices)

    def width(self, base: int) -> int:
        return make_divisible(base * self.width_mult)

    def is_active(self, config: Mapping[str, int], dimension: str) -> bool:
        parts = dimension.split(".")
        if parts[0] in ("resolution", "depth"):
            return True
        return int(parts[2]) <= config[f"depth.{parts[1]}"]

    def describe(self) -> dict[str, Any]:
        return {
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
            "width_mult": self.width_mult,
            "resolutions": list(self.resolutions),
            "choices": self.choices,
        }

    def check_input_shape(self, input_shape: Sequence[int]) -> None:
        if _channels(input_shape) != self.input_shape[0]:
            raise ConfigError(
                f"this mobilenetv3 space takes images of {self.input_shape[0]} channels, "
                f"got shape {tuple(input_shape)}"
            )

    # ---- layers, for latency lookup tables ----------------------------------------------
    def layers(self, config: Mapping[str, int], input_shape: Sequence[int]) -> list[str]:
        self.check_input_shape(input_shape)
        return [layer_signature(x) for x in arch_layers(self.arch(config), input_shape)]

    def all_layers(self, input_shape: Sequence[int]) -> list[str]:
        """Per resolution: the stem, every block a stage position can hold (kernel, expansion;
        the widths, stride and size follow from the position) and the head."""
        _channels(input_shape)
        choices = {d.name: d.choices for d in self.dimensions}
        found = []
        for resolution in choices["resolution"]:
            largest = self.max() | {"resolution": resolution}
            layers = list(arch_layers(self.arch(largest), input_shape))
            found.append(layers[0])
            position = 1
            for s, stage in enumerate(self.arch(largest)["stages"], start=1):
                for b in range(1, len(stage["blocks"]) + 1):
                    block = layers[position]
                    for kernel in choices[f"kernel.{s}.{b}"]:
                        for expand in choices[f"expand.{s}.{b}"]:
                            mid = make_divisible(round(block["in"] * expand))
                            se = se_width(mid) if block["se"] else 0
                            found.append(block | {"kernel": kernel, "mid": mid, "se": se})
                    position += 1
            found.append(layers[-1])
        return list(dict.fromkeys(layer_signature(layer) for layer in found))

    def build_layer(self, signature: str) -> tuple[nn.Module, tuple[int, ...]]:
        layer = json.loads(signature)
        op = layer.get("op")
        if op == "stem":
            return _Stem(layer), tuple(layer["input_shape"])
        if op == "block":
            block = Block(
                layer["in"], layer["mid"], layer["out"], layer["kernel"], layer["stride"],
                layer["act"], layer["se"],
            )  # fmt: skip
            return block, (layer["in"], layer["size"], layer["size"])
        if op == "head":
            return _Head(layer), (layer["in"], layer["size"], layer["size"])
        raise ConfigError(f"unknown layer kind {op!r} in {signature}; known: stem, block, head")

    def build_supernet(
        self, input_mean: float = 0.0, input_std: float = 1.0
    ) -> MobileNetV3Supernet:
        return MobileNetV3Supernet(self, input_mean, input_std)

    def arch(
        self, config: Mapping[str, int], input_mean: float = 0.0, input_std: float = 1.0
    ) -> dict[str, Any]:
        """The static network's description (``MobileNetV3Net``'s ``arch``) for ``config``."""
        config = self.validate(config)
        stages, channels = [], self.width(FIRST_WIDTH)
        for s, (base, stride, act, se) in enumerate(STAGES, start=1):
            blocks, width = [], self.width(base)
            for b in range(1, config[f"depth.{s}"] + 1):
                mid = make_divisible(round(channels * config[f"expand.{s}.{b}"]))
                kernel = config[f"kernel.{s}.{b}"]
                blocks.append({"kernel": kernel, "mid": mid, "se": se_width(mid) if se else 0})
                channels = width
            stages.append({"out": width, "stride": stride, "act": act, "blocks": blocks})
        return {
            "input_channels": self.input_shape[0],
            "resolution": config["resolution"],
            "num_classes": self.num_classes,
            "input_mean": float(input_mean),
            "input_std": float(input_std),
            "stem": {"out": self.width(STEM_WIDTH)},
            "first": {"out": self.width(FIRST_WIDTH)},
            "stages": stages,
            "final_expand": self.width(FINAL_EXPAND),
            "feature_mix": self.width(FEATURE_MIX),
        }


def _channels(input_shape: Sequence[int]) -> int:
    if len(input_shape) != 3:
        raise ConfigError(
            f"mobilenetv3 takes images of shape (channels, height, width), got {tuple(input_shape)}"
        )
    return int(input_shape[0])


def arch_layers(arch: Mapping[str, Any], input_shape: Sequence[int]) -> Iterator[dict[str, Any]]:
    """The static network's layers in order, each as the plain description that sets its cost:
    the stem (resize from the sample's size, normalise, stem convolution, first block), each
    block (with its input size), and the head (final expansion, pooling, feature mix,
    classifier)."""
    size = strided(arch["resolution"], 2)
    yield {
        "op": "stem", "input_shape": [int(n) for n in input_shape],
        "resolution": arch["resolution"], "stem": arch["stem"]["out"],
        "first": arch["first"]["out"],
    }  # fmt: skip
    channels = arch["first"]["out"]
    for stage in arch["stages"]:
        for i, block in enumerate(stage["blocks"]):
            stride = stage["stride"] if i == 0 else 1
            yield {
                "op": "block", "in": channels, "mid": block["mid"], "out": stage["out"],
                "kernel": block["kernel"], "stride": stride, "act": stage["act"],
                "se": block["se"], "size": size,
            }  # fmt: skip
            channels, size = stage["out"], strided(size, stride)
    yield {
        "op": "head", "in": channels, "final": arch["final_expand"], "mix": arch["feature_mix"],
        "classes": arch["num_classes"], "size": size,
    }  # fmt: skip


def _layer_arch(**parts: Any) -> dict[str, Any]:
    """An ``arch`` without stages, small where ``parts`` do not say, for one end of the net."""
    return {
        "input_channels": 1, "resolution": 1, "num_classes": 1, "input_mean": 0.0,
        "input_std": 1.0, "stem": {"out": 8}, "first": {"out": 8}, "stages": [],
        "final_expand": 8, "feature_mix": 8,
    } | parts  # fmt: skip


class _Stem(nn.Module):
    """``MobileNetV3Net``'s first steps alone: resize, normalise, stem, first block."""

    def __init__(self, layer: Mapping[str, Any]):
        super().__init__()
        self.net = MobileNetV3Net(
            _layer_arch(
                input_channels=layer["input_shape"][0], resolution=layer["resolution"],
                stem={"out": layer["stem"]}, first={"out": layer["first"]},
            )
        )  # fmt: skip

    def forward(self, x: Tensor) -> Tensor:
        return self.net.begin(x)


class _Head(nn.Module):
    """``MobileNetV3Net``'s last steps alone: final expansion, pooling, feature mix, classifier."""

    def __init__(self, layer: Mapping[str, Any]):
        super().__init__()
        self.net = MobileNetV3Net(
            _layer_arch(
                first={"out": layer["in"]}, final_expand=layer["final"],
                feature_mix=layer["mix"], num_classes=layer["classes"],
            )
        )  # fmt: skip

    def forward(self, x: Tensor) -> Tensor:
        return self.net.end(x)


class ElasticSqueezeExcite(nn.Module):
    """The elastic twin of ``SqueezeExcite``: its hidden width follows the active channels."""

    def __init__(self, max_channels: int):
        super().__init__()
        self.reduce = ElasticConv2d(max_channels, se_width(max_channels), 1, bias=True)
        self.expand = ElasticConv2d(se_width(max_channels), max_channels, 1, bias=True)

    def forward(self, x: Tensor, channels: int | None = None) -> Tensor:
        """``channels``: the active ones, where ``x`` is at full width with the others zero
        (``ElasticBlock``'s fixed shapes); then the hidden units run at full width too, those
        beyond the active hidden width zeroed."""
        fixed = channels is not None
        hidden = self.reduce.weight.shape[0] if fixed else se_width(x.shape[1])
        s = torch.relu(self.reduce(x.mean((2, 3), keepdim=True), hidden, 1))
        if fixed:
            s = first_channels(s, se_width(channels))
        return x * F.hardsigmoid(self.expand(s, x.shape[1], 1))

    def copy_to(self, se: nn.Module) -> None:
        self.reduce.copy_to(se.reduce)
        self.expand.copy_to(se.expand)


class ElasticBlock(nn.Module):
    """The elastic twin of ``Block``: same submodule names, weights at the largest size; the
    hidden width and the kernel size are chosen per call."""

    def __init__(self, in_channels: int, max_mid: int, out: int, stride: int, act: str, se: bool):
        super().__init__()
        self.expand = ElasticConv2d(in_channels, max_mid, 1)
        self.expand_bn = ElasticBatchNorm(max_mid)
        self.depthwise = ElasticConv2d(max_mid, max_mid, max(KERNELS), stride, depthwise=True)
        self.depthwise_bn = ElasticBatchNorm(max_mid)
        self.se = ElasticSqueezeExcite(max_mid) if se else None
        self.project = ElasticConv2d(max_mid, out, 1)
        self.project_bn = ElasticBatchNorm(out)
        self.act = ACTIVATIONS[act]()
        self.out = out
        self.residual = stride == 1 and in_channels == out

    def forward(self, x: Tensor, mid: int, kernel: int, fixed_shapes: bool = False) -> Tensor:
        """The block at hidden width ``mid`` and kernel ``kernel``.

        With ``fixed_shapes`` every convolution runs at the block's largest shape: the hidden
        channels beyond ``mid`` are zeroed after each activation and the kernel's centre is
        zero-padded to the largest kernel. The output and the gradients equal those of the
        sliced layers (the zeros add nothing); only the batch norms' running statistics of the
        inactive channels move too. Why: cuDNN builds an execution plan for every new
        convolution shape, milliseconds of CPU each, and random subnets bring new shapes at
        almost every step; at fixed shapes a GPU sees one set per resolution.
        """
        if not fixed_shapes:
            y = self.act(self.expand_bn(self.expand(x, mid, 1)))
            y = self.act(self.depthwise_bn(self.depthwise(y, mid, kernel)))
            y = self.se(y) if self.se is not None else y
            return self._end(x, y)
        full = self.expand.weight.shape[0]
        y = first_channels(self.act(self.expand_bn(self.expand(x, full, 1))), mid)
        y = self.depthwise(y, full, kernel, pad_to_max=True)
        y = first_channels(self.act(self.depthwise_bn(y)), mid)
        y = self.se(y, mid) if self.se is not None else y
        return self._end(x, y)

    def _end(self, x: Tensor, y: Tensor) -> Tensor:
        y = self.project_bn(self.project(y, self.out, 1))
        return x + y if self.residual else y

    def copy_to(self, block: Block) -> None:
        names = ["expand", "expand_bn", "depthwise", "depthwise_bn", "project", "project_bn"]
        for name in names + (["se"] if self.se is not None else []):
            getattr(self, name).copy_to(getattr(block, name))


class MobileNetV3Supernet(Supernet):
    """Runs every config of a ``MobileNetV3Space``; blocks beyond a stage's depth are skipped.

    The layers that no dimension changes (stem, first block, final expansion, feature mix,
    classifier) are the static network's own modules, their batch norms made global
    (``GlobalBatchNorm``) for data-parallel training.
    """

    def __init__(self, space: MobileNetV3Space, input_mean: float = 0.0, input_std: float = 1.0):
        super().__init__()
        self.space = space
        largest = space.arch(space.max())
        template = with_global_batch_norms(MobileNetV3Net(largest))
        self.register_buffer("input_mean", torch.tensor(float(input_mean)))
        self.register_buffer("input_std", torch.tensor(float(input_std)))
        self.stem, self.stem_bn, self.first = template.stem, template.stem_bn, template.first
        stages, channels = [], largest["first"]["out"]
        for stage, (_, _, _, se) in zip(largest["stages"], STAGES, strict=True):
            blocks = []
            for b, block in enumerate(stage["blocks"]):  # the largest hidden width of each
                stride = stage["stride"] if b == 0 else 1
                blocks.append(
                    ElasticBlock(channels, block["mid"], stage["out"], stride, stage["act"], se)
                )
                channels = stage["out"]
            stages.append(nn.ModuleList(blocks))
        self.stages = nn.ModuleList(stages)
        self.final_expand, self.final_bn = template.final_expand, template.final_bn
        self.feature_mix, self.classifier = template.feature_mix, template.classifier
        self.fixed_shapes: bool | None = None

    def forward(self, x: Tensor, config: Mapping[str, int]) -> Tensor:
        """``fixed_shapes`` (``ElasticBlock.forward``) is on for inputs on a GPU, unless the
        attribute ``fixed_shapes`` says otherwise."""
        arch = self.space.arch(config)
        fixed = x.is_cuda if self.fixed_shapes is None else self.fixed_shapes
        x = resize((x - self.input_mean) / self.input_std, arch["resolution"])
        x = F.hardswish(self.stem_bn(self.stem(x)))
        x = self.first(x)
        for stage, stage_arch in zip(self.stages, arch["stages"], strict=True):
            for block, block_arch in zip(stage, stage_arch["blocks"], strict=False):
                x = block(x, block_arch["mid"], block_arch["kernel"], fixed)
        x = F.hardswish(self.final_bn(self.final_expand(x)))
        x = F.hardswish(self.feature_mix(x.mean((2, 3), keepdim=True)))
        return self.classifier(x.flatten(1))

    def extract(self, config: Mapping[str, int]) -> MobileNetV3Net:
        arch = self.space.arch(config, self.input_mean.item(), self.input_std.item())
        net = MobileNetV3Net(arch).to(self.input_mean.device)
        for name in ("stem", "stem_bn", "first", "final_expand", "final_bn", "feature_mix"):
            getattr(net, name).load_state_dict(getattr(self, name).state_dict())
        net.classifier.load_state_dict(self.classifier.state_dict())
        for stage, static_stage in zip(self.stages, net.stages, strict=True):
            for block, static_block in zip(stage, static_stage, strict=False):
                block.copy_to(static_block)
        return net.train(self.training)

    def macs(self, config: Mapping[str, int]) -> int:
        return arch_macs(self.space.arch(config))

    def blocks(self) -> list[nn.Module]:
        return [block for stage in self.stages for block in stage]

    def params(self, config: Mapping[str, int]) -> int:
        return arch_params(self.space.arch(config))


def arch_macs(arch: Mapping[str, Any]) -> int:
    """Multiply-accumulates of one sample through convolutions and linear layers.

    Batch norm, activations, the resize, the input normalisation, the residual add, the
    squeeze-excite's rescaling and pooling are not counted: exactly what
    ``torch.utils.flop_counter`` counts, halved.
    """
    size = strided(arch["resolution"], 2)
    channels = arch["stem"]["out"]
    total = arch["input_channels"] * channels * 9 * size * size
    first = arch["first"]["out"]
    total += channels * 9 * size * size + channels * first * size * size  # depthwise, project
    channels = first
    for stage in arch["stages"]:
        for i, block in enumerate(stage["blocks"]):
            out_size = strided(size, stage["stride"] if i == 0 else 1)
            mid, kernel = block["mid"], block["kernel"]
            total += channels * mid * size * size  # expand
            total += mid * kernel * kernel * out_size * out_size  # depthwise
            total += 2 * mid * block["se"]  # squeeze-excite on the pooled vector
            total += mid * stage["out"] * out_size * out_size  # project
            channels, size = stage["out"], out_size
    total += channels * arch["final_expand"] * size * size
    total += arch["final_expand"] * arch["feature_mix"]
    return total + arch["feature_mix"] * arch["num_classes"]


def arch_params(arch: Mapping[str, Any]) -> int:
    """Parameters of the static network (batch norm's scale and shift included)."""
    channels = arch["stem"]["out"]
    total = arch["input_channels"] * channels * 9 + 2 * channels
    first = arch["first"]["out"]
    total += channels * 9 + 2 * channels + channels * first + 2 * first
    channels = first
    for stage in arch["stages"]:
        out = stage["out"]
        for block in stage["blocks"]:
            mid, kernel, se = block["mid"], block["kernel"], block["se"]
            total += channels * mid + 2 * mid + mid * kernel * kernel + 2 * mid
            total += (mid * se + se + se * mid + mid) if se else 0
            total += mid * out + 2 * out
            channels = out
    final, mix, classes = arch["final_expand"], arch["feature_mix"], arch["num_classes"]
    total += channels * final + 2 * final + final * mix
    return total + mix * classes + classes
