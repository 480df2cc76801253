"""The transformer space on CPU, over signals and image patches: extraction equals the supernet,
exact MACs (attention included) and params, pt2 and ONNX exports, the space's contract and
errors, and a short training on mnist1d as a sequence that learns."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given

from search_spaces import ConfigError, Supernet, get_space
from search_spaces.transformer import TransformerSpace
from tests.supernets import (
    INPUT_LENGTH,
    SEEDS,
    assert_exports_match,
    assert_extract_matches,
    assert_layers_chain,
    randomised_supernet,
    samples,
    seeded,
    small_transformer,
)

SHAPES = {"signal": (INPUT_LENGTH,), "image": (3, 8, 12)}
PROPERTY = seeded(15)


@pytest.fixture(scope="module", params=sorted(SHAPES))
def shape(request: pytest.FixtureRequest) -> tuple[int, ...]:
    return SHAPES[request.param]


@pytest.fixture(scope="module")
def space(shape: tuple[int, ...]) -> TransformerSpace:
    return small_transformer(shape)


@pytest.fixture(scope="module")
def supernet(space: TransformerSpace) -> Supernet:
    return randomised_supernet(space)


@PROPERTY
@given(seed=SEEDS)
def test_extracted_subnet_equals_supernet(
    space: TransformerSpace, supernet: Supernet, shape: tuple[int, ...], seed: int
) -> None:
    config = space.sample(np.random.default_rng(seed))
    assert_extract_matches(supernet, config, samples(shape, 3, seed))


@pytest.mark.parametrize("edge", ["max", "min"])
def test_edge_configs_match(
    space: TransformerSpace, supernet: Supernet, shape: tuple[int, ...], edge: str
) -> None:
    config = getattr(space, edge)()
    assert space.validate(config) == config
    assert_extract_matches(supernet, config, samples(shape, 3, 1))


@seeded(2)
@given(seed=SEEDS)
def test_pt2_and_onnx_match_the_extracted_subnet(
    space: TransformerSpace,
    supernet: Supernet,
    shape: tuple[int, ...],
    tmp_path_factory: pytest.TempPathFactory,
    seed: int,
) -> None:
    net = supernet.extract(space.sample(np.random.default_rng(seed)))
    assert_exports_match(net, shape, tmp_path_factory.mktemp("export"), seed)


def test_width_follows_the_config(space: TransformerSpace, supernet: Supernet) -> None:
    """Heads, embedding and feed-forward widths land in the static layers' shapes."""
    config = space.max() | {"embed": 24, "heads.1": 2, "ffn.1": 16, "depth": 2}
    net = supernet.extract(config)
    layer = net.layers[0]
    assert len(net.layers) == 2 and net.norm.normalized_shape == (24,)
    assert layer.query.weight.shape == (2 * 8, 24) and layer.fc1.weight.shape == (16, 24)
    assert net.position.shape[-1] == 24


def test_layers_chain_into_the_subnet(
    space: TransformerSpace, supernet: Supernet, shape: tuple[int, ...]
) -> None:
    assert_layers_chain(space, supernet, shape, count=8, seed=5)
    assert len(space.all_layers(shape)) == 3 * (2 + 3 * 3)  # embeds x (ends + heads x ffns)
    with pytest.raises(ConfigError, match="unknown layer kind 'pool'"):
        space.build_layer('{"op": "pool"}')
    with pytest.raises(ConfigError, match=r"takes samples of shape .*, got \(44,\)"):
        space.layers(space.max(), (44,))


# -- the space's contract ----------------------------------------------------------------------


def test_dimensions_encoding_and_features(space: TransformerSpace) -> None:
    names = [d.name for d in space.dimensions]
    assert names == ["depth", "embed", "heads.1", "ffn.1", "heads.2", "ffn.2", "heads.3", "ffn.3"]
    rng = np.random.default_rng(0)
    for _ in range(20):
        config = space.sample(rng)
        assert space.decode(space.encode(config)) == config == space.canonical(config)
    config = space.max() | {"depth": 1}
    features = space.features(config)
    assert features.tolist()[4:] == [-1.0] * 4
    assert all(0.0 <= f <= 1.0 for f in features[:4])
    assert space.canonical(config)["heads.3"] == 1


def test_bad_configs_and_options_name_the_problem(space: TransformerSpace) -> None:
    with pytest.raises(ConfigError, match=r"value 20 .*'embed'.*\[16, 24, 32\]"):
        space.validate(space.max() | {"embed": 20})
    with pytest.raises(ConfigError, match=r"value 7 .*'heads\.2'.*\[1, 2, 3\]"):
        space.validate(space.max() | {"heads.2": 7})
    with pytest.raises(ConfigError, match=r"patch=3 must divide .*\(40,\)"):
        small_transformer(patch=3)
    with pytest.raises(ConfigError, match=r"patch=4 must divide .*\(3, 8, 10\)"):
        small_transformer((3, 8, 10))
    with pytest.raises(ConfigError, match=r"signals \(length,\) or images"):
        small_transformer((8, 8))
    with pytest.raises(ConfigError, match=r"embeds must be positive integers, got embeds=\[\]"):
        small_transformer(embeds=[])
    with pytest.raises(ConfigError, match="'transformer' has no option 'width'"):
        get_space("transformer", width=3)
    narrow = small_transformer(choices={"heads.*": [2]})
    assert get_space("transformer", **narrow.describe()).dimensions == narrow.dimensions


# -- a short real training ---------------------------------------------------------------------


def test_short_training_on_mnist1d_learns(tmp_path) -> None:
    """Ten quick epochs on mnist1d as a sequence of ten 4-sample tokens: the largest and the
    smallest subnet are far above chance (0.1)."""
    from workers.trainer import SupernetTrainer

    options = {"head_dim": 16, "depths": [1, 2], "embeds": [32, 64], "heads": [2, 4],
               "ffns": [64, 128]}  # fmt: skip
    space = {"name": "transformer", "kwargs": small_transformer(**options).describe()}
    training = {
        "epochs": 10, "batch_size": 64, "random_subnets": 0, "distillation": "inplace",
        "optimizer": {"name": "adamw", "lr": 0.005, "weight_decay": 0.0}, "seed": 0,
    }  # fmt: skip
    trainer = SupernetTrainer(space, {"name": "mnist1d"}, training, str(tmp_path))
    for epoch in range(1, 10 + 1):
        values = trainer.run_epoch(epoch)
    assert values["val_acc/largest"] > 0.45
    assert values["val_acc/smallest"] > 0.3
