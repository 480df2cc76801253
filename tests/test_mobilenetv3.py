"""The mobilenetv3 space on CPU at small resolutions: extraction equals the supernet, exact MACs
and params, pt2 and ONNX exports, batch norm recalibrated at each subnet's resolution, the
space's contract and errors, and a short training on digits that learns."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from torch import nn

from search_spaces import ConfigError, Supernet, get_space
from search_spaces.mobilenetv3 import (
    DEPTHS,
    EXPANDS,
    KERNELS,
    MobileNetV3Space,
    make_divisible,
)
from tests.supernets import (
    SEEDS,
    assert_exports_match,
    assert_extract_matches,
    assert_layers_chain,
    randomised_supernet,
    samples,
    seeded,
    small_mobilenetv3,
)
from workers.evaluator import recalibrate_batchnorm

SHAPE = (3, 20, 20)
PROPERTY = seeded(12)


@pytest.fixture(scope="module")
def space() -> MobileNetV3Space:
    return small_mobilenetv3()


@pytest.fixture(scope="module")
def supernet(space: MobileNetV3Space) -> Supernet:
    return randomised_supernet(space)


@PROPERTY
@given(seed=SEEDS)
def test_extracted_subnet_equals_supernet(
    space: MobileNetV3Space, supernet: Supernet, seed: int
) -> None:
    config = space.sample(np.random.default_rng(seed))
    assert_extract_matches(supernet, config, samples(SHAPE, 3, seed))


@pytest.mark.parametrize("edge", ["max", "min"])
def test_edge_configs_match(space: MobileNetV3Space, supernet: Supernet, edge: str) -> None:
    config = getattr(space, edge)()
    assert space.validate(config) == config
    assert_extract_matches(supernet, config, samples(SHAPE, 3, 1))
    # an input already at the subnet's resolution is not resized
    size = config["resolution"]
    assert_extract_matches(supernet, config, samples((3, size, size), 3, 2))


@seeded(6)
@given(seed=SEEDS)
def test_fixed_shapes_train_like_sliced_layers(space: MobileNetV3Space, seed: int) -> None:
    """The GPU path (full-width convolutions, inactive channels zeroed, kernels zero-padded)
    computes the sliced path's loss and gradients in training mode, in float64."""
    config = space.sample(np.random.default_rng(seed))
    x, y = samples(SHAPE, 4, seed).double(), torch.arange(4) % space.num_classes
    results = []
    for fixed in (False, True):
        net = randomised_supernet(space).double().train()
        net.fixed_shapes = fixed
        loss = nn.functional.cross_entropy(net(x, config), y)
        loss.backward()
        grads = {name: p.grad for name, p in net.named_parameters() if p.grad is not None}
        results.append((loss.detach(), grads))
    (sliced_loss, sliced), (fixed_loss, fixed) = results
    torch.testing.assert_close(fixed_loss, sliced_loss, rtol=0, atol=1e-12)
    assert sliced.keys() == fixed.keys()
    for name, grad in sliced.items():
        torch.testing.assert_close(fixed[name], grad, rtol=0, atol=1e-10, msg=name)


def test_batch_norm_statistics_matter(space: MobileNetV3Space, supernet: Supernet) -> None:
    config = space.max()
    net = supernet.extract(config)
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.reset_running_stats()
    x = samples(SHAPE, 3, 7)
    with torch.no_grad():
        assert not torch.allclose(net(x), supernet(x, config), atol=1e-3)


@seeded(1)
@given(seed=SEEDS)
def test_pt2_and_onnx_match_the_extracted_subnet(
    tmp_path_factory: pytest.TempPathFactory, seed: int
) -> None:
    """One sampled subnet (exports take seconds each), shallow so that it stays quick."""
    space = small_mobilenetv3(choices={"depth.*": [2]})
    net = randomised_supernet(space, seed=2).extract(space.sample(np.random.default_rng(seed)))
    assert_exports_match(net, SHAPE, tmp_path_factory.mktemp("export"), seed)


def test_whole_size_space_counts_like_once_for_all() -> None:
    """At width 1 the largest subnet has Once-for-All's 7.7M parameters at 224x224."""
    space = get_space("mobilenetv3")
    supernet = space.build_supernet()
    assert supernet.params(space.max()) == sum(p.numel() for p in supernet.parameters())
    assert 7.6e6 < supernet.params(space.max()) < 7.7e6
    assert 5.5e8 < supernet.macs(space.max()) < 6.0e8
    assert supernet.macs(space.min()) < supernet.macs(space.max()) / 10
    assert make_divisible(24 * 3) == 72 and make_divisible(10) == 16


def test_batch_norm_is_recalibrated_at_the_subnets_resolution(
    space: MobileNetV3Space, supernet: Supernet
) -> None:
    """The extracted net resizes its input, so recalibration sees the subnet's resolution: the
    stem's statistics are those of the stem on images resized to that resolution."""
    images = samples(SHAPE, 64, 3).numpy()
    means = {}
    for resolution in (16, 32):
        config = space.max() | {"resolution": resolution}
        net = recalibrate_batchnorm(supernet.extract(config), images, samples=64)
        x = nn.functional.interpolate(
            (torch.from_numpy(images) - 0.3) / 1.7, size=(resolution, resolution),
            mode="bilinear", align_corners=False,
        )  # fmt: skip
        with torch.no_grad():
            expected = net.stem(x).mean((0, 2, 3))
        torch.testing.assert_close(net.stem_bn.running_mean, expected, rtol=0, atol=1e-5)
        means[resolution] = net.stem_bn.running_mean
    assert not torch.allclose(means[16], means[32], atol=1e-4)


