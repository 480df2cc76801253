"""One small job end to end on real Ray, real training and a real SQLite file, then its rows,
its front, a rerun that redoes nothing, and exports checked in a process without the project."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch
import yaml

from nas.cli import main
from nas.controller import Controller
from nas.pareto import minimisation_matrix
from nas.store import Store
from tests.conftest import tiny_spec
from workers.datasets import load_dataset

pytestmark = pytest.mark.usefixtures("ray_cluster")

#: What the predictive search learns for the example spec: its accuracy objective and the
#: latency its constraint bounds (MACs are computed exactly).
LEARNED = {"accuracy", "latency_ms@cpu"}


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Run ``nas run --json`` once for the module; return paths, job id and printed front."""
    root = tmp_path_factory.mktemp("job")
    spec = root / "spec.yaml"
    spec.write_text(yaml.safe_dump(tiny_spec()))
    db = root / "nas.db"
    return {"root": root, "db": db, "spec": spec}


@pytest.fixture(scope="module")
def job(finished: dict) -> dict:
    """The job, run through the same entry point as ``nas run --json``."""
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["run", str(finished["spec"]), "--db", str(finished["db"]), "--json"])
    assert code == 0
    front = json.loads(out.getvalue())
    return {**finished, "id": front["job"], "front": front}


@pytest.fixture
def store(job: dict):
    with Store(f"sqlite:///{job['db']}") as opened:
        yield opened


def test_job_is_done_with_training_curve(job: dict, store: Store) -> None:
    record = store.get_job(job["id"])
    assert (record.status, record.stage, record.error) == ("done", "done", None)
    [run] = store.training_runs(job["id"])
    assert (run.status, run.epochs_done) == ("done", 2)
    assert Path(run.checkpoint_path).is_file()
    curve = store.curve(run.id)
    assert [(p.epoch, p.name) for p in curve] == [
        (e, n) for e in (1, 2) for n in ("train_loss", "val_acc/largest", "val_acc/smallest")
    ]
    assert all(0.0 <= p.value <= 1.0 for p in curve if p.name.startswith("val_acc"))


def test_every_subnet_is_fully_measured(job: dict, store: Store) -> None:
    subnets = store.subnets(job["id"])
    keys = {"accuracy", "test_accuracy", "macs", "params", "latency_ms@cpu"}
    assert len(subnets) >= 2 + 3  # largest, smallest and three random profile samples
    assert {s.source for s in subnets} == {"profile", "search"}
    for s in subnets:
        assert set(s.metrics) == keys
        assert Path(s.weights_path).is_file()
        assert s.metrics["latency_ms@cpu"] > 0


def test_front_json_holds_measured_non_dominated_points(job: dict, store: Store) -> None:
    front = job["front"]
    assert front["target"] is None and front["objectives"] == ["accuracy", "macs"]
    measured = {s.id: s.metrics for s in store.subnets(job["id"])}
    points = front["points"]
    assert points
    values = []
    for p in points:
        assert (
            {"subnet", "config", "metrics"}
            <= set(p)
            <= {"subnet", "config", "metrics", "predicted"}
        )
        assert p["metrics"] == measured[p["subnet"]]
        if "predicted" in p:  # chosen by the predictive search: labelled with what it expected
            assert set(p["predicted"]) == LEARNED
        values.append([p["metrics"]["accuracy"], p["metrics"]["macs"]])
    everyone = minimisation_matrix(
        [[m["accuracy"], m["macs"]] for m in measured.values()], ["max", "min"]
    )
    for row in minimisation_matrix(values, ["max", "min"]):
        dominated = np.all(everyone <= row, axis=1) & np.any(everyone < row, axis=1)
        assert not dominated.any()


def test_search_iterations_stored_until_budget(job: dict, store: Store) -> None:
    iterations = store.search_iterations(job["id"])
    assert [i.iteration for i in iterations] == list(range(len(iterations)))
    assert iterations[0].evaluations == 5  # largest, smallest, three profiled
    assert iterations[-1].evaluations == 9 == len(store.subnets(job["id"]))  # the budget
    hypervolumes = [i.hypervolume for i in iterations]
    assert hypervolumes == sorted(hypervolumes)  # the measured front only ever grows
    for i in iterations[1:]:
        assert set(i.scores) == LEARNED and -1 <= i.scores["accuracy"]["spearman"] <= 1
    predicted = [s for s in store.subnets(job["id"]) if s.predicted]
    assert {s.source for s in predicted} == {"search"} and len(predicted) == 4


def test_front_per_hardware_target(job: dict, store: Store) -> None:
    assert sorted(store.front_targets(job["id"])) == ["", "cpu"]
    assert store.front(job["id"], "cpu").objectives == ["accuracy", "latency_ms@cpu"]


def test_rerun_redoes_nothing(job: dict, store: Store) -> None:
    before = ({s.id: s.metrics for s in store.subnets(job["id"])}, store.training_runs(job["id"]))
    Controller(store, job["id"], job["db"].parent / "artifacts").run()
    after = ({s.id: s.metrics for s in store.subnets(job["id"])}, store.training_runs(job["id"]))
    assert after == before
    assert store.get_job(job["id"]).status == "done"


