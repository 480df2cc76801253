"""Predictor-guided NSGA-II: search on predicted objectives, measure only what can move the front.

Each iteration fits one ``SubnetPredictor`` per measured objective (accuracy, latency), runs
NSGA-II on the predictions (metrics such as MACs and params are exact and cheap, so they are
computed, not predicted), and sends a batch of the predicted front's configs to the caller's
``evaluate`` for real measurements, spread evenly over the front. The batch's predictions,
made before measuring, score the predictors on subnets they were not fitted on.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from pymoo.algorithms.moo.nsga2 import NSGA2
from pymoo.core.problem import Problem
from pymoo.indicators.hv import HV
from pymoo.operators.crossover.sbx import SBX
from pymoo.operators.mutation.pm import PM
from pymoo.operators.repair.rounding import RoundingRepair
from pymoo.optimize import minimize

from nas.pareto import minimisation_matrix, non_dominated
from nas.predictors.surrogate import SubnetPredictor, rank_scores
from nas.search.nsga import Evaluate, constraint_values
from search_spaces import Config, SearchSpace


@dataclass(frozen=True)
class Iteration:
    """What one round of the search did: how many real evaluations so far, the measured front's
    hypervolume, the predictors' held-out scores and the predictions made for the batch."""

    iteration: int
    evaluations: int
    hypervolume: float
    scores: dict[str, dict[str, float]] = field(default_factory=dict)
    predictions: list[tuple[Config, dict[str, float]]] = field(default_factory=list)


def hypervolume(
    rows: Sequence[Sequence[float]], directions: Sequence[str], reference: Sequence[float]
) -> float:
    """Hypervolume dominated by ``rows`` up to ``reference`` (both in the metrics' own units)."""
    if len(rows) == 0:
        return 0.0
    points = minimisation_matrix(rows, directions)
    ref = minimisation_matrix([reference], directions)[0]
    inside = points[np.all(points < ref, axis=1)]
    return float(HV(ref_point=ref)(inside)) if len(inside) else 0.0


def _key(config: Config) -> str:
    return json.dumps(config, sort_keys=True)


class _PredictedProblem(Problem):
    """The objectives as predicted (or computed exactly) for a whole population at once."""

    def __init__(self, space, objectives, directions, predictors, exact, constraints):
        lower, upper = space.bounds()
        n_constr = len(constraint_values({c["metric"]: 0.0 for c in constraints}, constraints))
        super().__init__(
            n_var=len(lower), n_obj=len(objectives), n_ieq_constr=n_constr, xl=lower, xu=upper
        )
        self.space, self.objectives, self.directions = space, objectives, directions
        self.predictors, self.exact, self.constraints = predictors, exact, constraints

    def metrics(self, configs: list[Config]) -> list[dict[str, float]]:
        features = np.array([self.space.features(c) for c in configs])
        columns = {k: p.predict(features) for k, p in self.predictors.items()}
        columns |= {k: np.array([f(c) for c in configs]) for k, f in self.exact.items()}
        return [{k: float(v[i]) for k, v in columns.items()} for i in range(len(configs))]

    def _evaluate(self, x, out, *args, **kwargs):
        configs = [self.space.decode(np.rint(row).astype(int)) for row in x]
        metrics = self.metrics(configs)
        rows = [[m[k] for k in self.objectives] for m in metrics]
        out["F"] = minimisation_matrix(rows, self.directions)
        if self.n_ieq_constr:
            out["G"] = np.array([constraint_values(m, self.constraints) for m in metrics])


def spread_evenly(candidates: list[Config], rows: np.ndarray, count: int) -> list[Config]:
    """``count`` of the candidates spread evenly over the front they form, for any number of
    objectives: farthest-point picking in objective space scaled to [0, 1], starting from the
    candidate best on the first objective (so both ends of a two-objective front come first).

    ``rows`` holds the candidates' objective values in minimisation form.
    """
    if len(candidates) <= count:
        return candidates
    rows = np.asarray(rows, dtype=float)
    span = np.ptp(rows, axis=0)
    scaled = (rows - rows.min(axis=0)) / np.where(span > 0, span, 1.0)
    picks = [int(np.argmin(rows[:, 0]))]
    distance = np.linalg.norm(scaled - scaled[picks[0]], axis=1)
    while len(picks) < count:
        picks.append(int(np.argmax(distance)))
        distance = np.minimum(distance, np.linalg.norm(scaled - scaled[picks[-1]], axis=1))
    return [candidates[i] for i in picks]


