"""A static MobileNetV3 (Once-for-All layout), described by a plain ``arch`` dict.

This file imports only torch (and safetensors in ``load``): it is copied next to exported
weights so that the model runs without the search project installed. Usage::

    from mobilenetv3_net import load
    model = load("export_dir")          # reads config.json and model.safetensors
    logits = model(x)                   # x: (batch, channels, height, width) raw images

The network resizes its input to ``arch["resolution"]`` (bilinear) when the sizes differ, so it
takes images of any size. ``arch`` example::

    {"input_channels": 3, "resolution": 224, "num_classes": 1000,
     "input_mean": 0.0, "input_std": 1.0,
     "stem": {"out": 16}, "first": {"out": 16},
     "stages": [{"out": 24, "stride": 2, "act": "relu",
                 "blocks": [{"kernel": 3, "mid": 72, "se": 0}, ...]}, ...],
     "final_expand": 960, "feature_mix": 1280}

A block's ``se`` is the squeeze-excite's hidden width (0: none).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ACTIVATIONS = {"relu": nn.ReLU, "hswish": nn.Hardswish}


def resize(x: Tensor, resolution: int) -> Tensor:
    """``x`` resized to ``resolution`` x ``resolution`` (bilinear); unchanged if it already is."""
    if tuple(x.shape[-2:]) == (resolution, resolution):
        return x
    return F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False)


class SqueezeExcite(nn.Module):
    """Channel attention: pool, 1x1 reduce, ReLU, 1x1 expand, hard sigmoid, rescale."""

    def __init__(self, channels: int, mid: int):
        super().__init__()
        self.reduce = nn.Conv2d(channels, mid, 1)
        self.expand = nn.Conv2d(mid, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        s = torch.relu(self.reduce(x.mean((2, 3), keepdim=True)))
        return x * F.hardsigmoid(self.expand(s))


class Block(nn.Module):
    """MBConv: 1x1 expand (absent when ``mid`` is None), depthwise conv, optional
    squeeze-excite, 1x1 project; a residual connection when shapes match."""

    def __init__(
        self,
        in_channels: int,
        mid: int | None,
        out_channels: int,
        kernel: int,
        stride: int,
        act: str,
        se: int,
    ):
        super().__init__()
        if mid is not None:
            self.expand = nn.Conv2d(in_channels, mid, 1, bias=False)
            self.expand_bn = nn.BatchNorm2d(mid)
        else:
            self.expand = self.expand_bn = None
            mid = in_channels
        self.depthwise = nn.Conv2d(mid, mid, kernel, stride, kernel // 2, groups=mid, bias=False)
        self.depthwise_bn = nn.BatchNorm2d(mid)
        self.se = SqueezeExcite(mid, se) if se else None
        self.project = nn.Conv2d(mid, out_channels, 1, bias=False)
        self.project_bn = nn.BatchNorm2d(out_channels)
        self.act = ACTIVATIONS[act]()
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: Tensor) -> Tensor:
        y = x if self.expand is None else self.act(self.expand_bn(self.expand(x)))
        y = self.act(self.depthwise_bn(self.depthwise(y)))
        if self.se is not None:
            y = self.se(y)
        y = self.project_bn(self.project(y))
        return x + y if self.residual else y


class MobileNetV3Net(nn.Module):
    """Resize, normalise, 3x3 stem, a first block, stages of MBConv blocks, 1x1 final expand,
    global average pool, 1x1 feature mix, linear classifier."""

    def __init__(self, arch: dict[str, Any]):
        super().__init__()
        self.arch = arch
        self.resolution = int(arch["resolution"])
        self.register_buffer("input_mean", torch.tensor(float(arch["input_mean"])))
        self.register_buffer("input_std", torch.tensor(float(arch["input_std"])))
        channels = arch["stem"]["out"]
        self.stem = nn.Conv2d(arch["input_channels"], channels, 3, 2, 1, bias=False)
        self.stem_bn = nn.BatchNorm2d(channels)
        self.first = Block(channels, None, arch["first"]["out"], 3, 1, "relu", 0)
        channels = arch["first"]["out"]
        stages = []
        for stage in arch["stages"]:
            blocks = []
            for i, block in enumerate(stage["blocks"]):
                stride = stage["stride"] if i == 0 else 1
                blocks.append(
                    Block(
                        channels, block["mid"], stage["out"], block["kernel"], stride,
                        stage["act"], block["se"],
                    )
                )  # fmt: skip
                channels = stage["out"]
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        self.final_expand = nn.Conv2d(channels, arch["final_expand"], 1, bias=False)
        self.final_bn = nn.BatchNorm2d(arch["final_expand"])
        self.feature_mix = nn.Conv2d(arch["final_expand"], arch["feature_mix"], 1, bias=False)
        self.classifier = nn.Linear(arch["feature_mix"], arch["num_classes"])

    def forward(self, x: Tensor) -> Tensor:
        x = self.begin(x)
        for stage in self.stages:
            x = stage(x)
        return self.end(x)

    def begin(self, x: Tensor) -> Tensor:
        """Resize, normalise, stem and first block."""
        x = resize((x - self.input_mean) / self.input_std, self.resolution)
        return self.first(F.hardswish(self.stem_bn(self.stem(x))))

    def end(self, x: Tensor) -> Tensor:
        """Final expansion, pooling, feature mix and classifier."""
        x = F.hardswish(self.final_bn(self.final_expand(x)))
        x = F.hardswish(self.feature_mix(x.mean((2, 3), keepdim=True)))
        return self.classifier(x.flatten(1))


def load(directory: str | Path) -> MobileNetV3Net:
    """Rebuild the network from ``config.json`` and ``model.safetensors`` in ``directory``."""
    from safetensors.torch import load_file

    directory = Path(directory)
    arch = json.loads((directory / "config.json").read_text())["arch"]
    model = MobileNetV3Net(arch)
    model.load_state_dict(load_file(directory / "model.safetensors"))
    return model.eval()
