"""``transformer``: an elastic Transformer encoder for sequence or patch classification.

Dimensions (layers ``l`` count from 1):

- ``depth``      encoder layers used (the first ``depth`` run)
- ``embed``      embedding width (all layers share it, so residuals line up)
- ``heads.l``    attention heads of layer ``l`` (each ``head_dim`` wide)
- ``ffn.l``      hidden width of layer ``l``'s feed-forward block

Samples are signals ``(length,)`` cut into patches of ``patch`` values, or images
``(channels, height, width)`` cut into ``patch`` x ``patch`` squares; one patch is one token.
Layers are pre-norm (layer norm, attention, residual; layer norm, GELU feed-forward, residual);
the classifier reads the mean of the final layer-normed tokens. A smaller width uses the first
rows and columns of the largest weights, the first heads of the attention projections, and a
layer norm over the active features (as in AutoFormer / HAT). The subnet's static form is
``standalone/transformer_net.TransformerNet``, whose module names the supernet's mirror.

Space options: ``patch``, ``head_dim`` and the choice lists ``depths``, ``embeds``, ``heads``
and ``ffns`` (``choices`` only narrows them).
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
from search_spaces.elastic import ElasticLayerNorm, ElasticLinear
from search_spaces.standalone.transformer_net import (
    EncoderLayer,
    TransformerNet,
    attention,
    patchify,
    token_count,
)

DEPTHS = (2, 3, 4)
EMBEDS = (64, 128, 192)
HEADS = (2, 3, 4)
FFNS = (128, 256, 512)
HEAD_DIM = 32
PATCH = 4


def _choices(name: str, values: Sequence[int]) -> tuple[int, ...]:
    chosen = tuple(sorted({int(v) for v in values}))
    if not chosen or chosen[0] < 1:
        raise ConfigError(f"{name} must be positive integers, got {name}={list(values)}")
    return chosen


@register_space("transformer")
class TransformerSpace(SearchSpace):
    """Depth and embedding width, heads and feed-forward width per layer."""

    def __init__(
        self,
        input_shape: Sequence[int] = (40,),
        num_classes: int = 10,
        patch: int = PATCH,
        head_dim: int = HEAD_DIM,
        depths: Sequence[int] = DEPTHS,
        embeds: Sequence[int] = EMBEDS,
        heads: Sequence[int] = HEADS,
        ffns: Sequence[int] = FFNS,
        choices: Mapping[str, Sequence[int]] | None = None,
    ):
        self.input_shape = [int(n) for n in input_shape]
        self.num_classes = int(num_classes)
        self.patch = int(patch)
        self.head_dim = int(head_dim)
        self.depths = _choices("depths", depths)
        self.embeds = _choices("embeds", embeds)
        self.heads = _choices("heads", heads)
        self.ffns = _choices("ffns", ffns)
        self.choices = {k: list(v) for k, v in (choices or {}).items()}
        if self.head_dim < 1:
            raise ConfigError(f"head_dim must be positive, got head_dim={head_dim}")
        self.check_input_shape(self.input_shape)
        dimensions = [Dimension("depth", self.depths), Dimension("embed", self.embeds)]
        for layer in range(1, max(self.depths) + 1):
            dimensions.append(Dimension(f"heads.{layer}", self.heads))
            dimensions.append(Dimension(f"ffn.{layer}", self.ffns))
        super().__init__(dimensions, choices)

    def is_active(self, config: Mapping[str, int], dimension: str) -> bool:
        parts = dimension.split(".")
        return len(parts) == 1 or int(parts[1]) <= config["depth"]

    def describe(self) -> dict[str, Any]:
        return {
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
            "patch": self.patch,
            "head_dim": self.head_dim,
            "depths": list(self.depths),
            "embeds": list(self.embeds),
            "heads": list(self.heads),
            "ffns": list(self.ffns),
            "choices": self.choices,
        }

    def check_input_shape(self, input_shape: Sequence[int]) -> None:
        shape = tuple(int(n) for n in input_shape)
        if len(shape) not in (1, 3):
            raise ConfigError(
                f"transformer takes signals (length,) or images (channels, height, width), "
                f"got {shape}"
            )
        cut = shape if len(shape) == 1 else shape[1:]  # the length, or height and width
        if self.patch < 1 or any(n % self.patch for n in cut):
            raise ConfigError(
                f"patch={self.patch} must divide the sample's length or height and width, "
                f"got input shape {shape}"
            )
        if list(shape) != self.input_shape:
            raise ConfigError(  # the learned positions are sized for the space's samples
                f"this transformer space takes samples of shape {tuple(self.input_shape)}, "
                f"got {shape}"
            )

    # ---- layers, for latency lookup tables ----------------------------------------------
    def layers(self, config: Mapping[str, int], input_shape: Sequence[int]) -> list[str]:
        self.check_input_shape(input_shape)
        return [layer_signature(layer) for layer in arch_layers(self.arch(config))]

    def all_layers(self, input_shape: Sequence[int]) -> list[str]:
        """The embedding and head per embedding width, and an encoder layer per embedding
        width, head count and feed-forward width (every position has the same shapes)."""
        self.check_input_shape(input_shape)
        choices = {d.name: d.choices for d in self.dimensions}
        found = []
        for embed in choices["embed"]:
            largest = self.max() | {"embed": embed}
            first, *_, last = arch_layers(self.arch(largest))
            found += [first, last]
            for layer in range(1, largest["depth"] + 1):
                for heads in choices[f"heads.{layer}"]:
                    for ffn in choices[f"ffn.{layer}"]:
                        found.append(_encoder_layer(self.arch(largest), heads, ffn))
        return list(dict.fromkeys(layer_signature(layer) for layer in found))

    def build_layer(self, signature: str) -> tuple[nn.Module, tuple[int, ...]]:
        layer = json.loads(signature)
        op = layer.get("op")
        if op == "encoder":
            module = EncoderLayer(layer["embed"], layer["heads"], layer["head_dim"], layer["ffn"])
            return module, (layer["tokens"], layer["embed"])
        if op in ("embed", "head"):
            net = TransformerNet(
                {"input_shape": layer["input_shape"], "patch": layer["patch"],
                 "num_classes": layer.get("classes", 1), "input_mean": 0.0, "input_std": 1.0,
                 "embed": layer["embed"], "head_dim": 1, "layers": []}
            )  # fmt: skip
            tokens = token_count(layer["input_shape"], layer["patch"])[0]
            if op == "embed":
                return _End(net, "begin"), tuple(layer["input_shape"])
            return _End(net, "end"), (tokens, layer["embed"])
        raise ConfigError(f"unknown layer kind {op!r} in {signature}; known: embed, encoder, head")

    def build_supernet(
        self, input_mean: float = 0.0, input_std: float = 1.0
    ) -> TransformerSupernet:
        return TransformerSupernet(self, input_mean, input_std)

    def arch(
        self, config: Mapping[str, int], input_mean: float = 0.0, input_std: float = 1.0
    ) -> dict[str, Any]:
        """The static network's description (``TransformerNet``'s ``arch``) for ``config``."""
        config = self.validate(config)
        layers = [
            {"heads": config[f"heads.{layer}"], "ffn": config[f"ffn.{layer}"]}
            for layer in range(1, config["depth"] + 1)
        ]
        return {
            "input_shape": list(self.input_shape),
            "patch": self.patch,
            "num_classes": self.num_classes,
            "input_mean": float(input_mean),
            "input_std": float(input_std),
            "embed": config["embed"],
            "head_dim": self.head_dim,
            "layers": layers,
        }


def _encoder_layer(arch: Mapping[str, Any], heads: int, ffn: int) -> dict[str, Any]:
    tokens = token_count(list(arch["input_shape"]), arch["patch"])[0]
    return {
        "op": "encoder", "tokens": tokens, "embed": arch["embed"], "heads": heads,
        "head_dim": arch["head_dim"], "ffn": ffn,
    }  # fmt: skip


def arch_layers(arch: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """The static network's layers in order, each as the plain description that sets its cost:
    the embedding (normalise, patches, linear, positions), each encoder layer, the head."""
    ends = {
        "input_shape": list(arch["input_shape"]),
        "patch": arch["patch"],
        "embed": arch["embed"],
    }
    yield {"op": "embed", **ends}
    for layer in arch["layers"]:
        yield _encoder_layer(arch, layer["heads"], layer["ffn"])
    yield {"op": "head", **ends, "classes": arch["num_classes"]}


class _End(nn.Module):
    """One end of a ``TransformerNet`` alone: its ``begin`` or its ``end``."""

    def __init__(self, net: TransformerNet, part: str):
        super().__init__()
        self.net, self.part = net, part

    def forward(self, x: Tensor) -> Tensor:
        return getattr(self.net, self.part)(x)


class ElasticEncoderLayer(nn.Module):
    """The elastic twin of ``EncoderLayer``: same submodule names, weights at the largest size;
    the embedding width comes with the input, heads and feed-forward width per call."""

    def __init__(self, max_embed: int, max_heads: int, head_dim: int, max_ffn: int):
        super().__init__()
        width = max_heads * head_dim
        self.head_dim = head_dim
        self.norm1 = ElasticLayerNorm(max_embed)
        self.query = ElasticLinear(max_embed, width)
        self.key = ElasticLinear(max_embed, width)
        self.value = ElasticLinear(max_embed, width)
        self.out = ElasticLinear(width, max_embed)
        self.norm2 = ElasticLayerNorm(max_embed)
        self.fc1 = ElasticLinear(max_embed, max_ffn)
        self.fc2 = ElasticLinear(max_ffn, max_embed)

    def forward(self, x: Tensor, heads: int, ffn: int) -> Tensor:
        embed, width = x.shape[-1], heads * self.head_dim
        h = self.norm1(x)
        q, k, v = self.query(h, width), self.key(h, width), self.value(h, width)
        x = x + self.out(attention(q, k, v, heads), embed)
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x), ffn)), embed)

    def copy_to(self, layer: EncoderLayer) -> None:
        for name in ("norm1", "query", "key", "value", "out", "norm2", "fc1", "fc2"):
            getattr(self, name).copy_to(getattr(layer, name))


class TransformerSupernet(Supernet):
    """Runs every config of a ``TransformerSpace``; layers beyond ``depth`` are skipped."""

    def __init__(self, space: TransformerSpace, input_mean: float = 0.0, input_std: float = 1.0):
        super().__init__()
        self.space = space
        tokens, patch_width = token_count(space.input_shape, space.patch)
        largest = space.max()
        max_embed = largest["embed"]
        self.register_buffer("input_mean", torch.tensor(float(input_mean)))
        self.register_buffer("input_std", torch.tensor(float(input_std)))
        self.embedding = ElasticLinear(patch_width, max_embed)
        self.position = nn.Parameter(torch.zeros(1, tokens, max_embed))
        nn.init.trunc_normal_(self.position, std=0.02)
        self.layers = nn.ModuleList(
            ElasticEncoderLayer(
                max_embed, largest[f"heads.{i}"], space.head_dim, largest[f"ffn.{i}"]
            )
            for i in range(1, largest["depth"] + 1)
        )
        self.norm = ElasticLayerNorm(max_embed)
        self.classifier = ElasticLinear(max_embed, space.num_classes)

    def forward(self, x: Tensor, config: Mapping[str, int]) -> Tensor:
        arch = self.space.arch(config)
        embed = arch["embed"]
        x = patchify((x - self.input_mean) / self.input_std, self.space.patch)
        x = self.embedding(x, embed) + self.position[..., :embed]
        for layer, layer_arch in zip(self.layers, arch["layers"], strict=False):
            x = layer(x, layer_arch["heads"], layer_arch["ffn"])
        return self.classifier(self.norm(x).mean(dim=1))

    def extract(self, config: Mapping[str, int]) -> TransformerNet:
        arch = self.space.arch(config, self.input_mean.item(), self.input_std.item())
        net = TransformerNet(arch).to(self.input_mean.device)
        self.embedding.copy_to(net.embedding)
        with torch.no_grad():
            net.position.copy_(self.position[..., : arch["embed"]])
        for layer, static_layer in zip(self.layers, net.layers, strict=False):
            layer.copy_to(static_layer)
        self.norm.copy_to(net.norm)
        self.classifier.copy_to(net.classifier)
        return net.train(self.training)

    def macs(self, config: Mapping[str, int]) -> int:
        return arch_macs(self.space.arch(config))

    def blocks(self) -> list[nn.Module]:
        return list(self.layers)

    def params(self, config: Mapping[str, int]) -> int:
        return arch_params(self.space.arch(config))


def arch_macs(arch: Mapping[str, Any]) -> int:
    """Multiply-accumulates of one sample through the linear layers and the attention's two
    matrix products (scores and weighted values). Layer norm, GELU, softmax, the position
    add, the residuals and the mean are not counted: what ``torch.utils.flop_counter``
    counts, halved."""
    tokens, patch_width = token_count(list(arch["input_shape"]), arch["patch"])
    embed = arch["embed"]
    total = tokens * patch_width * embed
    for layer in arch["layers"]:
        width = layer["heads"] * arch["head_dim"]
        total += 4 * tokens * embed * width  # query, key, value, out
        total += 2 * tokens * tokens * width  # scores, weighted values
        total += 2 * tokens * embed * layer["ffn"]
    return total + embed * arch["num_classes"]


def arch_params(arch: Mapping[str, Any]) -> int:
    """Parameters of the static network."""
    tokens, patch_width = token_count(list(arch["input_shape"]), arch["patch"])
    embed = arch["embed"]
    total = patch_width * embed + embed + tokens * embed
    for layer in arch["layers"]:
        width, ffn = layer["heads"] * arch["head_dim"], layer["ffn"]
        total += 4 * embed  # two layer norms
        total += 3 * (embed * width + width) + width * embed + embed
        total += embed * ffn + ffn + ffn * embed + embed
    return total + 2 * embed + embed * arch["num_classes"] + arch["num_classes"]
