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

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from search_spaces.base import Dimension, SearchSpace, Supernet, register_space
from search_spaces.elastic import ElasticBatchNorm1d, ElasticConv1d, ElasticLinear
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


class ElasticBlock(nn.Module):
    """The elastic twin of ``Block``: same submodule names, weights at the largest size."""

    def __init__(self, max_in: int, max_out: int, max_mid: int, stride: int):
        super().__init__()
        self.expand = ElasticConv1d(max_in, max_mid, 1)
        self.expand_bn = ElasticBatchNorm1d(max_mid)
        self.depthwise = ElasticConv1d(max_mid, max_mid, max(KERNELS), stride, depthwise=True)
        self.depthwise_bn = ElasticBatchNorm1d(max_mid)
        self.project = ElasticConv1d(max_mid, max_out, 1)
        self.project_bn = ElasticBatchNorm1d(max_out)
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
        self.stem_bn = nn.BatchNorm1d(STEM_WIDTH)
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
        net.stem_bn.load_state_dict(self.stem_bn.state_dict())
        for stage, static_stage in zip(self.stages, net.stages, strict=True):
            for block, static_block in zip(stage, static_stage, strict=False):
                block.copy_to(static_block)
        self.classifier.copy_to(net.classifier)
        return net.train(self.training)

    def macs(self, config: Mapping[str, int]) -> int:
        return arch_macs(self.space.arch(config))


def arch_macs(arch: dict) -> int:
    """Multiply-accumulates of one sample through convolutions and the classifier.

    Batch norm, ReLU, the residual add and pooling are not counted (they fold or are
    negligible), the usual convention of MAC counters.
    """
    length = arch["input_length"]
    channels = arch["stem"]["out"]
    total = channels * arch["stem"]["kernel"] * length
    for stage in arch["stages"]:
        for i, block in enumerate(stage["blocks"]):
            stride = stage["stride"] if i == 0 else 1
            out_length = (length - 1) // stride + 1
            total += channels * block["mid"] * length  # expand
            total += block["mid"] * block["kernel"] * out_length  # depthwise
            total += block["mid"] * stage["out"] * out_length  # project
            channels, length = stage["out"], out_length
    return total + channels * arch["num_classes"]
