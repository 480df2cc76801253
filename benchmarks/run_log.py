"""Run logs: the results of a benchmark's finished tasks, kept so that a benchmark cut short
(a time limit, a lost machine) runs again only what it had not finished; and the worker pool
that runs those tasks and stops with the benchmark when it is cut. Apart from the
measuring helpers in ``common`` so that a benchmark with nothing to measure (replays of
learning curves) does not load the supernet stack to keep one."""

from __future__ import annotations

import contextlib
import json
import signal
import sys
from collections.abc import Callable, Iterator, Mapping
from multiprocessing import get_context
from multiprocessing.pool import Pool
from pathlib import Path
from typing import Any

from rich.progress import track

#: Where a benchmark keeps the results of its finished tasks, to resume after a cut (``RunLog``).
RUN_LOGS = Path(".nas") / "benchmark-runs"


@contextlib.contextmanager
def worker_pool(processes: int, initializer: Callable[[], None] | None = None) -> Iterator[Pool]:
    """A pool of ``processes`` fresh (spawned) worker processes that stops with the benchmark:
    while it is open, SIGTERM (``kill``, ``timeout``, a machine's shutdown) ends the benchmark
    as Ctrl-C does, so that the pool terminates its workers instead of leaving them running
    without a parent."""
    previous = signal.signal(signal.SIGTERM, _exit_once)
    try:
        with get_context("spawn").Pool(processes, initializer=initializer) as pool:
            yield pool
    finally:
        signal.signal(signal.SIGTERM, previous)


def _exit_once(signum: int, frame: object) -> None:
    """Exit on the first SIGTERM and ignore the next: ``timeout`` and ``kill -- -PGID`` signal
    the benchmark's whole process group, so it may be told twice, and a second exit raised
    while the pool is terminating would break off the termination."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sys.exit(128 + signum)


class RunLog:
    """The results of a benchmark's finished tasks, one JSON line each after a first line that
    names the setup they were measured under (job, validation samples, budgets...): a benchmark
    cut short (a time limit, a lost machine) runs again only what it had not finished. A file
    written under another setup starts afresh, since its results would not be comparable. The
    device is not part of a setup: a subnet measured on a CPU and on a GPU differs by float
    rounding alone (at most 2 of 20,000 validation samples, seen on 25 cnn1d subnets), so a
    run cut short on a GPU may be finished on a CPU."""

    def __init__(self, path: Path, setup: Mapping[str, Any]):
        self.path, self.setup = path, json.loads(json.dumps(setup))
        self.results: dict[str, Any] = {}
        lines = path.read_text().splitlines() if path.exists() else []
        if lines and _parsed(lines[0]) == self.setup:
            for line in lines[1:]:
                entry = _parsed(line)  # None for a line cut off by a kill
                if isinstance(entry, dict) and "key" in entry:
                    self.results[entry["key"]] = entry["result"]
            print(f"resuming from {path}: {len(self.results)} tasks already done")
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w") as log:  # rewritten whole: no half line stays in it
            log.write(json.dumps(self.setup) + "\n")
            for key, result in self.results.items():
                log.write(json.dumps({"key": key, "result": result}) + "\n")

    def run(
        self, pool: Pool, function: Callable[[Any], Any], tasks: Mapping[str, Any], label: str
    ) -> list[Any]:
        """``function(task)`` for every task not done yet, in ``pool``, each result logged as
        it comes; the results of all ``tasks`` in their order (as JSON gives them back)."""
        todo = [(function, key, task) for key, task in tasks.items() if key not in self.results]
        with self.path.open("a") as log:
            for key, result in track(pool.imap_unordered(_keyed, todo), label, len(todo)):
                result = json.loads(json.dumps(result))  # as a resumed run reads it
                log.write(json.dumps({"key": key, "result": result}) + "\n")
                log.flush()
                self.results[key] = result
        return [self.results[key] for key in tasks]


def _keyed(job: tuple[Callable[[Any], Any], str, Any]) -> tuple[str, Any]:
    function, key, task = job
    return key, function(task)


def _parsed(line: str) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError:
        return None
