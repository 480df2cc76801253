"""Job spec validation: the example loads, and every kind of mistake is named in one line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from nas.errors import SpecError
from nas.spec import load_spec, parse_spec
from tests.conftest import EXAMPLE_SPEC, tiny_spec
from workers.datasets import load_dataset


def test_example_spec_loads_and_builds_its_space() -> None:
    spec = load_spec(EXAMPLE_SPEC)
    space = spec.space()
    assert space.name == "cnn1d"
    assert spec.objectives == ["accuracy", "macs"]
    assert spec.target("cpu").threads == 1
    assert space.validate(space.max()) == space.max()


def error_of(data: object) -> str:
    with pytest.raises(SpecError) as caught:
        parse_spec(data, "job.yaml")
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_malformed_yaml_names_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nsearch_space: [cnn1d\n")
    with pytest.raises(SpecError, match=r"malformed YAML at line \d+"):
        load_spec(path)


def test_missing_file() -> None:
    with pytest.raises(SpecError, match="cannot read spec"):
        load_spec("/nonexistent/spec.yaml")


def test_top_level_must_be_mapping() -> None:
    assert "expected a mapping" in error_of(["a", "b"])


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            {"search_space": {"name": "resnet9000"}},
            "unknown search space 'resnet9000'; registered: cnn1d",
        ),
        (
            {"search_space": {"name": "cnn1d", "choices": {"nope.*": [1]}}},
            "unknown dimension 'nope.*'",
        ),
        (
            {"search_space": {"name": "cnn1d", "choices": {"kernel.*": [4]}}},
            "value 4 is not a choice of dimension 'kernel.1.1'; allowed: [3, 5, 7]",
        ),
        ({"dataset": {"name": "imagenet"}}, "unknown dataset 'imagenet'"),
        (
            {"dataset": {"name": "digits", "val_samples": 1000}},
            "val_samples needs a generated dataset (mnist1d), not 'digits'",
        ),
        ({"objectives": ["accuracy", "latency_ms@gpu"]}, "unknown hardware target 'gpu'"),
        ({"objectives": ["accuracy", "latency_ms"]}, "must be written 'latency_ms@TARGET'"),
        ({"objectives": ["accuracy", "flops"]}, "unknown metric 'flops'"),
        ({"objectives": ["accuracy", "macs", "macs"]}, "objectives must be ['accuracy', COST]"),
        ({"objectives": ["macs", "accuracy"]}, "objectives must be ['accuracy', COST]"),
        ({"objectives": ["accuracy", "macs", "params", "latency_ms@cpu"]}, "at most 3 items"),
        ({"constraints": [{"metric": "macs"}]}, "needs 'max' or 'min'"),
        ({"colour": "blue"}, "colour: Extra inputs are not permitted"),
    ],
)
def test_bad_spec_is_named(change: dict, expected: str) -> None:
    message = error_of(tiny_spec(**change))
    assert message.startswith("job.yaml: ")
    assert expected in message


def test_bad_field_value_names_the_path() -> None:
    spec = tiny_spec()
    spec["training"]["epochs"] = 0
    assert "training.epochs: Input should be greater than 0" in error_of(spec)


def test_duplicate_targets_rejected() -> None:
    spec = tiny_spec()
    spec["hardware_targets"] = spec["hardware_targets"] * 2
    assert "hardware target names must be unique" in error_of(spec)


def test_round_trip_through_json_is_identical() -> None:
    spec = load_spec(EXAMPLE_SPEC)
    again = parse_spec(yaml.safe_load(yaml.safe_dump(spec.model_dump(mode="json"))))
    assert again == spec


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            {"device": "tpu"},
            "hardware_targets.0.device: unknown device 'tpu'; supported: cpu, cuda",
        ),
        (
            {"runtime": "tvm"},
            "hardware_targets.0.runtime: unknown runtime 'tvm'; supported: torch, onnxruntime, "
            "cudagraph",
        ),
        ({"runtime": "cudagraph"}, "runtime 'cudagraph' runs on device 'cuda' only"),
        ({"input_shape": [40, 0]}, "input_shape must hold positive sizes, got [40, 0]"),
        (
            {"input_shape": [1, 40]},
            "hardware_targets.0.input_shape: cnn1d takes samples of shape (length,), got (1, 40)",
        ),
        ({"input_shape": []}, "hardware_targets.0.input_shape: List should have at least 1 item"),
        ({"threads": 0}, "hardware_targets.0.threads: Input should be greater than or equal to 1"),
        ({"clock_mhz": 900}, "hardware_targets.0.clock_mhz: Extra inputs are not permitted"),
    ],
)
def test_bad_hardware_target_is_named(change: dict, expected: str) -> None:
    spec = tiny_spec()
    spec["hardware_targets"][0].update(change)
    assert expected in error_of(spec)


def test_hardware_target_settings_load() -> None:
    spec = tiny_spec()
    spec["hardware_targets"].append(
        {"name": "gpu", "device": "cuda", "runtime": "onnxruntime", "threads": 2,
         "batch_size": 8, "input_shape": [128], "resources": {"hw_gpu": 1}}
    )  # fmt: skip
    target = parse_spec(spec).target("gpu")
    assert (target.device, target.runtime, target.threads, target.batch_size) == (
        "cuda", "onnxruntime", 2, 8,
    )  # fmt: skip
    assert (target.input_shape, target.resources) == ([128], {"hw_gpu": 1.0})
    assert parse_spec(spec).target("cpu").input_shape is None  # the dataset's sample shape


def test_generated_validation_set_is_fresh_and_leaves_training_whole() -> None:
    carved = load_dataset("mnist1d")
    generated = load_dataset("mnist1d", val_samples=500)
    assert generated.x_val.shape == (500, carved.input_length)
    assert len(generated.x_train) == len(carved.x_train) + len(carved.x_val)
    np.testing.assert_array_equal(generated.x_test, carved.x_test)  # the standard test split
    assert set(np.unique(generated.y_val)) == set(range(10))
    seen = {row.tobytes() for row in np.concatenate([generated.x_train, generated.x_test])}
    assert not any(row.tobytes() in seen for row in generated.x_val)
    with pytest.raises(ValueError, match="dataset 'digits' is not generated"):
        load_dataset("digits", val_samples=500)
