"""Supernet training trials: hyperparameters sampled by Optuna, judged by the learning-curve rule.

A job may train several supernets (``training.trials``), each with hyperparameters drawn from
``training.tune``. The database is the only memory: before each new run, an in-memory Optuna
study is rebuilt from the runs stored so far (finished runs as complete trials, stopped runs as
pruned ones), and the spec's sampler, seeded by the job seed and the run's index, asks for the
next point. A restarted controller therefore samples nothing twice: a run's hyperparameters are
stored with it before it trains.

A run's score is the mean validation accuracy of the largest and the smallest subnet after each
epoch: a supernet is only as good as both ends of its space.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

from nas.predictors.curves import LearningCurvePredictor, StopDecision, StoppingRule
from nas.spec import EarlyStoppingSpec, RangeSpec, TrainingSpec
from nas.store import CurvePoint

#: Curve points whose mean is a run's score.
SCORE_POINTS = ("val_acc/largest", "val_acc/smallest")


@dataclass(frozen=True)
class FinishedRun:
    """What the sampler and the stopping rule learn from: a run's tuned values and score curve;
    ``stopped`` runs were cut short and have no final score."""

    tuned: dict[str, Any]
    scores: list[float]
    stopped: bool


def run_curves(points: Sequence[CurvePoint]) -> dict[str, list[float]]:
    """A run's curve points (ordered by epoch, as the store gives them) as one list per name."""
    curves: dict[str, list[float]] = {}
    for point in points:
        curves.setdefault(point.name, []).append(point.value)
    return curves


def scores(curves: Mapping[str, Sequence[float]]) -> list[float]:
    """A run's score after each epoch, from its curves."""
    columns = [curves.get(name, []) for name in SCORE_POINTS]
    return [sum(values) / len(values) for values in zip(*columns, strict=True)]


def distributions(tune: Mapping[str, RangeSpec]) -> dict[str, BaseDistribution]:
    return {
        name: CategoricalDistribution(r.choices)
        if r.choices is not None
        else FloatDistribution(r.low, r.high, log=r.log)  # type: ignore[arg-type]
        for name, r in tune.items()
    }


def next_tuned(training: TrainingSpec, history: Sequence[FinishedRun], seed: int) -> dict:
    """The next run's tuned hyperparameters, given every run stored so far."""
    if not training.tune:
        return {}
    space = distributions(training.tune)
    sampler_seed = seed + len(history)
    sampler = (
        optuna.samplers.TPESampler(seed=sampler_seed, n_startup_trials=min(4, training.trials))
        if training.sampler == "tpe"
        else optuna.samplers.RandomSampler(seed=sampler_seed)
    )
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    for run in history:
        study.add_trial(
            create_trial(
                params=run.tuned,
                distributions=space,
                state=TrialState.PRUNED if run.stopped else TrialState.COMPLETE,
                value=None if run.stopped else run.scores[-1],
                intermediate_values=dict(enumerate(run.scores, start=1)),
            )
        )
    return study.ask(space).params


def run_settings(training: TrainingSpec, tuned: Mapping[str, Any], seed: int) -> dict[str, Any]:
    """The trainer's plain settings: the spec's, with the tuned values put in their places."""
    optimizer = training.optimizer.model_dump()
    settings = training.model_dump(
        include={"epochs", "batch_size", "random_subnets", "distillation", "device", "compile"}
    )
    for name, value in tuned.items():
        if name in optimizer:
            optimizer[name] = float(value)
        else:
            settings[name] = int(value)
    return {**settings, "optimizer": optimizer, "seed": seed, "tuned": dict(tuned)}


class CurveJudge:
    """The stopping rule on supernet runs, its predictor refitted when a run finishes."""

    def __init__(self, settings: EarlyStoppingSpec, epochs: int):
        self.settings, self.epochs = settings, epochs
        self._fitted: tuple[int, LearningCurvePredictor | None] = (-1, None)

    def decide(
        self, scores: Sequence[float], tuned: Mapping[str, Any], finished: Sequence[FinishedRun]
    ) -> StopDecision:
        """Whether a run with score curve ``scores`` (epochs ``1..t``, ``t < epochs``) stops."""
        done = [r for r in finished if not r.stopped and len(r.scores) == self.epochs]
        rule = StoppingRule(self._predictor(done), mode="max", **self.settings.model_dump())
        peers = [r.scores for r in finished]  # stopped runs too: the fallback ranks among all
        return rule.decide(list(scores), dict(tuned), [r.scores[-1] for r in done], peers)

    def _predictor(self, done: Sequence[FinishedRun]) -> LearningCurvePredictor | None:
        if len(done) < self.settings.min_finished:
            return None
        if self._fitted[0] != len(done):  # runs only ever finish, so the count identifies them
            predictor = LearningCurvePredictor(bounds=(0.0, 1.0)).fit(
                [r.scores for r in done], [r.tuned for r in done], [r.scores[-1] for r in done]
            )
            self._fitted = (len(done), predictor)
        return self._fitted[1]
