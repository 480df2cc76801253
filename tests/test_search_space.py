"""The cnn1d search space and its supernet: extraction equals the supernet, exact MACs and
params, encoding, canonical forms, validation, narrowing, the registry and seeded sampling."""

from __future__ import annotations

import json
import random
from collections.abc import Mapping

import numpy as np
import pytest
import torch
from hypothesis import given
from torch import nn

from search_spaces import ConfigError, Supernet, get_space, register_space
from search_spaces.cnn1d import DEPTHS, EXPANDS, KERNELS, STAGE_WIDTHS, Cnn1dSpace
from search_spaces.elastic import ElasticConv1d
from tests.supernets import INPUT_LENGTH, SEEDS, randomised_supernet, seeded, signals

PROPERTY = seeded(60)


# -- helpers ------------------------------------------------------------------------------------


def measured_macs(net: nn.Module) -> int:
    """MACs of one sample, counted from the shapes that convolutions and linears really see."""
    total = 0

    def count(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Conv1d):
            per_output = module.in_channels // module.groups * module.kernel_size[0]
            total += module.out_channels * per_output * output.shape[-1]
        else:
            total += module.in_features * module.out_features

    layers = [m for m in net.modules() if isinstance(m, (nn.Conv1d, nn.Linear))]
    handles = [m.register_forward_hook(count) for m in layers]
    try:
        with torch.no_grad():
            net(torch.zeros(1, INPUT_LENGTH))
    finally:
        for handle in handles:
            handle.remove()
    return total


def counted_params(arch: Mapping) -> int:
    """Parameters of the static network, worked out from its description by hand."""
    channels = arch["stem"]["out"]
    total = channels * arch["stem"]["kernel"] + 2 * channels  # stem conv + its batch norm
    for stage in arch["stages"]:
        out = stage["out"]
        for block in stage["blocks"]:
            mid = block["mid"]
            total += channels * mid + 2 * mid  # expand + bn
            total += mid * block["kernel"] + 2 * mid  # depthwise + bn
            total += mid * out + 2 * out  # project + bn
            channels = out
    return total + channels * arch["num_classes"] + arch["num_classes"]


