"""The store on SQLite and PostgreSQL: round trips, idempotent writes, errors, transactions."""

from __future__ import annotations

import sqlite3
from datetime import timezone
from pathlib import Path

import pytest

from nas.errors import NotFoundError, StoreError
from nas.store import (
    CurvePoint,
    Measurement,
    Store,
    metric_key,
    resolve_url,
    split_metric_key,
)

CONFIG = {"depths": [2, 3, 4], "widths": [0.5, 1.0], "kernel": 5, "name": "tiny", "se": True}


def one_line(error: BaseException) -> str:
    message = str(error)
    assert message and "\n" not in message
    return message


# -- jobs ---------------------------------------------------------------------------------------


def test_job_round_trip(store: Store) -> None:
    spec = {"space": "cnn1d", "targets": [{"name": "cpu", "threads": 1}], "budget": {"epochs": 3}}
    created = store.create_job("demo", spec)
    assert created.status == "pending" and created.stage is None and created.error is None
    assert created.created_at.tzinfo == timezone.utc
    loaded = store.get_job(created.id)
    assert loaded == created
    assert loaded.spec == spec


def test_list_jobs_newest_first(store: Store) -> None:
    ids = [store.create_job(f"job{i}", {}).id for i in range(3)]
    assert [job.id for job in store.list_jobs()] == ids[::-1]


def test_update_job_changes_only_given_fields(store: Store) -> None:
    job = store.create_job("demo", {})
    store.update_job(job.id, status="running", stage="train", stage_detail="epoch 1/4")
    store.update_job(job.id, stage_detail="epoch 2/4")
    updated = store.get_job(job.id)
    assert (updated.status, updated.stage) == ("running", "train")
    assert updated.stage_detail == "epoch 2/4"
    assert updated.updated_at > job.updated_at and updated.created_at == job.created_at
    store.update_job(job.id, status="failed", error="out of memory")
    assert store.get_job(job.id).error == "out of memory"


def test_update_job_rejects_unknown_status(store: Store) -> None:
    job = store.create_job("demo", {})
    with pytest.raises(ValueError, match="status='paused'; allowed: pending"):
        store.update_job(job.id, status="paused")


def test_unknown_job_is_not_found_and_named(store: Store) -> None:
    for call in (
        lambda: store.get_job("nosuchjob"),
        lambda: store.update_job("nosuchjob", status="done"),
        lambda: store.create_training_run("nosuchjob", {}),
        lambda: store.add_subnet("nosuchjob", CONFIG, "profile"),
        lambda: store.subnets("nosuchjob"),
        lambda: store.front("nosuchjob"),
    ):
        with pytest.raises(NotFoundError) as info:
            call()
        assert "'nosuchjob'" in one_line(info.value)


# -- training runs and curves --------------------------------------------------------------------


def test_training_runs_round_trip_and_update(store: Store) -> None:
    job = store.create_job("demo", {})
    first = store.create_training_run(job.id, {"lr": 0.01, "schedule": [1, 2]})
    second = store.create_training_run(job.id, {"lr": 0.1})
    store.update_training_run(first.id, epochs_done=4, checkpoint_path="/ckpt/4.pt")
    store.update_training_run(first.id, status="stopped")
    runs = store.training_runs(job.id)
    assert [run.id for run in runs] == [first.id, second.id]
    assert runs[0].hparams == {"lr": 0.01, "schedule": [1, 2]}
    assert (runs[0].status, runs[0].epochs_done) == ("stopped", 4)
    assert runs[0].checkpoint_path == "/ckpt/4.pt"
    assert (runs[1].status, runs[1].epochs_done) == ("running", 0)
    with pytest.raises(NotFoundError, match="unknown training run 9999"):
        store.update_training_run(9999, status="done")


def test_curve_points_are_idempotent_and_ordered(store: Store) -> None:
    job = store.create_job("demo", {})
    run = store.create_training_run(job.id, {})
    store.add_curve_points(run.id, 1, {"val_acc/largest": 0.4, "loss": 2.0})
    store.add_curve_points(run.id, 0, {"loss": 3.0})
    store.add_curve_points(run.id, 1, {"val_acc/largest": 0.45})  # a resumed epoch re-reports
    assert store.curve(run.id) == [
        CurvePoint(0, "loss", 3.0),
        CurvePoint(1, "loss", 2.0),
        CurvePoint(1, "val_acc/largest", 0.45),
    ]


