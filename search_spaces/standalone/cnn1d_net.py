"""A static 1-D CNN (inverted-residual blocks), described by a plain ``arch`` dict.

This file imports only torch (and safetensors in ``load``): it is copied next to exported
weights so that the model runs without the search project installed. Usage::

    from cnn1d_net import load
    model = load("export_dir")          # reads config.json and model.safetensors
    logits = model(x)                   # x: (batch, length) raw signals

``arch`` example::

    {"input_length": 40, "num_classes": 10, "input_mean": 0.0, "input_std": 1.0,
     "stem": {"out": 32, "kernel": 5},
     "stages": [{"out": 32, "stride": 2, "blocks": [{"kernel": 5, "mid": 96}]}]}
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn


class Block(nn.Module):
    """Inverted residual: 1x1 expand, strided depthwise conv, 1x1 project, skip if shapes match."""

    def __init__(self, in_channels: int, mid: int, out_channels: int, kernel: int, stride: int):
        super().__init__()
        self.expand = nn.Conv1d(in_channels, mid, 1, bias=False)
        self.expand_bn = nn.BatchNorm1d(mid)
        self.depthwise = nn.Conv1d(mid, mid, kernel, stride, kernel // 2, groups=mid, bias=False)
        self.depthwise_bn = nn.BatchNorm1d(mid)
        self.project = nn.Conv1d(mid, out_channels, 1, bias=False)
        self.project_bn = nn.BatchNorm1d(out_channels)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: Tensor) -> Tensor:
        y = torch.relu(self.expand_bn(self.expand(x)))
        y = torch.relu(self.depthwise_bn(self.depthwise(y)))
        y = self.project_bn(self.project(y))
        return x + y if self.residual else y


class Cnn1dNet(nn.Module):
    """Normalise raw input, stem conv, stages of blocks, global average pool, linear classifier."""

    def __init__(self, arch: dict[str, Any]):
        super().__init__()
        self.arch = arch
        self.register_buffer("input_mean", torch.tensor(float(arch["input_mean"])))
        self.register_buffer("input_std", torch.tensor(float(arch["input_std"])))
        stem = arch["stem"]
        self.stem = nn.Conv1d(1, stem["out"], stem["kernel"], 1, stem["kernel"] // 2, bias=False)
        self.stem_bn = nn.BatchNorm1d(stem["out"])
        stages, channels = [], stem["out"]
        for stage in arch["stages"]:
            blocks = []
            for i, block in enumerate(stage["blocks"]):
                stride = stage["stride"] if i == 0 else 1
                blocks.append(Block(channels, block["mid"], stage["out"], block["kernel"], stride))
                channels = stage["out"]
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        self.classifier = nn.Linear(channels, arch["num_classes"])

    def forward(self, x: Tensor) -> Tensor:
        x = ((x - self.input_mean) / self.input_std).unsqueeze(1)
        x = torch.relu(self.stem_bn(self.stem(x)))
        for stage in self.stages:
            x = stage(x)
        return self.classifier(x.mean(dim=-1))


def load(directory: str | Path) -> Cnn1dNet:
    """Rebuild the network from ``config.json`` and ``model.safetensors`` in ``directory``."""
    from safetensors.torch import load_file

    directory = Path(directory)
    arch = json.loads((directory / "config.json").read_text())["arch"]
    model = Cnn1dNet(arch)
    model.load_state_dict(load_file(directory / "model.safetensors"))
    return model.eval()