def state_copy(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def assert_same_state(before: Mapping[str, torch.Tensor], module: nn.Module) -> None:
    after = module.state_dict()
    assert after.keys() == before.keys()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed == []


def run_both(supernet: Supernet, config: Mapping[str, int], x: torch.Tensor):
    net = supernet.extract(config)
    assert not net.training
    with torch.no_grad():
        return net(x), supernet(x, config)


# -- extraction equals the supernet -------------------------------------------------------------


@PROPERTY
@given(seed=SEEDS)
def test_extracted_subnet_equals_supernet(space: Cnn1dSpace, supernet: Supernet, seed: int) -> None:
    config = space.sample(np.random.default_rng(seed))
    x = signals(4, seed)
    static, shared = run_both(supernet, config, x)
    assert static.shape == (4, space.num_classes)
    torch.testing.assert_close(static, shared, rtol=0, atol=1e-5)

    net = supernet.extract(config)
    assert supernet.params(config) == sum(p.numel() for p in net.parameters())
    assert supernet.params(config) == counted_params(net.arch)
    assert supernet.macs(config) == measured_macs(net)


def test_batch_norm_statistics_matter(space: Cnn1dSpace, supernet: Supernet) -> None:
    """Guards the fixture: with default statistics the outputs would differ, so the
    equivalence test really checks that the statistics are carried over."""
    config = space.max()
    net = supernet.extract(config)
    for module in net.modules():
        if isinstance(module, nn.BatchNorm1d):
            module.reset_running_stats()
    x = signals(4, 7)
    with torch.no_grad():
        assert not torch.allclose(net(x), supernet(x, config), atol=1e-3)


@pytest.mark.parametrize("edge", ["max", "min"])
def test_edge_configs_match(space: Cnn1dSpace, supernet: Supernet, edge: str) -> None:
    config = getattr(space, edge)()
    assert space.validate(config) == config
    static, shared = run_both(supernet, config, signals(4, 1))
    torch.testing.assert_close(static, shared, rtol=0, atol=1e-5)
    net = supernet.extract(config)
    assert supernet.macs(config) == measured_macs(net)
    assert supernet.params(config) == counted_params(net.arch)


def test_smaller_kernels_use_the_centre_taps() -> None:
    """Slicing is shared by forward and extract, so equivalence alone would not catch an
    off-centre crop: check it against a plain convolution with the middle taps."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        conv = ElasticConv1d(6, 6, 7, depthwise=True)
    x = torch.randn(2, 4, 11, generator=torch.Generator().manual_seed(0))
    for kernel in (1, 3, 5, 7):
        start = (7 - kernel) // 2
        expected = nn.functional.conv1d(
            x, conv.weight[:4, :, start : start + kernel], padding=kernel // 2, groups=4
        )
        with torch.no_grad():
            torch.testing.assert_close(conv(x, 4, kernel), expected, rtol=0, atol=1e-6)


def test_edge_configs_are_the_extremes(space: Cnn1dSpace, supernet: Supernet) -> None:
    largest, smallest = space.max(), space.min()
    assert all(largest[d.name] == d.choices[-1] for d in space.dimensions)
    assert all(space.is_active(largest, d.name) for d in space.dimensions)
    assert smallest == space.canonical({d.name: d.choices[0] for d in space.dimensions})
    assert supernet.macs(smallest) < supernet.macs(largest)
    assert supernet.macs(largest) / supernet.macs(smallest) > 3
    assert supernet.params(smallest) < supernet.params(largest)
    rng = np.random.default_rng(3)
    for _ in range(20):
        config = space.sample(rng)
        assert supernet.macs(smallest) <= supernet.macs(config) <= supernet.macs(largest)


# -- encoding -----------------------------------------------------------------------------------


def raw_config(space: Cnn1dSpace, seed: int) -> dict[str, int]:
    """Any choice for every dimension, inactive ones included (not canonical)."""
    rng = np.random.default_rng(seed)
    return {d.name: d.choices[int(rng.integers(len(d.choices)))] for d in space.dimensions}


@PROPERTY
@given(seed=SEEDS)
def test_decode_of_encode_is_canonical(space: Cnn1dSpace, seed: int) -> None:
    config = raw_config(space, seed)
    vector = space.encode(config)
    low, high = space.bounds()
    assert vector.shape == low.shape == high.shape == (len(space.dimensions),)
    assert np.all(low <= vector) and np.all(vector <= high)
    assert space.decode(vector) == space.canonical(config)
    assert space.decode(list(vector)) == space.canonical(config)
    canonical = space.canonical(config)
    assert space.canonical(canonical) == canonical
    assert json.loads(json.dumps(canonical)) == canonical


def test_bounds_match_choices(space: Cnn1dSpace) -> None:
    low, high = space.bounds()
    assert low.tolist() == [0] * len(space.dimensions)
    assert high.tolist() == [len(d.choices) - 1 for d in space.dimensions]
    assert space.decode(high) == space.max()
    assert space.decode(low) == space.min()


def test_decode_rejects_wrong_length(space: Cnn1dSpace) -> None:
    n = len(space.dimensions)
    for length in (0, n - 1, n + 1):
        with pytest.raises(ConfigError, match=f"{length} entries.*{n} dimensions"):
            space.decode(np.zeros(length, dtype=np.int64))


@pytest.mark.parametrize("position", [0, 5, -1])
def test_decode_rejects_out_of_range_index(space: Cnn1dSpace, position: int) -> None:
    dimension = space.dimensions[position]
    for bad in (-1, len(dimension.choices)):
        vector = np.zeros(len(space.dimensions), dtype=np.int64)
        vector[position] = bad
        with pytest.raises(ConfigError, match=rf"index {bad} .*'{dimension.name}'"):
            space.decode(vector)


# -- canonical forms and features ---------------------------------------------------------------


def test_inactive_block_does_not_change_the_network(space: Cnn1dSpace, supernet: Supernet) -> None:
    base = space.max() | {"depth.1": 1}
    other = base | {"kernel.1.3": KERNELS[0], "expand.1.3": EXPANDS[0], "kernel.1.2": KERNELS[0]}
    assert base != other
    assert space.canonical(base) == space.canonical(other)
    x = signals(4, 2)
    with torch.no_grad():
        torch.testing.assert_close(supernet(x, base), supernet(x, other), rtol=0, atol=0)
        torch.testing.assert_close(
            supernet.extract(base)(x), supernet.extract(other)(x), rtol=0, atol=0
        )
    assert supernet.macs(base) == supernet.macs(other)
    assert supernet.params(base) == supernet.params(other)
    # an active block does change it
    changed = base | {"kernel.1.1": KERNELS[0]}
    assert space.canonical(changed) != space.canonical(base)
    with torch.no_grad():
        assert not torch.allclose(supernet(x, base), supernet(x, changed))


def test_canonical_sets_inactive_dimensions_to_first_choice(space: Cnn1dSpace) -> None:
    config = space.max() | {"depth.2": 2}
    canonical = space.canonical(config)
    assert canonical["kernel.2.3"] == KERNELS[0] and canonical["expand.2.3"] == EXPANDS[0]
    assert canonical["kernel.2.2"] == KERNELS[-1] and canonical["expand.2.2"] == EXPANDS[-1]
    assert canonical["kernel.1.3"] == KERNELS[-1]  # stage 1 still has all three blocks


def test_features_mark_inactive_dimensions(space: Cnn1dSpace) -> None:
    config = space.max() | {"depth.1": 1, "depth.3": 2}
    names = [d.name for d in space.dimensions]
    features = space.features(config)
    assert features.shape == (len(names),)
    inactive = {"kernel.1.2", "expand.1.2", "kernel.1.3", "expand.1.3", "kernel.3.3", "expand.3.3"}
    for name, value in zip(names, features, strict=True):
        if name in inactive:
            assert value == -1.0, name
        else:
            assert 0.0 <= value <= 1.0, name
    assert features[names.index("depth.1")] == 0.0
    assert features[names.index("depth.3")] == DEPTHS.index(2) / (len(DEPTHS) - 1)
    assert features[names.index("width.2")] == 1.0
    assert np.array_equal(space.features(space.canonical(config)), features)
    assert np.all(space.features(space.max()) == 1.0)


# -- validation ---------------------------------------------------------------------------------


def test_validate_unknown_dimension(space: Cnn1dSpace) -> None:
    with pytest.raises(ConfigError) as error:
        space.validate(space.max() | {"bogus.1": 3})
    message = str(error.value)
    assert "'bogus.1'" in message and "'cnn1d'" in message
    for family in ("depth.*", "expand.*", "kernel.*", "width.*"):
        assert family in message


def test_validate_value_outside_choices(space: Cnn1dSpace) -> None:
    with pytest.raises(ConfigError) as error:
        space.validate(space.max() | {"kernel.2.1": 4})
    message = str(error.value)
    assert "'kernel.2.1'" in message and "value 4 " in message and str(list(KERNELS)) in message
    with pytest.raises(ConfigError) as error:
        space.validate(space.max() | {"width.3": 1})
    message = str(error.value)
    assert "'width.3'" in message and "value 1 " in message
    assert str(list(STAGE_WIDTHS[2])) in message


def test_validate_missing_dimension(space: Cnn1dSpace) -> None:
    config = space.max()
    del config["expand.3.2"]
    with pytest.raises(ConfigError, match=r"missing dimension 'expand\.3\.2'"):
        space.validate(config)


def test_validate_rejects_non_mapping(space: Cnn1dSpace) -> None:
    with pytest.raises(ConfigError, match="mapping"):
        space.validate([("width.1", 16)])


def test_validate_returns_plain_ints_in_dimension_order(space: Cnn1dSpace) -> None:
    shuffled = dict(reversed(list(space.max().items())))
    shuffled = {k: np.int64(v) for k, v in shuffled.items()}
    clean = space.validate(shuffled)
    assert list(clean) == [d.name for d in space.dimensions]
    assert all(type(v) is int for v in clean.values())
    assert clean == space.max()


# -- narrowing the choices ----------------------------------------------------------------------


def test_restricted_kernels() -> None:
    narrow = get_space("cnn1d", choices={"kernel.*": [5, 3]})
    full = get_space("cnn1d")
    kernels = [d for d in narrow.dimensions if d.name.startswith("kernel.")]
    assert len(kernels) == 9
    assert all(d.choices == (3, 5) for d in kernels)
    others = [d for d in narrow.dimensions if not d.name.startswith("kernel.")]
    assert others == [d for d in full.dimensions if not d.name.startswith("kernel.")]

    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(200):
        config = narrow.sample(rng)
        seen |= {config[d.name] for d in kernels if narrow.is_active(config, d.name)}
    assert seen == {3, 5}
    assert all(narrow.max()[d.name] == 5 for d in kernels)
    assert all(narrow.min()[d.name] == 3 for d in kernels)
    with pytest.raises(ConfigError, match=r"'kernel\.1\.1'.*\[3, 5\]"):
        narrow.validate(narrow.max() | {"kernel.1.1": max(KERNELS)})
    # the narrowed space rebuilds from its description and its supernet runs
    assert get_space("cnn1d", **narrow.describe()).dimensions == narrow.dimensions
    supernet = randomised_supernet(narrow)
    static, shared = run_both(supernet, narrow.max(), signals(2, 0))
    torch.testing.assert_close(static, shared, rtol=0, atol=1e-5)


def test_restrict_unknown_pattern() -> None:
    with pytest.raises(ConfigError, match=r"'nope\.\*'"):
        get_space("cnn1d", choices={"nope.*": [3]})


@pytest.mark.parametrize("allowed", [[4], [3, 4], [9]])
def test_restrict_value_outside_choices(allowed: list[int]) -> None:
    bad = next(v for v in allowed if v not in KERNELS)
    with pytest.raises(ConfigError) as error:
        get_space("cnn1d", choices={"kernel.*": allowed})
    message = str(error.value)
    assert f"value {bad} " in message and "'kernel." in message and str(list(KERNELS)) in message


def test_restrict_no_choices() -> None:
    with pytest.raises(ConfigError, match=r"'width\.1'"):
        get_space("cnn1d", choices={"width.1": []})


# -- registry -----------------------------------------------------------------------------------


def test_unknown_space_lists_registered() -> None:
    with pytest.raises(ConfigError, match=r"'nope'.*registered: .*cnn1d"):
        get_space("nope")


def test_duplicate_registration_fails() -> None:
    class Impostor(Cnn1dSpace):
        pass

    with pytest.raises(ValueError, match="'cnn1d'"):
        register_space("cnn1d")(Impostor)
    assert type(get_space("cnn1d")) is Cnn1dSpace


# -- sampling -----------------------------------------------------------------------------------


def test_sampling_is_reproducible_and_leaves_global_state(space: Cnn1dSpace) -> None:
    python_state, numpy_state = random.getstate(), np.random.get_state()
    torch_state = torch.get_rng_state()
    first = [space.sample(np.random.default_rng(11)) for _ in range(3)]
    rng_a, rng_b = np.random.default_rng(42), np.random.default_rng(42)
    run_a = [space.sample(rng_a) for _ in range(50)]
    run_b = [space.sample(rng_b) for _ in range(50)]
    assert random.getstate() == python_state
    assert np.array_equal(np.random.get_state()[1], numpy_state[1])
    assert torch.equal(torch.get_rng_state(), torch_state)

    assert first[0] == first[1] == first[2]
    assert run_a == run_b
    other = [space.sample(np.random.default_rng(43)) for _ in range(50)]
    assert other != run_a
    assert len({json.dumps(c, sort_keys=True) for c in run_a}) > 40
    for config in run_a:
        assert config == space.canonical(config)


def test_sampling_covers_every_choice(space: Cnn1dSpace) -> None:
    rng = np.random.default_rng(5)
    configs = [space.sample(rng) for _ in range(300)]
    for d in space.dimensions:
        if d.name.startswith(("width.", "depth.")) or d.name.endswith(".1"):
            assert {c[d.name] for c in configs} == set(d.choices), d.name


# -- the supernet and its extracts are independent ----------------------------------------------


def test_eval_forward_leaves_supernet_unchanged(space: Cnn1dSpace) -> None:
    supernet = randomised_supernet(space, seed=3)
    before = state_copy(supernet)
    with torch.no_grad():
        for seed in range(5):
            supernet(signals(8, seed), space.sample(np.random.default_rng(seed)))
    assert_same_state(before, supernet)
    assert not supernet.training


def test_extracted_net_is_independent(space: Cnn1dSpace) -> None:
    supernet = randomised_supernet(space, seed=4)
    config = space.sample(np.random.default_rng(9))
    x = signals(4, 9)
    before = state_copy(supernet)
    with torch.no_grad():
        expected = supernet(x, config)
        net = supernet.extract(config)
        for tensor in net.state_dict().values():
            tensor.add_(1)
        torch.testing.assert_close(supernet(x, config), expected, rtol=0, atol=0)
    assert_same_state(before, supernet)

    # and the other way round: changing the supernet leaves an extracted copy alone
    net = supernet.extract(config)
    with torch.no_grad():
        extracted_output = net(x)
        for tensor in supernet.state_dict().values():
            if tensor.is_floating_point():
                tensor.mul_(2)
        torch.testing.assert_close(net(x), extracted_output, rtol=0, atol=0)