# -- subnets and measurements -------------------------------------------------------------------


def test_add_subnet_round_trips_and_deduplicates(store: Store) -> None:
    job = store.create_job("demo", {})
    first = store.add_subnet(job.id, CONFIG, "profile")
    reordered = dict(reversed(list(CONFIG.items())))  # same config, other key order
    again = store.add_subnet(job.id, reordered, "search")
    assert again == first and again.source == "profile"
    assert store.get_subnet(job.id, first.id).config == CONFIG
    other_job = store.create_job("other", {})
    assert store.add_subnet(other_job.id, CONFIG, "profile").id != first.id
    assert len(store.subnets(job.id)) == 1


def test_set_subnet_weights(store: Store) -> None:
    job = store.create_job("demo", {})
    subnet = store.add_subnet(job.id, CONFIG, "profile")
    store.set_subnet_weights(subnet.id, "/artifacts/subnet.safetensors")
    assert store.get_subnet(job.id, subnet.id).weights_path == "/artifacts/subnet.safetensors"


def test_measurements_upsert_and_metric_keys(store: Store) -> None:
    job = store.create_job("demo", {})
    subnet = store.add_subnet(job.id, CONFIG, "profile")
    store.add_measurements(
        subnet.id,
        [
            Measurement("accuracy", 0.5),
            Measurement("latency_ms", 3.0, target="cpu", spread=0.2, repeats=20),
            Measurement("latency_ms", 1.0, target="gpu"),
        ],
    )
    store.add_measurements(subnet.id, [Measurement("accuracy", 0.7), Measurement("macs", 1e6)])
    metrics = store.get_subnet(job.id, subnet.id).metrics
    assert metrics == {"accuracy": 0.7, "latency_ms@cpu": 3.0, "latency_ms@gpu": 1.0, "macs": 1e6}


def test_subnets_require_filters_on_every_key(store: Store) -> None:
    job = store.create_job("demo", {})
    both, acc_only, neither = (store.add_subnet(job.id, {"depth": d}, "profile") for d in (1, 2, 3))
    store.add_measurements(
        both.id,
        [
            Measurement("accuracy", 0.9),
            Measurement("latency_ms", 2.0, target="cpu"),
        ],
    )
    store.add_measurements(
        acc_only.id,
        [
            Measurement("accuracy", 0.8),
            Measurement("latency_ms", 2.0, target="gpu"),
        ],
    )
    assert [s.id for s in store.subnets(job.id)] == [both.id, acc_only.id, neither.id]
    assert [s.id for s in store.subnets(job.id, require=["accuracy"])] == [both.id, acc_only.id]
    required = store.subnets(job.id, require=["accuracy", "latency_ms@cpu"])
    assert [s.id for s in required] == [both.id]
    assert required[0].metrics == {"accuracy": 0.9, "latency_ms@cpu": 2.0}
    other_job = store.create_job("other", {})
    assert store.subnets(other_job.id, require=["accuracy"]) == []


def test_subnet_of_another_job_is_not_found(store: Store) -> None:
    job, other = store.create_job("a", {}), store.create_job("b", {})
    subnet = store.add_subnet(other.id, CONFIG, "profile")
    with pytest.raises(NotFoundError) as info:
        store.get_subnet(job.id, subnet.id)
    assert str(subnet.id) in one_line(info.value) and job.id in str(info.value)


def test_measurements_for_unknown_subnet_add_nothing(store: Store) -> None:
    job = store.create_job("demo", {})
    subnet = store.add_subnet(job.id, CONFIG, "profile")
    with pytest.raises(NotFoundError, match="unknown subnet 9999"):
        store.add_measurements(9999, [Measurement("accuracy", 0.5)])
    with pytest.raises(NotFoundError, match="unknown subnet 9999"):
        store.set_subnet_weights(9999, "/x")
    assert store.get_subnet(job.id, subnet.id).metrics == {}


def test_failed_write_rolls_back_the_whole_transaction(store: Store) -> None:
    job = store.create_job("demo", {})
    subnet = store.add_subnet(job.id, CONFIG, "profile")
    store.add_measurements(subnet.id, [Measurement("accuracy", 0.5)])
    broken = Measurement("macs", None)  # type: ignore[arg-type]  # NOT NULL fails at the database
    with pytest.raises(StoreError) as info:
        store.add_measurements(subnet.id, [Measurement("accuracy", 0.9), broken])
    assert "add measurements" in one_line(info.value)
    assert store.get_subnet(job.id, subnet.id).metrics == {"accuracy": 0.5}
    store.add_measurements(subnet.id, [Measurement("macs", 5.0)])  # the store still works
    assert store.get_subnet(job.id, subnet.id).metrics == {"accuracy": 0.5, "macs": 5.0}


