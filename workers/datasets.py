"""Datasets that need no download: generated (mnist1d), shipped with a package (digits), or
the user's own (an ImageFolder directory, or tensors returned by a function named by import
path).

Each loader returns the same ``Splits``: a training part, a validation part (used for early
stopping and subnet selection; carved from the training data, or freshly generated for a
generated dataset) and a test split (the package's own, the folder's ``test/``, the function's,
or else a fifth held out with a fixed seed; used only to report accuracy).

Samples are float32 arrays: signals ``(n, length)`` or images ``(n, channels, height, width)``
with pixel values in [0, 1] (digits as images keep their 0..16 scale; every supernet normalises
its input with the training data's mean and standard deviation).
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

#: Image files an ImageFolder directory may hold (read with Pillow).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
#: ``package.module:function``
SOURCE_PATTERN = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
TEST_FRACTION = 0.2


class DatasetError(ValueError):
    """A dataset that cannot be loaded: unknown name, missing folder, bad tensors."""


@dataclass(frozen=True)
class Splits:
    """float32 inputs ``(n, *sample_shape)`` and int64 labels for train, validation and test."""

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
    def input_shape(self) -> tuple[int, ...]:
        """One sample's shape, without the batch."""
        return tuple(int(n) for n in self.x_train.shape[1:])

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


def _hold_out_test(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, ...]:
    """A fifth of the samples as the test split, stratified, always with the same seed."""
    from sklearn.model_selection import train_test_split

    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=TEST_FRACTION, random_state=0, stratify=y
    )
    return x_train, y_train, x_test, y_test


