"""Search on synthetic objectives (fast and exact): NSGA-II, the predictor-guided loop, the
subnet predictor, hypervolume and non-dominated filtering."""

from __future__ import annotations

import numpy as np
import pytest
from optuna.distributions import CategoricalDistribution

from nas.pareto import non_dominated
from nas.predictors.surrogate import SubnetPredictor
from nas.search import hypervolume, run_nsga2, run_predictive_search
from nas.search.distributions import DistributionSpace
from nas.search.engine import (
    most_improving,
    neighbours,
    size_spread_design,
    size_spread_sample,
    spread_evenly,
)
from search_spaces import SearchSpace


def synthetic_accuracy(space: SearchSpace, config: dict) -> float:
    """Smooth in the features, rising with size: a stand-in for a trained supernet."""
    features = space.features(config)
    active = features[features >= 0]
    return float(0.7 + 0.25 * active.mean() + 0.005 * np.cos(3 * active.sum()))


@pytest.fixture(scope="module")
def measure(space: SearchSpace):
    supernet = space.build_supernet()
    seen: list[str] = []

    def evaluate(configs: list[dict]) -> list[dict[str, float]]:
        seen.extend(str(sorted(c.items())) for c in configs)
        return [
            {"accuracy": synthetic_accuracy(space, c), "macs": float(supernet.macs(c))}
            for c in configs
        ]

    evaluate.seen = seen  # type: ignore[attr-defined]
    evaluate.macs = lambda c: float(supernet.macs(c))  # type: ignore[attr-defined]
    return evaluate


def test_non_dominated_keeps_the_front_sorted_by_cost() -> None:
    rows = [[0.9, 10], [0.95, 20], [0.9, 10], [0.8, 30], [0.97, 40], [0.96, 50]]
    assert non_dominated(rows, ["max", "min"]) == [0, 1, 4]


def test_hypervolume_of_known_points() -> None:
    rows = [[0.9, 10.0], [0.95, 20.0]]
    # boxes up to (accuracy 0.8, cost 30): 0.1*20 + 0.05*10 = 2.5
    assert hypervolume(rows, ["max", "min"], [0.8, 30.0]) == pytest.approx(2.5)
    assert hypervolume([[0.7, 40.0]], ["max", "min"], [0.8, 30.0]) == 0.0


def test_spread_evenly_takes_both_ends_then_the_middle() -> None:
    configs = [{"i": i} for i in range(10)]
    rows = np.array([[-float(i), 9.0 - i] for i in range(10)])  # accuracy negated, cost
    assert spread_evenly(configs, rows, 3) == [{"i": 9}, {"i": 0}, {"i": 4}]
    assert spread_evenly(configs[:2], rows[:2], 3) == configs[:2]


def test_most_improving_picks_the_largest_hypervolume_gains_and_skips_dominated() -> None:
    configs = [{"i": i} for i in range(4)]
    # minimisation rows: 0 fills the gap in the front, 1 a smaller gap, 2 and 3 are dominated
    rows = np.array([[2.0, 2.0], [3.5, 0.5], [4.0, 4.0], [3.0, 3.5]])
    front = np.array([[1.0, 3.0], [3.0, 1.0], [4.0, 0.0]])
    assert most_improving(configs, rows, front, 4) == [{"i": 0}, {"i": 1}]
    assert most_improving(configs, rows, front, 1) == [{"i": 0}]
    assert most_improving(configs[2:], rows[2:], front, 2) == []
    # with nothing measured yet, the first pick is the one with the largest box
    assert most_improving(configs, rows, np.empty((0, 2)), 1) == [{"i": 0}]


def test_spread_evenly_covers_three_objectives() -> None:
    corners = [[0.0, 1.0, 1.0], [1.0, 0.0, 1.0], [1.0, 1.0, 0.0]]
    rows = np.array(corners + [[0.5, 0.5, 0.9], [0.6, 0.5, 0.8], [0.45, 0.55, 0.95]])
    configs = [{"i": i} for i in range(len(rows))]
    assert sorted(c["i"] for c in spread_evenly(configs, rows, 3)) == [0, 1, 2]


def test_neighbours_change_one_used_choice_each(space: SearchSpace) -> None:
    smallest = space.min()
    found = neighbours(space, smallest)
    used = [d for d in space.dimensions if space.is_active(smallest, d.name)]
    assert len(found) == sum(len(d.choices) - 1 for d in used)
    assert len({str(sorted(c.items())) for c in found}) == len(found)
    for config in found:
        assert (space.encode(config) != space.encode(smallest)).sum() == 1
    # from the largest, a shallower stage drops its last blocks' choices: still one neighbour
    found = neighbours(space, space.max())
    assert len(found) == sum(len(d.choices) - 1 for d in space.dimensions)
    assert all(space.canonical(c) == c for c in found)


def test_size_spread_samples_reach_both_ends_of_the_size_range(space: SearchSpace) -> None:
    supernet = space.build_supernet()
    rng = np.random.default_rng(0)
    uniform = np.array([supernet.macs(space.sample(rng)) for _ in range(400)])
    spread = np.array([supernet.macs(size_spread_sample(space, rng)) for _ in range(400)])
    low, high = np.percentile(uniform, [5, 95])
    assert (spread < low).mean() > 0.15 and (spread > high).mean() > 0.15


def test_size_spread_design_holds_both_ends_and_distinct_draws(space: SearchSpace) -> None:
    design = size_spread_design(space, 30, np.random.default_rng(0))
    assert design[:2] == [space.max(), space.min()]
    assert len({str(sorted(c.items())) for c in design}) == len(design) == 32
    tiny = DistributionSpace({k: CategoricalDistribution([1, 2]) for k in "ab"})
    assert len(size_spread_design(tiny, 10, np.random.default_rng(0))) == 4  # all there are


