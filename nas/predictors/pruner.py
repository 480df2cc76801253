"""``LearningCurvePruner``: the learning-curve stopping rule as an Optuna pruner.

Optuna calls ``prune(study, trial)`` from ``trial.should_prune()``, after the objective has
reported the epoch's value with ``trial.report(value, step)``. The pruner refits a
``LearningCurvePredictor`` on the study's completed trials whenever that set changes (curves
are the trials' intermediate values in step order; finals are the trials' values; features are
the trials' ``params``), then asks a ``StoppingRule`` about the running trial.

Works in any single-objective study with any sampler. Report once per epoch, at consecutive
steps (``0..T-1`` or ``1..T``); a completed trial is used for fitting only when it reported all
``n_epochs`` steps. The rank rules (the rungs, and the fallback before ``min_finished``
trials completed) rank the trial by the best value it has reported so far among every other
trial's best by the same step, pruned and running ones included.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import optuna
from optuna.pruners import BasePruner
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from nas.predictors.curves import LearningCurvePredictor, StopDecision, StoppingRule


class LearningCurvePruner(BasePruner):
    """Prunes a trial when it is unlikely to end among the ``k`` best completed trials.

    ``n_epochs`` is the number of reported steps of a full trial (default: the most any
    completed trial reported). The other settings are ``StoppingRule``'s. ``bounds`` is the
    metric's possible range (``(0, 1)`` for an accuracy), if it has one. ``make_predictor``
    builds an unfitted predictor (default ``LearningCurvePredictor(bounds=bounds)``).
    ``on_decision``, if given, is called with the trial and the ``StopDecision`` every time the
    pruner decides, e.g. to store the decision.
    """

    def __init__(
        self,
        n_epochs: int | None = None,
        *,
        k: int = 3,
        tolerance: float = 0.002,
        threshold: float = 0.015,
        patience: int = 2,
        min_epochs: int = 1,
        model_from: int = 5,
        min_finished: int = 5,
        fallback_keep: float = 1.0,
        fallback_peers: int = 5,
        decay: float = 1.0,
        rung_factor: float = 4.0,
        rung_keep: float = 0.5,
        bounds: tuple[float, float] | None = None,
        make_predictor: Callable[[], LearningCurvePredictor] | None = None,
        on_decision: Callable[[FrozenTrial, StopDecision], None] | None = None,
    ):
        if n_epochs is not None and n_epochs < 2:
            raise ValueError(f"n_epochs must be >= 2, got n_epochs={n_epochs}")
        self.n_epochs = n_epochs
        self.settings: dict[str, Any] = {
            "k": k,
            "tolerance": tolerance,
            "threshold": threshold,
            "patience": patience,
            "min_epochs": min_epochs,
            "model_from": model_from,
            "min_finished": min_finished,
            "fallback_keep": fallback_keep,
            "fallback_peers": fallback_peers,
            "decay": decay,
            "rung_factor": rung_factor,
            "rung_keep": rung_keep,
        }
        StoppingRule(**self.settings).validate()
        self.bounds = bounds
        self.make_predictor = make_predictor
        self.on_decision = on_decision
        self._lock = threading.Lock()
        self._fitted: tuple[tuple[int, ...], LearningCurvePredictor | None] = ((), None)

    def prune(self, study: optuna.study.Study, trial: FrozenTrial) -> bool:
        if len(study.directions) > 1:
            raise NotImplementedError("LearningCurvePruner supports single-objective studies")
        curve = _curve(trial.intermediate_values)
        if not curve:
            return False
        completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        horizon = self.n_epochs or max((len(t.intermediate_values) for t in completed), default=0)
        if len(curve) >= horizon:  # a full curve: nothing left to save
            return False
        finished = [
            t for t in completed if len(t.intermediate_values) == horizon and t.value is not None
        ]
        curves = [_curve(t.intermediate_values) for t in finished]
        finals = [float(t.value) for t in finished]  # type: ignore[arg-type]
        predictor = self._predictor(finished, curves, finals)
        rule = StoppingRule(
            predictor,
            mode="max" if study.direction == StudyDirection.MAXIMIZE else "min",
            **self.settings,
        )
        peers = [
            _curve(t.intermediate_values)
            for t in study.get_trials(deepcopy=False)
            if t.number != trial.number and t.intermediate_values
        ]
        decision = rule.decide(curve, _features(trial.params), finals, peers)
        if self.on_decision is not None:
            self.on_decision(trial, decision)
        return decision.stop

    def _predictor(
        self, finished: Sequence[FrozenTrial], curves: list[list[float]], finals: list[float]
    ) -> LearningCurvePredictor | None:
        """The predictor fitted on exactly these trials, refitted only when they change."""
        key = tuple(t.number for t in finished)
        with self._lock:
            if key == self._fitted[0]:
                return self._fitted[1]
            predictor = None
            if len(finished) >= max(2, int(self.settings["min_finished"])):
                make = self.make_predictor or (lambda: LearningCurvePredictor(bounds=self.bounds))
                predictor = make().fit(curves, [_features(t.params) for t in finished], finals)
            self._fitted = (key, predictor)
            return predictor


def _curve(values: Mapping[int, float]) -> list[float]:
    return [float(values[step]) for step in sorted(values)]


def _features(params: Mapping[str, Any]) -> dict[str, Any]:
    return dict(params)
