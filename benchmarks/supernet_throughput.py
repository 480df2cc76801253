"""How fast the mobilenetv3 supernet trains, and what weight sharing costs per step.

Two measurements on synthetic images (speed does not depend on the pixels), one resolution:

1. Sandwich-rule training throughput: images per second through the trainer's own step
   (``workers.trainer.sandwich_step``: the largest subnet on the labels, the smallest and
   ``--random-subnets`` random subnets on its soft predictions, one optimizer step).
2. Elastic overhead: the step time (forward, backward, AdamW step) of one subnet trained inside
   the supernet divided by the step time of the same subnet extracted as a static network and
   trained alone, for the largest, a median (the middle choice of every dimension) and the
   smallest subnet. 1.0 means weight sharing costs nothing.

On CUDA the steps run as the trainer runs them there: bf16 autocast, channels-last images and
weights, no host-device synchronisation inside a step (time is read from CUDA events around
``--steps`` steps after ``--warmup`` steps)::

    python benchmarks/supernet_throughput.py --device cuda                 # H200: 224x224
    python benchmarks/supernet_throughput.py --device cpu --resolution 32 --batch 8 \\
        --width-mult 0.25 --steps 3 --warmup 1 --threads 1 --out /tmp/smoke  # a smoke check

Results: ``benchmarks/results/supernet_throughput_{device}.{json,md}`` (or under ``--out``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch

from search_spaces import get_space
from workers.trainer import fast_forward, make_optimizer, sandwich_step

RESULTS = Path(__file__).parent / "results"
OPTIMIZER = {"name": "adamw", "lr": 1e-3, "weight_decay": 1e-5}


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds_per_step(step: Callable[[int], None], steps: int, warmup: int, device) -> float:
    """Mean wall time of ``step(i)`` over ``steps`` calls after ``warmup`` calls; on CUDA timed
    with events around the whole run, so no step waits for the device."""
    for i in range(warmup):
        step(i)
    synchronise(device)
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for i in range(steps):
            step(warmup + i)
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1000 / steps
    began = time.perf_counter()
    for i in range(steps):
        step(warmup + i)
    return (time.perf_counter() - began) / steps


def median_config(space) -> dict[str, int]:
    """The middle choice of every dimension (the lower middle for an even count)."""
    return space.canonical({d.name: d.choices[(len(d.choices) - 1) // 2] for d in space.dimensions})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_device = "cuda" if torch.cuda.is_available() else "cpu"
    parser.add_argument("--device", default=default_device, choices=["cpu", "cuda"])
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--width-mult", type=float, default=1.0)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--random-subnets", type=int, default=2)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--compile", action="store_true", help="torch.compile the blocks")
    parser.add_argument("--cudnn-benchmark", action="store_true")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (torch's default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    cuda = device.type == "cuda"
    memory_format = torch.channels_last if cuda else torch.contiguous_format
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if cuda else _no_autocast
    space = get_space(
        "mobilenetv3",
        input_shape=[3, args.resolution, args.resolution],
        num_classes=args.classes,
        width_mult=args.width_mult,
        resolutions=[args.resolution],
    )
    torch.manual_seed(args.seed)
    supernet = space.build_supernet().to(device, memory_format=memory_format).train()
    generator = torch.Generator(device=device).manual_seed(args.seed)
    shape = (args.batch, 3, args.resolution, args.resolution)
    x = torch.randn(shape, device=device, generator=generator).contiguous(
        memory_format=memory_format
    )
    y = torch.randint(0, args.classes, (args.batch,), device=device, generator=generator)
    forward = fast_forward(supernet, args.compile)
    rng = np.random.default_rng(args.seed)
    largest, smallest = space.max(), space.min()
    plan = [
        [largest, smallest, *(space.sample(rng) for _ in range(args.random_subnets))]
        for _ in range(args.warmup + args.steps)
    ]

    optimizer = make_optimizer(supernet.parameters(), OPTIMIZER)

    def sandwich(i: int) -> None:
        sandwich_step(forward, optimizer, supernet.parameters(), x, y, plan[i], True, autocast)

    began = time.perf_counter()
    sandwich_time = seconds_per_step(sandwich, args.steps, args.warmup, device)
    passes = 2 + args.random_subnets
    results: dict[str, object] = {
        "sandwich": {
            "seconds_per_step": sandwich_time,
            "images_per_second": args.batch / sandwich_time,
            "subnet_passes_per_step": passes,
            "subnet_images_per_second": args.batch * passes / sandwich_time,
        }
    }

    overhead = {}
    for name, config in (
        ("largest", largest), ("median", median_config(space)), ("smallest", smallest)
    ):  # fmt: skip
        overhead[name] = subnet_overhead(
            supernet, forward, config, x, y, args, device, memory_format, autocast
        )
    results["overhead"] = overhead
    results["wall_seconds"] = time.perf_counter() - began
    write(results, args, device)


def _no_autocast() -> contextlib.AbstractContextManager:
    return contextlib.nullcontext()


def subnet_overhead(
    supernet, forward, config: Mapping[str, int], x, y, args, device, memory_format, autocast
) -> dict[str, float]:
    """Step time of ``config`` inside the supernet and extracted alone, and their ratio."""
    shared_optimizer = make_optimizer(supernet.parameters(), OPTIMIZER)

    def shared(i: int) -> None:
        sandwich_step(
            forward, shared_optimizer, supernet.parameters(), x, y, [config], True, autocast
        )

    static = supernet.extract(config).to(device, memory_format=memory_format).train()
    if args.compile:
        static.compile()  # in place, as the supernet's blocks
    static_optimizer = make_optimizer(static.parameters(), OPTIMIZER)

    def alone(i: int) -> None:
        sandwich_step(
            lambda inputs, _: static(inputs), static_optimizer, static.parameters(),
            x, y, [config], True, autocast,
        )  # fmt: skip

    inside = seconds_per_step(shared, args.steps, args.warmup, device)
    outside = seconds_per_step(alone, args.steps, args.warmup, device)
    return {
        "macs": supernet.macs(config),
        "params": supernet.params(config),
        "supernet_seconds_per_step": inside,
        "static_seconds_per_step": outside,
        "ratio": inside / outside,
    }


def write(results: dict, args: argparse.Namespace, device: torch.device) -> None:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    report = {
        "device": device.type,
        "device_name": name or platform.machine(),
        "torch": torch.__version__,
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "device")}
        | {
            "precision": "bf16 autocast" if device.type == "cuda" else "float32",
            "channels_last": device.type == "cuda",
        },  # fmt: skip
        "results": results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"supernet_throughput_{device.type}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    sandwich = results["sandwich"]
    lines = [
        f"# mobilenetv3 supernet training speed on {device.type} ({report['device_name']})",
        "",
        f"Synthetic {args.resolution}x{args.resolution} images, batch {args.batch}, width "
        f"{args.width_mult}, {args.classes} classes; {report['settings']['precision']}, "
        f"channels-last {report['settings']['channels_last']}, compile {args.compile}; "
        f"{args.steps} timed steps after {args.warmup}; torch {torch.__version__}.",
        "",
        f"**Sandwich-rule training**: {sandwich['images_per_second']:.0f} images/s "
        f"({sandwich['seconds_per_step'] * 1000:.1f} ms per step of "
        f"{sandwich['subnet_passes_per_step']} subnets: largest, smallest and "
        f"{args.random_subnets} random; {sandwich['subnet_images_per_second']:.0f} "
        "subnet-images/s).",
        "",
        "**Elastic overhead** (one subnet's step inside the supernet / the same subnet "
        "extracted and trained alone):",
        "",
        "| subnet | MMACs | params (M) | in supernet (ms) | alone (ms) | ratio |",
        "|---|---|---|---|---|---|",
    ]
    for key, row in results["overhead"].items():
        lines.append(
            f"| {key} | {row['macs'] / 1e6:.1f} | {row['params'] / 1e6:.2f} | "
            f"{row['supernet_seconds_per_step'] * 1000:.2f} | "
            f"{row['static_seconds_per_step'] * 1000:.2f} | {row['ratio']:.3f} |"
        )
    lines += ["", f"Whole run: {results['wall_seconds']:.0f} s.", ""]
    stem.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
