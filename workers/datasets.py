"""Datasets that need no download: generated (mnist1d) or shipped with a package (digits).

Each loader returns the same ``Splits``: a training part, a validation part (used for early
stopping and subnet selection; carved from the training data, or freshly generated for a
generated dataset) and the package's own test split (used only to report accuracy).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np


@dataclass(frozen=True)
class Splits:
    """float32 inputs ``(n, length)`` and int64 labels for train, validation and test."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    @property
    def input_length(self) -> int:
        return int(self.x_train.shape[1])

    @property
    def num_classes(self) -> int:
        return int(max(self.y_train.max(), self.y_test.max()) + 1)


def _mnist1d() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from mnist1d.data import get_dataset_args, make_dataset

    data = make_dataset(get_dataset_args())  # generated locally, with the package's fixed seed
    return data["x"], data["y"], data["x_test"], data["y_test"]


def _more_mnist1d(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` fresh mnist1d samples from the same generator, drawn with another seed."""
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples, args.train_split, args.seed = count, 1.0, seed
    data = make_dataset(args)
    return data["x"], data["y"]


def _digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.2, random_state=0, stratify=y
    )
    return x_train, y_train, x_test, y_test


LOADERS: dict[str, Callable[[], tuple[np.ndarray, ...]]] = {"mnist1d": _mnist1d, "digits": _digits}

#: Datasets that can generate fresh samples on demand: ``(count, seed) -> (x, y)``.
GENERATORS: dict[str, Callable[[int, int], tuple[np.ndarray, np.ndarray]]] = {
    "mnist1d": _more_mnist1d
}

#: Generated validation samples use seeds from here on, far from any package's own seed.
GENERATED_SEED_BASE = 1_000_003


def dataset_names() -> list[str]:
    return sorted(LOADERS)


def generated_dataset_names() -> list[str]:
    return sorted(GENERATORS)


@lru_cache(maxsize=4)
def load_dataset(
    name: str, val_fraction: float = 0.2, split_seed: int = 0, val_samples: int | None = None
) -> Splits:
    """Load ``name`` with a validation part that never overlaps training or test data.

    With ``val_samples`` (generated datasets only) the validation part is that many freshly
    generated samples and the whole training split trains: a larger validation set ranks
    subnets more reliably than a fifth of a small training split. Otherwise ``val_fraction``
    of the training split is carved off (seeded, stratified).
    """
    if name not in LOADERS:
        raise ValueError(f"unknown dataset '{name}'; available: {', '.join(dataset_names())}")
    if val_samples is not None and name not in GENERATORS:
        raise ValueError(
            f"dataset '{name}' is not generated, so val_samples cannot be used; "
            f"generated: {', '.join(sorted(GENERATORS))}"
        )
    x, y, x_test, y_test = LOADERS[name]()
    if val_samples is not None:
        x_val, y_val = GENERATORS[name](val_samples, GENERATED_SEED_BASE + split_seed)
        x_train, y_train = x, y
    else:
        rng = np.random.default_rng(split_seed)
        val_mask = np.zeros(len(y), dtype=bool)
        for label in np.unique(y):
            members = np.flatnonzero(y == label)
            chosen = rng.choice(members, size=round(len(members) * val_fraction), replace=False)
            val_mask[chosen] = True
        x_train, y_train, x_val, y_val = x[~val_mask], y[~val_mask], x[val_mask], y[val_mask]
    as_x = lambda a: np.ascontiguousarray(a, dtype=np.float32)  # noqa: E731
    as_y = lambda a: np.ascontiguousarray(a, dtype=np.int64)  # noqa: E731
    return Splits(
        as_x(x_train), as_y(y_train), as_x(x_val), as_y(y_val), as_x(x_test), as_y(y_test)
    )
