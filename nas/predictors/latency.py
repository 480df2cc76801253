"""Latency of a subnet on one hardware target, from a lookup table of its layers' latencies.

Every distinct layer a subnet can contain (named by the search space's layer signature) is
measured once, alone, on the target. A subnet's latency is then the sum over its layers,
corrected by a linear regression fitted on whole subnets measured on the same target: what the
table misses (per-call overhead counted once per layer, caches warm or cold from the layer
before, work a runtime fuses across layers) is close to a share of the sum plus a cost per
layer. The regression minimises relative error (weights ``1 / latency**2``), the measure the
predictor is judged by, so that fast subnets count as much as slow ones.

``LatencyPredictor`` follows scikit-learn's habits: ``__init__`` stores, ``fit`` returns
``self``, learned state ends in ``_``, ``score`` judges it on subnets it was not fitted on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from sklearn.linear_model import LinearRegression
from sklearn.model_selection import KFold

from nas.predictors.surrogate import rank_scores
from search_spaces import Config, SearchSpace

#: Below this many measured subnets the correction is one scale factor, not a regression.
MIN_SUBNETS_FOR_REGRESSION = 4


def latency_scores(predicted: Sequence[float], measured: Sequence[float]) -> dict[str, float]:
    """Share of predictions within 10% of the measurement, mean absolute percentage error,
    rank correlations and absolute error."""
    predicted, measured = np.asarray(predicted, float), np.asarray(measured, float)
    relative = np.abs(predicted / measured - 1.0)
    return {
        "within_10": float(np.mean(relative <= 0.10)),
        "mape": float(np.mean(relative)),
        **rank_scores(predicted, measured),
    }


class LatencyPredictor:
    """Sum of a lookup table's layer latencies over a subnet, with a learned correction.

    ``table`` maps the space's layer signatures (for samples of ``input_shape``) to latencies
    in milliseconds on one target; it must hold every layer of the configs it is asked about.
    """

    def __init__(self, space: SearchSpace, table: Mapping[str, float], input_shape: Sequence[int]):
        self.space = space
        self.table = table
        self.input_shape = input_shape

    def table_features(self, configs: Sequence[Config]) -> np.ndarray:
        """Per config: the table's sum over its layers, and its number of layers."""
        rows = []
        for config in configs:
            layers = self.space.layers(config, self.input_shape)
            missing = [s for s in layers if s not in self.table]
            if missing:
                raise ValueError(
                    f"layer {missing[0]} is not in the latency table ({len(self.table)} layers)"
                )
            rows.append([sum(self.table[s] for s in layers), len(layers)])
        return np.array(rows, dtype=float).reshape(-1, 2)

    def fit(self, configs: Sequence[Config], latencies: Sequence[float]) -> LatencyPredictor:
        """Fit the correction on measured whole subnets (milliseconds)."""
        x, y = self.table_features(configs), np.asarray(latencies, float)
        if len(y) == 0 or len(y) != len(x):
            raise ValueError(f"need one latency per config, got {len(y)} for {len(x)} configs")
        if np.any(y <= 0):
            raise ValueError(f"latencies must be positive, got min={y.min()}")
        if len(y) >= MIN_SUBNETS_FOR_REGRESSION:
            line = LinearRegression().fit(x, y, sample_weight=1.0 / y**2)
            self.coef_, self.intercept_ = line.coef_, float(line.intercept_)
        else:  # too few to fit a line: one scale factor, the median ratio
            self.coef_, self.intercept_ = np.array([np.median(y / x[:, 0]), 0.0]), 0.0
        self.n_fitted_ = len(y)
        return self

    def predict(self, configs: Sequence[Config]) -> np.ndarray:
        if not hasattr(self, "coef_"):
            raise RuntimeError("LatencyPredictor is not fitted yet; call fit() first")
        x = self.table_features(configs)
        # a line fitted on noisy measurements may cross zero far out; a latency cannot
        return np.maximum(x @ self.coef_ + self.intercept_, 0.1 * x[:, 0])

    def score(self, configs: Sequence[Config], latencies: Sequence[float]) -> dict[str, float]:
        """``latency_scores`` on subnets this predictor was not fitted on."""
        return latency_scores(self.predict(configs), latencies)

    def cross_validated_scores(
        self, configs: Sequence[Config], latencies: Sequence[float], folds: int = 5, seed: int = 0
    ) -> dict[str, float]:
        """``latency_scores`` of predictions each made by a fit that had not seen the subnet
        (k-fold; leave-one-out when there are fewer subnets than folds)."""
        y = np.asarray(latencies, float)
        if len(y) < 2:
            raise ValueError(f"need at least 2 measured subnets to cross-validate, got {len(y)}")
        predicted = np.empty_like(y)
        splitter = KFold(min(folds, len(y)), shuffle=True, random_state=seed)
        for train, test in splitter.split(y):
            fold = LatencyPredictor(self.space, self.table, self.input_shape)
            fold.fit([configs[i] for i in train], y[train])
            predicted[test] = fold.predict([configs[i] for i in test])
        return latency_scores(predicted, y)