def run_predictive_search(
    space: SearchSpace,
    evaluate: Evaluate,
    objectives: Sequence[str],
    directions: Sequence[str],
    initial: Sequence[Config],
    budget: int,
    reference: Sequence[float],
    exact: Mapping[str, Callable[[Config], float]] | None = None,
    constraints: Sequence[Mapping] = (),
    batch: int = 8,
    population: int = 64,
    generations: int = 40,
    seed: int = 0,
    on_iteration: Callable[[Iteration], None] | None = None,
) -> list[Iteration]:
    """Search until ``budget`` real evaluations (``initial`` included) have been made.

    ``exact`` maps objective or constraint keys to functions computed for any config; every
    other key is learned from the measurements. ``reference`` (one value per objective) bounds
    the hypervolume reported after each iteration.
    """
    exact = dict(exact or {})
    learned = [
        k
        for k in dict.fromkeys([*objectives, *(c["metric"] for c in constraints)])
        if k not in exact
    ]
    rng = np.random.default_rng(seed)
    measured: dict[str, tuple[Config, Mapping[str, float]]] = {}

    def measure(configs: list[Config]) -> None:
        fresh = [c for c in dict((_key(c), c) for c in configs).values() if _key(c) not in measured]
        for config, metrics in zip(fresh, evaluate(fresh), strict=True):
            measured[_key(config)] = (config, metrics)

    def front_hypervolume() -> float:
        rows = [
            [m[k] for k in objectives] for c, m in measured.values() if _feasible(m, constraints)
        ]
        return hypervolume(rows, directions, reference)

    measure([space.canonical(c) for c in initial][:budget])
    iterations = [Iteration(0, len(measured), front_hypervolume())]
    if on_iteration:
        on_iteration(iterations[0])
    while len(measured) < budget:
        configs = [c for c, _ in measured.values()]
        features = np.array([space.features(c) for c in configs])
        predictors = {
            k: SubnetPredictor(seed=seed).fit(features, [m[k] for _, m in measured.values()])
            for k in learned
        }
        problem = _PredictedProblem(space, objectives, directions, predictors, exact, constraints)
        starts = _starting_population(space, measured, objectives, directions, population, rng)
        algorithm = NSGA2(
            pop_size=population,
            sampling=starts,
            crossover=SBX(prob=0.9, eta=15, vtype=float, repair=RoundingRepair()),
            mutation=PM(eta=20, vtype=float, repair=RoundingRepair()),
            eliminate_duplicates=True,
        )
        seed_i = int(rng.integers(2**31))
        result = minimize(problem, algorithm, ("n_gen", generations), seed=seed_i, verbose=False)
        chosen = _choose(space, problem, result, measured, min(batch, budget - len(measured)), rng)
        predicted = problem.metrics(chosen)
        measure(chosen)
        truth = [measured[_key(c)][1] for c in chosen]
        scores = {
            k: {
                "model": predictors[k].chosen_,
                **rank_scores([p[k] for p in predicted], [t[k] for t in truth]),
            }
            for k in learned
        }
        iteration = Iteration(
            len(iterations),
            len(measured),
            front_hypervolume(),
            scores,
            list(zip(chosen, predicted, strict=True)),
        )
        iterations.append(iteration)
        if on_iteration:
            on_iteration(iteration)
    return iterations


def _feasible(metrics: Mapping[str, float], constraints: Sequence[Mapping]) -> bool:
    return all(v <= 0 for v in constraint_values(metrics, constraints))


def _starting_population(space, measured, objectives, directions, size, rng) -> np.ndarray:
    """The measured front's encodings first (good parents), topped up with random configs."""
    configs = [c for c, _ in measured.values()]
    rows = [[m[k] for k in objectives] for _, m in measured.values()]
    best = [configs[i] for i in non_dominated(rows, directions)][:size]
    best += [space.sample(rng) for _ in range(size - len(best))]
    return np.array([space.encode(c) for c in best], dtype=float)


def _choose(space, problem, result, measured, count, rng) -> list[Config]:
    """Unmeasured configs of the predicted front, spread along it; random ones if too few."""
    candidates = {}
    for row in np.atleast_2d(result.opt.get("X")) if result.opt is not None else []:
        config = space.decode(np.rint(row).astype(int))
        if _key(config) not in measured:
            candidates[_key(config)] = config
    configs = list(candidates.values())
    rows = [[m[k] for k in problem.objectives] for m in problem.metrics(configs)] if configs else []
    chosen = spread_evenly(configs, minimisation_matrix(rows, problem.directions), count)
    while len(chosen) < count:
        config = space.sample(rng)
        if _key(config) not in measured and config not in chosen:
            chosen.append(config)
    return chosen