# -- fronts -------------------------------------------------------------------------------------


def test_save_front_replaces_and_keeps_order(store: Store) -> None:
    job = store.create_job("demo", {})
    a, b, c = (store.add_subnet(job.id, {"depth": d}, "search") for d in (1, 2, 3))
    store.add_measurements(a.id, [Measurement("accuracy", 0.9)])
    store.save_front(job.id, "cpu", ["accuracy", "latency_ms@cpu"], [c.id, a.id])
    store.save_front(job.id, "gpu", ["accuracy", "latency_ms@gpu"], [b.id])
    store.save_front(job.id, "cpu", ["accuracy", "latency_ms@cpu"], [b.id, c.id, a.id])

    front = store.front(job.id, "cpu")
    assert (front.job_id, front.target) == (job.id, "cpu")
    assert front.objectives == ["accuracy", "latency_ms@cpu"]
    assert [p.id for p in front.points] == [b.id, c.id, a.id]
    assert front.points[2].metrics == {"accuracy": 0.9}
    assert store.front(job.id).target == "cpu"  # the first front stays first after replacement
    assert store.front_targets(job.id) == ["cpu", "gpu"]
    assert [p.id for p in store.front(job.id, "gpu").points] == [b.id]


def test_front_not_found_names_job_and_targets(store: Store) -> None:
    job = store.create_job("demo", {})
    with pytest.raises(NotFoundError, match=f"job '{job.id}' has no Pareto front yet"):
        store.front(job.id)
    subnet = store.add_subnet(job.id, CONFIG, "search")
    store.save_front(job.id, "cpu", ["accuracy"], [subnet.id])
    with pytest.raises(NotFoundError) as info:
        store.front(job.id, "tpu")
    message = one_line(info.value)
    assert job.id in message and "'tpu'" in message and "'cpu'" in message


def test_save_front_with_foreign_subnet_keeps_the_old_front(store: Store) -> None:
    job, other = store.create_job("a", {}), store.create_job("b", {})
    mine = store.add_subnet(job.id, CONFIG, "search")
    theirs = store.add_subnet(other.id, CONFIG, "search")
    store.save_front(job.id, "cpu", ["accuracy"], [mine.id])
    with pytest.raises(NotFoundError, match=f"unknown subnets \\[{theirs.id}\\]"):
        store.save_front(job.id, "cpu", ["accuracy"], [theirs.id])
    assert [p.id for p in store.front(job.id, "cpu").points] == [mine.id]


# -- opening databases --------------------------------------------------------------------------


def test_unreachable_postgres_is_a_one_line_store_error() -> None:
    with pytest.raises(StoreError) as info:
        Store("postgresql+psycopg://nas:secret@127.0.0.1:1/nas")
    message = one_line(info.value)
    assert message.startswith("cannot reach database postgresql+psycopg://nas:***@127.0.0.1:1/nas")
    assert "secret" not in message


