"""Predictors: learning curves (``curves``) and the early-stopping rule on them, with an
Optuna pruner (``pruner``) and a replay of finished curves (``replay``)."""

from nas.predictors.curves import (
    ConfigFeaturizer,
    CurveDataError,
    CurvePrediction,
    LearningCurvePredictor,
    StopDecision,
    StoppingRule,
)
from nas.predictors.pruner import LearningCurvePruner

__all__ = [
    "ConfigFeaturizer",
    "CurveDataError",
    "CurvePrediction",
    "LearningCurvePredictor",
    "LearningCurvePruner",
    "StopDecision",
    "StoppingRule",
]
