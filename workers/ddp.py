"""Data-parallel supernet training on Ray Train: one ``TorchTrainer.fit()`` per epoch.

The controller drives training epoch by epoch, as it drives the one-process trainer actor: the
stopping rule decides after every epoch and only the controller stores results. So
``DataParallelTrainer.run_epoch(epoch)`` starts a worker group for that epoch alone. Every
worker builds a ``SupernetTrainer`` from the same checkpoint file, trains exactly that epoch on
its share of each global batch (``workers.trainer`` says how the shares add up to one process's
update), and worker 0 validates and writes the checkpoint atomically, with the epoch's curve
values, which the driver then reads from it.

When a worker dies, ``run_epoch`` runs the epoch again (up to ``max_failures`` times) in a new
worker group, which reloads the same checkpoint and trains the epoch from its start; an epoch the
checkpoint already holds comes back without training. So the controller receives each epoch
once, and a killed worker costs one epoch's work at most. The retries are ours, not Ray Train's
(``FailureConfig`` allows it none): Ray Train 2.60 does not shut down a group whose worker dies
in the last moments of its start (after the group's state is built), so the group's placement
group keeps its CPUs as long as Ray Train's controller lives, and the controller's own retry
(unlimited by default) then waits for those CPUs forever. Without Ray Train's retries the
controller ends, and ``run_epoch`` removes any group still left (``remove_leftover_groups``)
before it tries again. A group that cannot get its resources within Ray Train's start timeout
is not a failure: the epoch waits on, as a one-worker actor waits for its CPUs.

Why not one long ``fit()`` streaming epoch results to the controller through an actor: the
controller would have to stop and resume the group on the stopping rule's word, tell a retried
epoch from a new one, and keep the group and the database in step across controller restarts;
a group per epoch keeps all of that in the checkpoint. The price is the group's start-up
(Ray Train's controller, the worker processes and their imports, the process group, dataset,
supernet and checkpoint) once per epoch: ``benchmarks/results/ddp_throughput_*.md`` measures
it; 15 to 17 s on an overloaded 2-core development machine, small against an epoch of real
data, large against an epoch of a toy dataset (which one worker trains better anyway).

Ray Train writes its run state under ``storage``, a local directory beside the checkpoint
(nothing leaves the machine; on a cluster it must be shared, as the checkpoint itself is).
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from uuid import uuid4

import ray
import ray.train.torch
from ray.train import FailureConfig, RunConfig, ScalingConfig, TrainingFailedError
from ray.train.torch import TorchConfig, TorchTrainer
from ray.train.v2._internal.exceptions import WorkerGroupStartupTimeoutError
from ray.train.v2.api.exceptions import ControllerError
from ray.util.placement_group import PlacementGroup, placement_group_table, remove_placement_group

from workers.trainer import SupernetTrainer, stored_curve

logger = logging.getLogger(__name__)


class DataParallelError(RuntimeError):
    """Data-parallel training failed."""

    def __init__(self, message: str, waited_for_resources: bool = False):
        super().__init__(message)
        self.waited_for_resources = waited_for_resources


def torch_trainer(
    loop: Callable[[dict[str, Any]], None],
    config: dict[str, Any],
    workers: int,
    resources: Mapping[str, float],
    storage: str | Path,
    name: str,
) -> TorchTrainer:
    """A ``TorchTrainer`` running ``loop(config)`` once on ``workers`` workers with
    ``resources`` each (``{"CPU": 2, "GPU": 1, ...}``): gloo on CPUs, NCCL on GPUs. Ray Train
    retries nothing; a failure ends ``fit`` (see the module's docstring)."""
    use_gpu = resources.get("GPU", 0) > 0
    return TorchTrainer(
        loop,
        train_loop_config=config,
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=workers, use_gpu=use_gpu, resources_per_worker=dict(resources)
        ),
        run_config=RunConfig(
            name=name,
            storage_path=str(Path(storage).resolve()),
            failure_config=FailureConfig(max_failures=0, controller_failure_limit=0),
        ),
    )


def fit(trainer: TorchTrainer) -> None:
    """Run ``trainer``; a failure is one line."""
    try:
        trainer.fit()
    except TrainingFailedError as error:
        # Ray's message ends with the worker's exception line, after its traceback
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        cause = lines[-1] if lines else type(error).__name__
        waited = isinstance(error, ControllerError) and isinstance(
            error.controller_failure, WorkerGroupStartupTimeoutError
        )
        raise DataParallelError(f"data-parallel training failed: {cause}", waited) from error


