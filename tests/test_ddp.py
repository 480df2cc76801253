"""Data-parallel supernet training on Ray Train: two gloo workers make one worker's updates,
and a run that loses a worker mid-epoch resumes from its checkpoint with each epoch stored once;
an epoch waits for CPUs held elsewhere, and a failed attempt leaves no worker group behind.

The tests share the session's local Ray instance (two CPUs: two workers of one CPU each).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import ray
import torch

from nas.controller import Controller
from nas.spec import parse_spec
from nas.store import Store
from search_spaces import get_space, space_type
from tests.conftest import tiny_spec
from workers.datasets import load_dataset
from workers.ddp import DataParallelTrainer, fit, remove_leftover_groups, torch_trainer
from workers.trainer import SupernetTrainer, stored_curve

pytestmark = pytest.mark.usefixtures("ray_cluster")

DATASETS = {  # digits as vectors for cnn1d, as 16x16 images for mobilenetv3
    "cnn1d": {"name": "digits"},
    "mobilenetv3": {"name": "digits", "image_size": 16},
}
SPACE_OPTIONS = {"cnn1d": {}, "mobilenetv3": {"width_mult": 0.25, "resolutions": [12, 16]}}
TRAINING = {
    "epochs": 2,
    "batch_size": 64,
    # SGD: its update is linear in the gradient, so float64 rounding stays at rounding size
    # (Adam divides by the gradients' own size and turns rounding noise on a near-zero
    # gradient into a visible step)
    "optimizer": {"name": "sgd", "lr": 0.05, "weight_decay": 1e-4},
    "random_subnets": 1,
    "distillation": "inplace",
    "seed": 3,
}
STEPS = 5


def space_data(name: str = "cnn1d") -> dict:
    splits = load_dataset(**DATASETS[name])
    kwargs = space_type(name).data_kwargs(splits.input_shape, splits.num_classes)
    space = get_space(name, **kwargs, **SPACE_OPTIONS[name])
    return {"name": space.name, "kwargs": space.describe()}


def train_steps(config: dict) -> dict[str, torch.Tensor]:
    """``STEPS`` global batches of epoch 1 in float64 (float32 rounding, amplified by batch
    norms of nearly constant channels, would hide the comparison); worker 0 saves the weights.
    Every worker's loop, and the one-process reference."""
    torch.set_default_dtype(torch.float64)
    try:
        name = config["space"]
        trainer = SupernetTrainer(
            space_data(name), DATASETS[name], TRAINING, config["checkpoint_dir"]
        )
        order = np.random.default_rng(0).permutation(len(trainer.splits.y_train))
        loss = trainer.train_batches(1, order[: STEPS * TRAINING["batch_size"]])
    finally:
        torch.set_default_dtype(torch.float32)
    state = {k: v.detach().clone() for k, v in trainer.supernet.state_dict().items()}
    if trainer.rank == 0 and "out" in config:
        torch.save({"state": state, "loss": loss, "world": trainer.world}, config["out"])
    return {"state": state, "loss": loss}


def train_steps_loop(config: dict) -> None:
    """``train_steps`` as a Ray Train loop (which must not return tensors)."""
    train_steps(config)


@pytest.mark.parametrize("space", ["cnn1d", "mobilenetv3"])
def test_two_workers_make_one_workers_updates(tmp_path: Path, space: str) -> None:
    """Every batch norm, elastic or fixed-width, normalises over the global batch."""
    out = tmp_path / "two.pt"
    config = {"checkpoint_dir": str(tmp_path / "none"), "out": str(out), "space": space}
    loop, storage = train_steps_loop, tmp_path / "ray-train"
    fit(torch_trainer(loop, config, 2, {"CPU": 1}, storage, "steps"))
    two = torch.load(out, weights_only=False)
    one = train_steps({"checkpoint_dir": str(tmp_path / "none"), "space": space})
    assert two["world"] == 2
    assert two["state"].keys() == one["state"].keys()
    # float64 rounding, amplified by batch norms over few values (mobilenetv3's 1x1 maps),
    # reaches 1.3e-7 in the weights and 1e-9 in the loss (cnn1d: 1e-14); batch norms over each
    # process's own rows instead of the global batch move mobilenetv3's weights by 1.8
    torch.testing.assert_close(two["state"], one["state"], rtol=1e-6, atol=1e-6)
    assert two["loss"] == pytest.approx(one["loss"], rel=1e-6)
    start = SupernetTrainer(
        space_data(space), DATASETS[space], TRAINING, str(tmp_path / "none")
    ).supernet
    moved = [
        k for k, v in start.state_dict().items() if not torch.equal(v, one["state"][k].float())
    ]
    assert len(moved) > 0.9 * len(one["state"])  # the steps did train