def test_resume_finishes_a_failed_job_without_new_work(
    job: dict, store: Store, capsys: pytest.CaptureFixture
) -> None:
    before = {s.id: s.metrics for s in store.subnets(job["id"])}
    store.update_job(job["id"], status="failed", error="killed")
    assert main(["resume", job["id"], "--db", str(job["db"]), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["points"] == job["front"]["points"]
    record = store.get_job(job["id"])
    assert (record.status, record.error) == ("done", "")
    assert {s.id: s.metrics for s in store.subnets(job["id"])} == before


def test_jobs_and_status_json(job: dict, capsys: pytest.CaptureFixture) -> None:
    assert main(["jobs", "--db", str(job["db"]), "--json"]) == 0
    jobs = json.loads(capsys.readouterr().out)
    assert [(j["id"], j["name"], j["status"]) for j in jobs] == [(job["id"], "tiny", "done")]
    assert main(["status", job["id"], "--db", str(job["db"]), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["training"] == [{"id": 1, "status": "done", "epochs_done": 2}]
    assert set(status["last_curve_point"]) == {"train_loss", "val_acc/largest", "val_acc/smallest"}
    assert [(s["stage"], s["state"]) for s in status["stages"]] == [
        ("train", "done"),
        ("profile", "done"),
        ("search", "done"),
        ("front", "done"),
    ]


FRESH_PROCESS = textwrap.dedent(
    """
    import sys
    class Forbid:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {"nas", "search_spaces", "workers"}:
                raise ImportError("the export must not need " + name)
    sys.meta_path.insert(0, Forbid())
    import numpy as np, torch
    model = torch.export.load(sys.argv[1]).module()
    x, y = np.load(sys.argv[2]), np.load(sys.argv[3])
    with torch.no_grad():
        predicted = model(torch.from_numpy(x)).argmax(dim=1).numpy()
    print((predicted == y).mean())
    """
)


def test_exported_pt2_reproduces_stored_test_accuracy(
    job: dict, store: Store, tmp_path: Path
) -> None:
    splits = load_dataset("mnist1d")
    np.save(tmp_path / "x.npy", splits.x_test)
    np.save(tmp_path / "y.npy", splits.y_test)
    for point in job["front"]["points"]:
        out = tmp_path / str(point["subnet"])
        args = ["export", job["id"], str(point["subnet"]), "--format", "pt2", "-o", str(out)]
        assert main([*args, "--db", str(job["db"])]) == 0
        result = subprocess.run(
            [
                sys.executable,
                "-I",
                "-c",
                FRESH_PROCESS,
                str(out / "model.pt2"),
                str(tmp_path / "x.npy"),
                str(tmp_path / "y.npy"),
            ],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            check=True,
        )
        accuracy = float(result.stdout.strip())
        assert abs(accuracy - point["metrics"]["test_accuracy"]) <= 0.002


def test_onnx_and_safetensors_exports_agree_with_pt2(job: dict, tmp_path: Path) -> None:
    subnet = str(job["front"]["points"][0]["subnet"])
    for fmt in ("pt2", "onnx", "safetensors"):
        assert (
            main(
                [
                    "export",
                    job["id"],
                    subnet,
                    "--format",
                    fmt,
                    "-o",
                    str(tmp_path / fmt),
                    "--db",
                    str(job["db"]),
                ]
            )
            == 0
        )
    x = load_dataset("mnist1d").x_test[:7]
    expected = torch.export.load(tmp_path / "pt2" / "model.pt2").module()(torch.from_numpy(x))
    session = onnxruntime.InferenceSession(str(tmp_path / "onnx" / "model.onnx"))
    np.testing.assert_allclose(session.run(None, {"x": x})[0], expected.detach().numpy(), atol=1e-5)
    sys.path.insert(0, str(tmp_path / "safetensors"))
    try:
        from cnn1d_net import load
    finally:
        sys.path.pop(0)
    with torch.no_grad():
        got = load(tmp_path / "safetensors")(torch.from_numpy(x))
    torch.testing.assert_close(got, expected.detach(), atol=1e-5, rtol=0)
    config = json.loads((tmp_path / "safetensors" / "config.json").read_text())
    assert config["subnet"]["id"] == int(subnet)


def test_three_objective_job_has_a_three_dimensional_front(tmp_path: Path, capsys) -> None:
    """Accuracy against latency on the cpu target and MACs: the target's front carries all
    three objectives, holds measured points only, and none of them is dominated."""
    objectives = ["accuracy", "latency_ms@cpu", "macs"]
    spec = tiny_spec(objectives=objectives)
    spec["training"]["epochs"] = 1
    spec["search"].update(profile_samples=2, budget=8, batch=2)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    db = tmp_path / "nas.db"
    assert main(["run", str(path), "--db", str(db), "--json"]) == 0
    front = json.loads(capsys.readouterr().out)
    assert (front["target"], front["objectives"]) == ("cpu", objectives)
    with Store(f"sqlite:///{db}") as store:
        assert store.front_targets(front["job"]) == ["cpu"]
        subnets = store.subnets(front["job"])
        iterations = store.search_iterations(front["job"])
    assert len(subnets) == 8 and iterations[-1].evaluations == 8
    everyone = minimisation_matrix(
        [[s.metrics[k] for k in objectives] for s in subnets], ["max", "min", "min"]
    )
    measured = {s.id: s.metrics for s in subnets}
    for p in front["points"]:
        assert p["metrics"] == measured[p["subnet"]]
        row = minimisation_matrix([[p["metrics"][k] for k in objectives]], ["max", "min", "min"])
        assert not (np.all(everyone <= row, axis=1) & np.any(everyone < row, axis=1)).any()
