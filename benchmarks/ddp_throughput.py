"""Images per second of data-parallel supernet training, by number of Ray Train workers.

Every worker count runs the training code path of ``training.workers > 1``: a ``TorchTrainer``
from ``workers.ddp.torch_trainer`` (NCCL on GPUs, gloo on CPUs) whose workers each build a
``SupernetTrainer`` and train sandwich steps with ``train_batches`` (their share of every global
batch, gradients summed over the workers, batch norm over the global batch). The data are
synthetic (random images, random labels: the cost of a step does not depend on them), made in
each worker, one global batch of them, visited again every step; every batch still goes from
host memory to the device, as a data loader's would.

Each worker keeps ``--batch`` rows per step, so the global batch grows with the workers (weak
scaling, as data-parallel training is used). Reported per worker count: images/s over the timed
steps after ``--warmup`` untimed ones, the efficiency ``rate(w) / (w * rate(1))``, and the
start-up of one ``fit()`` (the worker group, the process group, building the supernet): what
the controller pays once per epoch with ``workers > 1``.

    # one H200, then every GPU of the host (the default: 1, 2, 4, ... up to the GPUs)
    python benchmarks/ddp_throughput.py --device cuda --tag h200
    # a CPU smoke test on a tiny 1-D space
    python benchmarks/ddp_throughput.py --space cnn1d --device cpu --channels 0 \\
        --resolution 40 --classes 10 --batch 32 --steps 3 --warmup 1 --workers 1 2 --tag smoke
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch

import search_spaces
from workers.datasets import Splits
from workers.ddp import fit, torch_trainer
from workers.trainer import SupernetTrainer

RESULTS = Path(__file__).parent / "results"


def space_kwargs(name: str, shape: tuple[int, ...], classes: int) -> dict[str, Any]:
    """The space's constructor arguments for samples of ``shape``: the space's own
    ``data_kwargs`` where spaces size themselves from the data, else a 1-D space's length."""
    if hasattr(search_spaces, "space_type"):
        return search_spaces.space_type(name).data_kwargs(shape, classes)
    return {"input_length": shape[-1], "num_classes": classes}


