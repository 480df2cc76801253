"""An Optuna search space (parameter name -> distribution) as the grid the search runs on.

The search runs NSGA-II over integer vectors, so every parameter must have finitely many
values: categorical choices, integers (with their step) and floats with a step. A config is
``{name: index of the value}``; ``params`` and ``config`` translate to and from the values a
trial holds. Features scale numbers to [0, 1] (on a log scale where the distribution is log),
numeric categorical choices too (kernel sizes, widths: their order is what a regressor can use,
and one feature per parameter keeps a Gaussian process's length scales few), and one-hot the
other categorical choices, which have no order.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import numpy as np
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

Config = dict[str, int]
#: When an optional parameter is absent (define-by-run spaces: ``if depth > 1:
#: trial.suggest_...``): the parameter it depends on and the value indices of that parameter
#: with which it was absent in every trial.
Condition = tuple[str, frozenset[int]]


def grid(name: str, distribution: BaseDistribution) -> tuple[Any, ...]:
    """Every value ``distribution`` can take, in order; a clear error for a continuous one."""
    if isinstance(distribution, CategoricalDistribution):
        return tuple(distribution.choices)
    if isinstance(distribution, IntDistribution):
        return tuple(range(distribution.low, distribution.high + 1, distribution.step))
    if isinstance(distribution, FloatDistribution) and distribution.step is not None:
        low, step = distribution.low, distribution.step
        count = int(round((distribution.high - low) / step)) + 1
        return tuple(float(round(low + i * step, 12)) for i in range(count))
    raise ValueError(
        f"parameter '{name}' has distribution {distribution!r}, which the predictor-guided "
        "sampler cannot search: it needs finitely many values (suggest_categorical, "
        "suggest_int, or suggest_float with step=...)"
    )


class DistributionSpace:
    """The grid of an Optuna search space, with what ``PredictiveStep`` needs of a space.

    ``optional`` parameters may be missing from a trial (a define-by-run space); a missing one
    takes its first value. Those with a ``Condition`` are absent where it says so: they take
    their first value there whatever the vector holds (so configs that differ only in absent
    parameters are one config), and their features are zero with a 0/1 presence feature.
    """

    def __init__(
        self,
        distributions: Mapping[str, BaseDistribution],
        optional: Collection[str] = (),
        conditions: Mapping[str, Condition] | None = None,
    ):
        self.distributions = dict(sorted(distributions.items()))
        self.grids = {name: grid(name, d) for name, d in self.distributions.items()}
        self.optional = frozenset(optional)
        self.conditions = dict(conditions or {})

    @classmethod
    def learned(
        cls, distributions: Mapping[str, BaseDistribution], trials: Sequence[Mapping[str, Any]]
    ) -> DistributionSpace:
        """The space with the optional parameters of ``trials`` (their params) and, for each,
        a condition on a parameter every trial has: the first, by name, whose values in the
        trials without the optional one never occur in the trials with it."""
        plain = cls(distributions)
        always = [n for n in plain.grids if all(n in params for params in trials)]
        optional = [n for n in plain.grids if n not in always]
        conditions = {}
        for name in optional:
            for parent in always:
                indices = {
                    with_it: {
                        plain.index(parent, p[parent]) for p in trials if (name in p) == with_it
                    }
                    for with_it in (True, False)
                }
                if None not in indices[False] and not indices[True] & indices[False]:
                    conditions[name] = (parent, frozenset(indices[False]))
                    break
        return cls(distributions, optional, conditions)

    def __eq__(self, other: object) -> bool:
        """Equal spaces have the same configs (so a queue of proposals stays valid)."""
        return isinstance(other, DistributionSpace) and (
            (self.distributions, self.optional, self.conditions)
            == (other.distributions, other.optional, other.conditions)
        )

    def present(self, config: Mapping[str, int], name: str) -> bool:
        """Whether a config has ``name`` (by its condition; without one, it has)."""
        if name not in self.conditions:
            return True
        parent, absent = self.conditions[name]
        return config[parent] not in absent

    def index(self, name: str, value: Any) -> int | None:
        """The grid index of a parameter's value; ``None`` when it is off the grid."""
        return _index(self.grids[name], self.distributions[name], value)

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        return (
            np.zeros(len(self.grids), dtype=np.int64),
            np.array([len(g) - 1 for g in self.grids.values()], dtype=np.int64),
        )

    def encode(self, config: Mapping[str, int]) -> np.ndarray:
        return np.array([config[name] for name in self.grids], dtype=np.int64)

    def decode(self, vector: Sequence[int] | np.ndarray) -> Config:
        return self._canonical({name: int(i) for name, i in zip(self.grids, vector, strict=True)})

    def sample(self, rng: np.random.Generator) -> Config:
        return self._canonical({name: int(rng.integers(len(g))) for name, g in self.grids.items()})

    def features(self, config: Mapping[str, int]) -> np.ndarray:
        parts: list[float] = []
        for name in self.distributions:
            values = self._value_features(name, config[name])
            if name in self.conditions:
                present = float(self.present(config, name))
                values = [present, *(present * v for v in values)]
            parts += values
        return np.array(parts, dtype=np.float64)

    def _value_features(self, name: str, index: int) -> list[float]:
        distribution, values = self.distributions[name], self.grids[name]
        if isinstance(distribution, CategoricalDistribution) and _numbers(values):
            return [_scaled_number(values[index], values)]
        if isinstance(distribution, CategoricalDistribution) and len(values) > 2:
            return [float(index == i) for i in range(len(values))]
        if isinstance(distribution, CategoricalDistribution):
            return [float(index)]
        return [_scaled(values[index], distribution)]

    def _canonical(self, config: Config) -> Config:
        return {name: i if self.present(config, name) else 0 for name, i in config.items()}

    def params(self, config: Mapping[str, int]) -> dict[str, Any]:
        """The values a trial takes for ``config``."""
        return {name: self.grids[name][config[name]] for name in self.grids}

    def config(self, params: Mapping[str, Any]) -> Config | None:
        """The config of a trial's ``params``; ``None`` when a parameter that is not optional
        is missing, or one is off the grid (a trial from before the space changed)."""
        config = {}
        for name in self.distributions:
            if name not in params:
                if name not in self.optional:
                    return None
                config[name] = 0
            elif (index := self.index(name, params[name])) is not None:
                config[name] = index
            else:
                return None
        return self._canonical(config)


def _numbers(values: tuple[Any, ...]) -> bool:
    return all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)


def _scaled_number(value: float, values: tuple[float, ...]) -> float:
    low, high = min(values), max(values)
    return (value - low) / (high - low) if high > low else 0.0


def _scaled(value: float, distribution: IntDistribution | FloatDistribution) -> float:
    low, high = float(distribution.low), float(distribution.high)
    if high == low:
        return 0.0
    if distribution.log:
        return math.log(value / low) / math.log(high / low)
    return (value - low) / (high - low)


def _index(values: tuple[Any, ...], distribution: BaseDistribution, value: Any) -> int | None:
    if isinstance(distribution, CategoricalDistribution):
        return values.index(value) if value in values else None
    step = distribution.step  # type: ignore[attr-defined]
    index = int(round((value - distribution.low) / step))  # type: ignore[attr-defined]
    if 0 <= index < len(values) and math.isclose(values[index], value, abs_tol=1e-9 * step):
        return index
    return None
