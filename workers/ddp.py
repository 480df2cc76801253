"""Data-parallel supernet training on Ray Train: one ``TorchTrainer.fit()`` per epoch.

The controller drives training epoch by epoch, as it drives the one-process trainer actor: the
stopping rule decides after every epoch and only the controller stores results. So
``DataParallelTrainer.run_epoch(epoch)`` starts a worker group for that epoch alone. Every
worker builds a ``SupernetTrainer`` from the same checkpoint file, trains exactly that epoch on
its share of each global batch (``workers.trainer`` says how the shares add up to one process's
update), and worker 0 validates and writes the checkpoint atomically, with the epoch's curve
values, which the driver then reads from it.

When a worker dies, Ray Train (``FailureConfig(max_failures=...)``) restarts the whole group,
which reloads the same checkpoint and trains the epoch again from its start; an epoch the
checkpoint already holds comes back without training. So the controller receives each epoch
once, and a killed worker costs one epoch's work at most.

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

import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from uuid import uuid4

import ray.train.torch
from ray.train import FailureConfig, RunConfig, ScalingConfig, TrainingFailedError
from ray.train.torch import TorchConfig, TorchTrainer

from workers.trainer import SupernetTrainer, stored_curve


class DataParallelError(RuntimeError):
    """Data-parallel training failed, also after every restart Ray Train was allowed."""


def torch_trainer(
    loop: Callable[[dict[str, Any]], None],
    config: dict[str, Any],
    workers: int,
    resources: Mapping[str, float],
    storage: str | Path,
    name: str,
    max_failures: int = 0,
) -> TorchTrainer:
    """A ``TorchTrainer`` running ``loop(config)`` on ``workers`` workers with ``resources``
    each (``{"CPU": 2, "GPU": 1, ...}``): gloo on CPUs, NCCL on GPUs."""
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
            failure_config=FailureConfig(max_failures=max_failures),
        ),
    )


def fit(trainer: TorchTrainer) -> None:
    """Run ``trainer``; a failure (after every restart allowed) is one line."""
    try:
        trainer.fit()
    except TrainingFailedError as error:
        # Ray's message ends with the worker's exception line, after its traceback
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        cause = lines[-1] if lines else type(error).__name__
        raise DataParallelError(f"data-parallel training failed: {cause}") from error


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

    def run_epoch(self, epoch: int) -> dict[str, float]:
        """``SupernetTrainer.run_epoch(epoch)`` on the workers: idempotent, as there.

        Ray Train's run directory is new for every call (a retried epoch is a new run, not a
        resumed one: the checkpoint file is the only state) and removed afterwards.
        """
        storage = Path(self.config["checkpoint_dir"]) / "ray-train"
        name = f"epoch-{epoch}-{uuid4().hex[:8]}"
        trainer = torch_trainer(
            train_epoch,
            {**self.config, "epoch": epoch},
            self.workers,
            self.resources,
            storage,
            name,
            self.max_failures,
        )
        try:
            fit(trainer)
        finally:
            shutil.rmtree(storage / name, ignore_errors=True)
        return stored_curve(self.config["checkpoint_dir"])[epoch - 1]
