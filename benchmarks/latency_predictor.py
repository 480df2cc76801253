"""How well subnet latency is predicted on subnets the predictors were not fitted on: our
layer table with a linear correction against a line in MACs, both fitted on the same subnets,
for each runtime, side by side in one run, on this machine's CPU or GPU.

Weights do not change latency, so a freshly initialised cnn1d supernet (mnist1d's input shape)
stands in for a trained one and no job is needed::

    python benchmarks/latency_predictor.py [--device cpu|cuda] [--fit 100] [--test 200]

Every random subnet is measured in one call of the profiler, which interleaves its rounds over
all of them, the held-out subnets twice, in a random order: a change in the machine's load
falls on fitting and held-out subnets alike, and how often the two measurements of a held-out
subnet agree within 10% is the ceiling any predictor can reach on this machine at this load.

Results: benchmarks/results/latency_predictor_{device}.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime
import torch
from sklearn.linear_model import LinearRegression

from nas.predictors.latency import LatencyPredictor, latency_scores
from search_spaces import get_space
from workers.profiler import RUNTIMES, measure_latency, measure_layers

RESULTS = Path(__file__).parent / "results"
SHAPE = (40,)  # one mnist1d sample


def distinct_configs(space, count: int, rng: np.random.Generator) -> list[dict]:
    configs: dict[str, dict] = {}
    while len(configs) < count:
        config = space.sample(rng)
        configs[json.dumps(config, sort_keys=True)] = config
    return list(configs.values())


def medians(space_data: dict, configs: list[dict], target: dict) -> np.ndarray:
    return np.array([r["median_ms"] for r in measure_latency(space_data, configs, target, SHAPE)])


def run_runtime(space, target: dict, fit: int, test: int, seed: int) -> dict:
    """Measure the layer table and the subnets on one runtime; score both predictors."""
    rng = np.random.default_rng(seed)
    space_data = {"name": space.name, "kwargs": space.describe()}
    start = time.perf_counter()
    table = measure_layers(space_data, space.all_layers(SHAPE), target)
    table_s = time.perf_counter() - start
    configs = distinct_configs(space, fit + test, rng)
    is_test = rng.permutation(np.arange(len(configs)) < test)
    fitting = [c for c, t in zip(configs, is_test, strict=True) if not t]
    held_out = [c for c, t in zip(configs, is_test, strict=True) if t]
    # one interleaved pass over every subnet, the held-out ones twice (in a random order)
    order = rng.permutation(len(configs) + len(held_out))
    batch = configs + held_out
    start = time.perf_counter()
    measured = medians(space_data, [batch[i] for i in order], target)
    subnets_s = time.perf_counter() - start
    y_all = np.empty(len(batch))
    y_all[order] = measured
    y, again = y_all[: len(configs)], y_all[len(configs) :]
    y_fit, y_test = y[~is_test], y[is_test]

    ours = LatencyPredictor(space, {s: t["median_ms"] for s, t in table.items()}, SHAPE)
    ours.fit(fitting, y_fit)
    supernet = space.build_supernet()
    macs = np.array([[supernet.macs(c)] for c in configs], dtype=float)
    line = LinearRegression().fit(macs[~is_test], y_fit)
    table_sum = ours.table_features(held_out)[:, 0]
    rows = [
        {"predictor": "layer table + linear correction (ours)", **ours.score(held_out, y_test)},
        {"predictor": "linear in MACs", **latency_scores(line.predict(macs[is_test]), y_test)},
        {"predictor": "layer table sum, uncorrected", **latency_scores(table_sum, y_test)},
        {"predictor": "the same subnets measured again", **latency_scores(again, y_test)},
    ]
    return {
        "runtime": target["runtime"],
        "layers": len(table),
        "table_s": round(table_s, 1),
        "subnets_s": round(subnets_s, 1),
        "latency_ms_test": [float(y_test.min()), float(np.median(y_test)), float(y_test.max())],
        "correction": {"coef": ours.coef_.tolist(), "intercept": ours.intercept_},
        "predictors": rows,
    }


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--runtimes", nargs="+", choices=RUNTIMES, default=list(RUNTIMES))
    parser.add_argument("--fit", type=int, default=100)
    parser.add_argument("--test", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    space = get_space("cnn1d")
    load_before = os.getloadavg()
    runs = []
    for runtime in args.runtimes:
        target = {
            "name": args.device, "device": args.device, "runtime": runtime,
            "threads": args.threads, "batch_size": args.batch,
            "warmup": args.warmup, "repeats": args.repeats,
        }  # fmt: skip
        # each runtime in a fresh process: what one runtime leaves behind (threads, allocator
        # state, hundreds of freed sessions) must not weigh on the other's measurements
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            future = pool.submit(run_runtime, space, target, args.fit, args.test, args.seed)
        try:
            runs.append(future.result())
        except RuntimeError as error:  # e.g. onnxruntime without its CUDA provider here
            runs.append({"runtime": runtime, "error": str(error)})
        print(json.dumps(runs[-1]), flush=True)
    result = {
        "device": args.device,
        "device_name": device_name(args.device),
        "cpu_count": os.cpu_count(),
        "load_average_1_5_15": {"before": load_before, "after": os.getloadavg()},
        "versions": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__},
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "runtimes")},
        "runs": runs,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"latency_predictor_{args.device}"
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=2))
    (args.out / f"{stem}.md").write_text(markdown(result))
    print(markdown(result))


def markdown(result: dict) -> str:
    s = result["settings"]
    load = result["load_average_1_5_15"]
    lines = [
        f"# Latency predictors on {result['device']} ({result['device_name']}): fitted on "
        f"{s['fit']} random cnn1d subnets, scored on {s['test']} others",
        "",
        f"Batch {s['batch']}, {s['threads']} thread(s), median of {s['repeats']} runs after "
        f"{s['warmup']} warm-up runs; torch {result['versions']['torch']}, onnxruntime "
        f"{result['versions']['onnxruntime']}; {result['cpu_count']} CPUs, load average "
        f"(1, 5, 15 min) {tuple(round(x, 2) for x in load['before'])} before and "
        f"{tuple(round(x, 2) for x in load['after'])} after.",
        "",
        "| runtime | predictor | within ±10% | MAPE | Spearman |",
        "|---|---|---|---|---|",
    ]
    for run in result["runs"]:
        for r in run.get("predictors", []):
            lines.append(
                f"| {run['runtime']} | {r['predictor']} | {r['within_10']:.1%} "
                f"| {r['mape']:.1%} | {r['spearman']:.3f} |"
            )
    lines.append("")
    for run in result["runs"]:
        if "error" in run:
            lines.append(f"- {run['runtime']}: not measured: {run['error']}")
            continue
        low, mid, high = run["latency_ms_test"]
        lines.append(
            f"- {run['runtime']}: {run['layers']} layers measured in {run['table_s']} s; "
            f"subnets {low:.3f} / {mid:.3f} / {high:.3f} ms (min / median / max)."
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
