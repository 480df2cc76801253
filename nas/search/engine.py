"""One step of predictor-guided NSGA-II, shared by a job's search loop and the Optuna sampler.

Given the points measured so far, ``PredictiveStep.propose`` fits one ``SubnetPredictor`` per
learned metric, runs NSGA-II on the predictions (exact metrics, such as MACs, are computed, not
predicted) and returns the unmeasured configs that would add most to the measured front's
hypervolume if they were as good as optimistically predicted, with what was predicted for each.
The candidates are NSGA-II's predicted front and every config one choice away from a measured
front point: next to a measured good subnet the predictors interpolate rather than extrapolate,
and a local step can reach what a coarse predictor ranks wrongly. Measuring them is the
caller's business: Ray tasks in a job (``run_predictive_search``), the user's objective in an
Optuna study (``PredictorGuidedSampler``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from pymoo.algorithms.moo.nsga2 import NSGA2
from pymoo.core.problem import Problem
from pymoo.indicators.hv import HV
from pymoo.operators.crossover.sbx import SBX
from pymoo.operators.mutation.pm import PM
from pymoo.operators.repair.rounding import RoundingRepair
from pymoo.optimize import minimize

from nas.pareto import minimisation_matrix, non_dominated
from nas.predictors.surrogate import CANDIDATES, SubnetPredictor
from nas.search.nsga import constraint_values

Config = dict[str, Any]
#: A positive learned metric whose largest value is this many times its smallest is fitted on
#: a log scale.
LOG_SPAN = 10.0
#: Measured points in the order they were measured: each config with its metrics.
Measured = Sequence[tuple[Config, Mapping[str, float]]]


class Encoding(Protocol):
    """What the search needs from a space: a ``SearchSpace`` has it, and so has the adapter
    that turns an Optuna search space into a grid (``nas.search.distributions``)."""

    def bounds(self) -> tuple[np.ndarray, np.ndarray]: ...

    def encode(self, config: Mapping[str, Any]) -> np.ndarray: ...

    def decode(self, vector: Sequence[int] | np.ndarray) -> Config: ...

    def features(self, config: Mapping[str, Any]) -> np.ndarray: ...

    def sample(self, rng: np.random.Generator) -> Config: ...


def config_key(config: Mapping[str, Any]) -> str:
    """A config as a string that is equal for equal configs, to dedupe and to store."""
    return json.dumps(config, sort_keys=True)


@dataclass(frozen=True)
class Proposal:
    """Configs to measure next, best spread first, with the metrics predicted for each and the
    regressor chosen for each learned metric."""

    configs: list[Config]
    predicted: list[dict[str, float]]
    models: dict[str, str]


@dataclass(frozen=True)
class PredictiveStep:
    """The settings of the search; ``propose`` is one iteration of it.

    ``exact`` maps objective or constraint keys to functions computed for any config; every
    other key is learned from the measurements. ``constraints`` are ``{metric, max, min}``
    mappings. ``max_fit`` caps the points the predictors are fitted on (the measured front
    first, then the newest), which bounds the cost of a step in long searches. ``optimism`` is
    how many standard deviations of a predictor's cross-validated error a candidate's learned
    objectives are taken to be better than predicted when candidates are chosen: a subnet
    predicted a little below the measured front may still be worth measuring, one predicted
    far below it is not.
    """

    objectives: Sequence[str]
    directions: Sequence[str]
    exact: Mapping[str, Callable[[Config], float]] = field(default_factory=dict)
    constraints: Sequence[Mapping] = ()
    population: int = 64
    generations: int = 40
    max_fit: int | None = None
    seed: int = 0
    candidates: Sequence[str] = CANDIDATES
    optimism: float = 1.0

    @property
    def learned(self) -> list[str]:
        keys = [*self.objectives, *(c["metric"] for c in self.constraints)]
        return [k for k in dict.fromkeys(keys) if k not in self.exact]

    def propose(
        self,
        space: Encoding,
        measured: Measured,
        count: int,
        rng: np.random.Generator,
        taken: Collection[str] = (),
    ) -> Proposal:
        """Up to ``count`` configs neither measured nor in ``taken`` (keys of configs already
        being measured elsewhere), topped up with random ones when the front has too few."""
        fit_on = self._fitting_set(measured)
        features = np.array([space.features(c) for c, _ in fit_on])
        predictors = {k: self._fit(features, [m[k] for _, m in fit_on]) for k in self.learned}
        problem = _PredictedProblem(space, self, predictors)
        algorithm = NSGA2(
            pop_size=self.population,
            sampling=_starting_population(space, measured, self, rng),
            crossover=SBX(prob=0.9, eta=15, vtype=float, repair=RoundingRepair()),
            mutation=PM(eta=20, vtype=float, repair=RoundingRepair()),
            eliminate_duplicates=True,
        )
        seed = int(rng.integers(2**31))
        result = minimize(problem, algorithm, ("n_gen", self.generations), seed=seed, verbose=False)
        excluded = {config_key(c) for c, _ in measured} | set(taken)
        feasible_points = [(c, m) for c, m in measured if feasible(m, self.constraints)]
        front = [m for _, m in feasible_points]
        rows = [[m[k] for k in self.objectives] for m in front]
        nearby = [
            n
            for i in non_dominated(rows, self.directions)
            for n in neighbours(space, feasible_points[i][0])
        ]
        chosen = _choose(space, problem, result, nearby, front, excluded, count, rng)
        models = {k: p.chosen_ for k, p in predictors.items()}
        return Proposal(chosen, problem.metrics(chosen) if chosen else [], models)

    def _fit(self, features: np.ndarray, values: list[float]) -> _Fitted:
        predictor = SubnetPredictor(self.candidates, seed=self.seed)
        log = min(values) > 0 and max(values) >= LOG_SPAN * min(values)
        return _Fitted(predictor.fit(features, np.log(values) if log else values), log)

    def _fitting_set(self, measured: Measured) -> Measured:
        if self.max_fit is None or len(measured) <= self.max_fit:
            return measured
        rows = [[m[k] for k in self.objectives] for _, m in measured]
        front = non_dominated(rows, self.directions)[: self.max_fit]
        on_front = set(front)
        newest = [i for i in reversed(range(len(measured))) if i not in on_front]
        keep = sorted(front + newest[: self.max_fit - len(front)])
        return [measured[i] for i in keep]


class _Fitted:
    """A fitted ``SubnetPredictor`` in the metric's own units. A positive metric that spans
    decades (MACs, latency) is fitted on its log (``log``): products of sizes become sums a
    regressor fits well, and no prediction is negative."""

    def __init__(self, predictor: SubnetPredictor, log: bool):
        self.predictor, self.log, self.chosen_ = predictor, log, predictor.chosen_

    def predict(self, features: np.ndarray, shift: float = 0.0) -> np.ndarray:
        """Predictions moved by ``shift`` standard deviations of the cross-validated error."""
        values = self.predictor.predict(features) + shift * self.predictor.predict_spread(features)
        return np.exp(values) if self.log else values


class _PredictedProblem(Problem):
    """The objectives as predicted (or computed exactly) for a whole population at once."""

    def __init__(self, space: Encoding, step: PredictiveStep, predictors: dict):
        lower, upper = space.bounds()
        constraints = step.constraints
        n_constr = len(constraint_values({c["metric"]: 0.0 for c in constraints}, constraints))
        super().__init__(
            n_var=len(lower), n_obj=len(step.objectives), n_ieq_constr=n_constr, xl=lower, xu=upper
        )
        self.space, self.step, self.predictors = space, step, predictors

    def metrics(self, configs: list[Config], optimism: float = 0.0) -> list[dict[str, float]]:
        """Each config's predicted (and exact) metrics; with ``optimism``, learned objectives
        that many cross-validated standard deviations better than their prediction."""
        features = np.array([self.space.features(c) for c in configs])
        better = dict(zip(self.step.objectives, self.step.directions, strict=True))
        shift = {k: optimism * (1 if better[k] == "max" else -1) for k in better}
        columns = {k: p.predict(features, shift.get(k, 0.0)) for k, p in self.predictors.items()}
        columns |= {k: np.array([f(c) for c in configs]) for k, f in self.step.exact.items()}
        return [{k: float(v[i]) for k, v in columns.items()} for i in range(len(configs))]

    def objective_rows(self, metrics: list[dict[str, float]]) -> np.ndarray:
        rows = [[m[k] for k in self.step.objectives] for m in metrics]
        return minimisation_matrix(rows, self.step.directions)

    def _evaluate(self, x, out, *args, **kwargs):
        configs = [self.space.decode(np.rint(row).astype(int)) for row in x]
        metrics = self.metrics(configs)
        out["F"] = self.objective_rows(metrics)
        if self.n_ieq_constr:
            out["G"] = np.array([constraint_values(m, self.step.constraints) for m in metrics])


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


def neighbours(space: Encoding, config: Mapping[str, Any]) -> list[Config]:
    """Every config one choice away from ``config`` (one dimension changed), without repeats;
    changing a dimension that ``config`` does not use gives ``config`` back, which is left out."""
    vector, own = space.encode(config), config_key(config)
    lower, upper = space.bounds()
    found: dict[str, Config] = {}
    for i in range(len(vector)):
        for value in range(int(lower[i]), int(upper[i]) + 1):
            changed = vector.copy()
            changed[i] = value
            other = space.decode(changed)
            if config_key(other) != own:
                found.setdefault(config_key(other), other)
    return list(found.values())


def size_spread_sample(space: Encoding, rng: np.random.Generator) -> Config:
    """A config whose choices all lean one way: one bias drawn for the config, then each
    dimension's choice index ~ Binomial(choices - 1, bias). Uniform sampling bunches sizes
    around the middle of a space; these reach from the smallest to the largest, as a front
    does, and a predictor fitted on them ranks the whole range (``benchmarks/accuracy_predictor``,
    fitted on 50 and scored on draws of the same kind: Spearman 0.93 spread, 0.77 uniform)."""
    lower, upper = space.bounds()
    bias = rng.uniform()
    return space.decode(lower + rng.binomial(upper - lower, bias))


def size_spread_design(space: Encoding, count: int, rng: np.random.Generator) -> list[Config]:
    """The largest and the smallest config and ``count`` other distinct ``size_spread_sample``
    draws (fewer only in a space too small to hold them): a search's first measurements. A
    strongly leaning draw often repeats an end, so draws are repeated until distinct."""
    lower, upper = space.bounds()
    design = {config_key(c): c for c in (space.decode(upper), space.decode(lower))}
    wanted = len(design) + count
    for _ in range(100 * count):
        if len(design) >= wanted:
            break
        config = size_spread_sample(space, rng)
        design.setdefault(config_key(config), config)
    return list(design.values())


def _starting_population(
    space: Encoding, measured: Measured, step: PredictiveStep, rng: np.random.Generator
) -> np.ndarray:
    """The measured front's encodings first (good parents), topped up with random configs."""
    rows = [[m[k] for k in step.objectives] for _, m in measured]
    best = [measured[i][0] for i in non_dominated(rows, step.directions)][: step.population]
    best += [space.sample(rng) for _ in range(step.population - len(best))]
    return np.array([space.encode(c) for c in best], dtype=float)


