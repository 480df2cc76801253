"""How well subnet accuracy is predicted on subnets the predictor was not fitted on: each
regressor (the jobs' candidates and the Gaussian process) and the cross-validated choice among
the jobs' candidates and among all four, side by side, on a trained supernet.

Two ways of drawing subnets, each fitted and scored on its own draw: ``uniform`` (every choice
equally likely: sizes bunch around the middle of the space, the hardest case for ranking) and
``size-spread`` (each subnet draws a size bias, then every dimension leans small or large by it:
subnets from the smallest to the largest, as a search front spans them).

Run the demo job first (it trains the supernet), then::

    python benchmarks/accuracy_predictor.py [--db .nas/nas.db] [--job ID] [--train 100] [--test 200]

Results: benchmarks/results/accuracy_predictor.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from common import Evaluator, load_job

from nas.predictors.surrogate import CANDIDATES, SubnetPredictor
from search_spaces import Config, SearchSpace

RESULTS = Path(__file__).parent / "results"
#: Every regressor, the jobs' default choice among them and the Gaussian process, which the
#: Optuna sampler also offers.
REGRESSORS = (*CANDIDATES, "gaussian_process")


def size_spread_sample(space: SearchSpace, rng: np.random.Generator) -> Config:
    """A subnet whose choices all lean one way: index ~ Binomial(choices - 1, bias)."""
    bias = rng.uniform()
    return space.canonical(
        {d.name: d.choices[rng.binomial(len(d.choices) - 1, bias)] for d in space.dimensions}
    )


DRAWS: dict[str, Callable[[SearchSpace, np.random.Generator], Config]] = {
    "uniform": lambda space, rng: space.sample(rng),
    "size-spread": size_spread_sample,
}


def score_draw(space, evaluate, draw, args) -> dict:
    """Measure ``train + test`` distinct subnets of one draw; fit each predictor, score it."""
    rng = np.random.default_rng(args.seed)
    configs: dict[str, Config] = {}
    while len(configs) < args.train + args.test:
        config = DRAWS[draw](space, rng)
        configs[json.dumps(config, sort_keys=True)] = config
    subnets = list(configs.values())
    start = time.perf_counter()
    y = np.array([m["accuracy"] for m in evaluate(subnets)])
    measuring_s = time.perf_counter() - start
    x = np.array([space.features(c) for c in subnets])
    train, test = slice(0, args.train), slice(args.train, None)
    rows = []
    for names in [[name] for name in REGRESSORS] + [list(CANDIDATES), list(REGRESSORS)]:
        start = time.perf_counter()
        predictor = SubnetPredictor(candidates=names, seed=args.seed).fit(x[train], y[train])
        fit_s = time.perf_counter() - start
        label = (
            names[0]
            if len(names) == 1
            else f"cross-validated choice among {', '.join(names)} ({predictor.chosen_})"
        )
        rows.append({"predictor": label, **predictor.score(x[test], y[test]), "fit_s": fit_s})
    return {
        "draw": draw,
        "measuring_s": measuring_s,
        "accuracy_range_test": [float(y[test].min()), float(y[test].max())],
        "predictors": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db")
    parser.add_argument("--job")
    parser.add_argument("--train", type=int, default=100)
    parser.add_argument("--test", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)

    job_id, space, supernet, splits = load_job(args.db, args.job)
    evaluate = Evaluator(space, supernet, splits)
    draws = [score_draw(space, evaluate, draw, args) for draw in DRAWS]
    result = {
        "job": job_id,
        "validation_samples": len(splits.y_val),
        "train_subnets": args.train,
        "test_subnets": args.test,
        "draws": draws,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "accuracy_predictor.json").write_text(json.dumps(result, indent=2))
    lines = [
        f"# Accuracy predictor on job {job_id}: fitted on {args.train} subnets, "
        f"scored on {args.test} others of the same draw",
        "",
        f"Accuracy measured on {len(splits.y_val)} validation samples after BN recalibration.",
    ]
    for d in draws:
        low, high = d["accuracy_range_test"]
        lines += [
            "",
            f"## {d['draw']} subnets (held-out accuracy {low:.3f} to {high:.3f})",
            "",
            "| predictor | Spearman | Kendall | MAE | fit (s) |",
            "|---|---|---|---|---|",
        ]
        for r in d["predictors"]:
            lines.append(
                f"| {r['predictor']} | {r['spearman']:.3f} | {r['kendall']:.3f} "
                f"| {r['mae']:.4f} | {r['fit_s']:.2f} |"
            )
    (RESULTS / "accuracy_predictor.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