def synthetic(shape: tuple[int, ...], classes: int, rows: int, seed: int = 0) -> Splits:
    """``rows`` random samples of ``shape`` with random labels; a tiny validation part."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, *shape), dtype=np.float32)
    y = rng.integers(0, classes, rows).astype(np.int64)
    y[:classes] = np.arange(min(classes, rows))  # every class appears
    return Splits(x, y, x[:2], y[:2], x[:2], y[:2])


def throughput_loop(config: dict[str, Any]) -> None:
    """Every worker: build the trainer on synthetic data, warm up, time ``steps`` steps;
    worker 0 writes the timings to ``config["out"]``."""
    import ray.train.torch

    started = time.perf_counter()
    world = ray.train.get_context().get_world_size()
    rows = config["batch"] * world
    splits = synthetic(tuple(config["shape"]), config["classes"], rows)
    trainer = SupernetTrainer(
        config["space"],
        splits,
        config["training"],
        config["checkpoint_dir"],
        threads=config["threads"],
        device=str(ray.train.torch.get_device()),
    )
    built = time.perf_counter()
    order = np.arange(rows)
    step_ms = []
    for step in range(config["warmup"] + config["steps"]):
        start = time.perf_counter()
        trainer.train_batches(step, order)  # reads its loss: the device has finished
        step_ms.append(1000 * (time.perf_counter() - start))
    timed = step_ms[config["warmup"] :]
    if trainer.rank == 0:
        report = {
            "world": trainer.world,
            "images_per_s": rows * len(timed) / (sum(timed) / 1000),
            "step_ms": sum(timed) / len(timed),
            "median_step_ms": float(np.median(timed)),
            "step_ms_each": [round(ms) for ms in step_ms],
            "build_s": built - started,
            "loop_s": time.perf_counter() - started,
        }
        Path(config["out"]).write_text(json.dumps(report))


def input_shape(args: argparse.Namespace) -> tuple[int, ...]:
    """Images ``(channels, resolution, resolution)``, or sequences ``(resolution,)``."""
    return (
        (args.channels, args.resolution, args.resolution) if args.channels else (args.resolution,)
    )


def run(args: argparse.Namespace, workers: int, scratch: Path) -> dict[str, Any]:
    shape = input_shape(args)
    kwargs = space_kwargs(args.space, shape, args.classes) | json.loads(args.space_options)
    space = search_spaces.get_space(args.space, **kwargs)
    out = scratch / f"workers-{workers}.json"
    config = {
        "space": {"name": space.name, "kwargs": space.describe()},
        "shape": list(shape),
        "classes": args.classes,
        "batch": args.batch,
        "steps": args.steps,
        "warmup": args.warmup,
        "threads": args.cpus,
        "checkpoint_dir": str(scratch / "none"),
        "out": str(out),
        "training": {
            "epochs": 2,
            "batch_size": args.batch * workers,
            "optimizer": {"name": "sgd", "lr": 0.01, "weight_decay": 4e-5},
            "random_subnets": args.random_subnets,
            "distillation": "inplace",
            "seed": 0,
        },
    }
    resources = {"CPU": args.cpus, **({"GPU": 1} if args.device == "cuda" else {})}
    trainer = torch_trainer(
        throughput_loop, config, workers, resources, scratch / "ray-train", f"w{workers}"
    )
    start = time.perf_counter()
    fit(trainer)
    wall = time.perf_counter() - start
    report = json.loads(out.read_text())
    assert report["world"] == workers
    # what fit() costs besides the loop itself: worker group, process group, teardown
    report["startup_s"] = wall - report["loop_s"] + report["build_s"]
    report["fit_s"] = wall
    return {"workers": workers, **report}


def markdown(result: dict[str, Any]) -> str:
    setup = result["setup"]
    precision = "float32 on CPUs" if setup["device_name"] == "CPU" else "bf16 autocast"
    lines = [
        "# Data-parallel supernet training throughput",
        "",
        f"Produced by `benchmarks/ddp_throughput.py` on {setup['host']} ({setup['device_name']}),"
        f" space `{setup['space']}` {setup['space_options']}, inputs {setup['shape']},"
        f" {setup['batch']} images per worker per step, sandwich rule with"
        f" {setup['random_subnets']} random subnets (so {setup['random_subnets'] + 2} forward and"
        f" backward passes per step), {precision}, {setup['steps']} timed steps after"
        f" {setup['warmup']} warm-up steps. Start-up: one `fit()` besides its training loop"
        " (worker group, process group, building the supernet), paid once per epoch by the"
        " controller with `workers > 1`. Efficiency: rate(w) / (w x rate(1)).",
        *(["", f"Note: {setup['note']}"] if setup.get("note") else []),
        "",
        "| workers | images/s | per worker | efficiency | step ms (mean) | step ms (median) |"
        " start-up s |",
        "|---|---|---|---|---|---|---|",
    ]
    base = result["rows"][0]["images_per_s"] / result["rows"][0]["workers"]
    for row in result["rows"]:
        w, rate = row["workers"], row["images_per_s"]
        lines.append(
            f"| {w} | {rate:.1f} | {rate / w:.1f} | {rate / (w * base):.2f} |"
            f" {row['step_ms']:.1f} | {row['median_step_ms']:.1f} | {row['startup_s']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--space", default="mobilenetv3")
    parser.add_argument("--space-options", default="{}", help="JSON, e.g. '{\"width_mult\": 1.0}'")
    parser.add_argument("--workers", type=int, nargs="+", help="default: 1, 2, 4, ... GPUs")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--batch", type=int, default=128, help="images per worker per step")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--channels", type=int, default=3, help="0: 1-D samples of --resolution")
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--random-subnets", type=int, default=2)
    parser.add_argument("--cpus", type=int, default=2, help="CPUs per worker")
    parser.add_argument("--tag", default="local")
    parser.add_argument("--note", default="", help="a line about the host, put in the results")
    args = parser.parse_args()
    available = torch.cuda.device_count() if args.device == "cuda" else 1
    workers = args.workers or [2**i for i in range(8) if 2**i <= max(available, 1)]
    ray.init(address="local", include_dashboard=False, log_to_driver=False)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for w in workers:
            rows.append(run(args, w, Path(scratch)))
            print(json.dumps(rows[-1]), flush=True)
    ray.shutdown()
    result = {
        "setup": {
            "host": f"{os.cpu_count()} cores ({platform.machine()})",
            "device_name": torch.cuda.get_device_name(0) if args.device == "cuda" else "CPU",
            "torch": torch.__version__,
            "ray": ray.__version__,
            "space": args.space,
            "space_options": json.loads(args.space_options),
            "shape": list(input_shape(args)),
            "batch": args.batch,
            "steps": args.steps,
            "warmup": args.warmup,
            "random_subnets": args.random_subnets,
            "cpus_per_worker": args.cpus,
            "note": args.note,
        },
        "rows": rows,
    }
    RESULTS.mkdir(exist_ok=True)
    stem = RESULTS / f"ddp_throughput_{args.tag}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