def test_layers_chain_into_the_subnet(space: MobileNetV3Space, supernet: Supernet) -> None:
    assert_layers_chain(space, supernet, SHAPE, count=8, seed=5)
    full = space.all_layers(SHAPE)
    narrow = small_mobilenetv3(choices={"kernel.*": [3], "resolution": [16]}).all_layers(SHAPE)
    assert len(set(full)) == len(full) and set(narrow) < set(full)
    assert all('"kernel":3' in s for s in narrow if '"op":"block"' in s)
    with pytest.raises(ConfigError, match="unknown layer kind 'pool'"):
        space.build_layer('{"op": "pool"}')
    with pytest.raises(ConfigError, match=r"takes images of 3 channels, got shape \(1, 20, 20\)"):
        space.layers(space.max(), (1, 20, 20))


# -- the space's contract ----------------------------------------------------------------------


def test_dimensions_encoding_and_features(space: MobileNetV3Space) -> None:
    names = [d.name for d in space.dimensions]
    assert names[:4] == ["resolution", "depth.1", "kernel.1.1", "expand.1.1"]
    assert len(names) == 1 + 5 * (1 + 2 * max(DEPTHS))
    rng = np.random.default_rng(0)
    for _ in range(20):
        config = space.sample(rng)
        assert space.decode(space.encode(config)) == config == space.canonical(config)
    config = space.max() | {"depth.2": 2}
    features = space.features(config)
    for name, value in zip(names, features, strict=True):
        inactive = name in {"kernel.2.3", "expand.2.3", "kernel.2.4", "expand.2.4"}
        assert (value == -1.0) == inactive, name
    assert space.canonical(config)["kernel.2.4"] == KERNELS[0]
    assert space.canonical(config)["expand.2.3"] == EXPANDS[0]


def test_narrowing_and_rebuilding(space: MobileNetV3Space) -> None:
    narrow = small_mobilenetv3(choices={"resolution": [16], "kernel.*": [3]})
    assert narrow.max()["resolution"] == 16 == narrow.min()["resolution"]
    assert get_space("mobilenetv3", **narrow.describe()).dimensions == narrow.dimensions
    with pytest.raises(ConfigError, match=r"value 20 .*'resolution'.*\[16, 24, 32\]"):
        small_mobilenetv3(choices={"resolution": [20]})


def test_bad_configs_and_options_name_the_problem(space: MobileNetV3Space) -> None:
    with pytest.raises(ConfigError, match=r"value 64 .*'resolution'.*\[16, 24, 32\]"):
        space.validate(space.max() | {"resolution": 64})
    with pytest.raises(ConfigError, match=r"value 9 .*'kernel\.3\.2'.*\[3, 5, 7\]"):
        space.validate(space.max() | {"kernel.3.2": 9})
    with pytest.raises(ConfigError, match=r"missing dimension 'depth\.5'"):
        space.validate({k: v for k, v in space.max().items() if k != "depth.5"})
    with pytest.raises(ConfigError, match="width_mult must be positive, got width_mult=0"):
        small_mobilenetv3(width_mult=0)
    with pytest.raises(ConfigError, match=r"resolutions must be positive.*\[0, 8\]"):
        small_mobilenetv3(resolutions=[0, 8])
    with pytest.raises(
        ConfigError, match=r"images of shape \(channels, height, width\), got \(40,\)"
    ):
        small_mobilenetv3(input_shape=[40])
    with pytest.raises(
        ConfigError, match="'mobilenetv3' has no option 'depth'; options: input_shape"
    ):
        get_space("mobilenetv3", depth=3)


# -- a short real training ---------------------------------------------------------------------


def test_short_training_on_digits_learns(tmp_path) -> None:
    """Three epochs of sandwich training on scikit-learn's digits as 16x16 images: both the
    largest and the smallest subnet, recalibrated, are far above chance (0.1)."""
    from workers.trainer import SupernetTrainer

    space = {
        "name": "mobilenetv3",
        "kwargs": small_mobilenetv3(
            input_shape=[1, 16, 16], resolutions=[12, 16], choices={"depth.*": [2, 3]}
        ).describe(),
    }
    training = {
        "epochs": 3, "batch_size": 64, "random_subnets": 0, "distillation": "inplace",
        "optimizer": {"name": "adamw", "lr": 0.01, "weight_decay": 0.0}, "seed": 0,
    }  # fmt: skip
    trainer = SupernetTrainer(space, {"name": "digits", "image_size": 16}, training, str(tmp_path))
    for epoch in range(1, 3 + 1):
        values = trainer.run_epoch(epoch)
    assert values["val_acc/largest"] > 0.7
    assert values["val_acc/smallest"] > 0.45