def _digits(image_size: int | None = None) -> tuple[np.ndarray, ...]:
    """scikit-learn's 8x8 digits: flat ``(n, 64)``, or with ``image_size`` one-channel images
    ``(n, 1, image_size, image_size)`` (bilinear resize)."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    if image_size is not None:
        x = _resize_images(x.reshape(-1, 1, 8, 8), image_size)
    return _hold_out_test(x, y)


def _resize_images(x: np.ndarray, size: int) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    images = torch.from_numpy(np.asarray(x, dtype=np.float32))
    if images.shape[-2:] == (size, size):
        return images.numpy()
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False).numpy()


def _read_folder(root: Path, image_size: int | None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Every image under ``root/<class>/`` as RGB ``(n, 3, H, W)`` in [0, 1], labels by the
    sorted class folder names."""
    from PIL import Image

    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    if not classes:
        raise DatasetError(f"image folder {root} has no class subfolders")
    images, labels = [], []
    for label, name in enumerate(classes):
        files = sorted(f for f in (root / name).iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DatasetError(f"class folder {root / name} holds no images ({IMAGE_SUFFIXES})")
        for file in files:
            with Image.open(file) as opened:
                image = opened.convert("RGB")
            if image_size is not None:
                image = image.resize((image_size, image_size), Image.Resampling.BILINEAR)
            elif images and image.size != images[0].shape[-2:][::-1]:
                raise DatasetError(
                    f"{file} is {image.size[0]}x{image.size[1]}, other images are "
                    f"{images[0].shape[2]}x{images[0].shape[1]}; set image_size to resize them"
                )
            images.append(np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 255.0)
            labels.append(label)
    return np.stack(images), np.array(labels), classes


def _image_folder(path: str, image_size: int | None = None) -> tuple[np.ndarray, ...]:
    """``path/<class>/*.png`` (a fifth held out for testing) or ``path/train/<class>/`` with
    ``path/test/<class>/`` (the same class folders in both)."""
    root = Path(path)
    if not root.is_dir():
        raise DatasetError(f"image folder {path} does not exist or is not a directory")
    if (root / "train").is_dir() and (root / "test").is_dir():
        x, y, classes = _read_folder(root / "train", image_size)
        x_test, y_test, test_classes = _read_folder(root / "test", image_size)
        if test_classes != classes:
            raise DatasetError(
                f"{root / 'test'} has classes {test_classes}, {root / 'train'} has {classes}"
            )
        if x_test.shape[1:] != x.shape[1:]:
            raise DatasetError("train and test images differ in size; set image_size")
        return x, y, x_test, y_test
    x, y, _ = _read_folder(root, image_size)
    return _hold_out_test(x, y)


def _tensors(source: str) -> tuple[np.ndarray, ...]:
    """Call ``package.module:function``; it returns ``(x, y)`` (a fifth is held out for
    testing) or ``(x_train, y_train, x_test, y_test)``, as tensors or arrays."""
    if not SOURCE_PATTERN.match(source):
        raise DatasetError(f"source must look like 'package.module:function', got {source!r}")
    module_name, function_name = source.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise DatasetError(
            f"cannot import module '{module_name}' of source {source!r}: {error}"
        ) from None
    function = getattr(module, function_name, None)
    if not callable(function):
        raise DatasetError(f"module '{module_name}' has no function '{function_name}'")
    try:
        arrays = function()
    except Exception as error:  # the user's code: report it in one line
        raise DatasetError(f"{source} failed: {type(error).__name__}: {error}") from error
    if not isinstance(arrays, (tuple, list)) or len(arrays) not in (2, 4):
        raise DatasetError(
            f"{source} must return (x, y) or (x_train, y_train, x_test, y_test), "
            f"got {type(arrays).__name__}"
            + (f" of {len(arrays)}" if isinstance(arrays, (tuple, list)) else "")
        )
    arrays = [np.asarray(a.detach().cpu() if hasattr(a, "detach") else a) for a in arrays]
    for x, y in zip(arrays[::2], arrays[1::2], strict=True):
        if x.ndim < 2 or y.ndim != 1 or len(x) != len(y):
            raise DatasetError(
                f"{source} returned x of shape {x.shape} and y of shape {y.shape}; "
                "need x (n, ...) and y (n,) with the same n"
            )
        if not np.issubdtype(y.dtype, np.integer) or y.min() < 0:
            raise DatasetError(f"{source} returned labels that are not non-negative integers")
    if len(arrays) == 4 and arrays[0].shape[1:] != arrays[2].shape[1:]:
        raise DatasetError(
            f"{source} returned train samples of shape {arrays[0].shape[1:]} "
            f"and test samples of shape {arrays[2].shape[1:]}"
        )
    return tuple(arrays) if len(arrays) == 4 else _hold_out_test(*arrays)


LOADERS: dict[str, Callable[..., tuple[np.ndarray, ...]]] = {
    "mnist1d": _mnist1d,
    "digits": _digits,
    "image_folder": _image_folder,
    "tensors": _tensors,
}

#: What each dataset takes besides the split settings: ``{name: {option: required}}``.
OPTIONS: dict[str, dict[str, bool]] = {
    "mnist1d": {},
    "digits": {"image_size": False},
    "image_folder": {"path": True, "image_size": False},
    "tensors": {"source": True},
}

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


def check_options(name: str, options: dict[str, Any]) -> None:
    """Raise ``DatasetError`` unless ``options`` (those not None) are what ``name`` takes."""
    if name not in LOADERS:
        raise DatasetError(f"unknown dataset '{name}'; available: {', '.join(dataset_names())}")
    allowed = OPTIONS[name]
    for option, value in options.items():
        if value is not None and option not in allowed:
            takes = ", ".join(allowed) or "no options"
            raise DatasetError(f"dataset '{name}' does not take '{option}' (it takes: {takes})")
    for option, required in allowed.items():
        if required and options.get(option) is None:
            raise DatasetError(f"dataset '{name}' needs '{option}'")


@lru_cache(maxsize=4)
def load_dataset(
    name: str,
    val_fraction: float = 0.2,
    split_seed: int = 0,
    val_samples: int | None = None,
    path: str | None = None,
    source: str | None = None,
    image_size: int | None = None,
) -> Splits:
    """Load ``name`` with a validation part that never overlaps training or test data.

    With ``val_samples`` (generated datasets only) the validation part is that many freshly
    generated samples and the whole training split trains: a larger validation set ranks
    subnets more reliably than a fifth of a small training split. Otherwise ``val_fraction``
    of the training split is carved off (seeded, stratified).
    """
    options = {"path": path, "source": source, "image_size": image_size}
    check_options(name, options)
    if val_samples is not None and name not in GENERATORS:
        raise DatasetError(
            f"dataset '{name}' is not generated, so val_samples cannot be used; "
            f"generated: {', '.join(sorted(GENERATORS))}"
        )
    x, y, x_test, y_test = LOADERS[name](**{k: v for k, v in options.items() if v is not None})
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
