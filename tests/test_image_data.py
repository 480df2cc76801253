"""The image data path: digits as images, an ImageFolder directory of small generated PNGs,
tensors by import path, and the spec that sizes a space for them; every mistake is one line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nas.errors import SpecError
from nas.spec import load_spec, parse_spec
from tests.conftest import tiny_spec
from workers.datasets import DatasetError, load_dataset

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (20, 40, 230)}


def write_folder(root: Path, per_class: int, size: tuple[int, int] = (12, 10)) -> None:
    """Noisy images of one colour per class, as PNG files under ``root/<class>/``."""
    rng = np.random.default_rng(0)
    for name, colour in COLOURS.items():
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            noise = rng.integers(-20, 20, size=(size[1], size[0], 3))
            pixels = np.clip(np.array(colour) + noise, 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")


def small_tensors() -> tuple[torch.Tensor, torch.Tensor]:
    """What a user's ``package.module:function`` returns: samples and integer labels."""
    generator = torch.Generator().manual_seed(0)
    return torch.randn(50, 2, 8, 8, generator=generator), torch.arange(50) % 5


def four_tensors() -> tuple[np.ndarray, ...]:
    return np.zeros((20, 6)), np.arange(20) % 2, np.zeros((10, 6)), np.arange(10) % 2


def bad_labels() -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((20, 6)), np.linspace(0, 1, 20)


def test_digits_as_images() -> None:
    flat = load_dataset("digits")
    images = load_dataset("digits", image_size=16)
    assert flat.input_shape == (64,)
    assert images.input_shape == (1, 16, 16) and images.x_train.dtype == np.float32
    assert len(images.y_train) == len(flat.y_train) and np.array_equal(images.y_test, flat.y_test)
    assert images.x_train.max() <= 16.0 and images.num_classes == 10


def test_image_folder_with_a_held_out_test_split(tmp_path: Path) -> None:
    write_folder(tmp_path / "data", per_class=10)
    splits = load_dataset("image_folder", path=str(tmp_path / "data"))
    assert splits.input_shape == (3, 10, 12)
    assert len(splits.y_train) + len(splits.y_val) + len(splits.y_test) == 30
    assert sorted(set(splits.y_test)) == [0, 1, 2] and splits.num_classes == 3
    assert 0.0 <= splits.x_train.min() and splits.x_train.max() <= 1.0
    # classes are the sorted folder names: blue, green, red; blue images are mostly blue
    blue = splits.x_train[splits.y_train == 0]
    assert blue[:, 2].mean() > 0.8 and blue[:, 0].mean() < 0.2
    resized = load_dataset("image_folder", path=str(tmp_path / "data"), image_size=8)
    assert resized.input_shape == (3, 8, 8)


def test_image_folder_with_train_and_test(tmp_path: Path) -> None:
    write_folder(tmp_path / "train", per_class=6)
    write_folder(tmp_path / "test", per_class=2)
    splits = load_dataset("image_folder", path=str(tmp_path), val_fraction=0.25)
    assert len(splits.y_test) == 6 and len(splits.y_train) + len(splits.y_val) == 18


def test_image_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist or is not a directory"):
        load_dataset("image_folder", path=str(tmp_path / "missing"))
    write_folder(tmp_path / "mixed", per_class=3)
    Image.new("RGB", (5, 5)).save(tmp_path / "mixed" / "red" / "odd.png")
    with pytest.raises(
        DatasetError, match=r"odd\.png is 5x5, other images are 12x10; set image_size"
    ):
        load_dataset("image_folder", path=str(tmp_path / "mixed"))
    (tmp_path / "empty" / "cat").mkdir(parents=True)
    with pytest.raises(DatasetError, match="holds no images"):
        load_dataset("image_folder", path=str(tmp_path / "empty"))
    with pytest.raises(DatasetError, match="dataset 'image_folder' needs 'path'"):
        load_dataset("image_folder")
    with pytest.raises(DatasetError, match="dataset 'mnist1d' does not take 'image_size'"):
        load_dataset("mnist1d", image_size=8)