def feasible(metrics: Mapping[str, float], constraints: Sequence[Mapping]) -> bool:
    """Whether measured ``metrics`` meet every ``{metric, max, min}`` constraint."""
    return all(v <= 0 for v in constraint_values(metrics, constraints))


def most_improving(
    candidates: list[Config], rows: np.ndarray, front: np.ndarray, count: int
) -> list[Config]:
    """Up to ``count`` candidates picked one by one for the largest gain in hypervolume over
    ``front`` and the candidates picked before; candidates that add nothing are left out.

    ``rows`` and ``front`` hold objective values in minimisation form; the reference point is
    the worst value of each objective among both.
    """
    rows, front = np.asarray(rows, dtype=float), np.asarray(front, dtype=float)
    if not len(rows):
        return []
    base = front.reshape(-1, rows.shape[1])
    reference = np.vstack([rows, base]).max(axis=0) + 1e-9
    # a candidate the front already dominates gains nothing: leave it out of the costly loop
    dominated = (base[None, :, :] <= rows[:, None, :]).all(axis=2).any(axis=1)
    candidates = [c for c, d in zip(candidates, dominated, strict=True) if not d]
    rows = rows[~dominated]
    if not len(rows):
        return []
    indicator = HV(ref_point=reference)
    picks: list[int] = []
    volume = float(indicator(base)) if len(base) else 0.0
    while len(picks) < min(count, len(rows)):
        free = [i for i in range(len(rows)) if i not in picks]
        gains = [float(indicator(np.vstack([base, rows[i]]))) - volume for i in free]
        if max(gains) <= 1e-9 * volume:  # nothing gained but rounding
            break
        best = free[int(np.argmax(gains))]
        picks.append(best)
        base = np.vstack([base, rows[best]])
        volume += max(gains)
    return [candidates[i] for i in picks]