def test_nsga2_measures_valid_configs_and_respects_a_constraint(space, measure) -> None:
    limit = 600_000.0
    final = run_nsga2(
        space,
        measure,
        ["accuracy", "macs"],
        ["max", "min"],
        constraints=[{"metric": "macs", "max": limit}],
        population=8,
        generations=3,
        initial=[space.max(), space.min()],
    )
    assert len(final) == 8
    assert all(space.validate(c) == c for c in final)
    assert all(measure.macs(c) <= limit for c in final)


def test_subnet_predictor_ranks_held_out_subnets(space: SearchSpace) -> None:
    rng = np.random.default_rng(0)
    configs = [space.sample(rng) for _ in range(80)]
    x = np.array([space.features(c) for c in configs])
    y = np.array([synthetic_accuracy(space, c) for c in configs])
    predictor = SubnetPredictor(seed=0).fit(x[:60], y[:60])
    assert predictor.chosen_ in predictor.cv_scores_
    assert predictor.score(x[60:], y[60:])["spearman"] > 0.8
    assert predictor.predict_spread(x[60:]).shape == (20,)


def test_relevance_gaussian_process_finds_the_features_that_matter() -> None:
    # y depends on two of six features, through their product: no ridge fit can rank it
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(70, 6))
    y = (x[:, 0] - 0.5) * (x[:, 1] - 0.5)
    gp = SubnetPredictor(candidates=["gaussian_process"], seed=0).fit(x[:50], y[:50])
    ridge = SubnetPredictor(candidates=["ridge"], seed=0).fit(x[:50], y[:50])
    assert gp.score(x[50:], y[50:])["spearman"] > 0.9
    assert ridge.score(x[50:], y[50:])["spearman"] < 0.5
    scales = gp.model_.model_.kernel_.k1.k2.length_scale
    assert min(scales[2:]) > 5 * max(scales[:2])  # the irrelevant features: long scales


def test_subnet_predictor_errors(space: SearchSpace) -> None:
    with pytest.raises(RuntimeError, match="not fitted"):
        SubnetPredictor().predict(np.zeros((1, 3)))
    with pytest.raises(ValueError, match="unknown regressor 'svm'"):
        SubnetPredictor(candidates=["svm"]).fit(np.zeros((10, 3)), np.arange(10.0))
    with pytest.raises(ValueError, match="at least 2"):
        SubnetPredictor().fit(np.zeros((1, 3)), np.zeros(1))


def test_predictive_search_spends_exactly_its_budget(space, measure) -> None:
    rng = np.random.default_rng(1)
    initial = [space.max(), space.min()] + [space.sample(rng) for _ in range(10)]
    reference = [synthetic_accuracy(space, space.min()), measure.macs(space.max())]
    before = len(measure.seen)
    seen_iterations = []
    iterations = run_predictive_search(
        space,
        measure,
        ["accuracy", "macs"],
        ["max", "min"],
        initial=initial,
        budget=36,
        reference=reference,
        exact={"macs": measure.macs},
        batch=8,
        population=24,
        generations=10,
        on_iteration=seen_iterations.append,
    )
    measured = measure.seen[before:]
    assert len(measured) == len(set(measured)) == 36  # each config measured once, budget spent
    assert [i.evaluations for i in iterations] == [12, 20, 28, 36]
    assert seen_iterations == iterations
    hypervolumes = [i.hypervolume for i in iterations]
    assert hypervolumes == sorted(hypervolumes) and hypervolumes[-1] > hypervolumes[0]
    for it in iterations[1:]:
        assert set(it.scores) == {"accuracy"}  # MACs are exact, never learned
        assert len(it.predictions) == 8
        for config, predicted in it.predictions:
            assert predicted["macs"] == measure.macs(config)


def test_predictive_search_with_three_objectives(space, measure) -> None:
    """Accuracy against MACs and params: the front it measures is non-dominated in 3-D and its
    hypervolume grows."""
    supernet = space.build_supernet()
    params = lambda c: float(supernet.params(c))  # noqa: E731
    objectives, directions = ["accuracy", "macs", "params"], ["max", "min", "min"]
    seen: list[tuple[dict, dict]] = []

    def evaluate(configs: list[dict]) -> list[dict[str, float]]:
        results = [
            {**m, "params": params(c)} for c, m in zip(configs, measure(configs), strict=True)
        ]
        seen.extend(zip(configs, results, strict=True))
        return results

    rng = np.random.default_rng(2)
    initial = [space.max(), space.min()] + [space.sample(rng) for _ in range(8)]
    reference = [
        synthetic_accuracy(space, space.min()),
        measure.macs(space.max()),
        params(space.max()),
    ]
    iterations = run_predictive_search(
        space,
        evaluate,
        objectives,
        directions,
        initial=initial,
        budget=26,
        reference=reference,
        exact={"macs": measure.macs, "params": params},
        batch=8,
        population=24,
        generations=8,
    )
    assert [i.evaluations for i in iterations] == [10, 18, 26]
    assert iterations[-1].hypervolume > iterations[0].hypervolume > 0
    rows = [[m[k] for k in objectives] for _, m in seen]
    assert 1 <= len(non_dominated(rows, directions)) <= len(rows)
    # the batches spread over the predicted front rather than bunching at one cost
    batch_macs = [measure.macs(c) for c, _ in iterations[1].predictions]
    assert max(batch_macs) > 2 * min(batch_macs)