def training_workers(cpu_s: float) -> list[int]:
    """The Ray Train worker processes on this host (by the title Ray gives them) that have
    spent ``cpu_s`` seconds of CPU: past their imports, training."""
    found = []
    for p in psutil.process_iter(["cmdline"]):
        if p.info["cmdline"] and " ".join(p.info["cmdline"]).startswith("ray::RayTrainWorker"):
            with contextlib.suppress(psutil.NoSuchProcess):
                if p.cpu_times().user > cpu_s:
                    found.append(p.pid)
    return found


def test_an_epoch_waits_for_its_workers_cpus_and_waiting_is_no_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another holder keeps both CPUs past Ray Train's start timeout: the attempt is reported
    and tried again without counting as a failure (none are allowed here), and once the CPUs
    are free the epoch trains; the holder's group, older than the attempt, is not touched."""
    monkeypatch.setenv("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "2")
    holder = ray.util.placement_group([{"CPU": 1}] * 2)
    ray.get(holder.ready(), timeout=60)
    retries: list[tuple[int, str]] = []

    def on_retry(epoch: int, why: str) -> None:
        retries.append((epoch, why))
        assert ray.util.placement_group_table(holder)["state"] == "CREATED"
        ray.util.remove_placement_group(holder)  # the holder lets go

    checkpoint_dir = str(tmp_path / "run")
    trainer = DataParallelTrainer(
        space_data(), DATASETS["cnn1d"], TRAINING, checkpoint_dir, 2, {"CPU": 1}, 0, on_retry
    )
    try:
        values = trainer.run_epoch(1)
    finally:
        if ray.util.placement_group_table(holder)["state"] != "REMOVED":
            ray.util.remove_placement_group(holder)
    assert [epoch for epoch, _ in retries] == [1]
    assert "timed out" in retries[0][1] and "(0 of 0 failures allowed" in retries[0][1]
    assert values == stored_curve(checkpoint_dir)[0] and len(stored_curve(checkpoint_dir)) == 1


def test_only_the_failed_attempts_leftover_groups_are_removed() -> None:
    """The groups created since the snapshot with the workers' shape go; the older group and
    one of another shape stay (they belong to someone else)."""
    older = ray.util.placement_group([{"CPU": 0.25}] * 2)
    before = set(ray.util.placement_group_table())
    leftover = ray.util.placement_group([{"CPU": 0.25}] * 2)
    other_shape = ray.util.placement_group([{"CPU": 0.25}])
    groups = (older, leftover, other_shape)
    try:
        ray.get([g.ready() for g in groups], timeout=60)
        assert remove_leftover_groups(before, 2, {"CPU": 0.25}) == 1
        table = ray.util.placement_group_table()
        states = [table[g.id.hex()]["state"] for g in groups]
        assert states == ["CREATED", "REMOVED", "CREATED"]
    finally:
        for group in (older, other_shape):
            ray.util.remove_placement_group(group)


# When epoch 2's worker is killed: while it trains (past its imports: 3 s of CPU, both workers
# up), or while its group starts (0.5 s of CPU, the first worker up), where Ray Train 2.60 may
# leave the group's placement group holding both CPUs (``workers.ddp`` removes it).
KILL_MOMENTS = {"while training": (3.0, 2), "while its group starts": (0.5, 1)}


@pytest.mark.parametrize("moment", KILL_MOMENTS)
def test_a_killed_worker_resumes_from_the_checkpoint_and_each_epoch_is_stored_once(
    tmp_path: Path, moment: str
) -> None:
    cpu_s, workers_up = KILL_MOMENTS[moment]
    epochs = 2
    spec = tiny_spec(name="ddp")
    spec["training"].update(
        epochs=epochs,
        batch_size=128,
        workers=2,
        cpus=1,
        early_stopping={"min_finished": 2},  # too few runs to stop: the rule falls back
    )
    parsed = parse_spec(spec)
    db = f"sqlite:///{tmp_path / 'nas.db'}"
    with Store(db) as store:
        job = store.create_job("ddp", parsed.model_dump(mode="json"))
        details: list[str] = []
        controller = Controller(
            store, job.id, tmp_path / "artifacts", lambda *progress: details.append(progress[-1])
        )
        errors: list[BaseException] = []

        def train() -> None:
            try:
                controller.train()
            except BaseException as error:  # re-raised in the test's thread
                errors.append(error)

        thread = threading.Thread(target=train)
        thread.start()
        killed = None
        epoch_1_workers: set[int] = set()  # they may linger a moment after their epoch
        deadline = time.monotonic() + 150
        try:
            while thread.is_alive() and killed is None:
                assert time.monotonic() < deadline, "timed out waiting for epoch 2's workers"
                runs = store.training_runs(job.id)
                if not runs or runs[0].epochs_done == 0:
                    epoch_1_workers.update(training_workers(cpu_s=0.0))
                busy = [w for w in training_workers(cpu_s=cpu_s) if w not in epoch_1_workers]
                if runs and runs[0].epochs_done == 1 and len(busy) >= workers_up:
                    killed = busy[-1]
                    os.kill(killed, signal.SIGKILL)
                time.sleep(0.2)
            thread.join(timeout=240)
        finally:
            # a failed wait must not leave this training holding the shared cluster's CPUs
            # (the later tests' jobs would wait for them): cancelled, it stops after its epoch
            if thread.is_alive():
                store.cancel_job(job.id)
                thread.join(timeout=240)
        assert not thread.is_alive(), "training did not finish"
        assert not errors, errors
        assert killed is not None, "no worker was killed: the run finished first"
        [run] = store.training_runs(job.id)
        curve = store.curve(run.id)
        decisions = store.stop_decisions(job.id)
    assert run.status == "done" and run.epochs_done == epochs
    # the job's status said so: epoch 2 tried again, after its first failure
    retries = [d for d in details if "trying again" in d]
    assert retries and all(d.startswith("run 1/1, epoch 2/2: ") for d in retries), details
    assert "(1 of 3 failures allowed" in retries[0]
    names = ("train_loss", "val_acc/largest", "val_acc/smallest")
    assert sorted((p.epoch, p.name) for p in curve) == sorted(
        (e, n) for e in range(1, epochs + 1) for n in names
    )
    assert [d.epoch for d in decisions] == [1]  # judged after every epoch but the last
    assert not any(d.stop for d in decisions)
    stored = torch.load(run.checkpoint_path, weights_only=False)
    assert stored["epoch"] == epochs and len(stored["curve"]) == epochs
    by_epoch = {(p.epoch, p.name): p.value for p in curve}
    for epoch, values in enumerate(stored["curve"], start=1):
        assert all(by_epoch[(epoch, n)] == pytest.approx(values[n]) for n in names)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"workers": 0}, "training.workers: Input should be greater than or equal to 1"),
        ({"resources_per_worker": {"CPU": 2}}, "give the CPUs of each worker as 'cpus'"),
        ({"resources_per_worker": {"GPU": 1}}, "set 'device: cuda' instead"),
        ({"resources_per_worker": {"fpga": -1}}, "resource fpga=-1.0 must not be negative"),
        ({"workers": 4, "batch_size": 3}, "batch_size=3 must give each of the 4 workers a row"),
    ],
)
def test_bad_worker_settings_are_named(change: dict, expected: str) -> None:
    spec = tiny_spec()
    spec["training"].update(change)
    with pytest.raises(Exception, match=expected.replace("(", r"\(")):
        parse_spec(spec)


def test_worker_resources_hold_the_cpus_and_the_rest() -> None:
    spec = tiny_spec()
    spec["training"].update(cpus=3, workers=2, device="cuda", resources_per_worker={"fast": 1})
    training = parse_spec(spec).training
    assert training.worker_resources() == {"CPU": 3, "GPU": 1, "fast": 1}
