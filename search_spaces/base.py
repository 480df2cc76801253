"""The contracts every search space and supernet follow, and the registry that names them.

A config is plain data: ``{dimension name: chosen value}``. The same dict is sampled, stored,
sent to workers and exported, so it must stay JSON-serialisable.
"""

from __future__ import annotations

import fnmatch
import inspect
import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import Tensor, nn

Config = dict[str, int]


class ConfigError(ValueError):
    """A config, a dimension name or a choice that the search space does not have."""


@dataclass(frozen=True)
class Dimension:
    """One architectural decision with a finite, ordered set of integer choices."""

    name: str
    choices: tuple[int, ...]

    def index(self, value: int) -> int:
        """Position of ``value`` among the choices (the integer pymoo searches over)."""
        try:
            return self.choices.index(value)
        except ValueError:
            raise ConfigError(
                f"value {value!r} is not a choice of dimension '{self.name}'; "
                f"allowed: {list(self.choices)}"
            ) from None


def layer_signature(layer: Mapping[str, Any]) -> str:
    """A layer's plain description as its signature: canonical JSON (sorted keys, no spaces)."""
    return json.dumps(layer, sort_keys=True, separators=(",", ":"))


class SearchSpace(ABC):
    """A named set of dimensions plus the supernet that runs every config of it.

    Subclasses pass their full ``dimensions`` (ordered) and the user's ``choices`` (a narrowing,
    ``{pattern: allowed values}``) to ``__init__`` and implement ``is_active``,
    ``build_supernet`` and ``describe``; sampling, encoding and validation are shared here so
    that every space behaves the same way.
    """

    name: str = ""

    def __init__(
        self,
        dimensions: Sequence[Dimension],
        choices: Mapping[str, Sequence[int]] | None = None,
    ):
        self.dimensions: tuple[Dimension, ...] = tuple(dimensions)
        self._by_name = {d.name: d for d in self.dimensions}
        if choices:
            narrowed = self.restrict(choices)
            self.dimensions = tuple(
                Dimension(d.name, narrowed.get(d.name, d.choices)) for d in self.dimensions
            )
            self._by_name = {d.name: d for d in self.dimensions}

    # ---- what each space must say -------------------------------------------------------
    @abstractmethod
    def is_active(self, config: Mapping[str, int], dimension: str) -> bool:
        """Whether ``dimension`` changes the network under ``config`` (not a block past depth)."""

    @abstractmethod
    def build_supernet(self, **kwargs: Any) -> Supernet:
        """A freshly initialised supernet that can run every config of this space."""

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """The constructor arguments that rebuild this space (stored with jobs, sent to workers)."""

    @classmethod
    def data_kwargs(cls, input_shape: Sequence[int], num_classes: int) -> dict[str, Any]:
        """Constructor arguments that size this space for a dataset: samples of
        ``input_shape`` (without the batch) in ``num_classes`` classes."""
        return {"input_shape": [int(n) for n in input_shape], "num_classes": int(num_classes)}

    def check_input_shape(self, input_shape: Sequence[int]) -> None:
        """Raise ``ConfigError`` if this space's networks cannot take samples of this shape
        (by default any shape passes, and the first forward pass is the check)."""
        return None

    # ---- layers, for latency lookup tables (optional) --------------------------------------
    def layers(self, config: Mapping[str, int], input_shape: Sequence[int]) -> list[str]:
        """Signatures of the layers ``config``'s subnet runs on samples of ``input_shape``.

        A signature is a string naming one layer's whole computation (its kind and every shape
        that sets its cost): equal signatures cost the same, which is what lets a latency
        predictor measure each once and sum them over a subnet.
        """
        raise NotImplementedError(f"search space '{self.name}' does not describe its layers")

    def describes_layers(self) -> bool:
        """Whether this space gives layer signatures (what a latency lookup table needs)."""
        return type(self).layers is not SearchSpace.layers

    def all_layers(self, input_shape: Sequence[int]) -> list[str]:
        """Every signature that some config's subnet contains, each once, in a fixed order."""
        raise NotImplementedError(f"search space '{self.name}' does not describe its layers")

    def build_layer(self, signature: str) -> tuple[nn.Module, tuple[int, ...]]:
        """A freshly initialised module computing one layer, and its one-sample input shape."""
        raise NotImplementedError(f"search space '{self.name}' does not describe its layers")

    # ---- shared behaviour -----------------------------------------------------------------
    def restrict(self, choices: Mapping[str, Sequence[int]]) -> dict[str, tuple[int, ...]]:
        """Resolve ``{pattern: allowed values}`` into per-dimension choices.

        Patterns are shell-style (``kernel.*``); each must match at least one dimension and
        each value must be one of the matched dimension's choices.
        """
        resolved: dict[str, tuple[int, ...]] = {}
        for pattern, allowed in choices.items():
            names = [d.name for d in self.dimensions if fnmatch.fnmatchcase(d.name, pattern)]
            if not names:
                raise ConfigError(
                    f"unknown dimension '{pattern}' for search space '{self.name}'; "
                    f"dimensions: {self.dimension_summary()}"
                )
            if not allowed:
                raise ConfigError(f"dimension '{pattern}' is given no choices")
            for name in names:
                for value in allowed:
                    self._by_name[name].index(value)
                resolved[name] = tuple(sorted(set(allowed)))
        return resolved

    def dimension_summary(self) -> str:
        """The dimension names, shortened to one pattern per family for error messages."""
        families = sorted({d.name.split(".")[0] for d in self.dimensions})
        return ", ".join(f"{f}.*" if f not in self._by_name else f for f in families)

    def validate(self, config: Mapping[str, Any]) -> Config:
        """Return ``config`` as a clean dict, or raise ``ConfigError`` naming the bad dimension."""
        if not isinstance(config, Mapping):
            raise ConfigError(f"a config must be a mapping of dimension to value, got {config!r}")
        unknown = sorted(set(config) - set(self._by_name))
        if unknown:
            raise ConfigError(
                f"unknown dimension '{unknown[0]}' for search space '{self.name}'; "
                f"dimensions: {self.dimension_summary()}"
            )
        missing = [d for d in self.dimensions if d.name not in config]
        if missing:
            raise ConfigError(
                f"config is missing dimension '{missing[0].name}'; "
                f"allowed: {list(missing[0].choices)}"
            )
        for d in self.dimensions:
            d.index(config[d.name])
        return {d.name: int(config[d.name]) for d in self.dimensions}

    def canonical(self, config: Mapping[str, int]) -> Config:
        """The same network with inactive dimensions set to their first choice, so it dedupes."""
        config = self.validate(config)
        return {
            d.name: config[d.name] if self.is_active(config, d.name) else d.choices[0]
            for d in self.dimensions
        }

    def sample(self, rng: np.random.Generator) -> Config:
        """A uniformly random config, drawn from the caller's generator."""
        return self.canonical({d.name: int(rng.choice(d.choices)) for d in self.dimensions})

    def max(self) -> Config:
        """The largest config: the last choice of every dimension."""
        return {d.name: d.choices[-1] for d in self.dimensions}

    def min(self) -> Config:
        """The smallest config: the first choice of every dimension."""
        return self.canonical({d.name: d.choices[0] for d in self.dimensions})

    def encode(self, config: Mapping[str, int]) -> np.ndarray:
        """Config -> integer vector of choice indices, in dimension order."""
        config = self.validate(config)
        return np.array([d.index(config[d.name]) for d in self.dimensions], dtype=np.int64)

    def decode(self, vector: Sequence[int] | np.ndarray) -> Config:
        """Integer vector of choice indices -> canonical config."""
        if len(vector) != len(self.dimensions):
            raise ConfigError(
                f"encoding has {len(vector)} entries; space '{self.name}' has "
                f"{len(self.dimensions)} dimensions"
            )
        config = {}
        for d, i in zip(self.dimensions, vector, strict=True):
            if int(i) != i:
                raise ConfigError(f"index {i!r} for dimension '{d.name}' is not an integer")
            if not 0 <= int(i) < len(d.choices):
                raise ConfigError(f"index {int(i)} is out of range for dimension '{d.name}'")
            config[d.name] = d.choices[int(i)]
        return self.canonical(config)

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Lower and upper bounds of the integer encoding (inclusive), for pymoo."""
        return (
            np.zeros(len(self.dimensions), dtype=np.int64),
            np.array([len(d.choices) - 1 for d in self.dimensions], dtype=np.int64),
        )

    def features(self, config: Mapping[str, int]) -> np.ndarray:
        """Predictor features: each value scaled to [0, 1] in its choices, inactive ones as -1."""
        config = self.validate(config)
        return np.array(
            [
                d.index(config[d.name]) / max(len(d.choices) - 1, 1)
                if self.is_active(config, d.name)
                else -1.0
                for d in self.dimensions
            ],
            dtype=np.float64,
        )


class Supernet(nn.Module, ABC):
    """A weight-sharing network that runs any config of its space.

    ``forward(x, config)`` runs the subnet chosen by ``config`` and never changes the module's
    structure; ``extract(config)`` copies that subnet's weights into a static network.
    """

    space: SearchSpace

    @abstractmethod
    def forward(self, x: Tensor, config: Mapping[str, int]) -> Tensor: ...

    @abstractmethod
    def extract(self, config: Mapping[str, int]) -> nn.Module:
        """A static ``nn.Module`` with copied weights, equal to ``forward(x, config)`` in eval.

        The static network's class lives in a module that imports only torch and defines
        ``load(directory)``; the network carries its description as a plain ``arch`` dict. That
        is what lets an export run without this project.
        """

    @abstractmethod
    def macs(self, config: Mapping[str, int]) -> int:
        """Exact multiply-accumulates of one sample through the subnet."""

    def params(self, config: Mapping[str, int]) -> int:
        """Exact parameter count of the subnet (the extracted network's parameters)."""
        return sum(p.numel() for p in self.extract(config).parameters())

    def blocks(self) -> list[nn.Module]:
        """The repeated elastic blocks, each called with a tensor and plain integer sizes: the
        parts that ``torch.compile(dynamic=True)`` can compile once for every config."""
        return []


_REGISTRY: dict[str, Callable[..., SearchSpace]] = {}


def register_space(name: str) -> Callable[[type[SearchSpace]], type[SearchSpace]]:
    """Class decorator: make a search space available by ``name``; a duplicate name fails."""

    def add(cls: type[SearchSpace]) -> type[SearchSpace]:
        if name in _REGISTRY:
            raise ValueError(f"search space '{name}' is already registered")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return add


def registered_spaces() -> list[str]:
    """Names of every registered search space."""
    return sorted(_REGISTRY)


def space_type(name: str) -> Callable[..., SearchSpace]:
    """The search space class registered under ``name``."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(
            f"unknown search space '{name}'; registered: {', '.join(registered_spaces())}"
        ) from None


def get_space(name: str, **kwargs: Any) -> SearchSpace:
    """Build the search space registered under ``name``; an option it does not take fails."""
    factory = space_type(name)
    options = inspect.signature(factory).parameters
    unknown = sorted(set(kwargs) - set(options))
    if unknown:
        raise ConfigError(
            f"search space '{name}' has no option '{unknown[0]}'; options: {', '.join(options)}"
        )
    return factory(**kwargs)
