"""The layer-table latency predictor: the correction it learns, its scores on held-out subnets,
and its errors. Latencies here are synthetic (a known law over the real layer signatures), so
the checks are exact; real measurements are the benchmark's and the job tests' business."""

from __future__ import annotations

import json

import numpy as np
import pytest

from nas.predictors.latency import LatencyPredictor, latency_scores
from search_spaces import SearchSpace
from search_spaces.cnn1d import layer_macs

SHAPE = (40,)


def layer_ms(signature: str) -> float:
    """A made-up but plausible per-layer latency: a fixed cost plus one per MAC."""
    return 0.02 + 1e-6 * layer_macs(json.loads(signature))


@pytest.fixture(scope="module")
def table(space: SearchSpace) -> dict[str, float]:
    return {s: layer_ms(s) for s in space.all_layers(SHAPE)}


def whole_ms(space: SearchSpace, config: dict) -> float:
    """The "measured" subnet: 80% of its layers' sum, plus 5 us a layer and 30 us a call."""
    layers = space.layers(config, SHAPE)
    return 0.8 * sum(layer_ms(s) for s in layers) + 0.005 * len(layers) + 0.03


def configs(space: SearchSpace, count: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [space.sample(rng) for _ in range(count)]


def test_correction_recovers_the_law_and_scores_held_out(space, table) -> None:
    train, test = configs(space, 30, seed=1), configs(space, 40, seed=2)
    predictor = LatencyPredictor(space, table, SHAPE).fit(
        train, [whole_ms(space, c) for c in train]
    )
    np.testing.assert_allclose(predictor.coef_, [0.8, 0.005], atol=1e-9)
    assert predictor.intercept_ == pytest.approx(0.03)
    scores = predictor.score(test, [whole_ms(space, c) for c in test])
    assert scores["within_10"] == 1.0 and scores["spearman"] == pytest.approx(1.0)
    assert scores["mape"] < 1e-9 and scores["n"] == 40


def test_cross_validated_scores_use_held_out_folds(space, table) -> None:
    subnets = configs(space, 12, seed=3)
    measured = [whole_ms(space, c) * (1.3 if i == 0 else 1.0) for i, c in enumerate(subnets)]
    scores = LatencyPredictor(space, table, SHAPE).cross_validated_scores(subnets, measured)
    assert scores["n"] == 12
    assert 0.0 < scores["mape"] and scores["within_10"] < 1.0  # the odd one is not fitted away


def test_few_subnets_give_a_scale_factor(space, table) -> None:
    subnets = configs(space, 2, seed=4)
    sums = [sum(table[s] for s in space.layers(c, SHAPE)) for c in subnets]
    predictor = LatencyPredictor(space, table, SHAPE).fit(subnets, [1.5 * s for s in sums])
    np.testing.assert_allclose(predictor.predict(subnets), [1.5 * s for s in sums])


def test_latency_scores() -> None:
    scores = latency_scores([1.0, 2.1, 2.5], [1.05, 2.0, 3.0])
    assert scores["within_10"] == pytest.approx(2 / 3)
    assert scores["mape"] == pytest.approx((0.05 / 1.05 + 0.05 + 0.5 / 3) / 3)
    assert scores["spearman"] == pytest.approx(1.0)


def test_errors_are_one_line(space, table) -> None:
    predictor = LatencyPredictor(space, table, SHAPE)
    with pytest.raises(RuntimeError, match="not fitted yet"):
        predictor.predict([space.max()])
    with pytest.raises(ValueError, match="need one latency per config, got 1 for 2 configs"):
        predictor.fit([space.max(), space.min()], [1.0])
    with pytest.raises(ValueError, match="latencies must be positive"):
        predictor.fit([space.max()], [0.0])
    partial = LatencyPredictor(space, dict(list(table.items())[:5]), SHAPE)
    with pytest.raises(ValueError, match=r"layer \{.*\} is not in the latency table \(5 layers\)"):
        partial.fit([space.max()], [1.0])