def test_sqlite_in_missing_directory_is_a_store_error(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    with pytest.raises(StoreError) as info:
        Store(f"sqlite:///{missing / 'nas.db'}")
    assert str(missing) in one_line(info.value)
    with pytest.raises(StoreError, match="missing"):
        resolve_url(str(missing / "nas.db"))
    assert not missing.exists()


def test_sqlite_uses_wal_and_foreign_keys(tmp_path: Path) -> None:
    path = tmp_path / "nas.db"
    with Store(f"sqlite:///{path}") as store:
        with store._engine.connect() as conn:  # the pragmas are per connection: ask the store's
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() > 0
    with sqlite3.connect(path) as raw:  # WAL is a property of the file
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_resolve_url_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("NAS_DB", raising=False)
    default = tmp_path / ".nas" / "nas.db"
    assert resolve_url() == f"sqlite:///{default}"
    assert default.parent.is_dir()  # only the default location is created

    monkeypatch.setenv("NAS_DB", "env.db")  # a bare path is a SQLite file, made absolute
    assert resolve_url() == f"sqlite:///{tmp_path / 'env.db'}"
    assert resolve_url(None) == f"sqlite:///{tmp_path / 'env.db'}"

    pg = "postgresql+psycopg://user@db.example:5432/nas"
    assert resolve_url(pg) == pg
    monkeypatch.setenv("NAS_DB", pg)
    assert resolve_url() == pg
    assert resolve_url(str(tmp_path / "arg.db")) == f"sqlite:///{tmp_path / 'arg.db'}"


def test_store_works_as_a_context_manager(store_url: str) -> None:
    with Store(store_url) as store:
        job_id = store.create_job("demo", {}).id
    with Store(store_url) as store:  # reopening finds the tables and the rows
        assert store.get_job(job_id).name == "demo"


# -- metric keys --------------------------------------------------------------------------------


def test_metric_keys_round_trip() -> None:
    assert metric_key("latency_ms", "cpu") == "latency_ms@cpu"
    assert metric_key("accuracy", "") == "accuracy"
    assert split_metric_key("latency_ms@cpu") == ("latency_ms", "cpu")
    assert split_metric_key("accuracy") == ("accuracy", "")
    for bad in ("", "@cpu", "latency_ms@", "a@b@c"):
        with pytest.raises(ValueError, match="bad metric key"):
            split_metric_key(bad)
    with pytest.raises(ValueError, match="free of '@'"):
        Measurement("latency_ms@cpu", 1.0)


def test_predictions_label_subnets_and_search_iterations_round_trip(store: Store) -> None:
    job = store.create_job("j", {})
    subnet = store.add_subnet(job.id, {"a": 1}, "search")
    store.add_measurements(subnet.id, [Measurement("accuracy", 0.9)])
    store.add_predictions(subnet.id, {"accuracy": 0.8, "latency_ms@cpu": 1.5}, iteration=1)
    store.add_predictions(subnet.id, {"accuracy": 0.85}, iteration=2)
    [record] = store.subnets(job.id)
    assert record.metrics == {"accuracy": 0.9}
    assert record.predicted == {"accuracy": 0.85, "latency_ms@cpu": 1.5}
    store.add_search_iteration(job.id, 0, 16, 0.5, {})
    store.add_search_iteration(job.id, 1, 24, 0.6, {"accuracy": {"spearman": 0.9}})
    store.add_search_iteration(job.id, 1, 24, 0.7, {"accuracy": {"spearman": 0.95}})
    iterations = store.search_iterations(job.id)
    assert [(i.iteration, i.evaluations, i.hypervolume) for i in iterations] == [
        (0, 16, 0.5),
        (1, 24, 0.7),
    ]
    assert iterations[1].scores == {"accuracy": {"spearman": 0.95}}
    with pytest.raises(NotFoundError, match="unknown subnet 999"):
        store.add_predictions(999, {"accuracy": 0.1}, iteration=1)


def test_latency_predictors_round_trip_and_update(store: Store) -> None:
    job = store.create_job("j", {})
    with pytest.raises(ValueError, match="target 'cpu' of job '.*' has no latency table"):
        store.save_latency_predictor(job.id, "cpu", scores={"mape": 0.1})
    store.save_latency_predictor(job.id, "cpu", table={'{"op":"stem"}': 0.02})
    store.save_latency_predictor(job.id, "gpu", table={'{"op":"stem"}': 0.01})
    store.save_latency_predictor(job.id, "cpu", scores={"held_out": {"mape": 0.05}})
    cpu, gpu = store.latency_predictors(job.id)
    assert (cpu.target, cpu.table, cpu.scores) == (
        "cpu",
        {'{"op":"stem"}': 0.02},
        {"held_out": {"mape": 0.05}},
    )
    assert (gpu.target, gpu.scores) == ("gpu", {})
    with pytest.raises(NotFoundError, match="unknown job 'nope'"):
        store.latency_predictors("nope")


# -- transactions spanning several calls ---------------------------------------------------------


def test_transaction_is_one_snapshot_and_rolls_back_as_one(store: Store) -> None:
    job = store.create_job("demo", {})
    with pytest.raises(NotFoundError), store.transaction():
        store.update_job(job.id, status="running")
        assert store.get_job(job.id).status == "running"  # the block sees its own writes
        store.get_job("nosuchjob")
    assert store.get_job(job.id).status == "pending"  # the whole block was rolled back
    with store.transaction():
        store.update_job(job.id, status="running", stage="train")
        store.update_job(job.id, stage_detail="epoch 1/2")
    assert (store.get_job(job.id).stage, store.get_job(job.id).stage_detail) == (
        "train",
        "epoch 1/2",
    )
