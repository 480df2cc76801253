"""Learning-curve prediction and the early-stopping rule built on it.

In the spirit of Baker et al., "Accelerating Neural Architecture Search using Performance
Prediction" (2017): a run's final value is regressed on a summary of its partial curve (last
values, first and second differences, slope, noise) and on its hyperparameter and architecture
features, with one model per number of epochs seen. Past that paper, every prediction is a
calibrated predictive distribution, not a point:

- ``LearningCurvePredictor`` predicts, for a run seen for ``t`` epochs, the change still to
  come from the finished runs most like it at ``t`` (nearest neighbours in the curve summary
  and the config features, neighbourhood chosen by exact leave-one-out error). A regression
  that averages what similar runs did never extrapolates a trend past anything a finished run
  did, which keeps it sane on a dozen finished runs, where a linear model on two dozen
  features is not. A bounded metric is modelled through a ``MetricScale`` (the logit of an
  accuracy): near its bound an accuracy moves by ever smaller steps, and one spread for all
  runs would make a run at 0.99 as uncertain as one at 0.6. Leave-one-out errors divided by
  the neighbours' spread (with a floor of reading noise, stretched as sampling noise is near
  a bound, and widened for a run farther from its neighbours than finished runs are from
  theirs) are conformal scores; their empirical distribution (pooled over nearby ``t``)
  turns ``loc + spread * score`` into a predictive distribution whose intervals hold their
  coverage on new runs.
- ``StoppingRule`` stops a run at a rung epoch (``min_epochs`` times a power of
  ``rung_factor``, as in successive halving) when the best value it has reached is not among the
  best ``rung_keep`` of the runs seen at that epoch; and, from epoch ``model_from`` on, when the
  probability that it ends above the ``k``-th best final value finished so far, minus
  ``tolerance``, has been below ``threshold`` for ``patience`` epochs. Before
  ``min_finished`` runs have finished, the probability gives way to ranks among the runs seen
  so far, if told to (``fallback_keep`` below 1).

Everything here is plain numpy and scikit-learn-style objects: ``__init__`` stores settings,
``fit`` learns (state ends in ``_``) and returns ``self``. The Optuna pruner on top of this is
``nas.predictors.pruner.LearningCurvePruner``; ``nas.predictors.replay`` replays finished
curves to compare stopping rules.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
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


def prefix_summaries(curve: np.ndarray) -> np.ndarray:
    """``curve_summary`` of every prefix ``curve[:t]``, ``t = 1..len(curve)``, in one pass."""
    y = np.asarray(curve, dtype=float)
    length = len(y)
    t = np.arange(1, length + 1)
    cy = np.concatenate([[0.0], np.cumsum(y)])
    d1 = np.diff(y)
    cd = np.concatenate([[0.0], np.cumsum(d1)])
    cd2 = np.concatenate([[0.0], np.cumsum(d1**2)])
    out = np.zeros((length, len(CURVE_FEATURES)))
    out[:, 0] = y
    out[:, 1] = (cy[t] - cy[np.maximum(0, t - 3)]) / np.minimum(t, 3)
    out[:, 2] = np.maximum.accumulate(y)
    out[:, 3] = y[0]
    later = t > 1  # prefixes with at least one difference: d1[: t - 1]
    tl = t[later]
    out[later, 4] = d1[tl - 2]
    m3 = np.minimum(tl - 1, 3)
    out[later, 5] = (cd[tl - 1] - cd[tl - 1 - m3]) / m3
    half = tl // 2
    out[later, 7] = (y[tl - 1] - y[half - 1]) / (tl - half)
    longer = t > 2
    tl = t[longer]
    m4 = np.minimum(tl - 1, 4)
    out[longer, 6] = (d1[tl - 2] - d1[tl - 1 - m4]) / (m4 - 1)
    m5 = np.minimum(tl - 1, 5)
    mean = (cd[tl - 1] - cd[tl - 1 - m5]) / m5
    square = (cd2[tl - 1] - cd2[tl - 1 - m5]) / m5
    out[longer, 8] = np.sqrt(np.maximum(square - mean**2, 0.0))
    return out


# ---- one model per prefix length: nearest finished runs -------------------------------------
@dataclass(frozen=True)
class _PrefixModel:
    """Finished runs seen at prefix length ``t``: their standardised curve and config features,
    their final values, and the settings that predicted them best by leave-one-out error: the
    ``k`` nearest runs in ``curve distance + config_weight * config distance``, and the
    ``anchor`` (``ANCHORS``) that the neighbours' changes are added to. ``typical_distance``
    is the median distance of a finished run to its neighbours: a run farther from its
    neighbours than that gets a wider spread (``difficulty``)."""

    curve_center: np.ndarray
    curve_scale: np.ndarray
    curve_z: np.ndarray
    config_center: np.ndarray
    config_scale: np.ndarray
    config_z: np.ndarray
    change: np.ndarray  # final - anchor, per finished run
    anchor: int
    k: int
    config_weight: float
    typical_distance: float
    noise: float
    noise_factor: Callable[[np.ndarray], np.ndarray]

    @classmethod
    def fit(
        cls,
        curve_x: np.ndarray,
        config_x: np.ndarray,
        final: np.ndarray,
        noise: float,
        noise_factor: Callable[[np.ndarray], np.ndarray],
        ks: Sequence[int],
        config_weights: Sequence[float],
    ) -> tuple[_PrefixModel, np.ndarray]:
        """The model and the leave-one-out scores ``(final - mean) / scale`` of its runs."""
        n = len(final)
        curve_center, curve_scale, curve_z = _standardise(curve_x)
        config_center, config_scale, config_z = _standardise(config_x)
        weights = np.asarray(config_weights, dtype=float)
        distances = (
            _mean_sq_distances(curve_z, curve_z)[None]
            + weights[:, None, None] * (_mean_sq_distances(config_z, config_z)[None])
        )  # (weights, n, n)
        distances[:, np.arange(n), np.arange(n)] = math.inf
        orders = np.argsort(distances, axis=2, kind="stable")
        changes = final[:, None] - _anchors(curve_x)  # (n, anchors)
        best: tuple[float, int, int, int] = (math.inf, 0, 1, 0)
        for k in sorted({min(k, n - 1) for k in ks}):
            predicted = changes[orders[:, :, :k]].mean(axis=2)  # (weights, n, anchors)
            errors = ((changes[None] - predicted) ** 2).mean(axis=1)  # (weights, anchors)
            w, anchor = np.unravel_index(int(np.argmin(errors)), errors.shape)
            if errors[w, anchor] < best[0] - 1e-15:
                best = (float(errors[w, anchor]), int(anchor), k, int(w))
        _, anchor, k, w = best
        neighbours = orders[w, :, :k]
        change = changes[:, anchor]
        near = change[neighbours]
        mean = near.mean(axis=1)
        near_distance = np.take_along_axis(distances[w], neighbours, axis=1).mean(axis=1)
        typical = float(np.median(near_distance))
        typical = typical if typical > 1e-12 else 1.0
        scale = np.sqrt(near.var(axis=1) + (noise * noise_factor(curve_x[:, 0])) ** 2)
        scale *= difficulty(near_distance, typical)
        model = cls(
            curve_center, curve_scale, curve_z, config_center, config_scale, config_z,
            change, anchor, k, float(weights[w]), typical, noise, noise_factor,
        )  # fmt: skip
        return model, (change - mean) / scale

    def predict(self, curve_x: np.ndarray, config_x: np.ndarray) -> tuple[float, float]:
        """Mean and scale of the final value, from the ``k`` nearest finished runs."""
        distance = (((curve_x - self.curve_center) / self.curve_scale - self.curve_z) ** 2).mean(1)
        if self.config_weight and self.config_z.shape[1]:
            config_z = (config_x - self.config_center) / self.config_scale
            distance += self.config_weight * ((config_z - self.config_z) ** 2).mean(1)
        if self.k < len(distance):
            nearest = np.argpartition(distance, self.k - 1)[: self.k]
        else:
            nearest = np.arange(len(distance))
        near = self.change[nearest]
        mean, var = float(near.mean()), float(near.var())
        anchor = curve_x[self.anchor]  # ANCHORS are the first columns of the summary
        noise = self.noise * float(self.noise_factor(curve_x[0]))
        stretch = float(difficulty(distance[nearest].mean(), self.typical_distance))
        return float(anchor + mean), math.sqrt(var + noise**2) * stretch


ANCHORS = ("last", "mean_last3")


def _anchors(curve_x: np.ndarray) -> np.ndarray:
    """What the predicted change is added to: the last value or the mean of the last three
    (the first two columns of ``curve_summary``). Never nothing: a final value predicted
    directly as the neighbours' mean can never exceed the best finished run's, so a rule
    comparing with the best would stop every run that is about to beat it."""
    return curve_x[:, : len(ANCHORS)]


def difficulty(near_distance: Any, typical_distance: float) -> Any:
    """How much wider a prediction's spread is for a run whose ``k`` neighbours lie at mean
    squared distance ``near_distance``, against ``typical_distance``, that of a finished run
    to its own: the ratio of the root distances, never below 1 (normalised nearest-neighbour
    conformal scores, as in Papadopoulos et al., 2011). The finished runs of a search are
    mostly its survivors; a loser lies far from all of them, its neighbours' changes say
    less about its own, and without this its intervals would be too narrow."""
    return np.sqrt(np.maximum(1.0, np.asarray(near_distance) / typical_distance))


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


def curve_noise(
    curves: np.ndarray,
    finals: np.ndarray,
    tail: float = 0.2,
    noise_factor: Callable[[np.ndarray], np.ndarray] | None = None,
) -> float:
    """How far a finished run's final value still lands from where its curve was late on: the
    root mean square of ``final - curve[t]`` over the last ``tail`` of the epochs (at least
    one) of every finished run. A floor on the spread of any prediction: evaluation noise and
    last-minute moves that no model of the curve can foresee."""
    width = max(1, round(tail * curves.shape[1]))
    late = curves[:, -width - 1 : -1]
    factor = 1.0 if noise_factor is None else noise_factor(late)
    return float(np.sqrt(np.mean(((finals[:, None] - late) / factor) ** 2)))


# ---- predictive distribution ---------------------------------------------------------------------
@dataclass(frozen=True)
class MetricScale:
    """Where a bounded metric is modelled: ``logit`` of its position between finite ``low``
    and ``high`` (an accuracy near 1 moves by ever smaller steps, its error rate by similar
    factors), ``log`` of its distance to its one finite bound, or the metric itself when it
    has none. Values within ``margin`` of a bound are read as ``margin`` from it (half a step
    of a quantised metric: an accuracy of exactly 1 is finite there)."""

    low: float = -math.inf
    high: float = math.inf
    margin: float = 0.0

    def forward(self, values: Any) -> Any:
        v = np.asarray(values, dtype=float)
        lo, hi, m = self.low, self.high, self.margin
        if math.isfinite(lo) and math.isfinite(hi):
            u = np.clip((v - lo) / (hi - lo), m, 1.0 - m)
            return np.log(u) - np.log1p(-u)
        if math.isfinite(lo):
            return np.log(np.maximum(v - lo, m))
        if math.isfinite(hi):
            return -np.log(np.maximum(hi - v, m))
        return v

    def noise_factor(self, modelled: Any) -> Any:
        """How much a reading's noise is stretched where the metric is modelled, at
        ``modelled`` (``forward`` of the reading): a count-like metric's sampling noise, as
        an accuracy's binomial spread ``sqrt(u (1 - u))`` through the logit, or a Poisson-like
        spread through the log; 1 for a metric modelled as is."""
        z = np.asarray(modelled, dtype=float)
        lo, hi = self.low, self.high
        if math.isfinite(lo) and math.isfinite(hi):
            return np.exp(np.abs(z) / 2) + np.exp(-np.abs(z) / 2)  # 1 / sqrt(u (1 - u))
        if math.isfinite(lo):
            return np.exp(-z / 2)  # 1 / sqrt(value - low)
        if math.isfinite(hi):
            return np.exp(z / 2)  # 1 / sqrt(high - value)
        return np.ones_like(z)

    def inverse(self, values: Any) -> Any:
        z = np.asarray(values, dtype=float)
        lo, hi = self.low, self.high
        if math.isfinite(lo) and math.isfinite(hi):
            return lo + (hi - lo) * 0.5 * (1.0 + np.tanh(z / 2))  # the logistic, no overflow
        if math.isfinite(lo):
            return lo + np.exp(z)
        if math.isfinite(hi):
            return hi - np.exp(-z)
        return z


@dataclass(frozen=True)
class CurvePrediction:
    """A predictive distribution of a run's final value: ``scale.inverse(loc + spread * S)``
    where ``S`` follows the empirical distribution of the calibration ``scores`` (sorted) and
    ``scale`` (a ``MetricScale``) maps the metric to where it is modelled. ``mean`` is the
    centre ``scale.inverse(loc)``; ``low``/``high`` bound the central interval of probability
    ``level``. ``resolution`` is the metric's step (e.g. 1/300 for an accuracy on 300 samples;
    0 for a continuous metric): "above" a value means at least one step above it, read off the
    continuous distribution at half a step. Beyond ``bounds`` (the metric's possible range)
    there is no probability."""

    mean: float
    low: float
    high: float
    level: float
    loc: float
    spread: float
    scores: np.ndarray
    resolution: float = 0.0
    bounds: tuple[float, float] = (-math.inf, math.inf)
    scale: MetricScale = MetricScale()

    def covers(self, value: float) -> bool:
        """Whether the interval holds ``value``. A quantised metric's reading holds its step
        up to rounding (files often store 299/300 as 0.99667, a hair above the step ``high``
        computed as 299 times the learned resolution): it counts as inside when its nearest
        step is, i.e. within half a step of ``[low, high]``."""
        slack = self.resolution / 2
        return self.low - slack <= value <= self.high + slack

    def prob_above(self, value: float) -> float:
        """P(final > value), conservative by one calibration point (split-conformal style)."""
        cut = value + self.resolution / 2
        if cut > self.bounds[1]:
            return 0.0
        if cut <= self.bounds[0]:
            return 1.0
        z = (self._halfway(value, value + self.resolution) - self.loc) / self.spread
        above = len(self.scores) - int(np.searchsorted(self.scores, z, side="left"))
        return min(1.0, (above + 1) / (len(self.scores) + 1))

    def prob_below(self, value: float) -> float:
        """P(final < value), conservative in the same way."""
        cut = value - self.resolution / 2
        if cut < self.bounds[0]:
            return 0.0
        if cut >= self.bounds[1]:
            return 1.0
        z = (self._halfway(value, value - self.resolution) - self.loc) / self.spread
        below = int(np.searchsorted(self.scores, z, side="right"))
        return min(1.0, (below + 1) / (len(self.scores) + 1))

    def _halfway(self, value: float, step: float) -> float:
        """Half way from ``value`` to ``step``, where the distribution is modelled."""
        floor, ceiling = self.bounds
        ends = self.scale.forward([min(max(v, floor), ceiling) for v in (value, step)])
        return float(ends.mean())


def metric_resolution(values: np.ndarray) -> float:
    """The step of a quantised metric (an accuracy on ``n`` samples moves by ``1/n``), or 0.

    The smallest gap between distinct values is the step when the small gaps (up to 20 steps)
    are whole multiples of it, to a tenth of a step (stored values are often rounded); the step
    is then refined on all those gaps, so that many steps from 0 still land on the values.
    """
    distinct = np.unique(np.round(np.asarray(values, dtype=float).ravel(), 9))
    gaps = np.diff(distinct)
    if len(gaps) < 3:
        return 0.0
    step = float(gaps.min())
    small = gaps[gaps <= 20 * step]
    multiples = small / step
    whole = np.abs(multiples - np.round(multiples)) <= 0.1
    if whole.mean() < 0.95:
        return 0.0
    # the smallest gap of rounded values is off by the rounding: fit the step to all of them
    return float(small[whole].sum() / np.round(multiples[whole]).sum())


class LearningCurvePredictor:
    """Predicts a run's final value from its first epochs and its config, with an interval.

    ``fit(curves, configs, finals=None)`` takes finished runs: full curves of one length ``T``
    (``T >= 2``), their config dicts (any keys, see ``ConfigFeaturizer``), and optionally their
    final values (default: the last point of each curve). ``predict(curve, config)`` takes a
    partial curve of length ``1..T-1`` and returns a ``CurvePrediction``.

    For each prefix length ``t`` the model is a nearest-neighbour regression on the prefix's
    summary (``curve_summary``) and the config's features: the ``k`` finished runs nearest in
    ``curve distance + w * config distance`` (standardised features) give their mean change
    from an anchor (the last value or the mean of the last three) to their final
    value; ``k`` in ``ks``, ``w`` in ``config_weights`` and the anchor are picked by exact
    leave-one-out error. All of this happens where the metric is modelled (``scale_``, a
    ``MetricScale``: the logit of a metric bounded on both sides, e.g. an accuracy). The spread
    is that of those neighbours' changes together with a floor of reading noise, ``noise_``
    (how far finished runs' finals still land from their late values) times the
    ``MetricScale.noise_factor`` at the run's last value, stretched by ``difficulty`` for a
    run far from its neighbours. Leave-one-out errors divided by
    their spread are the conformal scores; pooled over prefix lengths within ``pool * T`` of
    ``t``, their empirical distribution gives the probabilities and the central interval of
    probability ``level``. ``bounds`` is the metric's possible range (``(0, 1)`` for an
    accuracy), if it has one; the step of a quantised metric is learned (``resolution_``), and
    a quantised metric's interval ends on its steps.
    """

    def __init__(
        self,
        *,
        level: float = 0.9,
        pool: float = 0.1,
        ks: Sequence[int] = (3, 5, 8, 12),
        config_weights: Sequence[float] = (0.0, 0.25, 0.5, 1.0),
        bounds: tuple[float, float] | None = None,
        featurizer: ConfigFeaturizer | None = None,
    ):
        self.level = level
        self.pool = pool
        self.ks = ks
        self.config_weights = config_weights
        self.bounds = bounds
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
        self.resolution_ = metric_resolution(np.concatenate([y.ravel(), final]))
        self.bounds_ = (-math.inf, math.inf) if self.bounds is None else tuple(self.bounds)
        if not self.bounds_[0] < self.bounds_[1]:
            raise ValueError(f"bounds must be (low, high) with low < high, got {self.bounds}")
        self.scale_ = _metric_scale(self.bounds_, self.resolution_)
        y, final = self.scale_.forward(y), self.scale_.forward(final)
        # at least the rounding noise of a quantised metric, and never 0: a few finished runs
        # that ended exactly where they were late on must not give a spread of 0
        rounding = self.resolution_ / math.sqrt(12) / (self.bounds_[1] - self.bounds_[0])
        noise = max(curve_noise(y, final, noise_factor=self.scale_.noise_factor), rounding, 1e-9)
        models, raw_scores = [], []
        for t in range(1, horizon):
            model, scores = _PrefixModel.fit(
                curve_summary(y[:, :t]),
                config_x,
                final,
                noise,
                self.scale_.noise_factor,
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
        summary = curve_summary(self.scale_.forward(y)[None, :])[0]
        return self._distribution(t, summary, self.featurizer_._row(config))

    def predict_prefixes(
        self, curve: Sequence[float], config: Mapping[str, Any]
    ) -> list[CurvePrediction]:
        """``predict`` for every prefix ``curve[:t]``, ``t = 1..min(len(curve), T-1)``."""
        _check_fitted(self, "models_")
        y = np.asarray(curve, dtype=float)[: self.horizon_ - 1]
        config_x = self.featurizer_._row(config)
        summaries = prefix_summaries(self.scale_.forward(y))
        return [self._distribution(t, summaries[t - 1], config_x) for t in range(1, len(y) + 1)]

    def score(
        self,
        curves: Sequence[Sequence[float]],
        configs: Sequence[Mapping[str, Any]],
        fraction: float = 0.25,
    ) -> dict[str, float]:
        """Quality on finished runs it was not fitted on: ``spearman``, the rank correlation of
        the means predicted from the first ``fraction`` of each curve with the true finals, and
        ``coverage``, how often the ``level`` interval held the final, over every prefix."""
        from scipy.stats import spearmanr

        _check_fitted(self, "models_")
        y = _curve_matrix(curves)
        t = min(self.horizon_ - 1, max(1, round(fraction * self.horizon_)))
        means, inside = [], []
        for curve, config in zip(y, configs, strict=True):
            predictions = self.predict_prefixes(curve[:-1], config)
            means.append(predictions[t - 1].mean)
            inside += [p.covers(curve[-1]) for p in predictions]
        return {
            "spearman": float(spearmanr(means, y[:, -1])[0]),
            "coverage": float(np.mean(inside)),
        }

    def _distribution(self, t: int, curve_x: np.ndarray, config_x: np.ndarray) -> CurvePrediction:
        loc, spread = self.models_[t - 1].predict(curve_x, config_x)
        scores = self.scores_[t - 1]
        lo, hi = _conformal_quantiles(scores, (1.0 - self.level) / 2.0)
        floor, ceiling = self.bounds_
        mean, low, high = (
            min(max(float(v), floor), ceiling)
            for v in self.scale_.inverse([loc, loc + spread * lo, loc + spread * hi])
        )
        if self.resolution_:  # a quantised final takes the step whose cell holds the bound
            low = self._snap(low, loc + spread * lo)
            high = self._snap(high, loc + spread * hi)
        return CurvePrediction(
            mean=mean,
            low=low,
            high=high,
            level=self.level,
            loc=loc,
            spread=spread,
            scores=scores,
            resolution=self.resolution_,
            bounds=self.bounds_,
            scale=self.scale_,
        )

    def _snap(self, value: float, modelled: float) -> float:
        """The step of the metric (a multiple of ``resolution_``) nearest to ``value`` where the
        distribution is modelled: the one whose cell, half way to each neighbour, holds
        ``modelled``."""
        step = self.resolution_
        if not math.isfinite(value):
            return value
        below = math.floor(value / step + 1e-9) * step
        above = below + step
        halfway = float(self.scale_.forward([below, above]).mean())
        floor, ceiling = self.bounds_
        return min(max(above if modelled >= halfway else below, floor), ceiling)


def _metric_scale(bounds: tuple[float, float], resolution: float) -> MetricScale:
    """The ``MetricScale`` of a metric with these bounds: values are read at least half a step
    (a thousandth of the range, or 1e-3, for a continuous metric) inside a bound."""
    low, high = bounds
    if math.isfinite(low) and math.isfinite(high):
        margin = resolution / (2 * (high - low)) if resolution else 1e-3
    else:
        margin = resolution / 2 if resolution else 1e-3
    return MetricScale(low, high, margin)


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
    interval (``None`` when a rank rule, the fallback or a rung, decided); ``threshold`` is the
    value the run is compared with (``k``-th best final minus tolerance, or the rank rule's
    bar; ``None`` when there is nothing to compare with yet); ``probability`` is P(final
    reaches ``threshold``) under the predictor (``None`` for a rank rule); ``reason`` says
    which rule decided and why.
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

    Two rules decide, the first that stops wins. At a *rung*, an epoch
    ``min_epochs * rung_factor ** i`` (1, 4, 16 by default; ``at_rung``), a run is stopped
    when its best value so far is not among the best ``rung_keep`` of those the runs seen so
    far (``peers``, at least ``fallback_peers`` of them) had reached by then: successive
    halving's rank rule, on the best value so far (``_standing``) rather than the value at the
    rung, which one noisy epoch can sink. Early on a run's own value ranks runs as well as a
    prediction from a few finished runs does, and a rung needs no finished runs. With
    ``fallback_peers`` at ``min_finished`` (5, the default) the first runs all finish
    unfiltered, the sample the predictor learns from; rungs from fewer peers on save more
    epochs, but the predictor then waits longer for its first finished runs and has never seen
    the late bloomers the rungs stopped (on real curves it stops the best run more often). At
    ``rung_keep=1`` there are no rung stops.

    Then, with at least ``min_finished`` finished runs and a fitted ``predictor``, a run is
    stopped at epoch ``t >= max(min_epochs, model_from)`` when, at each of its last
    ``patience`` epochs,

        P(final > k-th best finished final - tolerance) < threshold     (mode "max")
        P(final < k-th best finished final + tolerance) < threshold     (mode "min")

    under the predictor's calibrated distribution: "stop when the chance that this run ends
    above the current ``k``-th best (less ``tolerance``) is below ``threshold``, and has been
    for ``patience`` epochs in a row". Before epoch ``model_from`` (5 by default) the rungs
    alone stop runs: over the first few epochs the predicted final ranks runs no better than
    the value itself, and its probabilities, from few finished runs, are at their least
    reliable (on the mnist1d curves most of the model's stops of the true best run came at
    epochs 2 to 4). The threshold shrinks as the run gets on,
    ``threshold * (1 - decay * t / T)`` (``threshold_at``): a late stop saves few epochs for
    the same risk of losing a winner, and a run is judged every epoch, so a good run's
    probability dipping once below a fixed threshold late on is to be expected. "Above" means
    by at least one step of a quantised metric (``CurvePrediction``): tying the ``k``-th best
    does not change the top ``k``. With fewer than ``k`` finished runs the bar is the worst
    finished final. ``patience`` guards against one noisy reading: a run is judged every
    epoch, and one low probability among many readings is to be expected even of a good run.

    Before ``min_finished`` runs have finished (or with no fitted predictor) the rank rule
    ``fallback`` decides: stop when, at each of the last ``patience`` epochs, the run's best
    value so far is not among the best ``fallback_keep`` of those that the runs seen so far
    (``peers``, at least ``fallback_peers`` of them) had reached by that epoch. With
    ``fallback_keep=1`` it never stops a run (the rungs still do): a run stopped then does not
    shorten the wait for ``min_finished`` finished runs, and the first runs, filtered by nothing
    but the rungs, are the sample the predictor learns late bloomers from; the price is
    ``min_finished`` full runs. A keep fraction below 1 makes the wait cheaper, at the price of
    a sample filtered further.

    ``decide`` is pure: the caller refits ``predictor`` when runs finish (on the finished runs)
    and passes their final values.
    """

    def __init__(
        self,
        predictor: LearningCurvePredictor | None = None,
        *,
        mode: Literal["max", "min"] = "max",
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
    ):
        self.predictor = predictor
        self.mode = mode
        self.k = k
        self.tolerance = tolerance
        self.threshold = threshold
        self.patience = patience
        self.min_epochs = min_epochs
        self.model_from = model_from
        self.min_finished = min_finished
        self.fallback_keep = fallback_keep
        self.fallback_peers = fallback_peers
        self.decay = decay
        self.rung_factor = rung_factor
        self.rung_keep = rung_keep

    def validate(self) -> None:
        """Checks the settings; ``decide`` calls it. Errors name the setting and its value."""
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got mode={self.mode!r}")
        for name in ("k", "patience", "min_epochs", "model_from"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {name}={getattr(self, name)}")
        if self.min_finished < 2:
            raise ValueError(f"min_finished must be >= 2, got min_finished={self.min_finished}")
        if self.tolerance < 0:
            raise ValueError(f"tolerance must be >= 0, got tolerance={self.tolerance}")
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got threshold={self.threshold}")
        if not 0.0 <= self.decay <= 1.0:
            raise ValueError(f"decay must be in [0, 1], got decay={self.decay}")
        for name in ("fallback_keep", "rung_keep"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in (0, 1], got {name}={getattr(self, name)}")
        if self.rung_factor <= 1.0:
            raise ValueError(f"rung_factor must be > 1, got rung_factor={self.rung_factor}")
        if self.fallback_peers < 1:
            raise ValueError(
                f"fallback_peers must be >= 1, got fallback_peers={self.fallback_peers}"
            )

    def decide(
        self,
        curve: Sequence[float],
        config: Mapping[str, Any],
        finished_finals: Sequence[float],
        peers: Sequence[Sequence[float]] = (),
    ) -> StopDecision:
        """Whether to stop the run with partial ``curve`` (epochs ``1..t``) and ``config``,
        given the final values of the runs finished so far and, for the fallback, ``peers``:
        the curves (whole or cut short) of the other runs seen so far."""
        self.validate()
        rung = self.at_rung(curve, peers)
        if rung is not None:
            return rung
        t = len(curve)
        if not self.uses_model(t, len(finished_finals)):
            return self.fallback(curve, peers, len(finished_finals))
        predictor = self.predictor
        assert predictor is not None
        recent = [
            predictor.predict(curve[: t - back], config) for back in range(min(self.patience, t))
        ]
        return self.decide_from(t, recent, finished_finals)

    def fallback(
        self, curve: Sequence[float], peers: Sequence[Sequence[float]], n_finished: int
    ) -> StopDecision:
        """The rank rule used before ``min_finished`` runs have finished: stop at epoch ``t >=
        min_epochs`` when, at each of the last ``patience`` epochs, at least
        ``fallback_peers`` other runs reached that epoch and the run's best value by then is
        not among the best ``fallback_keep`` of theirs and its own (a run tied with the last
        kept value is kept)."""
        t = len(curve)
        sign = 1.0 if self.mode == "max" else -1.0
        waiting = f"fallback, {n_finished} of {self.min_finished} finished runs needed to fit"
        bars = []
        for epoch in range(t, max(0, t - self.patience), -1):
            bar = self._rank_bar(epoch, peers, self.fallback_keep)
            if bar is None:
                break
            bars.append(bar)
            if not self._standing(curve, epoch) < bar:
                break
        stop = (
            t >= self.min_epochs
            and len(bars) == self.patience
            and all(self._standing(curve, t - back) < bar for back, bar in enumerate(bars))
        )
        bar = sign * bars[0] if bars and math.isfinite(bars[0]) else None
        if stop:
            reason = (
                f"stop: {waiting}; value below the best {self.fallback_keep:.0%} of the runs "
                f"seen at each of the last {self.patience} epochs"
            )
        elif bar is None:
            reason = f"continue: {waiting}; fewer than {self.fallback_peers} runs to rank against"
        else:
            reason = f"continue: {waiting}; not below the best {self.fallback_keep:.0%} long enough"
        return StopDecision(
            stop=stop, mean=None, low=None, high=None, threshold=bar, probability=None,
            reason=reason,
        )  # fmt: skip

    def at_rung(
        self, curve: Sequence[float], peers: Sequence[Sequence[float]]
    ) -> StopDecision | None:
        """The rung rule's stop at epoch ``t = len(curve)``, or ``None`` when it does not stop
        the run there (``t`` is no rung, fewer than ``fallback_peers`` peers reached it, or
        the run's best value so far is among the best ``rung_keep`` of theirs and its own, a
        tie with the last kept value kept); the probability rule then decides."""
        t = len(curve)
        if self.rung_keep >= 1.0 or not self.is_rung(t):
            return None
        bar = self._rank_bar(t, peers, self.rung_keep)
        sign = 1.0 if self.mode == "max" else -1.0
        if bar is None or not self._standing(curve, t) < bar:
            return None
        return StopDecision(
            stop=True, mean=None, low=None, high=None, threshold=sign * bar, probability=None,
            reason=f"stop: rung at epoch {t}, value below the best {self.rung_keep:.0%} of the "
            "runs seen there",
        )  # fmt: skip

    def is_rung(self, t: int) -> bool:
        """Whether epoch ``t`` is ``min_epochs * rung_factor ** i`` (rounded) for some ``i``."""
        rung = float(self.min_epochs)
        while round(rung) < t:
            rung *= self.rung_factor
        return round(rung) == t

    def _rank_bar(self, epoch: int, peers: Sequence[Sequence[float]], keep: float) -> float | None:
        """The signed value (``-value`` when minimising) a run's best so far must reach by
        ``epoch`` to be among the best ``keep`` of the peers that reached it and itself (each
        ranked by its best by then); ``None`` with fewer than ``fallback_peers`` such peers,
        ``-inf`` when all are kept."""
        values = sorted((self._standing(p, epoch) for p in peers if len(p) >= epoch), reverse=True)
        if len(values) < self.fallback_peers:
            return None
        kept = math.ceil(keep * (len(values) + 1))
        return values[kept - 1] if kept <= len(values) else -math.inf

    def _standing(self, curve: Sequence[float], epoch: int) -> float:
        """What the rank rules rank a run by at ``epoch``: the best value it reached by then,
        signed (``-value`` when minimising). The value at one epoch is noisy (on the digits
        curves the best tenth of the runs lose accuracy in a quarter of their epochs, a point
        on average); the best so far is steadier."""
        best = max(curve[:epoch]) if self.mode == "max" else min(curve[:epoch])
        return (1.0 if self.mode == "max" else -1.0) * float(best)

    def uses_model(self, t: int, n_finished: int) -> bool:
        """Whether the decision at epoch ``t`` is the model's (else the fallback's)."""
        predictor = self.predictor
        return (
            n_finished >= self.min_finished
            and predictor is not None
            and hasattr(predictor, "models_")
            and t < predictor.horizon_
        )

    def threshold_at(self, t: int) -> float:
        """``threshold`` at epoch ``t`` of ``T``: ``threshold * (1 - decay * t / T)``. A late
        stop saves few epochs, for the same risk of losing a run that would have won."""
        horizon = getattr(self.predictor, "horizon_", None)
        if not self.decay or not horizon:
            return self.threshold
        return self.threshold * (1.0 - self.decay * t / horizon)

    def bar(self, finished_finals: Sequence[float]) -> float:
        """The value a run must reach: ``k``-th best finished final, minus ``tolerance``."""
        sign = 1.0 if self.mode == "max" else -1.0
        ranked = sorted((float(v) for v in finished_finals), key=lambda v: -sign * v)
        return ranked[min(self.k, len(ranked)) - 1] - sign * self.tolerance

    def decide_from(
        self, t: int, recent: Sequence[CurvePrediction], finished_finals: Sequence[float]
    ) -> StopDecision:
        """The model's decision at epoch ``t`` from the predictions made at epochs ``t``,
        ``t-1``, ... (newest first; ``decide`` makes them, a caller that already has them, such
        as a replay, passes them)."""
        above = self.mode == "max"
        bar = self.bar(finished_finals)
        probabilities = [
            p.prob_above(bar) if above else p.prob_below(bar) for p in recent[: self.patience]
        ]
        threshold = self.threshold_at(t)
        first = max(self.min_epochs, self.model_from)
        low = len(probabilities) == self.patience and max(probabilities) < threshold
        stop = low and t >= first
        prediction, probability = recent[0], probabilities[0]
        waiting = f", but the model stops no run before epoch {first}" if low and not stop else ""
        return StopDecision(
            stop=stop,
            mean=prediction.mean,
            low=prediction.low,
            high=prediction.high,
            threshold=bar,
            probability=probability,
            reason=(
                f"{'stop' if stop else 'continue'}: P(final {'>' if above else '<'} "
                f"{bar:.4g}) = {probability:.3f} {'<' if low else '>='} {threshold:.3g}"
                f"{f' for {self.patience} epochs' if low and self.patience > 1 else ''}"
                f" (top {self.k} of {len(finished_finals)} finished runs){waiting}"
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
