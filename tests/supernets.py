"""Supernets with random weights and statistics, and the checks every space's subnets pass,
shared by the search-space and export tests."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnxruntime
import torch
from hypothesis import Phase, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from nas.export import write_onnx, write_pt2
from search_spaces import SearchSpace, Supernet
from search_spaces.elastic import ElasticBatchNorm, ElasticLayerNorm

INPUT_LENGTH = 40

SEEDS = st.integers(min_value=0, max_value=2**32 - 1)


def seeded(max_examples: int) -> settings:
    """Hypothesis settings for tests drawn from a seed: reproducible in CI, no deadline, and a
    failing seed reported as is (shrinking a seed gains nothing)."""
    return settings(
        max_examples=max_examples,
        deadline=None,
        derandomize=True,
        database=None,
        phases=(Phase.explicit, Phase.generate),
    )


def randomised_supernet(space: SearchSpace, seed: int = 0) -> Supernet:
    """A supernet in eval mode whose weights, biases and normalisation statistics are all random.

    Every batch norm gets a different, non-trivial mean, variance, scale and shift per channel
    (every layer norm a scale and shift), so a subnet that slices the wrong channels (or drops
    the statistics) computes something else. The input normalisation is not the identity either.
    """
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        supernet = space.build_supernet(input_mean=0.3, input_std=1.7)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for module in supernet.modules():
            if isinstance(module, (ElasticBatchNorm, nn.modules.batchnorm._BatchNorm)):
                n = module.running_mean.numel()
                module.running_mean.copy_(0.5 * torch.randn(n, generator=generator))
                module.running_var.copy_(0.5 + 1.5 * torch.rand(n, generator=generator))
            if isinstance(module, (ElasticBatchNorm, nn.modules.batchnorm._BatchNorm,
                                   ElasticLayerNorm, nn.LayerNorm)):  # fmt: skip
                n = module.weight.numel()
                module.weight.copy_(0.5 + torch.rand(n, generator=generator))
                module.bias.copy_(0.5 * torch.randn(n, generator=generator))
        supernet.classifier.bias.copy_(torch.randn(space.num_classes, generator=generator))
    return supernet.eval()


def signals(batch: int, seed: int) -> torch.Tensor:
    return torch.randn(batch, INPUT_LENGTH, generator=torch.Generator().manual_seed(seed))


def samples(shape: tuple[int, ...], batch: int, seed: int) -> torch.Tensor:
    return torch.randn(batch, *shape, generator=torch.Generator().manual_seed(seed))


def _cpu_attention(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query, key, value)


#: torch's counter knows the GPU attention kernels; the CPU one gets the same formula.
CPU_ATTENTION = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention}


def counted_macs(net: nn.Module, x: torch.Tensor) -> int:
    """Multiply-accumulates of one sample, from ``torch.utils.flop_counter`` (FLOPs halved)."""
    counter = FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION)
    with counter, torch.no_grad():
        net(x[:1])
    return counter.get_total_flops() // 2


def assert_extract_matches(
    supernet: Supernet, config: Mapping[str, int], x: torch.Tensor, atol: float = 1e-5
) -> nn.Module:
    """The extracted subnet computes what the supernet computes under ``config`` (eval mode),
    and its MACs and params are the supernet's exact counts. Returns the subnet."""
    net = supernet.extract(config)
    assert not net.training
    with torch.no_grad():
        static, shared = net(x), supernet(x, config)
    assert static.shape == (len(x), supernet.space.num_classes)
    torch.testing.assert_close(static, shared, rtol=0, atol=atol)
    assert supernet.macs(config) == counted_macs(net, x)
    assert supernet.params(config) == sum(p.numel() for p in net.parameters())
    return net


def assert_exports_match(
    net: nn.Module, shape: tuple[int, ...], directory: Path, seed: int, atol: float = 1e-5
) -> None:
    """pt2 and ONNX exports of ``net`` (traced at batch 2) compute what ``net`` computes at
    batches 5 and 1: the batch dimension is dynamic."""
    write_pt2(net, torch.zeros(2, *shape), directory / "model.pt2")
    write_onnx(net, torch.zeros(2, *shape), directory / "model.onnx")
    program = torch.export.load(directory / "model.pt2").module()
    session = onnxruntime.InferenceSession(
        str(directory / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    assert [i.name for i in session.get_inputs()] == ["x"]
    assert [o.name for o in session.get_outputs()] == ["logits"]
    for batch in (5, 1):
        x = samples(shape, batch, seed)
        with torch.no_grad():
            expected = net(x)
            from_pt2 = program(x)
        (from_onnx,) = session.run(["logits"], {"x": x.numpy()})
        torch.testing.assert_close(from_pt2, expected, rtol=0, atol=atol)
        np.testing.assert_allclose(from_onnx, expected.numpy(), rtol=0, atol=atol)


def small_mobilenetv3(**options) -> SearchSpace:
    """``mobilenetv3`` at a quarter width on 20x20 RGB images, resolutions 16, 24 and 32."""
    from search_spaces import get_space

    kwargs = {"input_shape": [3, 20, 20], "num_classes": 10, "width_mult": 0.25,
              "resolutions": [16, 24, 32]}  # fmt: skip
    return get_space("mobilenetv3", **(kwargs | options))


def small_transformer(shape: tuple[int, ...] = (INPUT_LENGTH,), **options) -> SearchSpace:
    """``transformer`` a few features wide, on signals or images cut into patches of 4."""
    from search_spaces import get_space

    kwargs = {"input_shape": list(shape), "num_classes": 10, "patch": 4, "head_dim": 8,
              "depths": [1, 2, 3], "embeds": [16, 24, 32], "heads": [1, 2, 3],
              "ffns": [16, 32, 48]}  # fmt: skip
    return get_space("transformer", **(kwargs | options))


def assert_layers_chain(
    space: SearchSpace, supernet: Supernet, shape: tuple[int, ...], count: int, seed: int
) -> None:
    """For the largest, the smallest and random configs: the layer signatures are among
    ``all_layers``, and the layers built from them, run one after another, take a batch from
    the input to the logits through the shapes each declares, counting the subnet's MACs."""
    everything = set(space.all_layers(shape))
    rng = np.random.default_rng(seed)
    for config in [space.max(), space.min()] + [space.sample(rng) for _ in range(count)]:
        signatures = space.layers(config, shape)
        assert set(signatures) <= everything
        x, total = torch.zeros(2, *shape), 0
        for signature in signatures:
            layer, sample_shape = space.build_layer(signature)
            assert tuple(x.shape[1:]) == sample_shape
            total += counted_macs(layer.eval(), x)
            with torch.no_grad():
                x = layer(x)
        assert x.shape == (2, space.num_classes)
        assert total == supernet.macs(config)
