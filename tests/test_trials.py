"""Several supernet training runs in one job: hyperparameters sampled by Optuna from the stored
runs, the learning-curve rule judging every epoch, every decision stored, the best run kept."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from nas.cli import main
from nas.controller import Controller
from nas.spec import EarlyStoppingSpec, parse_spec
from nas.store import Store
from nas.trials import CurveJudge, FinishedRun, next_tuned, run_settings
from tests.conftest import tiny_spec

TUNE = {"lr": {"low": 1e-4, "high": 0.05, "log": True}, "random_subnets": {"choices": [0, 1, 2]}}


def training(**changes):
    spec = tiny_spec()
    spec["training"].update({"trials": 4, "tune": TUNE, **changes})
    return parse_spec(spec).training


def test_run_settings_put_tuned_values_in_their_places() -> None:
    settings = run_settings(training(), {"lr": 0.01, "random_subnets": 2}, seed=7)
    assert settings["optimizer"]["lr"] == 0.01 and settings["random_subnets"] == 2
    assert settings["seed"] == 7 and settings["tuned"] == {"lr": 0.01, "random_subnets": 2}
    assert settings["epochs"] == 2 and "trials" not in settings


def test_sampling_is_seeded_inside_the_ranges_and_learns_from_history() -> None:
    spec = training()
    first = next_tuned(spec, [], seed=3)
    assert first == next_tuned(spec, [], seed=3) != next_tuned(spec, [], seed=4)
    history = []
    for i in range(6):
        tuned = next_tuned(spec, history, seed=3)
        assert 1e-4 <= tuned["lr"] <= 0.05 and tuned["random_subnets"] in (0, 1, 2)
        history.append(FinishedRun(tuned, [0.5, 0.6 + 0.01 * i], stopped=i % 3 == 2))
    assert next_tuned(spec, history, seed=3) == next_tuned(spec, history, seed=3)
    assert next_tuned(training(tune={}, trials=1), history, seed=3) == {}


def test_judge_falls_back_until_enough_runs_then_stops_a_clear_loser() -> None:
    """Twelve finished runs rising to 0.80-0.92; a run stuck near 0.12 is stopped once the
    predictor has its ten finished runs, and a run tracking the best one is not."""
    epochs = 6
    # the model decides alone, from the first epoch, once ten runs have finished; the
    # probability this loser gets from twelve finished runs, 1/37, is above the default
    # threshold
    rungs_off = EarlyStoppingSpec(
        k=1, patience=1, rung_keep=1.0, threshold=0.1, model_from=1, min_finished=10
    )
    judge = CurveJudge(rungs_off, epochs=epochs)
    rng = np.random.default_rng(0)
    finished = []
    for i, top in enumerate(np.linspace(0.80, 0.92, 12)):
        curve = top - 0.4 * np.exp(-np.arange(epochs)) + rng.normal(0, 0.004, epochs)
        finished.append(FinishedRun({"lr": 0.001 * (i + 1)}, list(curve), stopped=False))
    early = judge.decide([0.1, 0.12], {"lr": 0.5}, finished[:9])
    assert not early.stop and early.mean is None and "fallback" in early.reason
    loser = judge.decide([0.1, 0.11, 0.12], {"lr": 0.5}, finished)
    assert loser.stop and loser.probability < rungs_off.threshold
    bar = max(r.scores[-1] for r in finished) - EarlyStoppingSpec().tolerance
    assert loser.threshold == pytest.approx(bar)
    assert loser.low <= loser.mean <= loser.high < 0.5
    best = max(finished, key=lambda r: r.scores[-1])
    others = [r for r in finished if r is not best]
    assert not judge.decide(best.scores[:3], best.tuned, others).stop


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"trials": 3}, "trials=3 needs 'tune'"),
        ({"tune": {"momentum": {"low": 0.1, "high": 0.9}}}, "cannot tune 'momentum'"),
        ({"tune": {"lr": {"low": 0.1}}}, "give either 'low' and 'high' or 'choices'"),
        ({"tune": {"lr": {"low": 0.1, "high": 0.01}}}, "need 0 < low < high"),
    ],
)
def test_bad_tuning_is_named(change: dict, expected: str) -> None:
    spec = tiny_spec()
    spec["training"].update(change)
    with pytest.raises(Exception, match=expected.replace("(", r"\(")):
        parse_spec(spec)


@pytest.mark.usefixtures("ray_cluster")
def test_job_trains_several_runs_stops_losers_and_keeps_the_best(tmp_path, capsys) -> None:
    epochs = 4
    spec = tiny_spec(dataset={"name": "digits"})
    trials, min_finished = 14, 10
    spec["training"].update(
        epochs=epochs,
        trials=trials,
        tune={"lr": {"low": 1e-5, "high": 0.03, "log": True}},
        sampler="random",  # spread: some runs hopeless, so that the rule has losers to stop
        early_stopping={
            "k": 1,
            "threshold": 0.2,
            "decay": 0.0,
            "patience": 1,
            "min_finished": min_finished,
            "model_from": 1,  # runs of four epochs: the model judges from the first
            "rung_keep": 1.0,  # no rung stops: every stop here is the model's
        },
    )
    spec["search"].update(profile_samples=1, budget=4, batch=1)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    db = tmp_path / "nas.db"
    assert main(["run", str(path), "--db", str(db), "--json"]) == 0
    job_id = json.loads(capsys.readouterr().out)["job"]
    with Store(f"sqlite:///{db}") as store:
        runs = store.training_runs(job_id)
        decisions = store.stop_decisions(job_id)
        controller = Controller(store, job_id, tmp_path / "artifacts")
        controller.train()  # everything finished: nothing trains, the best run is chosen
        scores = {r.id: controller._scores(r.id) for r in runs}
    assert len(runs) == trials and {r.status for r in runs} <= {"done", "stopped"}
    assert len({r.hparams["tuned"]["lr"] for r in runs}) == trials
    by_run = {r.id: [d for d in decisions if d.run_id == r.id] for r in runs}
    for r in runs:
        judged = [d.epoch for d in by_run[r.id]]
        assert judged == list(
            range(1, min(r.epochs_done, epochs - 1) + 1)
        )  # every epoch but the last
        assert [d.stop for d in by_run[r.id]][-1] == (r.status == "stopped")
        assert len(scores[r.id]) == r.epochs_done
        if r.status == "stopped":
            assert r.epochs_done < epochs
    assert all(d.mean is None for r in runs[:min_finished] for d in by_run[r.id])  # fallback
    assert any(r.status == "stopped" for r in runs)
    done = [r for r in runs if r.status == "done"]
    best = max(done, key=lambda r: scores[r.id][-1])
    assert controller.checkpoint == best.checkpoint_path
    assert main(["status", job_id, "--db", str(db), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    stopped = [t for t in status["training"] if t["status"] == "stopped"]
    assert all(t["last_decision"].startswith("stop: P(final >") for t in stopped)
    assert all(len(t["curve"]["val_acc/largest"]) == t["epochs_done"] for t in stopped)
