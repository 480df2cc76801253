"""Subnet evaluations per second with 1, 2, 4, ... Ray workers, beside a process pool.

The controller measures subnets in chunks: ``w`` parallel tasks of 8 subnets each, every task
loading the supernet checkpoint and the dataset once, then extracting, recalibrating batch norm
and scoring each subnet (``workers.evaluator.evaluate_configs``). This benchmark times exactly
that for each worker count, on Ray tasks and, as the peer, on a ``ProcessPoolExecutor`` doing
the same calls, and reports the rate and the scaling efficiency
``rate(w) / (w * rate(1))``. Both get an untimed warm-up round, so start-up of the worker
processes is not counted for either.

    python benchmarks/evaluation_scaling.py                  # 1, 2, 4, ... up to the cores
    python benchmarks/evaluation_scaling.py --workers 1 2    # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import ray
import torch

from search_spaces import get_space
from workers.evaluator import evaluate_configs

RESULTS = Path(__file__).parent / "results"
PER_TASK = 8  # subnets per evaluation task, as the controller sends them
DATASET = {"name": "mnist1d", "val_samples": 4000}  # the demo's validation set

Run = Callable[[list[list[dict]]], None]


def checkpoint(directory: Path) -> tuple[dict, str]:
    """A cnn1d supernet checkpoint (random weights: evaluation costs the same)."""
    space = get_space("cnn1d")
    torch.manual_seed(0)
    path = directory / "supernet.pt"
    torch.save({"model": space.build_supernet().state_dict()}, path)
    return {"name": space.name, "kwargs": space.describe()}, str(path)


def timed(run: Run, parts: list[list[dict]], repeats: int) -> float:
    """Median seconds of ``repeats`` timed rounds after one warm-up round."""
    run(parts)
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        run(parts)
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cores = os.cpu_count() or 1
    default = [w for w in (1, 2, 4, 8, 16, 32, 64) if w <= cores]
    parser.add_argument("--workers", type=int, nargs="+", default=default)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tag", default="", help="suffix of the result files")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    space_obj = get_space("cnn1d")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        space, path = checkpoint(Path(tmp))
        ray.init(address="local", num_cpus=max(args.workers), include_dashboard=False)
        task = ray.remote(num_cpus=1)(evaluate_configs)

        def on_ray(parts: list[list[dict]]) -> None:
            ray.get([task.remote(space, DATASET, path, part) for part in parts])

        for workers in args.workers:
            configs = [space_obj.sample(rng) for _ in range(PER_TASK * workers)]
            parts = [configs[i::workers] for i in range(workers)]
            with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:

                def on_pool(parts: list[list[dict]], pool=pool) -> None:
                    jobs = [pool.submit(evaluate_configs, space, DATASET, path, p) for p in parts]
                    for job in jobs:
                        job.result()

                pool_s = timed(on_pool, parts, args.repeats)
            ray_s = timed(on_ray, parts, args.repeats)
            rows.append(
                {
                    "workers": workers,
                    "evaluations": len(configs),
                    "ray_s": ray_s,
                    "pool_s": pool_s,
                    "ray_per_s": len(configs) / ray_s,
                    "pool_per_s": len(configs) / pool_s,
                }
            )
            print(json.dumps(rows[-1]), flush=True)
        ray.shutdown()
    for row in rows:
        for name in ("ray", "pool"):
            row[f"{name}_efficiency"] = row[f"{name}_per_s"] / (
                row["workers"] * rows[0][f"{name}_per_s"] / rows[0]["workers"]
            )
    write(rows, args.tag, cores)


def write(rows: list[dict], tag: str, cores: int) -> None:
    RESULTS.mkdir(exist_ok=True)
    name = f"evaluation_scaling{'_' + tag if tag else ''}"
    host = {"cores": cores, "machine": platform.machine(), "python": platform.python_version()}
    (RESULTS / f"{name}.json").write_text(json.dumps({"host": host, "rows": rows}, indent=1))
    lines = [
        "# Subnet evaluations per second by number of workers",
        "",
        f"Produced by `benchmarks/evaluation_scaling.py` on {cores} cores. Each round: `w` tasks "
        f"of {PER_TASK} cnn1d subnets (load checkpoint and mnist1d, then per subnet: extract, "
        "recalibrate batch norm on 2000 samples, score 4000 validation and the test samples); "
        "median of the timed rounds after a warm-up round. Efficiency is rate(w) / (w x rate(1)).",
        "",
        "| workers | Ray evals/s | Ray efficiency | process pool evals/s | pool efficiency "
        "| Ray / pool |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['workers']} | {r['ray_per_s']:.2f} | {r['ray_efficiency']:.2f} "
            f"| {r['pool_per_s']:.2f} | {r['pool_efficiency']:.2f} "
            f"| {r['ray_per_s'] / r['pool_per_s']:.2f} |"
        )
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
