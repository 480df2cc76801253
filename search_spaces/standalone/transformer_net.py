"""A static Transformer encoder classifier over patches, described by a plain ``arch`` dict.

This file imports only torch (and safetensors in ``load``): it is copied next to exported
weights so that the model runs without the search project installed. Usage::

    from transformer_net import load
    model = load("export_dir")          # reads config.json and model.safetensors
    logits = model(x)                   # x: (batch, length) signals or (batch, C, H, W) images

Signals are cut into non-overlapping patches of ``patch`` samples, images into ``patch`` x
``patch`` squares; each patch is one token. ``arch`` example::

    {"input_shape": [40], "patch": 4, "num_classes": 10, "input_mean": 0.0, "input_std": 1.0,
     "embed": 64, "head_dim": 16,
     "layers": [{"heads": 4, "ffn": 128}, {"heads": 2, "ffn": 64}]}
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def patchify(x: Tensor, patch: int) -> Tensor:
    """``(batch, length)`` -> ``(batch, length / patch, patch)``; ``(batch, C, H, W)`` ->
    ``(batch, H W / patch^2, C patch^2)``, patches in row-major order."""
    if x.dim() == 2:
        return x.reshape(x.shape[0], x.shape[1] // patch, patch)
    n, c, h, w = x.shape
    x = x.reshape(n, c, h // patch, patch, w // patch, patch).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(n, (h // patch) * (w // patch), c * patch * patch)


def attention(q: Tensor, k: Tensor, v: Tensor, heads: int) -> Tensor:
    """Multi-head scaled dot-product attention on ``(batch, tokens, heads x head_dim)``."""
    n, t, width = q.shape
    split = lambda a: a.reshape(n, t, heads, width // heads).transpose(1, 2)  # noqa: E731
    y = F.scaled_dot_product_attention(split(q), split(k), split(v))
    return y.transpose(1, 2).reshape(n, t, width)


class EncoderLayer(nn.Module):
    """Pre-norm encoder layer: attention and a GELU feed-forward, each with a residual."""

    def __init__(self, embed: int, heads: int, head_dim: int, ffn: int):
        super().__init__()
        width = heads * head_dim
        self.heads = heads
        self.norm1 = nn.LayerNorm(embed)
        self.query = nn.Linear(embed, width)
        self.key = nn.Linear(embed, width)
        self.value = nn.Linear(embed, width)
        self.out = nn.Linear(width, embed)
        self.norm2 = nn.LayerNorm(embed)
        self.fc1 = nn.Linear(embed, ffn)
        self.fc2 = nn.Linear(ffn, embed)

    def forward(self, x: Tensor) -> Tensor:
        h = self.norm1(x)
        x = x + self.out(attention(self.query(h), self.key(h), self.value(h), self.heads))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


def token_count(input_shape: list[int], patch: int) -> tuple[int, int]:
    """Tokens per sample and the width of one patch."""
    if len(input_shape) == 1:
        return input_shape[0] // patch, patch
    c, h, w = input_shape
    return (h // patch) * (w // patch), c * patch * patch


class TransformerNet(nn.Module):
    """Normalise, cut into patches, embed, add positions, encoder layers, layer norm, mean of
    the tokens, linear classifier."""

    def __init__(self, arch: dict[str, Any]):
        super().__init__()
        self.arch = arch
        self.patch = int(arch["patch"])
        tokens, patch_width = token_count(list(arch["input_shape"]), self.patch)
        embed = arch["embed"]
        self.register_buffer("input_mean", torch.tensor(float(arch["input_mean"])))
        self.register_buffer("input_std", torch.tensor(float(arch["input_std"])))
        self.embedding = nn.Linear(patch_width, embed)
        self.position = nn.Parameter(torch.zeros(1, tokens, embed))
        self.layers = nn.Sequential(
            *(
                EncoderLayer(embed, layer["heads"], arch["head_dim"], layer["ffn"])
                for layer in arch["layers"]
            )
        )
        self.norm = nn.LayerNorm(embed)
        self.classifier = nn.Linear(embed, arch["num_classes"])

    def forward(self, x: Tensor) -> Tensor:
        return self.end(self.layers(self.begin(x)))

    def begin(self, x: Tensor) -> Tensor:
        """Normalise, cut into patches, embed, add positions."""
        x = patchify((x - self.input_mean) / self.input_std, self.patch)
        return self.embedding(x) + self.position

    def end(self, x: Tensor) -> Tensor:
        """Layer norm, mean of the tokens, classifier."""
        return self.classifier(self.norm(x).mean(dim=1))


def load(directory: str | Path) -> TransformerNet:
    """Rebuild the network from ``config.json`` and ``model.safetensors`` in ``directory``."""
    from safetensors.torch import load_file

    directory = Path(directory)
    arch = json.loads((directory / "config.json").read_text())["arch"]
    model = TransformerNet(arch)
    model.load_state_dict(load_file(directory / "model.safetensors"))
    return model.eval()
