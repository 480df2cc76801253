"""What the benchmarks share: the trained supernet of a finished job, and real subnet measuring."""

from __future__ import annotations

import argparse
import functools
import json
from typing import NamedTuple

from nas.spec import JobSpec
from nas.store import Store, resolve_url
from search_spaces import Config, SearchSpace
from workers.datasets import DatasetError, Splits, load_dataset
from workers.evaluator import BATCH, accuracy, load_supernet, recalibrate_batchnorm

CALIBRATION = 500  # batch-norm calibration samples per evaluation (the same for every method)
#: Validation samples the benchmarks measure subnets on (generated datasets), in place of the
#: job's own; see ``load_job``.
VAL_SAMPLES = 20_000
#: Rows per forward pass when measuring on a GPU, which many worker processes share: with 16
#: of them on one H100, a subnet took 0.75 s to measure in batches of 500 rows and 0.5 s in
#: batches of 10,000 (on a CPU the evaluator's own batch is as fast).
GPU_BATCH = 10_000


def one_thread() -> None:
    """A worker pool's initializer: each worker process computes on one core. With a BLAS or
    torch thread per core in each of N workers, an N-core host would run N times more threads
    than cores."""
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(1)
    threadpool_limits(1)


class Source(NamedTuple):
    """Where a benchmark's subnets come from and how they are measured; it travels to worker
    processes, which open the job themselves."""

    db: str | None
    job: str | None
    val_samples: int | None = None
    device: str = "cpu"

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Source:
        """The source named by ``add_source_arguments``' options."""
        return cls(args.db, args.job, args.val_samples, args.device)

    def open(self) -> tuple[Source, SearchSpace, Evaluator]:
        """``(source, space, evaluator)``, the source pinned to the job it opened (so that
        workers open that job even if a newer one finishes meanwhile). Opened once per process:
        a worker running many tasks generates the validation samples (13 s for 20,000) and
        loads the supernet once, and its evaluator remembers what it measured."""
        return _opened(self)


@functools.cache
def _opened(source: Source) -> tuple[Source, SearchSpace, Evaluator]:
    job_id, space, supernet, splits = load_job(source.db, source.job, source.val_samples)
    return source._replace(job=job_id), space, Evaluator(space, supernet, splits, source.device)


def add_source_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", help="the database of the finished job (default: the demo's)")
    parser.add_argument("--job", help="a finished job's id (default: the newest)")
    parser.add_argument(
        "--val-samples",
        type=int,
        default=VAL_SAMPLES,
        help="freshly generated validation samples to measure on (0: the job's own set)",
    )
    parser.add_argument("--device", default="cpu", type=device, help="where subnets are measured")


def device(name: str) -> str:
    """``name`` if torch can compute there (``cpu``, ``cuda``, ``cuda:1``), else a usage error."""
    import torch

    try:
        torch.empty(1, device=name)
    except (RuntimeError, AssertionError) as error:
        raise argparse.ArgumentTypeError(f"cannot compute on {name!r}: {error}") from None
    return name


def load_job(db: str | None, job_id: str | None, val_samples: int | None = None):
    """``(job id, space, supernet, splits)`` of the newest finished job, or of ``job_id``.

    ``val_samples`` replaces the job's validation set by that many freshly generated samples
    (generated datasets only): a benchmark that ranks subnets a fraction of a point apart needs
    a smaller standard error than a job's search does (0.0015 at 20,000 samples, 0.0033 at
    4,000, for an accuracy of 0.955)."""
    with Store(resolve_url(db)) as store:
        jobs = [j for j in store.list_jobs() if j.status == "done" and job_id in (None, j.id)]
        if not jobs:
            raise SystemExit("no finished job found: run the demo first, or pass --db and --job")
        job = jobs[0]
        checkpoint = store.training_runs(job.id)[-1].checkpoint_path
    spec = JobSpec.model_validate(job.spec)
    space = spec.space()
    supernet = load_supernet({"name": space.name, "kwargs": space.describe()}, checkpoint)
    dataset = spec.dataset_kwargs() | ({"val_samples": val_samples} if val_samples else {})
    try:
        splits = load_dataset(**dataset)
    except DatasetError as error:
        raise SystemExit(f"job {job.id}'s dataset: {error}") from None
    return job.id, space, supernet, splits


class Evaluator:
    """Real measurements of subnets (validation accuracy after BN recalibration, exact MACs),
    memoised per config, on ``device`` (``cpu``, or ``cuda`` where there is a GPU)."""

    def __init__(self, space: SearchSpace, supernet, splits: Splits, device: str = "cpu"):
        self.space, self.supernet, self.splits, self.device = space, supernet, splits, device
        self.batch = BATCH if device == "cpu" else GPU_BATCH
        self.cache: dict[str, dict[str, float]] = {}

    def __call__(self, configs: list[Config]) -> list[dict[str, float]]:
        return [self.one(c) for c in configs]

    def one(self, config: Config) -> dict[str, float]:
        key = json.dumps(config, sort_keys=True)
        if key not in self.cache:
            net = recalibrate_batchnorm(
                self.supernet.extract(config).to(self.device),
                self.splits.x_train,
                samples=CALIBRATION,
            )
            self.cache[key] = {
                "accuracy": accuracy(net, self.splits.x_val, self.splits.y_val, self.batch),
                "macs": float(self.supernet.macs(config)),
            }
        return self.cache[key]