def _choose(space, problem, result, nearby, front, excluded, count, rng) -> list[Config]:
    """Configs of the predicted front or ``nearby`` (neighbours of the measured front, those
    predicted to meet the constraints) not in ``excluded``: first those that would add most to
    the hypervolume of the measured ``front`` (metrics of feasible measured points) if they were
    as good as optimistically predicted, then the rest of the predicted front, spread along it;
    random ones if too few. A space with fewer free configs than ``count`` gives fewer."""
    predicted_front = [
        space.decode(np.rint(row).astype(int))
        for row in (np.atleast_2d(result.opt.get("X")) if result.opt is not None else [])
    ]
    nearby = [c for c in nearby if config_key(c) not in excluded]
    if nearby and problem.step.constraints:  # NSGA-II kept its front feasible; these may not be
        predicted = problem.metrics(nearby)
        nearby = [
            c
            for c, m in zip(nearby, predicted, strict=True)
            if feasible(m, problem.step.constraints)
        ]
    candidates = {}
    for config in [*predicted_front, *nearby]:
        if config_key(config) not in excluded:
            candidates[config_key(config)] = config
    configs = list(candidates.values())
    hoped = problem.metrics(configs, problem.step.optimism) if configs else []
    chosen = most_improving(
        configs, problem.objective_rows(hoped), problem.objective_rows(front), count
    )
    on_front = {config_key(c) for c in predicted_front}
    rest = [c for c in configs if config_key(c) in on_front and c not in chosen]
    if len(chosen) < count and rest:
        rows = problem.objective_rows(problem.metrics(rest))
        chosen += spread_evenly(rest, rows, count - len(chosen))
    keys = excluded | {config_key(c) for c in chosen}
    for _ in range(100 * count):
        if len(chosen) >= count:
            break
        config = space.sample(rng)
        if config_key(config) not in keys:
            chosen.append(config)
            keys.add(config_key(config))
    return chosen