def test_tensors_by_import_path() -> None:
    splits = load_dataset("tensors", source="tests.test_image_data:small_tensors")
    assert splits.input_shape == (2, 8, 8) and splits.num_classes == 5
    assert len(splits.y_test) == 10
    given = load_dataset("tensors", source="tests.test_image_data:four_tensors")
    assert len(given.y_test) == 10 and given.input_shape == (6,)


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("tests.test_image_data", "must look like 'package.module:function'"),
        ("no_such_module_x:f", "cannot import module 'no_such_module_x'"),
        ("tests.test_image_data:nope", "has no function 'nope'"),
        ("tests.test_image_data:write_folder", "write_folder failed: TypeError: .*missing"),
        ("tests.test_image_data:bad_labels", "labels that are not non-negative integers"),
    ],
)
def test_tensors_errors(source: str, message: str) -> None:
    with pytest.raises(DatasetError, match=message):
        load_dataset("tensors", source=source)


def test_spec_sizes_an_image_space_from_the_data() -> None:
    spec = parse_spec(
        tiny_spec(
            search_space={
                "name": "mobilenetv3",
                "options": {"width_mult": 0.25, "resolutions": [8, 16]},
                "choices": {"depth.*": [2]},
            },
            dataset={"name": "digits", "image_size": 16},
            constraints=[],
        )
    )
    space = spec.space()
    assert space.describe()["input_shape"] == [1, 16, 16] and space.num_classes == 10
    assert space.max()["resolution"] == 16


def test_examples_load() -> None:
    root = Path(__file__).resolve().parents[1] / "examples"
    for name, space in (
        ("digits_mobilenetv3", "mobilenetv3"),
        ("mnist1d_transformer", "transformer"),
    ):
        assert load_spec(root / f"{name}.yaml").space().name == space


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            {"dataset": {"name": "image_folder"}},
            "dataset: Value error, dataset 'image_folder' needs 'path'",
        ),
        ({"dataset": {"name": "digits", "source": "a:b"}}, "does not take 'source'"),
        ({"dataset": {"name": "image_folder", "path": "/nonexistent/x"}}, "dataset: image folder"),
        (
            {"dataset": {"name": "digits", "image_size": 8}},
            "search_space: cnn1d takes samples of shape (length,), got (1, 8, 8)",
        ),
        (
            {"search_space": {"name": "mobilenetv3", "options": {"depth": 2}}},
            "search_space: search space 'mobilenetv3' has no option 'depth'",
        ),
        (
            {"search_space": {"name": "transformer", "options": {"num_classes": 3}}},
            "option 'num_classes' is set from the dataset",
        ),
        (
            {
                "search_space": {"name": "transformer"},
                "hardware_targets": [{"name": "cpu", "input_shape": [48]}],
            },
            "hardware_targets.0.input_shape: this transformer space takes samples of shape (40,)",
        ),
    ],
)
def test_spec_errors_name_the_dataset_or_space(change: dict, expected: str) -> None:
    with pytest.raises(SpecError) as caught:
        parse_spec(tiny_spec(**change), "job.yaml")
    message = str(caught.value)
    assert "\n" not in message
    assert expected.replace("Value error, ", "") in message


def test_latency_needs_a_layer_table(monkeypatch: pytest.MonkeyPatch) -> None:
    """A space without layer signatures cannot have its latency predicted: the example's
    latency constraint is refused before any work, unless every candidate is measured."""
    from search_spaces.transformer import TransformerSpace

    monkeypatch.setattr(TransformerSpace, "describes_layers", lambda self: False)
    with pytest.raises(SpecError, match="'latency_ms@cpu' needs a latency predictor"):
        parse_spec(tiny_spec(search_space={"name": "transformer"}), "job.yaml")
    nsga2 = tiny_spec(search_space={"name": "transformer"})
    nsga2["search"]["strategy"] = "nsga2"
    assert parse_spec(nsga2).search_space.name == "transformer"
