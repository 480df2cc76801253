"""Subnet metric predictors: accuracy (or latency) of a config from its search-space features.

``SubnetPredictor`` follows scikit-learn's habits: ``__init__`` stores settings, ``fit`` picks a
regressor among a few candidates by cross-validated rank correlation (what a search needs is
the order of subnets, not their exact values), refits it on everything and returns ``self``;
``predict`` gives means, ``predict_spread`` a spread from the cross-validated residuals, and
``score`` rank correlations and error on data it was not fitted on.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import numpy as np
from scipy.stats import kendalltau, spearmanr
from sklearn.base import BaseEstimator, RegressorMixin, clone
from sklearn.ensemble import ExtraTreesRegressor, GradientBoostingRegressor
from sklearn.exceptions import ConvergenceWarning
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel
from sklearn.linear_model import RidgeCV
from sklearn.model_selection import KFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

MIN_SAMPLES_FOR_CV = 8


def _candidates(seed: int) -> dict[str, Callable[[], RegressorMixin]]:
    """Regressors worth trying on a few dozen to a few hundred subnets."""
    return {
        "ridge": lambda: make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-3, 3, 13))),
        "extra_trees": lambda: ExtraTreesRegressor(
            n_estimators=200, min_samples_leaf=2, random_state=seed, n_jobs=1
        ),
        # shallow trees, many of them: subnet accuracy is mostly a sum of per-dimension effects
        "gradient_boosting": lambda: GradientBoostingRegressor(
            n_estimators=500, max_depth=2, learning_rate=0.03, subsample=0.8, random_state=seed
        ),
        "gaussian_process": lambda: RelevanceGaussianProcess(random_state=seed),
    }


class RelevanceGaussianProcess(RegressorMixin, BaseEstimator):
    """A Gaussian process with one length scale per feature (automatic relevance determination).

    Subnet features mix one-hot choices with scaled sizes, some deciding much and some nothing;
    one length scale for all of them fits none. With one per feature, an irrelevant feature
    gets a long scale, and interactions a ridge fit cannot express (a big kernel helps a
    shallow network and hurts a deep one) are kept. On the Optuna sampler benchmark's synthetic
    problem it took our sampler from 95 trials to 98% of the known front to about 35.
    """

    def __init__(self, random_state: int | None = None):
        self.random_state = random_state

    def fit(self, features: np.ndarray, values: np.ndarray) -> RelevanceGaussianProcess:
        scales = np.ones(np.asarray(features).shape[1])
        kernel = ConstantKernel() * Matern(scales, (1e-2, 1e3), nu=2.5) + WhiteKernel(1e-3)
        self.model_ = GaussianProcessRegressor(
            kernel, normalize_y=True, random_state=self.random_state
        ).fit(features, values)
        return self

    def predict(self, features: np.ndarray) -> np.ndarray:
        return self.model_.predict(features)


#: The default choice for subnets of a trained supernet: the trees rank them best, and a
#: Gaussian process with one length scale for all features cost seconds per fit there without
#: ranking better (see benchmarks/accuracy_predictor.py, which now also scores the one with a
#: length scale per feature). Smooth problems may prefer that one: the Optuna sampler adds it.
CANDIDATES = ("ridge", "extra_trees", "gradient_boosting")


def rank_scores(predicted: Sequence[float], measured: Sequence[float]) -> dict[str, float]:
    """Spearman and Kendall correlation and mean absolute error of predictions."""
    predicted, measured = np.asarray(predicted, float), np.asarray(measured, float)
    constant = np.ptp(predicted) == 0 or np.ptp(measured) == 0
    return {
        "spearman": 0.0 if constant else float(spearmanr(predicted, measured).statistic),
        "kendall": 0.0 if constant else float(kendalltau(predicted, measured).statistic),
        "mae": float(np.mean(np.abs(predicted - measured))),
        "n": int(len(measured)),
    }


class SubnetPredictor:
    """Predicts one measured metric of subnets from their feature vectors."""

    def __init__(self, candidates: Sequence[str] = CANDIDATES, folds: int = 5, seed: int = 0):
        self.candidates = candidates
        self.folds = folds
        self.seed = seed

    def fit(self, features: np.ndarray, values: np.ndarray) -> SubnetPredictor:
        """Choose the candidate with the best cross-validated Spearman, then refit it on all."""
        with warnings.catch_warnings():  # a GP's hyperparameters at a bound are no news here
            warnings.simplefilter("ignore", ConvergenceWarning)
            return self._fit(features, values)

    def _fit(self, features: np.ndarray, values: np.ndarray) -> SubnetPredictor:
        x, y = np.asarray(features, float), np.asarray(values, float)
        factories = _candidates(self.seed)
        unknown = sorted(set(self.candidates) - set(factories))
        if unknown:
            raise ValueError(f"unknown regressor {unknown[0]!r}; available: {sorted(factories)}")
        if len(y) < 2:
            raise ValueError(f"need at least 2 measured subnets to fit, got {len(y)}")
        self.cv_scores_: dict[str, dict[str, float]] = {}
        residuals: dict[str, np.ndarray] = {}
        if len(y) >= MIN_SAMPLES_FOR_CV:
            for name in self.candidates:
                predicted = self._cross_val_predict(factories[name], x, y)
                self.cv_scores_[name] = rank_scores(predicted, y)
                residuals[name] = y - predicted
            self.chosen_ = max(self.cv_scores_, key=lambda n: self.cv_scores_[n]["spearman"])
            self.spread_ = float(np.std(residuals[self.chosen_]))
        else:  # too few to compare: the most conservative model, spread from its fit
            self.chosen_ = "ridge"
            self.spread_ = float(np.std(y))
        self.model_ = clone(factories[self.chosen_]()).fit(x, y)
        return self

    def _cross_val_predict(self, factory: Callable[[], RegressorMixin], x, y) -> np.ndarray:
        predicted = np.empty_like(y)
        folds = KFold(min(self.folds, len(y)), shuffle=True, random_state=self.seed)
        for train, test in folds.split(x):
            predicted[test] = factory().fit(x[train], y[train]).predict(x[test])
        return predicted

    def predict(self, features: np.ndarray) -> np.ndarray:
        self._check_fitted()
        return self.model_.predict(np.asarray(features, float))

    def predict_spread(self, features: np.ndarray) -> np.ndarray:
        """One standard deviation of the prediction error, from cross-validated residuals."""
        self._check_fitted()
        return np.full(len(features), self.spread_)

    def score(self, features: np.ndarray, values: np.ndarray) -> dict[str, float]:
        """Rank correlations and error on subnets this predictor was not fitted on."""
        return rank_scores(self.predict(features), values)

    def _check_fitted(self) -> None:
        if not hasattr(self, "model_"):
            raise RuntimeError("SubnetPredictor is not fitted yet; call fit() first")
