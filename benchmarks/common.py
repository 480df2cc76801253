"""What the benchmarks share: the trained supernet of a finished job, and real subnet measuring."""

from __future__ import annotations

import json

from nas.spec import JobSpec
from nas.store import Store, resolve_url
from search_spaces import Config, SearchSpace
from workers.datasets import Splits, load_dataset
from workers.evaluator import accuracy, load_supernet, recalibrate_batchnorm

CALIBRATION = 500  # batch-norm calibration samples per evaluation (the same for every method)


def one_thread() -> None:
    """A worker pool's initializer: each worker process computes on one core. With a BLAS or
    torch thread per core in each of N workers, an N-core host would run N times more threads
    than cores."""
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(1)
    threadpool_limits(1)


def load_job(db: str | None, job_id: str | None):
    """``(job id, space, supernet, splits)`` of the newest finished job, or of ``job_id``."""
    with Store(resolve_url(db)) as store:
        jobs = [j for j in store.list_jobs() if j.status == "done" and job_id in (None, j.id)]
        if not jobs:
            raise SystemExit("no finished job found: run the demo first, or pass --db and --job")
        job = jobs[0]
        checkpoint = store.training_runs(job.id)[-1].checkpoint_path
    spec = JobSpec.model_validate(job.spec)
    space = spec.space()
    supernet = load_supernet({"name": space.name, "kwargs": space.describe()}, checkpoint)
    return job.id, space, supernet, load_dataset(**spec.dataset_kwargs())


class Evaluator:
    """Real measurements of subnets (validation accuracy after BN recalibration, exact MACs),
    memoised per config."""

    def __init__(self, space: SearchSpace, supernet, splits: Splits):
        self.space, self.supernet, self.splits = space, supernet, splits
        self.cache: dict[str, dict[str, float]] = {}

    def __call__(self, configs: list[Config]) -> list[dict[str, float]]:
        return [self.one(c) for c in configs]

    def one(self, config: Config) -> dict[str, float]:
        key = json.dumps(config, sort_keys=True)
        if key not in self.cache:
            net = recalibrate_batchnorm(
                self.supernet.extract(config), self.splits.x_train, samples=CALIBRATION
            )
            self.cache[key] = {
                "accuracy": accuracy(net, self.splits.x_val, self.splits.y_val),
                "macs": float(self.supernet.macs(config)),
            }
        return self.cache[key]
