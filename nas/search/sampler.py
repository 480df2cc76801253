"""``PredictorGuidedSampler``: the jobs' predictor-guided NSGA-II as an Optuna sampler.

Optuna calls ``infer_relative_search_space`` and ``sample_relative`` when a trial starts, and
``sample_independent`` for any parameter outside that space (the first trial, before any
space is known, and a parameter no completed trial has yet). The relative space is every
parameter of the completed trials (or the ``search_space`` given), mapped onto a grid by
``DistributionSpace``; a parameter that only some trials have (``if depth > 1:
trial.suggest_...``) is optional there, with the condition it appears under learned from the
trials, so that proposals choose it too and predictors see where it is absent.

For the first ``n_startup_trials`` the sampler proposes a size-spread design (``_startup``).
After that, each step fits predictors on the completed trials (their values, and their
constraints as Optuna stores them in system attrs), runs ``PredictiveStep`` (NSGA-II on the
predictions) and hands the configs it proposes to the next trials, one each; a new step runs
once as many trials have finished as the last step proposed.

Several workers may share one storage: a config is claimed by writing it to the trial's system
attrs and reading the other trials back; a config another trial (running, finished or failed)
has claimed is never proposed again, and of two trials that claim the same config at the same
moment at least one sees the other and claims another. Randomness is drawn from generators
seeded by ``seed`` and the trial's number, so one worker with one seed repeats its sequence.
"""

from __future__ import annotations

import threading
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler, RandomSampler
from optuna.samplers._base import _process_constraints_after_trial
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from nas.predictors.surrogate import CANDIDATES
from nas.search.distributions import Config, DistributionSpace, grid
from nas.search.engine import Measured, PredictiveStep, config_key, size_spread_design

#: The trial system attr holding the config (grid indices) a trial claimed.
PROPOSAL_KEY = "nas:proposal"
#: The trial system attr holding what the predictors expected of a proposed trial.
PREDICTED_KEY = "nas:predicted"
#: Beyond ``batch``, a step proposes this fraction of the finished trials, so that the cost of
#: refitting is spread over more trials as the study grows.
STEP_FRACTION = 0.04
CLAIM_ATTEMPTS = 20
#: The jobs' regressors and a Gaussian process, chosen among by cross-validation at each step:
#: an Optuna study may be smooth or not. On the Optuna sampler benchmark's synthetic problem the
#: Gaussian process is what gets to 98% of the front in about 35 trials (the trees alone: 128);
#: on the cnn1d supernet the trees are (ridge or the Gaussian process alone: about twice as
#: far from the front after 100 trials).
SAMPLER_CANDIDATES = (*CANDIDATES, "gaussian_process")


