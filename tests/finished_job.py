"""A finished job written straight through the ``Store`` API, with real weights to export.

What a controller would leave behind, in seconds and without Ray: a supernet checkpoint (random
weights), two training runs with curves and stop decisions, measured subnets (the largest, the
smallest, random ones) each with its extracted weights, predictions, search iterations, a
latency predictor and two fronts (the spec's objectives, and accuracy against latency on cpu).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from fastapi import FastAPI
from safetensors.torch import save_file

from nas.pareto import non_dominated
from nas.service import create_app
from nas.spec import JobSpec, directions
from nas.store import Measurement, StopDecisionRecord, Store
from tests.conftest import tiny_spec
from tests.supernets import randomised_supernet

EPOCHS = 4


@dataclass(frozen=True)
class FinishedJob:
    id: str
    subnets: list[int]
    front: list[int]
    """The subnets of the spec's-objectives front, in stored order."""
    unscored: int
    """A subnet with measurements but no weights: not exportable."""


def finished_spec() -> dict:
    return tiny_spec(name="finished", dataset={"name": "digits"})


def make_finished_job(store: Store, artifacts: Path, subnets: int = 12) -> FinishedJob:
    spec = finished_spec()
    job = store.create_job(spec["name"], spec)
    space = JobSpec.model_validate(spec).space()
    supernet = randomised_supernet(space)
    artifacts.mkdir(parents=True, exist_ok=True)
    checkpoint = artifacts / "supernet.pt"
    torch.save({"model": supernet.state_dict()}, checkpoint)

    for index, (status, epochs) in enumerate([("done", EPOCHS), ("stopped", 2)]):
        run = store.create_training_run(job.id, {"tuned": {"lr": 0.01 * (index + 1)}})
        for epoch in range(1, epochs + 1):
            largest = 0.5 + 0.1 * epoch - 0.05 * index
            store.add_curve_points(
                run.id,
                epoch,
                {"val_acc/largest": largest, "val_acc/smallest": largest - 0.1, "loss": 2 / epoch},
            )
            if epoch < EPOCHS:
                stop = status == "stopped" and epoch == epochs
                store.add_stop_decision(
                    StopDecisionRecord(
                        run.id, epoch, stop, 0.8, 0.7, 0.9, 0.85, 0.01 if stop else 0.5,
                        "stop: unlikely to beat the best" if stop else "continue",
                    )
                )  # fmt: skip
        store.update_training_run(
            run.id, status=status, epochs_done=epochs, checkpoint_path=str(checkpoint)
        )

    rng = np.random.default_rng(0)
    configs = [space.max(), space.min()] + [space.sample(rng) for _ in range(subnets - 2)]
    largest_macs = supernet.macs(space.max())
    ids = []
    for position, config in enumerate(configs):
        config = configs[position] = space.canonical(config)
        source = "profile" if position < 4 else "search"
        subnet = store.add_subnet(job.id, config, source)
        macs = float(supernet.macs(config))
        accuracy = 0.6 + 0.35 * (macs / largest_macs) ** 0.3 + 0.01 * rng.standard_normal()
        store.add_measurements(
            subnet.id,
            [
                Measurement("accuracy", accuracy),
                Measurement("test_accuracy", accuracy - 0.01),
                Measurement("macs", macs),
                Measurement("params", float(supernet.params(config))),
                Measurement("latency_ms", 0.1 + macs / 1e6, "cpu", 0.01, 5),
            ],
        )
        if source == "search":
            predicted = {"accuracy": accuracy + 0.02, "latency_ms@cpu": 0.12 + macs / 1e6}
            store.add_predictions(subnet.id, predicted, iteration=position // 4)
        ids.append(subnet.id)
    unscored = ids.pop()  # measured, but its weights were never written
    for subnet_id, config in zip(ids, configs, strict=False):
        weights = artifacts / f"{subnet_id}.safetensors"
        net = supernet.extract(config)
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, weights)
        store.set_subnet_weights(subnet_id, str(weights))

    for iteration in range(1, 3):
        scores = {"accuracy": {"model": "ridge", "spearman": 0.8, "kendall": 0.6, "mae": 0.01}}
        store.add_search_iteration(job.id, iteration, 4 + 4 * iteration, 0.1 * iteration, scores)
    store.save_latency_predictor(
        job.id, "cpu", table={"stem": 0.01}, scores={"model": "layer-table+linear", "layers": 1}
    )

    scored = [s for s in store.subnets(job.id) if s.id != unscored]
    front = []
    for target, keys in [("", ["accuracy", "macs"]), ("cpu", ["accuracy", "latency_ms@cpu"])]:
        chosen = non_dominated([[s.metrics[k] for k in keys] for s in scored], directions(keys))
        members = sorted((scored[i] for i in chosen), key=lambda s: s.metrics[keys[1]])
        store.save_front(job.id, target, keys, [s.id for s in members])
        front = front or [s.id for s in members]
    store.update_job(job.id, status="done", stage="done", stage_detail="")
    return FinishedJob(job.id, ids + [unscored], front, unscored)


# ---- the service over a finished job ------------------------------------------------------------
TOKEN = "test-token-0123456789abcdef"


class RecordingRunner:
    """A job runner that only records what it was asked to start (no Ray, no child process)."""

    def __init__(self) -> None:
        self.started: list[str] = []

    def start(self, job_id: str) -> None:
        self.started.append(job_id)

    def close(self) -> None:
        pass


@dataclass(frozen=True)
class Served:
    app: FastAPI
    job: FinishedJob
    runner: RecordingRunner
    url: str


def serve_finished_job(url: str, directory: Path, **options: object) -> Served:
    """The real app over the database at ``url``, which gets a finished job first."""
    with Store(url) as store:
        job = make_finished_job(store, directory / "artifacts")
    runner = RecordingRunner()
    app = create_app(url, TOKEN, runner=runner, artifacts=directory / "artifacts", **options)
    return Served(app, job, runner, url)
