"""Learning-curve prediction and the early-stopping rule built on it.

In the spirit of Baker et al., "Accelerating Neural Architecture Search using Performance
Prediction" (2017): a run's final value is regressed on a summary of its partial curve (last
values, first and second differences, slope, noise) and on its hyperparameter and architecture
features, with one model per number of epochs seen. Past that paper, every prediction is a
calibrated predictive distribution, not a point:

- ``LearningCurvePredictor`` fits, for every prefix length ``t``, a ridge regression of the
  remaining change ``final - curve[t-1]`` and a second ridge regression of the log size of its
  leave-one-out error (how uncertain runs *like this one* are). Its leave-one-out residuals,
  divided by that scale, are conformal scores; their empirical distribution (pooled over nearby
  prefix lengths) turns ``mean + scale * score`` into a predictive distribution whose intervals
  hold their nominal coverage on runs the model was not fitted on. Ridge regressions have
  closed-form leave-one-out errors, so a refit takes milliseconds and a decision microseconds.
- ``StoppingRule`` stops a run when the probability that it ends at least as well as the
  ``k``-th best final value finished so far, minus ``tolerance``, is below ``threshold``.
  While fewer than ``min_finished`` runs have finished it falls back to a median rule on the
  finished curves (see ``StoppingRule``).

Everything here is plain numpy and scikit-learn-style objects: ``__init__`` stores settings,
``fit`` learns (state ends in ``_``) and returns ``self``. The Optuna pruner on top of this is
``nas.predictors.pruner.LearningCurvePruner``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from nas.errors import NasError

MODES = ("max", "min")
DEFAULT_LOG_KEYS = ("lr", "learning_rate", "weight_decay", "batch_size")
DEFAULT_IGNORE = ("seed",)


class CurveDataError(NasError):
    """Learning curves or their features are malformed (ragged, empty, not numbers)."""


class NotFittedError(NasError):
    """A predictor was asked for a prediction before ``fit``."""


# ---- features of a config ----------------------------------------------------------------------
class ConfigFeaturizer:
    """Turns any config dict into a fixed-length float vector.

    Keys are learned by ``fit``: a key whose values are all numbers (bools included) becomes one
    column, ``log10`` of the value for keys in ``log_keys`` whose values are all positive, the
    value as is otherwise; any other key (strings, lists, mixed types) becomes one-hot columns
    over the values seen in ``fit`` (a value not seen then gives all zeros). Keys in ``ignore``
    and keys first seen after ``fit`` are left out; a missing numeric value becomes the mean
    seen in ``fit``.
    """

    def __init__(
        self, log_keys: Sequence[str] = DEFAULT_LOG_KEYS, ignore: Sequence[str] = DEFAULT_IGNORE
    ):
        self.log_keys = log_keys
        self.ignore = ignore

    def fit(self, configs: Sequence[Mapping[str, Any]]) -> ConfigFeaturizer:
        values: dict[str, list[Any]] = {}
        for config in configs:
            if not isinstance(config, Mapping):
                raise CurveDataError(f"a config must be a JSON object, got {config!r:.60}")
            for key, value in config.items():
                if key not in self.ignore and value is not None:
                    values.setdefault(str(key), []).append(value)
        columns: list[tuple[str, str, Any]] = []
        means: list[float] = []
        for key in sorted(values):
            seen = values[key]
            if all(_is_number(v) for v in seen):
                numbers = np.array(seen, dtype=float)
                if key in self.log_keys and numbers.min() > 0:
                    columns.append((key, "log", None))
                    means.append(float(np.log10(numbers).mean()))
                else:
                    columns.append((key, "num", None))
                    means.append(float(numbers.mean()))
            else:
                for category in sorted({_category(v) for v in seen}):
                    columns.append((key, "cat", category))
                    means.append(0.0)
        self.columns_ = columns
        self.means_ = np.array(means)
        return self

    def transform(self, configs: Sequence[Mapping[str, Any]]) -> np.ndarray:
        _check_fitted(self, "columns_")
        out = np.empty((len(configs), len(self.columns_)))
        for i, config in enumerate(configs):
            out[i] = self._row(config)
        return out

    def _row(self, config: Mapping[str, Any]) -> np.ndarray:
        row = self.means_.copy()
        for j, (key, kind, category) in enumerate(self.columns_):
            value = config.get(key)
            if kind == "cat":
                row[j] = float(value is not None and _category(value) == category)
            elif _is_number(value) and (kind == "num" or value > 0):
                row[j] = math.log10(value) if kind == "log" else float(value)
        return row

    def names(self) -> list[str]:
        """Column names, ``key``, ``log10(key)`` or ``key=value``."""
        _check_fitted(self, "columns_")
        return [
            f"{key}={cat}" if kind == "cat" else (f"log10({key})" if kind == "log" else key)
            for key, kind, cat in self.columns_
        ]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and math.isfinite(value)


def _category(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)


# ---- features of a partial curve ---------------------------------------------------------------
CURVE_FEATURES = (
    "last",
    "mean_last3",
    "best",
    "first",
    "diff1",
    "diff1_mean3",
    "diff2_mean3",
    "slope_second_half",
    "noise",
)


def curve_summary(prefixes: np.ndarray) -> np.ndarray:
    """Summaries of partial curves of the same length ``t``, one row per curve.

    Columns (``CURVE_FEATURES``): the last value, the mean of the last three, the best and the
    first value, the last first difference, the mean first and second differences over the last
    three epochs, the slope over the second half of the prefix, and the spread of the last five
    first differences (how noisy the curve is). Differences that need more epochs than seen are 0.
    """
    y = np.asarray(prefixes, dtype=float)
    n, t = y.shape
    d1 = np.diff(y, axis=1)
    zeros = np.zeros(n)
    half = t // 2
    return np.column_stack(
        [
            y[:, -1],
            y[:, -3:].mean(axis=1),
            y.max(axis=1),
            y[:, 0],
            d1[:, -1] if t > 1 else zeros,
            d1[:, -3:].mean(axis=1) if t > 1 else zeros,
            np.diff(d1[:, -4:], axis=1).mean(axis=1) if t > 2 else zeros,
            (y[:, -1] - y[:, half - 1]) / (t - half) if t > 1 else zeros,
            d1[:, -5:].std(axis=1) if t > 2 else zeros,
        ]
    )


# ---- one model per prefix length: nearest finished runs -------------------------------------
@dataclass(frozen=True)
class _PrefixModel:
    """Finished runs seen at prefix length ``t``: their standardised curve and config features,
    how much each still changed (``change = final - curve[t-1]``), and the neighbourhood
    (``k`` runs, config distance weighted by ``config_weight``) that predicted best."""

    curve_center: np.ndarray
    curve_scale: np.ndarray
    curve_z: np.ndarray
    config_center: np.ndarray
    config_scale: np.ndarray
    config_z: np.ndarray
    change: np.ndarray
    k: int
    config_weight: float
    noise: float
    reach: float

    @classmethod
    def fit(
        cls,
        curve_x: np.ndarray,
        config_x: np.ndarray,
        change: np.ndarray,
        noise: float,
        ks: Sequence[int],
        config_weights: Sequence[float],
    ) -> tuple[_PrefixModel, np.ndarray]:
        """The model and the leave-one-out scores ``(change - mean) / scale`` of its runs."""
        n = len(change)
        curve_center, curve_scale, curve_z = _standardise(curve_x)
        config_center, config_scale, config_z = _standardise(config_x)
        curve_d = _mean_sq_distances(curve_z, curve_z)
        config_d = _mean_sq_distances(config_z, config_z)
        best = (math.inf, 1, 0.0, np.empty(0, dtype=int))
        for weight in config_weights:
            distance = curve_d + weight * config_d
            np.fill_diagonal(distance, math.inf)
            order = np.argsort(distance, axis=1, kind="stable")
            for k in ks:
                k = min(k, n - 1)
                neighbours = order[:, :k]
                error = float(np.mean((change - change[neighbours].mean(axis=1)) ** 2))
                if error < best[0] - 1e-15:
                    best = (error, k, weight, neighbours)
        _, k, weight, neighbours = best
        distance = curve_d + weight * config_d
        far = np.take_along_axis(distance, neighbours, axis=1).mean(axis=1)
        reach = float(np.median(far)) * REACH + 1e-12
        others = np.ones((n, n), dtype=bool)
        np.fill_diagonal(others, False)
        rest = change[None, :].repeat(n, 0)[others].reshape(n, n - 1)
        mean, scale = _mix(change[neighbours], far, reach, rest, noise)
        scores = (change - mean) / scale
        model = cls(
            curve_center, curve_scale, curve_z, config_center, config_scale, config_z,
            change, k, weight, noise, reach,
        )  # fmt: skip
        return model, scores

    def predict(self, curve_x: np.ndarray, config_x: np.ndarray) -> tuple[float, float]:
        """Mean and scale of the change still to come, from the ``k`` nearest finished runs."""
        distance = _mean_sq_distances(
            ((curve_x - self.curve_center) / self.curve_scale)[None, :], self.curve_z
        )[0]
        if self.config_weight:
            distance = (
                distance
                + self.config_weight
                * _mean_sq_distances(
                    ((config_x - self.config_center) / self.config_scale)[None, :], self.config_z
                )[0]
            )
        if self.k < len(distance):
            nearest = np.argpartition(distance, self.k - 1)[: self.k]
        else:
            nearest = np.arange(len(distance))
        mean, scale = _mix(
            self.change[nearest][None, :],
            np.array([distance[nearest].mean()]),
            self.reach,
            self.change[None, :],
            self.noise,
        )
        return float(mean[0]), float(scale[0])


REACH = 0.5


def _mix(
    near: np.ndarray, far: np.ndarray, reach: float, everyone: np.ndarray, noise: float
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and scale of the neighbours' changes, mixed with those of all finished runs by
    how far the neighbours are: weight ``far / (far + reach)`` on all runs."""
    share = (far / (far + reach))[:, None]
    mean_near, mean_all = near.mean(axis=1, keepdims=True), everyone.mean(axis=1, keepdims=True)
    mean = (1 - share) * mean_near + share * mean_all
    var = (
        (1 - share) * near.var(axis=1, keepdims=True)
        + share * everyone.var(axis=1, keepdims=True)
        + share * (1 - share) * (mean_near - mean_all) ** 2
    )
    return mean[:, 0], np.sqrt(var[:, 0] + noise**2)


