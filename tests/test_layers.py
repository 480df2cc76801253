"""What latency tables and cost metrics rest on: cnn1d's layer signatures describe the subnet
that really runs, and its MACs and params are what torch's own counters count."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from search_spaces import ConfigError, Supernet
from search_spaces.cnn1d import Cnn1dSpace, layer_macs
from tests.supernets import INPUT_LENGTH

SHAPE = (INPUT_LENGTH,)


def random_configs(space: Cnn1dSpace, count: int, seed: int) -> list[dict[str, int]]:
    rng = np.random.default_rng(seed)
    return [space.max(), space.min()] + [space.sample(rng) for _ in range(count - 2)]


def test_macs_and_params_equal_torch_flop_counter(space: Cnn1dSpace, supernet: Supernet) -> None:
    """FlopCounterMode counts convolutions and matrix products (2 FLOPs per multiply-add), and
    not batch norm, ReLU, the residual add, pooling or the input normalisation: the MAC
    convention of ``arch_macs``. Params are every parameter of the extracted network, batch
    norm's scale and shift included (its running statistics are buffers, not parameters)."""
    for config in random_configs(space, 20, seed=11):
        net = supernet.extract(config)
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            net(torch.zeros(1, INPUT_LENGTH))
        counted = {
            str(op).removeprefix("aten."): n
            for op, n in counter.get_flop_counts()["Global"].items()
        }
        assert set(counted) == {"convolution", "addmm"}
        assert counter.get_total_flops() == 2 * supernet.macs(config)
        assert supernet.params(config) == sum(p.numel() for p in net.parameters())
        buffers = {name.rsplit(".", 1)[-1] for name, _ in net.named_buffers()}
        assert buffers == {
            "input_mean",
            "input_std",
            "running_mean",
            "running_var",
            "num_batches_tracked",
        }


def test_layers_chain_into_the_subnet(space: Cnn1dSpace, supernet: Supernet) -> None:
    """Each config's signatures, built and run one after another, take the input to logits
    through the same shapes and MACs as the extracted subnet."""
    everything = set(space.all_layers(SHAPE))
    for config in random_configs(space, 20, seed=5):
        signatures = space.layers(config, SHAPE)
        assert set(signatures) <= everything
        x = torch.zeros(3, *SHAPE)
        for signature in signatures:
            layer, sample_shape = space.build_layer(signature)
            assert tuple(x.shape[1:]) == sample_shape
            with torch.no_grad():
                x = layer.eval()(x)
        assert x.shape == (3, space.num_classes)
        layers = [json.loads(s) for s in signatures]
        assert sum(layer_macs(layer) for layer in layers) == supernet.macs(config)


def test_all_layers_follow_narrowed_choices() -> None:
    full = Cnn1dSpace().all_layers(SHAPE)
    narrowed = Cnn1dSpace(choices={"kernel.*": [3], "depth.*": [1]}).all_layers(SHAPE)
    assert len(set(full)) == len(full) == 364
    assert set(narrowed) < set(full)
    blocks = [json.loads(s) for s in narrowed if '"block"' in s]
    assert {b["kernel"] for b in blocks} == {3} and {b["stride"] for b in blocks} == {2}


def test_layer_errors_are_one_line(space: Cnn1dSpace) -> None:
    with pytest.raises(
        ConfigError, match=r"cnn1d takes samples of shape \(length,\), got \(1, 40\)"
    ):
        space.layers(space.max(), (1, 40))
    with pytest.raises(ConfigError, match="unknown layer kind 'pool'"):
        space.build_layer('{"op": "pool"}')