class PredictorGuidedSampler(BaseSampler):
    """Predictor-guided NSGA-II for single- and multi-objective studies over categorical,
    integer and stepped float parameters.

    ``batch`` is how many configs one step proposes (more in long studies, see
    ``STEP_FRACTION``); four, not one per trial: on the cnn1d problem of
    ``benchmarks/optuna_sampler.py`` a step per trial needed more trials to 98% in 5 of 6 seeds
    (median 83 against 70.5), though fewer on its synthetic problem (30 against 34.5);
    ``population`` and ``generations`` size NSGA-II on the predictors;
    ``max_fit`` caps the trials the predictors are fitted on (the front first, then the
    newest). ``candidates`` are the regressors ``SubnetPredictor`` chooses among by
    cross-validation (``SAMPLER_CANDIDATES``: about a second a step on a hundred trials of
    two dozen parameters); ``("ridge", "gaussian_process")`` costs a fraction of that, for
    objectives that take less time. ``constraints_func``
    works as in Optuna's own samplers; constraints set with ``trial.set_constraint`` are read
    the same way. ``search_space`` fixes the relative space from the first trial instead of
    inferring it from completed trials. ``exact`` maps objective indices to functions of a
    trial's params (those of the relative space) that give that objective without running the
    trial (MACs or a parameter count from the architecture): those objectives are computed for
    every candidate, not learned, as the jobs' search computes MACs.
    """

    def __init__(
        self,
        *,
        n_startup_trials: int = 16,
        batch: int = 4,
        population: int = 64,
        generations: int = 40,
        max_fit: int = 128,
        candidates: Sequence[str] = SAMPLER_CANDIDATES,
        constraints_func: Callable[[FrozenTrial], Sequence[float]] | None = None,
        search_space: dict[str, BaseDistribution] | None = None,
        exact: Mapping[int, Callable[[dict[str, Any]], float]] | None = None,
        seed: int | None = None,
    ):
        for name, value, least in [
            ("n_startup_trials", n_startup_trials, 2),
            ("batch", batch, 1),
            ("population", population, 4),
            ("generations", generations, 1),
            ("max_fit", max_fit, 2),
        ]:
            if value < least:
                raise ValueError(f"{name} must be >= {least}, got {name}={value}")
        self.n_startup_trials, self.batch, self.max_fit = n_startup_trials, batch, max_fit
        self.population, self.generations = population, generations
        self.candidates = tuple(candidates)
        self.constraints_func = constraints_func
        self.exact = dict(exact or {})
        self.space = DistributionSpace(search_space) if search_space is not None else None
        self.seed = int(np.random.SeedSequence(seed).generate_state(1)[0])
        self._lock = threading.Lock()
        self._queue: list[tuple[Config, dict[str, float]]] = []
        self._queue_space: DistributionSpace | None = None  # the space the queue is a grid of
        self._step_at = 0  # finished trials the last step was fitted on
        self._step_size = 0

    # ---- Optuna's interface -------------------------------------------------------------
    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        outside = [i for i in self.exact if not 0 <= i < len(study.directions)]
        if outside:
            raise ValueError(
                f"exact= names objective {outside[0]}, but the study has "
                f"{len(study.directions)} objective(s), numbered from 0"
            )
        if self.space is not None:
            return self.space.distributions
        union: dict[str, BaseDistribution] = {}
        for completed in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            union |= completed.distributions  # the newest trial's distribution wins
        space = {n: d for n, d in union.items() if not d.single()}
        for name, distribution in space.items():
            grid(name, distribution)  # a clear error for a parameter it cannot search
        return space

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        if not search_space:
            return {}
        completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        space = DistributionSpace.learned(search_space, [t.params for t in completed])
        rng = np.random.default_rng([self.seed, trial.number])
        measured = _measured(completed, space)
        with self._lock:
            if len(measured) < self.n_startup_trials:
                preferred = self._startup(space)
            else:
                preferred = self._preferred(study, trial, space, measured, rng)
            config, predicted = self._claim(study, trial, space, preferred, rng)
            self._queue = [(c, p) for c, p in self._queue if c != config]
        if predicted:
            study._storage.set_trial_system_attr(trial._trial_id, PREDICTED_KEY, predicted)
        return space.params(config)

    def sample_independent(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        if not param_distribution.single():
            grid(param_name, param_distribution)
        seed = np.random.SeedSequence([self.seed, trial.number, zlib.crc32(param_name.encode())])
        sampler = RandomSampler(seed=int(seed.generate_state(1)[0]))
        return sampler.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        if self.constraints_func is not None:
            _process_constraints_after_trial(self.constraints_func, study, trial, state)

    # ---- steps and claims ---------------------------------------------------------------
    def _startup(self, space: DistributionSpace) -> list[tuple[Config, dict[str, float]]]:
        """The first trials' configs, the same for every trial of the study (claims hand them
        out in order): the grid's two corners and size-spread draws, whose marginals are as
        uniform as random ones but which reach from all-smallest to all-largest choices, as a
        front does."""
        rng = np.random.default_rng(self.seed)
        design = size_spread_design(space, self.n_startup_trials - 2, rng)
        return [(config, {}) for config in design]

    def _preferred(self, study, trial, space, measured, rng) -> list[tuple[Config, dict]]:
        """The current step's proposals, after a new step if enough trials have finished."""
        taken = _claimed(study, trial, space)
        queue = self._queue if self._queue_space == space else []
        free = [(c, p) for c, p in queue if config_key(c) not in taken]
        if not free or len(measured) - self._step_at >= self._step_size:
            step = self._step(study, space, measured)
            count = max(self.batch, int(STEP_FRACTION * len(measured)))
            proposal = step.propose(space, measured, count, rng, taken)
            free = list(zip(proposal.configs, proposal.predicted, strict=True))
            self._step_at, self._step_size = len(measured), count
        self._queue, self._queue_space = free, space
        return free

    def _step(
        self, study: optuna.Study, space: DistributionSpace, measured: Measured
    ) -> PredictiveStep:
        directions = ["max" if d == StudyDirection.MAXIMIZE else "min" for d in study.directions]
        exact = {
            f"objective:{i}": (lambda config, f=f: float(f(space.params(config))))
            for i, f in self.exact.items()
        }
        constraints = [k for k in measured[0][1] if k.startswith("constraint:")]
        return PredictiveStep(
            [f"objective:{i}" for i in range(len(directions))],
            directions,
            exact=exact,
            constraints=[{"metric": k, "max": 0.0} for k in constraints],
            population=self.population,
            generations=self.generations,
            max_fit=self.max_fit,
            seed=self.seed,
            candidates=self.candidates,
        )

    def _claim(self, study, trial, space, preferred, rng) -> tuple[Config, dict[str, float]]:
        """Write a config no other trial holds to this trial, then read the others back; on a
        clash, try again (from a random one of the first few, so that two workers in step
        part ways)."""
        for attempt in range(CLAIM_ATTEMPTS):
            taken = _claimed(study, trial, space)
            free = [(c, p) for c, p in preferred if config_key(c) not in taken]
            if free:
                config, predicted = free[int(rng.integers(min(len(free), attempt + 1)))]
            else:
                config, predicted = next(_random_free(space, taken, rng)), {}
            key = config_key(config)
            study._storage.set_trial_system_attr(trial._trial_id, PROPOSAL_KEY, key)
            if key not in _claimed(study, trial, space):
                break
        return config, predicted


def _random_free(space: DistributionSpace, taken: set[str], rng) -> Iterator[Config]:
    """Random configs not in ``taken``; any random config once the space seems used up."""
    for _ in range(1000):
        config = space.sample(rng)
        if config_key(config) not in taken:
            yield config
    while True:
        yield space.sample(rng)


def _claimed(study: optuna.Study, trial: FrozenTrial, space: DistributionSpace) -> set[str]:
    """Configs every other trial holds: its claim, else its parameters."""
    keys = set()
    for other in study.get_trials(deepcopy=False):
        if other.number == trial.number:
            continue
        if PROPOSAL_KEY in other.system_attrs:
            keys.add(other.system_attrs[PROPOSAL_KEY])
        elif (config := space.config(other.params)) is not None:
            keys.add(config_key(config))
    return keys


def _measured(completed: Sequence[FrozenTrial], space: DistributionSpace) -> Measured:
    """Completed trials in the space as ``(config, metrics)``: ``objective:i`` values and
    ``constraint:KEY`` values; constrained studies keep only trials with every constraint."""
    points = []
    for t in completed:
        config = space.config(t.params)
        if config is not None and t.values is not None:
            metrics = {f"objective:{i}": float(v) for i, v in enumerate(t.values)}
            metrics |= {f"constraint:{k}": float(v) for k, v in t.constraints.items()}
            points.append((config, metrics))
    keys = set().union(*(m for _, m in points)) if points else set()
    return [(c, m) for c, m in points if set(m) == keys]
