"""NSGA-II (pymoo) over a search space's integer encoding, with evaluation done by the caller.

pymoo's ask/tell interface keeps the algorithm unaware of how a config is measured: the
controller passes ``evaluate``, which measures subnets for real (and stores them), so the
points the search ranks are measured points only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
from pymoo.algorithms.moo.nsga2 import NSGA2
from pymoo.core.evaluator import Evaluator
from pymoo.core.problem import Problem
from pymoo.operators.crossover.sbx import SBX
from pymoo.operators.mutation.pm import PM
from pymoo.operators.repair.rounding import RoundingRepair
from pymoo.problems.static import StaticProblem

from nas.pareto import minimisation_matrix
from search_spaces import Config, SearchSpace

#: Measures configs and returns, for each, its metrics keyed as in the spec (``latency_ms@cpu``).
Evaluate = Callable[[list[Config]], list[Mapping[str, float]]]


def constraint_values(metrics: Mapping[str, float], constraints: Sequence[Mapping]) -> list[float]:
    """pymoo's inequality form: each value must be <= 0 for a feasible subnet."""
    values = []
    for c in constraints:
        if c.get("max") is not None:
            values.append(metrics[c["metric"]] - c["max"])
        if c.get("min") is not None:
            values.append(c["min"] - metrics[c["metric"]])
    return values


def initial_population(
    space: SearchSpace, initial: Sequence[Config], size: int, rng: np.random.Generator
) -> np.ndarray:
    """Encoded ``initial`` configs (at most ``size``), topped up with random ones."""
    rows = [space.encode(c) for c in initial[:size]]
    rows += [space.encode(space.sample(rng)) for _ in range(size - len(rows))]
    return np.array(rows, dtype=float)


def run_nsga2(
    space: SearchSpace,
    evaluate: Evaluate,
    objectives: Sequence[str],
    directions: Sequence[str],
    constraints: Sequence[Mapping] = (),
    population: int = 16,
    generations: int = 5,
    initial: Sequence[Config] = (),
    seed: int = 0,
) -> list[Config]:
    """Run NSGA-II for ``generations`` and return the configs of its final population."""
    lower, upper = space.bounds()
    n_constraints = len(constraint_values({c["metric"]: 0.0 for c in constraints}, constraints))
    problem = Problem(
        n_var=len(lower),
        n_obj=len(objectives),
        n_ieq_constr=n_constraints,
        xl=lower,
        xu=upper,
        vtype=int,
    )
    rng = np.random.default_rng(seed)
    algorithm = NSGA2(
        pop_size=population,
        sampling=initial_population(space, initial, population, rng),
        crossover=SBX(prob=0.9, eta=15, vtype=float, repair=RoundingRepair()),
        mutation=PM(eta=20, vtype=float, repair=RoundingRepair()),
        eliminate_duplicates=True,
    )
    algorithm.setup(problem, termination=("n_gen", generations), seed=seed, verbose=False)
    while algorithm.has_next():
        offspring = algorithm.ask()
        configs = [space.decode(np.rint(x).astype(int)) for x in offspring.get("X")]
        metrics = evaluate(configs)
        values = {
            "F": minimisation_matrix([[m[k] for k in objectives] for m in metrics], directions)
        }
        if n_constraints:
            values["G"] = np.array([constraint_values(m, constraints) for m in metrics])
        Evaluator().eval(StaticProblem(problem, **values), offspring)
        algorithm.tell(infills=offspring)
    return [space.decode(np.rint(x).astype(int)) for x in algorithm.pop.get("X")]
