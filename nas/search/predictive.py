"""Predictor-guided NSGA-II: search on predicted objectives, measure only what can move the front.

Each iteration is one ``PredictiveStep`` (``nas.search.engine``): fit one ``SubnetPredictor``
per measured objective (accuracy, latency), run NSGA-II on the predictions (metrics such as
MACs and params are exact and cheap, so they are computed, not predicted), and send a batch of
the predicted front's configs to the caller's ``evaluate`` for real measurements, spread evenly
over the front. The batch's predictions, made before measuring, score the predictors on subnets
they were not fitted on.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from pymoo.indicators.hv import HV

from nas.pareto import minimisation_matrix
from nas.predictors.surrogate import rank_scores
from nas.search.engine import PredictiveStep, config_key, feasible
from nas.search.nsga import Evaluate
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
    batch: int = 4,
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
    step = PredictiveStep(
        objectives,
        directions,
        dict(exact or {}),
        constraints,
        population=population,
        generations=generations,
        seed=seed,
    )
    rng = np.random.default_rng(seed)
    measured: dict[str, tuple[Config, Mapping[str, float]]] = {}

    def measure(configs: list[Config]) -> None:
        unique = dict((config_key(c), c) for c in configs)
        fresh = [c for k, c in unique.items() if k not in measured]
        for config, metrics in zip(fresh, evaluate(fresh), strict=True):
            measured[config_key(config)] = (config, metrics)

    def front_hypervolume() -> float:
        rows = [
            [m[k] for k in objectives] for c, m in measured.values() if feasible(m, constraints)
        ]
        return hypervolume(rows, directions, reference)

    measure([space.canonical(c) for c in initial][:budget])
    iterations = [Iteration(0, len(measured), front_hypervolume())]
    if on_iteration:
        on_iteration(iterations[0])
    while len(measured) < budget:
        count = min(batch, budget - len(measured))
        proposal = step.propose(space, list(measured.values()), count, rng)
        if not proposal.configs:  # every config of the space is measured
            break
        measure(proposal.configs)
        truth = [measured[config_key(c)][1] for c in proposal.configs]
        scores = {
            k: {
                "model": model,
                **rank_scores([p[k] for p in proposal.predicted], [t[k] for t in truth]),
            }
            for k, model in proposal.models.items()
        }
        iteration = Iteration(
            len(iterations),
            len(measured),
            front_hypervolume(),
            scores,
            list(zip(proposal.configs, proposal.predicted, strict=True)),
        )
        iterations.append(iteration)
        if on_iteration:
            on_iteration(iteration)
    return iterations
