"""Constraints and several hardware targets in one job, on real Ray, training and SQLite: every
front holds feasible points only, each target gets its front (``nas pareto --target``), the
latency predictor's held-out quality is stored with the job, and constraints no subnet can meet
fail at once with one line and exit code 2."""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path

import pytest
import yaml

from nas.cli import main
from nas.controller import Controller
from nas.errors import InfeasibleError
from nas.spec import parse_spec
from nas.store import Measurement, Store
from search_spaces import get_space
from tests.conftest import tiny_spec

pytestmark = pytest.mark.usefixtures("ray_cluster")


def params_bound() -> int:
    """A bound on params that the smaller half of the space meets and the larger does not."""
    space = get_space("cnn1d")
    supernet = space.build_supernet()
    return (supernet.params(space.min()) + supernet.params(space.max())) // 4


def two_target_spec(**overrides: object) -> dict:
    spec = tiny_spec(**overrides)
    spec["training"]["epochs"] = 1
    cpu = spec["hardware_targets"][0]
    spec["hardware_targets"].append({**cpu, "name": "ort", "runtime": "onnxruntime"})
    return spec


def run_cli(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(args)
    return code, out.getvalue(), capsys.readouterr().err


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("constrained")
    constraints = [
        {"metric": "latency_ms@cpu", "max": 1000.0},
        {"metric": "params", "max": params_bound()},
    ]
    spec = root / "spec.yaml"
    spec.write_text(yaml.safe_dump(two_target_spec(constraints=constraints)))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["run", str(spec), "--db", str(root / "nas.db"), "--json"]) == 0
    return {"db": root / "nas.db", "id": json.loads(out.getvalue())["job"]}


def test_every_front_is_feasible_and_each_target_has_one(job: dict) -> None:
    with Store(f"sqlite:///{job['db']}") as store:
        assert store.front_targets(job["id"]) == ["", "cpu", "ort"]
        subnets = store.subnets(job["id"])
        fronts = [store.front(job["id"], t) for t in ("", "cpu", "ort")]
    bound = params_bound()
    assert any(s.metrics["params"] > bound for s in subnets)  # the constraint did bind
    for front in fronts:
        assert front.points
        for point in front.points:
            assert point.metrics["params"] <= bound
            assert point.metrics["latency_ms@cpu"] <= 1000.0
    assert fronts[2].objectives == ["accuracy", "latency_ms@ort"]


def test_pareto_cli_per_target(job: dict, capsys: pytest.CaptureFixture) -> None:
    code, out, _ = run_cli(
        ["pareto", job["id"], "--target", "ort", "--json", "--db", str(job["db"])], capsys
    )
    front = json.loads(out)
    assert code == 0 and front["target"] == "ort"
    assert front["objectives"] == ["accuracy", "latency_ms@ort"]
    assert all(p["metrics"]["latency_ms@ort"] > 0 for p in front["points"])
    code, _, err = run_cli(["pareto", job["id"], "--target", "tpu", "--db", str(job["db"])], capsys)
    assert code == 2
    expected = f"job '{job['id']}' has no front for target 'tpu'; available: '', 'cpu', 'ort'"
    assert err == f"nas: error: {expected}\n"


def test_latency_predictor_quality_is_stored_with_the_job(
    job: dict, capsys: pytest.CaptureFixture
) -> None:
    code, out, _ = run_cli(["status", job["id"], "--json", "--db", str(job["db"])], capsys)
    status = json.loads(out)
    assert code == 0 and set(status["latency_predictors"]) == {"cpu"}  # the constrained one
    cpu = status["latency_predictors"]["cpu"]
    assert cpu["layers"] == 124 and cpu["fitted_on"] == 5  # the narrowed space's distinct layers
    assert set(cpu["held_out"]) >= {"within_10", "mape", "spearman", "n"}
    for iteration in status["search"][1:]:
        assert iteration["predictors"]["latency_ms@cpu"]["model"] == "layer-table+linear"


@pytest.mark.parametrize(
    ("constraint", "message"),
    [
        (
            {"metric": "params", "max": 10},
            r"no subnet satisfies params <= 10: the smallest subnet of the space already has "
            r"params=\d+",
        ),
        (
            {"metric": "latency_ms@ort", "max": 1e-6},
            r"no subnet satisfies latency_ms@ort <= 1e-06: the smallest subnet of the space "
            r"already has latency_ms@ort=[\d.e-]+",
        ),
    ],
)
def test_impossible_constraint_fails_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture, constraint: dict, message: str
) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(two_target_spec(constraints=[constraint])))
    code, _, err = run_cli(["run", str(spec), "--db", str(tmp_path / "nas.db")], capsys)
    assert code == 2
    [line] = err.strip().splitlines()[-1:]
    assert line.startswith("nas: error: ") and "Traceback" not in err
    assert re.fullmatch(message, line.removeprefix("nas: error: "))
    with Store(f"sqlite:///{tmp_path / 'nas.db'}") as store:
        [record] = store.list_jobs()
        assert record.status == "failed" and store.training_runs(record.id) == []


def test_no_feasible_measured_subnet_is_one_line(tmp_path: Path) -> None:
    """A bound only measurements can judge (here a minimum accuracy) that no measured subnet
    met leaves no front: the job fails with one line rather than storing empty fronts."""
    spec = tiny_spec(constraints=[{"metric": "accuracy", "min": 0.99}])
    with Store(f"sqlite:///{tmp_path / 'nas.db'}") as store:
        job = store.create_job("j", parse_spec(spec).model_dump(mode="json"))
        space = get_space("cnn1d")
        for config, accuracy in [(space.min(), 0.5), (space.max(), 0.9)]:
            subnet = store.add_subnet(job.id, config, "profile")
            store.add_measurements(subnet.id, [Measurement("accuracy", accuracy)])
        controller = Controller(store, job.id, tmp_path / "artifacts")
        with pytest.raises(
            InfeasibleError,
            match=r"^no measured subnet satisfies the constraints \(0.99 <= accuracy\)$",
        ):
            controller.save_fronts()
        assert store.front_targets(job.id) == []
