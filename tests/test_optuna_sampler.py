"""``PredictorGuidedSampler`` in real Optuna studies: in memory, on SQLite and on PostgreSQL with
two worker processes, with constraints, with ask/tell, seeded, and on bad input."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import numpy as np
import optuna
import pytest

from nas.search import PredictorGuidedSampler
from nas.search.distributions import DistributionSpace
from nas.search.sampler import PREDICTED_KEY, PROPOSAL_KEY

optuna.logging.set_verbosity(optuna.logging.WARNING)

SMALL = {"n_startup_trials": 6, "batch": 3, "population": 16, "generations": 8}
#: The regressors that fit in milliseconds: the tests of constraints, seeds and workers are
#: about the sampler, not the choice of regressor (the first test keeps the default ones).
QUICK = {**SMALL, "candidates": ("ridge", "gaussian_process")}
COSTS = {"relu": 0.0, "gelu": 2.0, "tanh": 1.0}


def objective(trial: optuna.Trial) -> tuple[float, float]:
    """Accuracy-like (max) against cost (min) over an integer, a stepped float and a choice."""
    width = trial.suggest_int("width", 1, 16)
    dropout = trial.suggest_float("dropout", 0.0, 0.5, step=0.1)
    act = trial.suggest_categorical("act", list(COSTS))
    accuracy = 1 - np.exp(-0.25 * width) - 0.3 * (dropout - 0.2) ** 2 + 0.02 * COSTS[act]
    return float(accuracy), float(width + COSTS[act])


def costly(trial: optuna.Trial) -> tuple[float, float]:
    """The same objective with a constraint, cost at most 8, set on the trial."""
    accuracy, cost = objective(trial)
    trial.set_constraint("cost", cost - 8.0)
    return accuracy, cost


def noting_cost(trial: optuna.Trial) -> tuple[float, float]:
    """The same objective, noting its cost for a ``constraints_func`` (Optuna's older way)."""
    accuracy, cost = objective(trial)
    trial.set_user_attr("cost", cost)
    return accuracy, cost


def params_of(study: optuna.Study) -> list[tuple]:
    return [tuple(sorted(t.params.items())) for t in study.trials]


def assert_complete_and_distinct(study: optuna.Study, n: int) -> None:
    states = [t.state for t in study.trials]
    assert states == [optuna.trial.TrialState.COMPLETE] * n
    assert len(set(params_of(study))) == n


def test_multi_objective_in_memory_proposes_predicted_front_configs() -> None:
    sampler = PredictorGuidedSampler(seed=0, **SMALL)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    study.optimize(objective, n_trials=18)
    assert_complete_and_distinct(study, 18)
    guided = [t for t in study.trials if PREDICTED_KEY in t.system_attrs]
    # the first trial samples independently (no space known yet), then the startup design
    assert all(t.number >= SMALL["n_startup_trials"] for t in guided)
    assert len(guided) >= 9
    for t in guided:
        assert set(t.system_attrs[PREDICTED_KEY]) == {"objective:0", "objective:1"}
    # proposals spread along the front: several trade-offs, not one corner
    assert len({t.params["width"] for t in guided}) >= 4
    assert len(study.best_trials) >= 4


def test_startup_trials_reach_from_the_smallest_to_the_largest_choices() -> None:
    sampler = PredictorGuidedSampler(seed=5, **SMALL)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    study.optimize(objective, n_trials=SMALL["n_startup_trials"])
    assert_complete_and_distinct(study, SMALL["n_startup_trials"])
    startup = [t.params for t in study.trials[1:]]  # the first: no space known yet, random
    assert {"width": 16, "dropout": 0.5, "act": "tanh"} in startup
    assert {"width": 1, "dropout": 0.0, "act": "relu"} in startup
    assert not any(PREDICTED_KEY in t.system_attrs for t in study.trials)


def test_single_objective_with_ask_and_tell_finds_the_optimum_region() -> None:
    study = optuna.create_study(
        direction="maximize", sampler=PredictorGuidedSampler(seed=1, **QUICK)
    )
    for _ in range(16):
        trial = study.ask()
        study.tell(trial, objective(trial)[0])
    assert_complete_and_distinct(study, 16)
    startup = max(t.value for t in study.trials[: SMALL["n_startup_trials"]])
    assert study.best_value >= startup
    assert study.best_params["width"] >= 10 and study.best_params["act"] == "gelu"


def test_constraints_from_set_constraint_and_constraints_func_are_learned() -> None:
    for constraints_func, run in [
        (None, costly),
        (lambda t: [t.user_attrs["cost"] - 8.0], noting_cost),
    ]:
        sampler = PredictorGuidedSampler(seed=2, constraints_func=constraints_func, **QUICK)
        study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
        study.optimize(run, n_trials=16)
        guided = [t for t in study.trials if PREDICTED_KEY in t.system_attrs]
        assert guided and all(
            any(k.startswith("constraint:") for k in t.system_attrs[PREDICTED_KEY]) for t in guided
        )
        feasible = [all(v <= 0 for v in t.constraints.values()) for t in guided]
        assert np.mean(feasible) >= 0.8  # random configs are feasible about half the time
        assert all(t.values[1] <= 8.0 for t in study.best_trials)


def test_exact_objectives_are_computed_for_every_proposal_not_learned() -> None:
    def cost(params: dict) -> float:
        return params["width"] + COSTS[params["act"]]

    sampler = PredictorGuidedSampler(seed=6, exact={1: cost}, **QUICK)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    study.optimize(objective, n_trials=14)
    guided = [t for t in study.trials if PREDICTED_KEY in t.system_attrs]
    assert len(guided) >= 6
    for t in guided:  # a regressor fitted on a dozen trials would not hit every cost exactly
        assert t.system_attrs[PREDICTED_KEY]["objective:1"] == t.values[1] == cost(t.params)
    learned = [t.system_attrs[PREDICTED_KEY]["objective:0"] - t.values[0] for t in guided]
    assert any(error != 0 for error in learned)  # the other objective is predicted


def test_same_seed_same_trials_other_seed_other_trials() -> None:
    def run(seed: int) -> list[tuple]:
        study = optuna.create_study(
            directions=["maximize", "minimize"], sampler=PredictorGuidedSampler(seed=seed, **QUICK)
        )
        study.optimize(objective, n_trials=12)
        return params_of(study)

    first = run(3)
    assert run(3) == first
    assert run(4) != first


def _worker(url: str, name: str, n_trials: int) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(
        study_name=name, storage=url, sampler=PredictorGuidedSampler(seed=0, **QUICK)
    )
    study.optimize(objective, n_trials=n_trials)


def run_two_workers(url: str, n_trials: int = 8) -> optuna.Study:
    """Two processes, same seed (the hardest case: they compute the same proposals), one study."""
    name = f"two-workers-{np.random.default_rng().integers(1 << 30)}"
    optuna.create_study(study_name=name, storage=url, directions=["maximize", "minimize"])
    context = multiprocessing.get_context("forkserver")  # fresh processes, imports done once
    context.set_forkserver_preload([__name__])
    workers = [context.Process(target=_worker, args=(url, name, n_trials)) for _ in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=120)
    assert [w.exitcode for w in workers] == [0, 0]
    return optuna.load_study(study_name=name, storage=url)


def test_two_workers_on_sqlite_propose_distinct_configs(tmp_path: Path) -> None:
    study = run_two_workers(f"sqlite:///{tmp_path / 'optuna.db'}")
    assert_complete_and_distinct(study, 16)
    claims = [t.system_attrs.get(PROPOSAL_KEY) for t in study.trials]
    assert len({c for c in claims if c is not None}) == sum(c is not None for c in claims)


def test_two_workers_on_postgresql_propose_distinct_configs(postgres_url: str) -> None:
    study = run_two_workers(postgres_url)
    assert_complete_and_distinct(study, 16)
    assert any(PREDICTED_KEY in t.system_attrs for t in study.trials)


def test_bad_input_is_a_clear_error() -> None:
    def continuous(trial: optuna.Trial) -> float:
        return trial.suggest_float("lr", 1e-4, 1e-1, log=True)

    study = optuna.create_study(sampler=PredictorGuidedSampler(seed=0))
    with pytest.raises(ValueError, match="parameter 'lr'.*step="):
        study.optimize(continuous, n_trials=1)
    with pytest.raises(ValueError, match="n_startup_trials must be >= 2, got n_startup_trials=1"):
        PredictorGuidedSampler(n_startup_trials=1)
    study = optuna.create_study(sampler=PredictorGuidedSampler(exact={1: len}))
    with pytest.raises(ValueError, match="exact= names objective 1, but the study has 1 obj"):
        study.optimize(lambda t: t.suggest_int("x", 0, 3), n_trials=1)
    with pytest.raises(ValueError, match="parameter 'x'"):
        PredictorGuidedSampler(search_space={"x": optuna.distributions.FloatDistribution(0, 1)})


def test_features_order_numeric_choices_and_one_hot_the_others() -> None:
    """Numeric categorical choices (kernel sizes, widths) keep their order as one scaled
    feature, as integers do; other choices are one-hot, and two choices one 0/1 feature."""
    space = DistributionSpace(
        {
            "act": optuna.distributions.CategoricalDistribution(["relu", "gelu", "tanh"]),
            "kernel": optuna.distributions.CategoricalDistribution([3, 7, 5]),
            "norm": optuna.distributions.CategoricalDistribution([True, False]),
            "width": optuna.distributions.IntDistribution(8, 64, step=8),
        }
    )
    config = space.config({"act": "tanh", "kernel": 5, "norm": False, "width": 16})
    assert config == {"act": 2, "kernel": 2, "norm": 1, "width": 1}
    np.testing.assert_allclose(space.features(config), [0, 0, 1, 0.5, 1, 1 / 7])


def layered(trial: optuna.Trial) -> tuple[float, float]:
    """A define-by-run space: a kernel size for each of the 1 to 3 layers used."""
    depth = trial.suggest_int("depth", 1, 3)
    kernels = [trial.suggest_categorical(f"kernel{i}", [3, 5, 7]) for i in range(depth)]
    accuracy = 0.6 + 0.1 * depth + 0.02 * sum(k == 5 for k in kernels)
    return accuracy, float(sum(kernels))


def test_conditional_parameters_are_learned_with_the_condition_they_appear_under() -> None:
    kernel = optuna.distributions.CategoricalDistribution([3, 5, 7])
    distributions = {"depth": optuna.distributions.IntDistribution(1, 3)}
    distributions |= {f"kernel{i}": kernel for i in range(3)}
    trials = [
        {"depth": 1, "kernel0": 3},
        {"depth": 2, "kernel0": 5, "kernel1": 7},
        {"depth": 3, "kernel0": 7, "kernel1": 3, "kernel2": 5},
    ]
    space = DistributionSpace.learned(distributions, trials)
    assert space.optional == {"kernel1", "kernel2"}
    assert space.conditions == {"kernel1": ("depth", {0}), "kernel2": ("depth", {0, 1})}
    # an absent parameter takes its first value, whatever was asked: one network, one config
    absent = {"depth": 0, "kernel0": 0, "kernel1": 0, "kernel2": 0}
    assert space.decode([0, 0, 2, 1]) == space.config(trials[0]) == absent
    # features: depth, kernel0, then presence and scaled value of kernel1 and kernel2
    np.testing.assert_allclose(space.features(space.decode([1, 2, 2, 2])), [0.5, 1, 1, 1, 0, 0])

    sampler = PredictorGuidedSampler(seed=7, **QUICK)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    study.optimize(layered, n_trials=20)
    assert_complete_and_distinct(study, 20)
    guided = [t for t in study.trials if PREDICTED_KEY in t.system_attrs]
    deep = [t for t in guided if t.params["depth"] == 3]
    assert len(guided) >= 8 and deep
    for t in deep:  # the sampler chose every kernel, not only those all trials share
        claimed = json.loads(t.system_attrs[PROPOSAL_KEY])
        assert [[3, 5, 7][claimed[f"kernel{i}"]] for i in range(3)] == [
            t.params[f"kernel{i}"] for i in range(3)
        ]
