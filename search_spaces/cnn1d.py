"""``cnn1d``: an elastic 1-D CNN of inverted-residual blocks, for signals such as mnist1d.

Dimensions (stages ``s`` and blocks ``b`` count from 1):

- ``width.s``      output channels of stage ``s`` (all its blocks)
- ``depth.s``      blocks used in stage ``s`` (the first ``depth`` blocks run)
- ``kernel.s.b``   depthwise kernel size of block ``b``
- ``expand.s.b``   expansion ratio of block ``b`` (hidden width = ratio x block input width)

Every block of a stage shares the stage's width, so residual connections always line up. The
subnet's static form is ``standalone/cnn1d_net.Cnn1dNet``, which the supernet's modules mirror
name for name.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from search_spaces.base import (
    ConfigError,
    Dimension,
    SearchSpace,
    Supernet,
    layer_signature,
    register_space,
)
from search_spaces.elastic import ElasticBatchNorm, ElasticConv1d, ElasticLinear
from search_spaces.standalone.cnn1d_net import Block, Cnn1dNet

STEM_WIDTH = 32
STEM_KERNEL = 5
STAGE_WIDTHS = ((8, 16, 24), (16, 24, 32), (24, 40, 64))
STAGE_STRIDE = 2
DEPTHS = (1, 2, 3)
KERNELS = (3, 5, 7)
EXPANDS = (1, 2, 4, 6)


@register_space("cnn1d")
class Cnn1dSpace(SearchSpace):
    """Width and depth per stage, kernel size and expansion ratio per block."""

    def __init__(
        self,
        input_length: int = 40,
        num_classes: int = 10,
        choices: Mapping[str, Sequence[int]] | None = None,
    ):
        self.input_length = input_length
        self.num_classes = num_classes
        self.choices = {k: list(v) for k, v in (choices or {}).items()}
        dimensions = []
        for s, widths in enumerate(STAGE_WIDTHS, start=1):
            dimensions.append(Dimension(f"width.{s}", widths))
            dimensions.append(Dimension(f"depth.{s}", DEPTHS))
            for b in range(1, max(DEPTHS) + 1):
                dimensions.append(Dimension(f"kernel.{s}.{b}", KERNELS))
                dimensions.append(Dimension(f"expand.{s}.{b}", EXPANDS))
        super().__init__(dimensions, choices)

    def is_active(self, config: Mapping[str, int], dimension: str) -> bool:
        parts = dimension.split(".")
        if parts[0] in ("width", "depth"):
            return True
        return int(parts[2]) <= config[f"depth.{parts[1]}"]

    @classmethod
    def data_kwargs(cls, input_shape: Sequence[int], num_classes: int) -> dict[str, Any]:
        return {"input_length": _length(input_shape), "num_classes": int(num_classes)}

    def describe(self) -> dict[str, Any]:
        return {
            "input_length": self.input_length,
            "num_classes": self.num_classes,
            "choices": self.choices,
        }

    def build_supernet(self, input_mean: float = 0.0, input_std: float = 1.0) -> Cnn1dSupernet:
        return Cnn1dSupernet(self, input_mean, input_std)

    def arch(
        self, config: Mapping[str, int], input_mean: float = 0.0, input_std: float = 1.0
    ) -> dict:
        """The static network's description (``Cnn1dNet``'s ``arch``) for ``config``."""
        config = self.validate(config)
        stages, channels = [], STEM_WIDTH
        for s in range(1, len(STAGE_WIDTHS) + 1):
            blocks, width = [], config[f"width.{s}"]
            for b in range(1, config[f"depth.{s}"] + 1):
                mid = channels * config[f"expand.{s}.{b}"]
                blocks.append({"kernel": config[f"kernel.{s}.{b}"], "mid": mid})
                channels = width
            stages.append({"out": width, "stride": STAGE_STRIDE, "blocks": blocks})
        return {
            "input_length": self.input_length,
            "num_classes": self.num_classes,
            "input_mean": float(input_mean),
            "input_std": float(input_std),
            "stem": {"out": STEM_WIDTH, "kernel": STEM_KERNEL},
            "stages": stages,
        }

    def check_input_shape(self, input_shape: Sequence[int]) -> None:
        _length(input_shape)

    # ---- layers, for latency lookup tables ----------------------------------------------
    def layers(self, config: Mapping[str, int], input_shape: Sequence[int]) -> list[str]:
        arch = self.arch(config)
        return [layer_signature(layer) for layer in arch_layers(arch, _length(input_shape))]

    def all_layers(self, input_shape: Sequence[int]) -> list[str]:
        """Stem, every block a stage position can hold (input width, width, kernel,
        expansion; the stride and length follow from the position) and the head per width."""
        choices = {d.name: d.choices for d in self.dimensions}
        length, inputs = _length(input_shape), (STEM_WIDTH,)
        found = [{"op": "stem", "out": STEM_WIDTH, "kernel": STEM_KERNEL, "length": length}]
        for s in range(1, len(STAGE_WIDTHS) + 1):
            widths = choices[f"width.{s}"]
            for b in range(1, max(choices[f"depth.{s}"]) + 1):
                first = b == 1
                for out in widths:
                    for channels in inputs if first else (out,):
                        for kernel in choices[f"kernel.{s}.{b}"]:
                            for expand in choices[f"expand.{s}.{b}"]:
                                found.append(
                                    _block_layer(
                                        channels, channels * expand, out, kernel,
                                        STAGE_STRIDE if first else 1,
                                        length if first else _strided(length),
                                    )
                                )  # fmt: skip
            length, inputs = _strided(length), widths
        for channels in inputs:
            found.append(_head_layer(channels, self.num_classes, length))
        return list(dict.fromkeys(layer_signature(layer) for layer in found))

    def build_layer(self, signature: str) -> tuple[nn.Module, tuple[int, ...]]:
        layer = json.loads(signature)
        op = layer.get("op")
        if op == "stem":
            return _Stem(layer["out"], layer["kernel"]), (layer["length"],)
        if op == "block":
            block = Block(layer["in"], layer["mid"], layer["out"], layer["kernel"], layer["stride"])
            return block, (layer["in"], layer["length"])
        if op == "head":
            return _Head(layer["in"], layer["classes"]), (layer["in"], layer["length"])
        raise ConfigError(f"unknown layer kind {op!r} in {signature}; known: stem, block, head")


def _length(input_shape: Sequence[int]) -> int:
    if len(input_shape) != 1:
        raise ConfigError(f"cnn1d takes samples of shape (length,), got {tuple(input_shape)}")
    return int(input_shape[0])


def _strided(length: int) -> int:
    return (length - 1) // STAGE_STRIDE + 1


def _block_layer(
    channels: int, mid: int, out: int, kernel: int, stride: int, length: int
) -> dict[str, Any]:
    return {
        "op": "block", "in": channels, "mid": mid, "out": out, "kernel": kernel,
        "stride": stride, "length": length,
    }  # fmt: skip


def _head_layer(channels: int, classes: int, length: int) -> dict[str, Any]:
    return {"op": "head", "in": channels, "classes": classes, "length": length}


def arch_layers(arch: dict, length: int) -> Iterator[dict[str, Any]]:
    """The static network's layers in order, each as the plain description that sets its cost
    (``length`` is the input length of that layer)."""
    stem = arch["stem"]
    yield {"op": "stem", "out": stem["out"], "kernel": stem["kernel"], "length": length}
    channels = stem["out"]
    for stage in arch["stages"]:
        for i, block in enumerate(stage["blocks"]):
            stride = stage["stride"] if i == 0 else 1
            yield _block_layer(
                channels, block["mid"], stage["out"], block["kernel"], stride, length
            )
            channels, length = stage["out"], (length - 1) // stride + 1
    yield _head_layer(channels, arch["num_classes"], length)


class _Stem(nn.Module):
    """``Cnn1dNet``'s first steps alone: normalise, stem convolution, batch norm, ReLU."""

    def __init__(self, out: int, kernel: int):
        super().__init__()
        self.register_buffer("input_mean", torch.tensor(0.0))
        self.register_buffer("input_std", torch.tensor(1.0))
        self.stem = nn.Conv1d(1, out, kernel, 1, kernel // 2, bias=False)
        self.stem_bn = nn.BatchNorm1d(out)

    def forward(self, x: Tensor) -> Tensor:
        x = ((x - self.input_mean) / self.input_std).unsqueeze(1)
        return torch.relu(self.stem_bn(self.stem(x)))


class _Head(nn.Module):
    """``Cnn1dNet``'s last steps alone: global average pooling and the linear classifier."""

    def __init__(self, channels: int, classes: int):
        super().__init__()
        self.classifier = nn.Linear(channels, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(x.mean(dim=-1))


class ElasticBlock(nn.Module):
    """The elastic twin of ``Block``: same submodule names, weights at the largest size."""

    def __init__(self, max_in: int, max_out: int, max_mid: int, stride: int):
        super().__init__()
        self.expand = ElasticConv1d(max_in, max_mid, 1)
        self.expand_bn = ElasticBatchNorm(max_mid)
        self.depthwise = ElasticConv1d(max_mid, max_mid, max(KERNELS), stride, depthwise=True)
        self.depthwise_bn = ElasticBatchNorm(max_mid)
        self.project = ElasticConv1d(max_mid, max_out, 1)
        self.project_bn = ElasticBatchNorm(max_out)
        self.stride = stride

    def forward(self, x: Tensor, mid: int, out: int, kernel: int) -> Tensor:
        y = torch.relu(self.expand_bn(self.expand(x, mid, 1)))
        y = torch.relu(self.depthwise_bn(self.depthwise(y, mid, kernel)))
        y = self.project_bn(self.project(y, out, 1))
        return x + y if self.stride == 1 and x.shape[1] == out else y

    def copy_to(self, block: Block) -> None:
        for name in ("expand", "expand_bn", "depthwise", "depthwise_bn", "project", "project_bn"):
            getattr(self, name).copy_to(getattr(block, name))


class Cnn1dSupernet(Supernet):
    """Runs every config of a ``Cnn1dSpace``; blocks beyond a stage's depth are skipped."""

    def __init__(self, space: Cnn1dSpace, input_mean: float = 0.0, input_std: float = 1.0):
        super().__init__()
        self.space = space
        self.register_buffer("input_mean", torch.tensor(float(input_mean)))
        self.register_buffer("input_std", torch.tensor(float(input_std)))
        self.stem = nn.Conv1d(1, STEM_WIDTH, STEM_KERNEL, 1, STEM_KERNEL // 2, bias=False)
        self.stem_bn = ElasticBatchNorm(STEM_WIDTH)
        largest = space.max()
        stages, channels = [], STEM_WIDTH
        for s in range(1, len(STAGE_WIDTHS) + 1):
            blocks, width = [], largest[f"width.{s}"]
            for b in range(1, largest[f"depth.{s}"] + 1):
                stride = STAGE_STRIDE if b == 1 else 1
                max_mid = channels * largest[f"expand.{s}.{b}"]
                blocks.append(ElasticBlock(channels, width, max_mid, stride))
                channels = width
            stages.append(nn.ModuleList(blocks))
        self.stages = nn.ModuleList(stages)
        self.classifier = ElasticLinear(channels, space.num_classes)

    def forward(self, x: Tensor, config: Mapping[str, int]) -> Tensor:
        arch = self.space.arch(config)
        x = ((x - self.input_mean) / self.input_std).unsqueeze(1)
        x = torch.relu(self.stem_bn(self.stem(x)))
        for stage, stage_arch in zip(self.stages, arch["stages"], strict=True):
            for block, block_arch in zip(stage, stage_arch["blocks"], strict=False):
                x = block(x, block_arch["mid"], stage_arch["out"], block_arch["kernel"])
        return self.classifier(x.mean(dim=-1))

    def extract(self, config: Mapping[str, int]) -> Cnn1dNet:
        arch = self.space.arch(config, self.input_mean.item(), self.input_std.item())
        net = Cnn1dNet(arch)
        net.stem.load_state_dict(self.stem.state_dict())
        self.stem_bn.copy_to(net.stem_bn)
        for stage, static_stage in zip(self.stages, net.stages, strict=True):
            for block, static_block in zip(stage, static_stage, strict=False):
                block.copy_to(static_block)
        self.classifier.copy_to(net.classifier)
        return net.train(self.training)

    def macs(self, config: Mapping[str, int]) -> int:
        return arch_macs(self.space.arch(config))

    def blocks(self) -> list[nn.Module]:
        return [block for stage in self.stages for block in stage]


def arch_macs(arch: dict) -> int:
    """Multiply-accumulates of one sample through convolutions and the classifier.

    Batch norm, ReLU, the input normalisation, the residual add and pooling are not counted
    (batch norm folds into the convolution before it; the others are a few operations per
    activation, not per weight): the convention of MAC counters, and exactly what
    ``torch.utils.flop_counter`` counts, halved.
    """
    return sum(layer_macs(layer) for layer in arch_layers(arch, arch["input_length"]))


def layer_macs(layer: dict[str, Any]) -> int:
    """Multiply-accumulates of one sample through one layer of ``arch_layers``."""
    length = layer["length"]
    if layer["op"] == "stem":
        return layer["out"] * layer["kernel"] * length
    if layer["op"] == "head":
        return layer["in"] * layer["classes"]
    out_length = (length - 1) // layer["stride"] + 1
    mid = layer["mid"]
    expand = layer["in"] * mid * length
    depthwise = mid * layer["kernel"] * out_length
    project = mid * layer["out"] * out_length
    return expand + depthwise + project