def remove_leftover_groups(before: set[str], workers: int, resources: Mapping[str, float]) -> int:
    """Remove the placement groups created since ``before`` (the ids ``placement_group_table``
    held then) that still hold ``workers`` bundles of ``resources``; how many.

    Called after a failed ``fit`` of this process, whose worker group Ray Train may have left
    holding its resources. A group another process created in the same moments with the same
    shape would go too (its workers die, and its ``run_epoch`` retries the epoch); on the
    controller's one-job-per-process clusters that is the only false match possible.
    """
    removed = 0
    for group_id, group in placement_group_table().items():
        bundles = list(group["bundles"].values())
        if group_id in before or group["state"] == "REMOVED" or len(bundles) != workers:
            continue
        if all(bundle.get(k, 0) == v for bundle in bundles for k, v in resources.items()):
            remove_placement_group(PlacementGroup(ray.PlacementGroupID.from_hex(group_id)))
            removed += 1
    return removed


def train_epoch(config: dict[str, Any]) -> None:
    """Every worker's loop: restore the trainer from the checkpoint and train
    ``config["epoch"]``; worker 0 saves the checkpoint with the epoch's curve values."""
    trainer = SupernetTrainer(
        config["space"],
        config["dataset"],
        config["training"],
        config["checkpoint_dir"],
        threads=config["threads"],
        device=str(ray.train.torch.get_device()),
    )
    trainer.run_epoch(config["epoch"])


def log_retry(epoch: int, why: str) -> None:
    """``DataParallelTrainer``'s default report of a retried epoch."""
    logger.warning("epoch %d: %s", epoch, why)


class DataParallelTrainer:
    """``SupernetTrainer``'s ``run_epoch`` on ``workers`` Ray Train workers; the driver side.

    Lives in the controller's process and holds no training state: the checkpoint in
    ``checkpoint_dir`` is the state. ``resources`` are each worker's Ray resources.
    """

    def __init__(
        self,
        space: Mapping[str, Any],
        dataset: Mapping[str, Any],
        training: Mapping[str, Any],
        checkpoint_dir: str,
        workers: int,
        resources: Mapping[str, float],
        max_failures: int = 0,
        on_retry: Callable[[int, str], None] = log_retry,
    ):
        self.config = {
            "space": dict(space),
            "dataset": dict(dataset),
            "training": dict(training),
            "checkpoint_dir": checkpoint_dir,
            "threads": max(1, int(resources.get("CPU", 1))),
        }
        self.workers = workers
        self.resources = dict(resources)
        self.max_failures = max_failures
        self.on_retry = on_retry

    def run_epoch(self, epoch: int) -> dict[str, float]:
        """``SupernetTrainer.run_epoch(epoch)`` on the workers: idempotent, as there.

        A failed attempt is tried again, ``max_failures`` times at most; an attempt that
        waited for resources in vain does not count. Each retry is reported to
        ``on_retry(epoch, why)`` (by default, logged).
        """
        failures = 0
        while True:
            before = set(placement_group_table())
            try:
                self._fit_epoch(epoch)
                return stored_curve(self.config["checkpoint_dir"])[epoch - 1]
            except DataParallelError as error:
                leftover = remove_leftover_groups(before, self.workers, self.resources)
                failures += not error.waited_for_resources
                if failures > self.max_failures:
                    raise
                self.on_retry(
                    epoch,
                    f"{error}; trying again ({failures} of {self.max_failures} failures allowed, "
                    f"{leftover} leftover worker groups removed)",
                )

    def _fit_epoch(self, epoch: int) -> None:
        """One attempt at ``epoch``. Ray Train's run directory is new for every attempt (a
        retried epoch is a new run, not a resumed one: the checkpoint file is the only state)
        and removed afterwards."""
        storage = Path(self.config["checkpoint_dir"]) / "ray-train"
        name = f"epoch-{epoch}-{uuid4().hex[:8]}"
        config = {**self.config, "epoch": epoch}
        trainer = torch_trainer(train_epoch, config, self.workers, self.resources, storage, name)
        try:
            fit(trainer)
        finally:
            shutil.rmtree(storage / name, ignore_errors=True)
