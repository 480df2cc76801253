"""How well subnet accuracy is predicted on subnets the predictor was not fitted on: each
regressor (the jobs' candidates and the Gaussian process) and the cross-validated choice among
the jobs' candidates and among all four, side by side, on a trained supernet, for several
numbers of fitted subnets.

Two ways of drawing subnets, each fitted and scored on its own draw: ``uniform`` (every choice
equally likely: sizes bunch around the middle of the space, the hardest case for ranking) and
``size-spread`` (each subnet draws a size bias, then every dimension leans small or large by it:
subnets from the smallest to the largest, as a search front spans them). Every predictor of a
draw is scored on the same ``--test`` subnets; the first ``n`` of the others fit it.

Run the demo job first (it trains the supernet), then::

    python benchmarks/accuracy_predictor.py [--db .nas/nas.db] [--job ID] [--train 50,100,200,400]
        [--test 200] [--val-samples 20000] [--workers 2] [--device cpu]

About 20 minutes with 2 workers on 2 cores (measuring 1,200 subnets on 20,000 samples).
Results: benchmarks/results/accuracy_predictor.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from common import Source, add_source_arguments, one_thread
from rich.progress import track
from run_log import worker_pool

from nas.predictors.surrogate import CANDIDATES, SubnetPredictor
from nas.search import size_spread_sample
from search_spaces import Config, SearchSpace

RESULTS = Path(__file__).parent / "results"
#: Every regressor, the jobs' default choice among them and the Gaussian process, which the
#: Optuna sampler also offers.
REGRESSORS = (*CANDIDATES, "gaussian_process")


DRAWS: dict[str, Callable[[SearchSpace, np.random.Generator], Config]] = {
    "uniform": lambda space, rng: space.sample(rng),
    "size-spread": size_spread_sample,
}


def draw_subnets(space: SearchSpace, draw: str, count: int, seed: int) -> list[Config]:
    """``count`` distinct subnets of one draw."""
    rng = np.random.default_rng(seed)
    configs: dict[str, Config] = {}
    while len(configs) < count:
        config = DRAWS[draw](space, rng)
        configs[json.dumps(config, sort_keys=True)] = config
    return list(configs.values())


def measure(args: tuple[Source, list[Config]]) -> list[float]:
    """Validation accuracy of each of a chunk of subnets, in a worker process."""
    source, configs = args
    _, _, evaluate = source.open()
    return [m["accuracy"] for m in evaluate(configs)]


def score_draw(x, y, draw: str, sizes: list[int], test: int, seed: int) -> dict:
    """Fit each predictor on the first ``n`` subnets for each ``n`` in ``sizes``; score it on
    the last ``test``."""
    x_test, y_test = x[-test:], y[-test:]
    rows = []
    for n in sizes:
        for names in [[name] for name in REGRESSORS] + [list(CANDIDATES), list(REGRESSORS)]:
            start = time.perf_counter()
            predictor = SubnetPredictor(candidates=names, seed=seed).fit(x[:n], y[:n])
            fit_s = time.perf_counter() - start
            label = (
                names[0]
                if len(names) == 1
                else f"cross-validated choice among {', '.join(names)} ({predictor.chosen_})"
            )
            scores = predictor.score(x_test, y_test)
            rows.append({"train": n, "predictor": label, **scores, "fit_s": fit_s})
    return {
        "draw": draw,
        "accuracy_range_test": [float(y_test.min()), float(y_test.max())],
        "predictors": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_source_arguments(parser)
    parser.add_argument("--train", default="50,100,200,400", help="numbers of fitted subnets")
    parser.add_argument("--test", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    sizes = sorted(int(n) for n in args.train.split(","))
    source, space, evaluate = Source.from_args(args).open()
    job_id = source.job

    started = time.perf_counter()
    subnets = {d: draw_subnets(space, d, sizes[-1] + args.test, args.seed) for d in DRAWS}
    chunks = [(source, c[i : i + 25]) for c in subnets.values() for i in range(0, len(c), 25)]
    with worker_pool(args.workers, one_thread) as pool:
        measured = list(track(pool.imap(measure, chunks), "measuring subnets", len(chunks)))
    accuracies = iter(a for chunk in measured for a in chunk)
    measuring_s = time.perf_counter() - started
    draws = []
    for draw, configs in subnets.items():
        x = np.array([space.features(c) for c in configs])
        y = np.array([next(accuracies) for _ in configs])
        draws.append(score_draw(x, y, draw, sizes, args.test, args.seed))
    result = {
        "job": job_id,
        "validation_samples": len(evaluate.splits.y_val),
        "train_subnets": sizes,
        "test_subnets": args.test,
        "measuring_s": measuring_s,
        "draws": draws,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "accuracy_predictor.json").write_text(json.dumps(result, indent=2))
    lines = [
        f"# Accuracy predictor on job {job_id}: fitted on {', '.join(map(str, sizes))} "
        f"subnets, scored on {args.test} others of the same draw",
        "",
        f"Accuracy measured on {len(evaluate.splits.y_val)} validation samples after BN "
        "recalibration.",
    ]
    for d in draws:
        low, high = d["accuracy_range_test"]
        lines += [
            "",
            f"## {d['draw']} subnets (held-out accuracy {low:.3f} to {high:.3f})",
            "",
            "| fitted on | predictor | Spearman | Kendall | MAE | fit (s) |",
            "|---|---|---|---|---|---|",
        ]
        for r in d["predictors"]:
            lines.append(
                f"| {r['train']} | {r['predictor']} | {r['spearman']:.3f} | {r['kendall']:.3f} "
                f"| {r['mae']:.4f} | {r['fit_s']:.2f} |"
            )
    (RESULTS / "accuracy_predictor.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