def _standardise(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    center = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale < 1e-12] = 1.0
    return center, scale, (x - center) / scale


def _mean_sq_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Mean squared difference per feature between every row of ``a`` and every row of ``b``."""
    if a.shape[1] == 0:
        return np.zeros((len(a), len(b)))
    return ((a[:, None, :] - b[None, :, :]) ** 2).mean(axis=2)


def curve_noise(curves: np.ndarray, window: int = 10) -> float:
    """How much a finished curve still jitters: the median, over curves, of the spread of its
    last ``window`` points around their straight-line trend (a floor on any prediction error)."""
    tail = curves[:, -min(window, curves.shape[1]) :]
    if tail.shape[1] < 3:
        return 0.0
    steps = np.arange(tail.shape[1], dtype=float)
    slope, intercept = np.polyfit(steps, tail.T, 1)
    residual = tail - (np.outer(slope, steps) + intercept[:, None])
    return float(np.median(residual.std(axis=1)))


# ---- predictive distribution ---------------------------------------------------------------------
@dataclass(frozen=True)
class CurvePrediction:
    """A predictive distribution of a run's final value: ``mean + scale * S`` where ``S`` follows
    the empirical distribution of the calibration ``scores`` (sorted); ``low``/``high`` bound its
    central interval of probability ``level``."""

    mean: float
    low: float
    high: float
    level: float
    scale: float
    scores: np.ndarray

    def prob_above(self, value: float) -> float:
        """P(final >= value), conservative by one calibration point (split-conformal style)."""
        z = (value - self.mean) / self.scale
        above = len(self.scores) - int(np.searchsorted(self.scores, z, side="left"))
        return min(1.0, (above + 1) / (len(self.scores) + 1))

    def prob_below(self, value: float) -> float:
        """P(final <= value), conservative in the same way."""
        z = (value - self.mean) / self.scale
        below = int(np.searchsorted(self.scores, z, side="right"))
        return min(1.0, (below + 1) / (len(self.scores) + 1))


class LearningCurvePredictor:
    """Predicts a run's final value from its first epochs and its config, with an interval.

    ``fit(curves, configs, finals=None)`` takes finished runs: full curves of one length ``T``
    (``T >= 2``), their config dicts (any keys, see ``ConfigFeaturizer``), and optionally their
    final values (default: the last point of each curve). ``predict(curve, config)`` takes a
    partial curve of length ``1..T-1`` and returns a ``CurvePrediction``.

    For each prefix length ``t`` the model is a nearest-neighbour regression of the change
    still to come, ``final - curve[t-1]``, on the prefix's summary (``curve_summary``) and the
    config's features: the mean change of the ``k`` finished runs nearest in
    ``curve distance + w * config distance`` (standardised features), ``k`` in ``ks`` and ``w``
    in ``config_weights`` picked by exact leave-one-out error. The scale is the spread of those
    neighbours' changes together with ``curve_noise`` (the jitter no model can predict).
    Leave-one-out errors divided by their scale are the conformal scores; pooled over prefix
    lengths within ``pool * T`` of ``t``, their empirical distribution gives the probabilities
    and the central interval of probability ``level``. A model that averages the changes of
    similar runs never extrapolates a trend beyond what some finished run did, which keeps it
    sane on a dozen runs.
    """

    def __init__(
        self,
        *,
        level: float = 0.9,
        pool: float = 0.1,
        ks: Sequence[int] = (3, 5, 8, 12),
        config_weights: Sequence[float] = (0.0, 0.25, 0.5, 1.0),
        featurizer: ConfigFeaturizer | None = None,
    ):
        self.level = level
        self.pool = pool
        self.ks = ks
        self.config_weights = config_weights
        self.featurizer = featurizer

    # -- fitting
    def fit(
        self,
        curves: Sequence[Sequence[float]],
        configs: Sequence[Mapping[str, Any]],
        finals: Sequence[float] | None = None,
    ) -> LearningCurvePredictor:
        if not 0.0 < self.level < 1.0:
            raise ValueError(f"level must be in (0, 1), got level={self.level}")
        if not 0.0 <= self.pool <= 1.0:
            raise ValueError(f"pool must be in [0, 1], got pool={self.pool}")
        if not self.ks or min(self.ks) < 1:
            raise ValueError(f"ks must be positive integers, got ks={self.ks}")
        if not self.config_weights or min(self.config_weights) < 0:
            raise ValueError(f"config_weights must be >= 0, got {self.config_weights}")
        y = _curve_matrix(curves)
        n, horizon = y.shape
        if n < 2 or horizon < 2:
            raise CurveDataError(
                f"need at least 2 finished curves of at least 2 points, got {n} of {horizon}"
            )
        if len(configs) != n:
            raise CurveDataError(f"got {n} curves but {len(configs)} configs")
        final = y[:, -1] if finals is None else np.asarray(finals, dtype=float)
        if final.shape != (n,) or not np.isfinite(final).all():
            raise CurveDataError(f"finals must be {n} finite numbers")
        featurizer = self.featurizer or ConfigFeaturizer()
        config_x = featurizer.fit(configs).transform(configs)
        noise = curve_noise(y)
        models, raw_scores = [], []
        for t in range(1, horizon):
            model, scores = _PrefixModel.fit(
                curve_summary(y[:, :t]),
                config_x,
                final - y[:, t - 1],
                noise,
                self.ks,
                self.config_weights,
            )
            models.append(model)
            raw_scores.append(scores)
        width = round(self.pool * horizon)
        self.scores_ = [
            np.sort(np.concatenate(raw_scores[max(0, i - width) : i + width + 1]))
            for i in range(horizon - 1)
        ]
        self.featurizer_ = featurizer
        self.horizon_ = horizon
        self.noise_ = noise
        self.n_fitted_ = n
        self.models_ = models
        return self

    # -- prediction
    def predict(self, curve: Sequence[float], config: Mapping[str, Any]) -> CurvePrediction:
        """The predictive distribution of the final value of a run with this partial curve."""
        _check_fitted(self, "models_")
        y = np.asarray(curve, dtype=float)
        t = len(y)
        if not 1 <= t < self.horizon_:
            raise CurveDataError(
                f"a partial curve must have 1 to {self.horizon_ - 1} points, got {t}"
            )
        return self._distribution(y, self.featurizer_._row(config))

    def predict_prefixes(
        self, curve: Sequence[float], config: Mapping[str, Any]
    ) -> list[CurvePrediction]:
        """``predict`` for every prefix ``curve[:t]``, ``t = 1..min(len(curve), T-1)``."""
        _check_fitted(self, "models_")
        y = np.asarray(curve, dtype=float)
        config_x = self.featurizer_._row(config)
        last = min(len(y), self.horizon_ - 1)
        return [self._distribution(y[:t], config_x) for t in range(1, last + 1)]

    def _distribution(self, y: np.ndarray, config_x: np.ndarray) -> CurvePrediction:
        t = len(y)
        change, scale = self.models_[t - 1].predict(curve_summary(y[None, :])[0], config_x)
        mean = float(y[-1]) + change
        scores = self.scores_[t - 1]
        lo, hi = _conformal_quantiles(scores, (1.0 - self.level) / 2.0)
        return CurvePrediction(
            mean=mean,
            low=mean + scale * lo,
            high=mean + scale * hi,
            level=self.level,
            scale=scale,
            scores=scores,
        )


def _conformal_quantiles(sorted_scores: np.ndarray, tail: float) -> tuple[float, float]:
    """Lower and upper split-conformal quantiles, each with miscoverage ``tail``."""
    m = len(sorted_scores)
    rank = math.ceil((m + 1) * (1.0 - tail))
    if rank > m:
        return -math.inf, math.inf
    return float(sorted_scores[m - rank]), float(sorted_scores[rank - 1])


# ---- the stopping rule -------------------------------------------------------------------------
@dataclass(frozen=True)
class StopDecision:
    """One decision on one run at one epoch, as plain values that a store can keep as a row.

    ``stop`` is the decision. ``mean``/``low``/``high`` are the predicted final value and its
    interval (``None`` when the fallback rule decided); ``threshold`` is the value the run is
    compared with (``k``-th best final minus tolerance, or the fallback's bar; ``None`` when there
    is nothing to compare with yet); ``probability`` is P(final reaches ``threshold``) under the
    predictor (``None`` for the fallback); ``reason`` says which rule decided and why.
    """

    stop: bool
    mean: float | None
    low: float | None
    high: float | None
    threshold: float | None
    probability: float | None
    reason: str


class StoppingRule:
    """Stop a run when it is unlikely to end among the best runs finished so far.

    With at least ``min_finished`` finished runs and a fitted ``predictor``, a run is stopped at
    epoch ``t >= min_epochs`` when

        P(final >= k-th best finished final - tolerance) < threshold     (mode "max";
        P(final <= k-th best finished final + tolerance) < threshold      mode "min")

    under the predictor's calibrated distribution: "stop when the chance that this run would
    make the current top ``k`` (up to ``tolerance``) is below ``threshold``". With fewer than
    ``k`` finished runs the bar is the worst finished final.

    Fallback while fewer than ``min_finished`` runs have finished (too few to fit on): a median
    rule on the finished curves, stop at epoch ``t >= fallback_after * T`` when the run's value
    is worse than the median of the finished runs' values at the same epoch (by more than
    ``tolerance``), once at least ``fallback_min_runs`` runs have finished; before that, never
    stop. It costs little, needs no model, and a run it lets through only adds to the data.

    ``decide`` is pure: the caller refits the predictor when runs finish and passes the finished
    curves (their last points are the finals unless ``finished_finals`` is given).
    """

    def __init__(
        self,
        predictor: LearningCurvePredictor | None = None,
        *,
        mode: Literal["max", "min"] = "max",
        k: int = 3,
        tolerance: float = 0.0,
        threshold: float = 0.05,
        min_finished: int = 10,
        min_epochs: int = 1,
        fallback_after: float = 0.1,
        fallback_min_runs: int = 3,
    ):
        self.predictor = predictor
        self.mode = mode
        self.k = k
        self.tolerance = tolerance
        self.threshold = threshold
        self.min_finished = min_finished
        self.min_epochs = min_epochs
        self.fallback_after = fallback_after
        self.fallback_min_runs = fallback_min_runs

    def validate(self) -> None:
        """Checks the settings; ``decide`` calls it. Errors name the setting and its value."""
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got mode={self.mode!r}")
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got k={self.k}")
        if self.tolerance < 0:
            raise ValueError(f"tolerance must be >= 0, got tolerance={self.tolerance}")
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got threshold={self.threshold}")
        if self.min_finished < 2:
            raise ValueError(f"min_finished must be >= 2, got min_finished={self.min_finished}")
        if not 0.0 <= self.fallback_after <= 1.0:
            raise ValueError(f"fallback_after must be in [0, 1], got {self.fallback_after}")

    def decide(
        self,
        curve: Sequence[float],
        config: Mapping[str, Any],
        finished_curves: Sequence[Sequence[float]],
        finished_finals: Sequence[float] | None = None,
    ) -> StopDecision:
        """Whether to stop the run with partial ``curve`` (epochs ``1..t``) and ``config``."""
        self.validate()
        t = len(curve)
        sign = 1.0 if self.mode == "max" else -1.0
        finals = (
            [float(c[-1]) for c in finished_curves]
            if finished_finals is None
            else [float(v) for v in finished_finals]
        )
        predictor = self.predictor
        use_model = (
            len(finals) >= self.min_finished
            and predictor is not None
            and hasattr(predictor, "models_")
            and t < predictor.horizon_
        )
        if not use_model:
            return self._fallback(curve, finished_curves, sign)
        ranked = sorted(finals, key=lambda v: -sign * v)
        bar = ranked[min(self.k, len(ranked)) - 1] - sign * self.tolerance
        prediction = predictor.predict(curve, config)
        probability = prediction.prob_above(bar) if sign > 0 else prediction.prob_below(bar)
        stop = t >= self.min_epochs and probability < self.threshold
        verb = "stop" if stop else "continue"
        return StopDecision(
            stop=stop,
            mean=prediction.mean,
            low=prediction.low,
            high=prediction.high,
            threshold=bar,
            probability=probability,
            reason=(
                f"{verb}: P(final {'>=' if sign > 0 else '<='} {bar:.4g}) = {probability:.3f}"
                f" {'<' if stop else '>='} {self.threshold} (top {self.k} of {len(finals)})"
            ),
        )

    def _fallback(
        self, curve: Sequence[float], finished_curves: Sequence[Sequence[float]], sign: float
    ) -> StopDecision:
        t = len(curve)
        peers = [float(c[t - 1]) for c in finished_curves if len(c) > t]
        if len(peers) < self.fallback_min_runs:
            return StopDecision(
                False, None, None, None, None, None, f"fallback: {len(peers)} finished runs"
            )
        horizon = max(len(c) for c in finished_curves)
        bar = float(np.median(peers)) - sign * self.tolerance
        value = float(curve[-1])
        stop = t >= max(self.min_epochs, self.fallback_after * horizon) and sign * (value - bar) < 0
        return StopDecision(
            stop=stop,
            mean=None,
            low=None,
            high=None,
            threshold=bar,
            probability=None,
            reason=(
                f"fallback {'stop' if stop else 'continue'}: value {value:.4g} vs median "
                f"{bar:.4g} of {len(peers)} finished runs at epoch {t}"
            ),
        )


# ---- helpers ---------------------------------------------------------------------------------
def _curve_matrix(curves: Sequence[Sequence[float]]) -> np.ndarray:
    lengths = {len(c) for c in curves}
    if len(lengths) > 1:
        raise CurveDataError(f"finished curves must have one length, got {sorted(lengths)}")
    try:
        y = np.asarray(curves, dtype=float)
    except (TypeError, ValueError) as error:
        raise CurveDataError(f"curves must be lists of numbers: {error}") from None
    if y.ndim != 2 or not np.isfinite(y).all():
        raise CurveDataError("curves must be lists of finite numbers")
    return y


def _check_fitted(estimator: object, attribute: str) -> None:
    if not hasattr(estimator, attribute):
        raise NotFittedError(f"{type(estimator).__name__} is not fitted; call fit first")
