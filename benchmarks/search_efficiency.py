"""How many real subnet evaluations each search method needs to reach 98% of a reference
hypervolume, on a trained ``cnn1d`` supernet, side by side in one run.

Methods: ours (predictor-guided NSGA-II), pymoo NSGA-II on real evaluations, random search,
Optuna's NSGAIISampler and Optuna's TPESampler. Every method measures subnets the same way
(BN recalibration, accuracy on ``--val-samples`` freshly generated validation samples, 20,000
by default; exact MACs) and starts from nothing but its seed; every
evaluation a method asks for counts, its first ones included. The reference hypervolume is
that of a long NSGA-II run on real evaluations (``--reference-budget``, 1000); a second,
stricter table measures against every point any compared method measured, that run included.

Run the demo job first (it trains the supernet), then::

    python benchmarks/search_efficiency.py [--db .nas/nas.db] [--job ID] [--seeds 10]
        [--budget 200] [--others-budget 800] [--device cuda --workers 16]

``--others-budget`` gives the other methods more evaluations than ours (``--budget``), so that
the table can say how many they need to reach 98% rather than only that they need more.

Every finished run is kept in ``--log`` (``.nas/benchmark-runs/search_efficiency.jsonl``):
run the same command again after a cut (a time limit, a lost machine) and only the runs not
finished are run. Results: benchmarks/results/search_efficiency.{json,md,svg} (``--name``).

``--first-seed 10`` runs fresh seeds (10 to 19), and ``--methods`` compares ours with some
methods only (``--methods pymoo-nsga2``, the best of them so far): a check on seeds that no
setting of ours was chosen on, at a fraction of the whole run's cost.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import optuna
from common import Evaluator, Source, add_source_arguments, one_thread
from run_log import RUN_LOGS, RunLog, worker_pool

from nas.search import hypervolume, run_nsga2, run_predictive_search, size_spread_design
from search_spaces import Config, SearchSpace

RESULTS = Path(__file__).parent / "results"
OBJECTIVES, DIRECTIONS = ["accuracy", "macs"], ["max", "min"]
TARGET = 0.98
INITIAL = 16  # ours and pymoo's NSGA-II start from this many (largest, smallest, spread)


class Recorder:
    """Wraps an evaluator and keeps every new point a method measured, in order.

    A config the method already measured is answered again without counting: any real system
    looks a known subnet up rather than measuring it twice.
    """

    def __init__(self, evaluate: Evaluator, budget: int):
        self.evaluate, self.budget, self.points, self.seen = evaluate, budget, [], set()

    def __call__(self, configs: list[Config]) -> list[dict[str, float]]:
        results = self.evaluate(configs)
        for config, r in zip(configs, results, strict=True):
            key = json.dumps(config, sort_keys=True)
            if key not in self.seen and len(self.points) < self.budget:
                self.seen.add(key)
                self.points.append([r["accuracy"], r["macs"]])
        if len(self.points) >= self.budget:
            raise BudgetSpent
        return results


class BudgetSpent(Exception):
    """A method has asked for all the evaluations it may have."""


def initial(space: SearchSpace, rng: np.random.Generator) -> list[Config]:
    """The largest, the smallest and random subnets spread over sizes, as a job profiles them."""
    return size_spread_design(space, INITIAL - 2, rng)


def ours(space, evaluate, budget, seed, reference):
    run_predictive_search(
        space,
        evaluate,
        OBJECTIVES,
        DIRECTIONS,
        initial(space, np.random.default_rng(seed)),
        budget,
        reference,
        exact={"macs": lambda c: float(evaluate.evaluate.supernet.macs(c))},
        batch=4,
        population=64,
        generations=40,
        seed=seed,
    )


def pymoo_nsga2(space, evaluate, budget, seed, reference):
    run_nsga2(
        space,
        evaluate,
        OBJECTIVES,
        DIRECTIONS,
        population=INITIAL,
        generations=budget // INITIAL + 1,
        initial=initial(space, np.random.default_rng(seed)),
        seed=seed,
    )


def random_search(space, evaluate, budget, seed, reference):
    rng = np.random.default_rng(seed)
    while True:
        evaluate([space.sample(rng) for _ in range(INITIAL)])


def _optuna(sampler: Callable[[int], optuna.samplers.BaseSampler]):
    def run(space, evaluate, budget, seed, reference):
        study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler(seed))
        while True:
            trial = study.ask()
            config = space.canonical(
                {
                    d.name: trial.suggest_categorical(d.name, list(d.choices))
                    for d in space.dimensions
                }
            )
            [metrics] = evaluate([config])
            study.tell(trial, [metrics["accuracy"], metrics["macs"]])

    return run


METHODS = {
    "ours (predictor-guided NSGA-II)": ours,
    "pymoo NSGA-II (real evaluations)": pymoo_nsga2,
    "random search": random_search,
    "optuna NSGAIISampler": _optuna(
        lambda s: optuna.samplers.NSGAIISampler(population_size=INITIAL, seed=s)
    ),
    "optuna TPESampler": _optuna(lambda s: optuna.samplers.TPESampler(seed=s, multivariate=True)),
}
OURS = next(iter(METHODS))
#: The names ``--methods`` takes, for the methods ours is compared with.
OTHER_NAMES = dict(
    zip(["pymoo-nsga2", "random", "optuna-nsga2", "optuna-tpe"], list(METHODS)[1:], strict=True)
)


def run_one(args: tuple) -> tuple[str, int, list[list[float]], float]:
    """One method with one seed in a worker process: the points it measured, in order."""
    source, method, seed, budget = args
    warnings.simplefilter("ignore")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    _, space, evaluate = source.open()
    reference = reference_point(space, evaluate)
    recorder = Recorder(evaluate, budget)
    start = time.perf_counter()
    try:
        METHODS[method](space, recorder, budget, seed, reference)
    except BudgetSpent:
        pass
    return method, seed, recorder.points, time.perf_counter() - start


def reference_point(space: SearchSpace, evaluate: Evaluator) -> list[float]:
    """Hypervolume box: the smallest subnet's accuracy and the largest subnet's MACs."""
    return [evaluate.one(space.min())["accuracy"], evaluate.one(space.max())["macs"]]


def curve(points: list[list[float]], reference: list[float]) -> list[float]:
    """Hypervolume of the first n points, for every n."""
    return [hypervolume(points[: n + 1], DIRECTIONS, reference) for n in range(len(points))]


def svg_plot(curves: dict[str, list[float]], reference_hv: float, path: Path) -> None:
    """A small line chart (mean hypervolume over seeds against evaluations), no plotting library."""
    width, height, pad = 720, 420, 50
    longest = max(len(c) for c in curves.values())
    low = min(min(c) for c in curves.values())
    high = max(reference_hv, *(max(c) for c in curves.values()))
    x = lambda i: pad + (width - 2 * pad) * i / max(longest - 1, 1)  # noqa: E731
    y = lambda v: height - pad - (height - 2 * pad) * (v - low) / (high - low)  # noqa: E731
    colours = ["#d62728", "#1f77b4", "#7f7f7f", "#2ca02c", "#9467bd"]
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}">']
    parts.append(f'<rect width="{width}" height="{height}" fill="white"/>')
    target = y(TARGET * reference_hv)
    parts.append(
        f'<line x1="{pad}" x2="{width - pad}" y1="{target}" y2="{target}" '
        'stroke="black" stroke-dasharray="4"/>'
    )
    parts.append(
        f'<text x="{width - pad - 150}" y="{target - 5}" font-size="11">98% of reference</text>'
    )
    for k, (name, values) in enumerate(curves.items()):
        line = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in enumerate(values))
        parts.append(
            f'<polyline fill="none" stroke="{colours[k % 5]}" stroke-width="2" points="{line}"/>'
        )
        parts.append(
            f'<text x="{pad + 10}" y="{pad + 15 * k}" font-size="12" '
            f'fill="{colours[k % 5]}">{name}</text>'
        )
    parts.append(
        f'<text x="{width / 2 - 80}" y="{height - 10}" font-size="12">'
        f"real evaluations (0 to {longest})</text>"
    )
    parts.append(f'<text x="5" y="{pad - 20}" font-size="12">hypervolume (mean over seeds)</text>')
    path.write_text("\n".join(parts + ["</svg>"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_source_arguments(parser)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument(
        "--first-seed", type=int, default=0, help="seeds run from this one (fresh seeds: 10)"
    )
    parser.add_argument("--budget", type=int, default=200, help="our evaluations per seed")
    parser.add_argument(
        "--others-budget",
        type=int,
        help="every other method's evaluations per seed (default: --budget); give them more to "
        "measure how many they need rather than only that they need more than ours",
    )
    parser.add_argument("--reference-budget", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--log",
        type=Path,
        default=RUN_LOGS / "search_efficiency.jsonl",
        help="finished runs are kept here, and a run cut short resumes from it",
    )
    parser.add_argument(
        "--methods",
        nargs="*",
        choices=OTHER_NAMES,
        default=list(OTHER_NAMES),
        help="the methods ours is compared with (default: all)",
    )
    parser.add_argument(
        "--name", default="search_efficiency", help="results/NAME.{json,md,svg} are written"
    )
    args = parser.parse_args()
    budgets = {m: args.budget if m == OURS else args.others_budget or args.budget for m in METHODS}

    source, space, evaluate = Source.from_args(args).open()
    job_id = source.job
    # the long reference run first, so that it does not finish alone after everything else
    tasks = {"reference": (source, "pymoo NSGA-II (real evaluations)", 1000, args.reference_budget)}
    run_seeds = range(args.first_seed, args.first_seed + args.seeds)
    compared = [OURS, *(OTHER_NAMES[name] for name in args.methods)]
    tasks |= {f"{m}/{s}": (source, m, s, budgets[m]) for s in run_seeds for m in compared}
    setup = {
        "benchmark": "search_efficiency",
        "job": job_id,
        "validation_samples": len(evaluate.splits.y_val),
        "budgets": budgets,
        "reference_budget": args.reference_budget,
    }
    log = RunLog(args.log, setup)
    started = time.perf_counter()
    with worker_pool(args.workers, one_thread) as pool:
        long_run, *runs = log.run(pool, run_one, tasks, "runs")
    reference = reference_point(space, evaluate)
    everything = [p for _, _, points, _ in [long_run, *runs] for p in points]
    references = {
        "long_run": curve(long_run[2], reference)[-1],
        "pooled": hypervolume(everything, DIRECTIONS, reference),
    }
    per_method: dict[str, list] = {m: [] for m in compared}
    for method, seed, points, seconds in runs:
        # a run that ends before its budget (it ran out of new subnets) keeps its last value
        hv = curve(points, reference)
        hv += [hv[-1]] * (budgets[method] - len(hv))
        per_method[method].append(
            {
                "seed": seed,
                "evaluations": len(points),
                "final_hv": hv[-1],
                "seconds": seconds,
                "curve": hv,
            }
            | {
                f"evaluations_to_98_of_{name}": reaching(hv, hv_)
                for name, hv_ in references.items()
            }
        )
    mean_curves = {
        m: list(np.mean([s["curve"] for s in seeds], axis=0)) for m, seeds in per_method.items()
    }
    summaries = {name: summarise(per_method, name, hv, budgets) for name, hv in references.items()}
    result = {
        "job": job_id,
        "validation_samples": len(evaluate.splits.y_val),
        "seeds": list(run_seeds),
        "budget_per_run": budgets,
        "reference": {
            "point": reference,
            "long_run_evaluations": len(long_run[2]),
            "long_run_hypervolume": references["long_run"],
            "points_pooled": len(everything),
            "pooled_hypervolume": references["pooled"],
        },
        "summaries": summaries,
        "ours_to_mean_final_hv": to_final(mean_curves),
        "mean_curves": mean_curves,
        "wall_seconds": time.perf_counter() - started,
        "runs": {
            m: [{k: v for k, v in s.items() if k != "curve"} for s in seeds]
            for m, seeds in per_method.items()
        },
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(result, indent=2))
    lines = [
        f"# Search efficiency on job {job_id} "
        f"(seeds {run_seeds.start} to {run_seeds.stop - 1}, at most {args.budget} evaluations "
        f"per run of ours, {args.others_budget or args.budget} per run of the others)",
        "",
        f"Accuracy on {len(evaluate.splits.y_val)} validation samples. Hypervolume box: "
        f"accuracy >= {reference[0]:.4f}, MACs <= {reference[1]:.0f}.",
        "",
        f"## Against a {len(long_run[2])}-evaluation NSGA-II run (hypervolume "
        f"{references['long_run']:.6g})",
        "",
        *table(summaries["long_run"]),
        "",
        f"## Against all {len(everything)} measured points pooled (hypervolume "
        f"{references['pooled']:.6g})",
        "",
        *table(summaries["pooled"]),
        "",
        "## Ours against each method's mean final hypervolume",
        "",
        "| method | its mean final HV | ours reaches it after | times fewer evaluations |",
        "|---|---|---|---|",
        *(
            f"| {m} | {mean_curves[m][-1]:.6g} | {t['evaluations'] or 'not reached'} "
            f"| {t['times_fewer'] or '-'} |"
            for m, t in result["ours_to_mean_final_hv"].items()
        ),
    ]
    (RESULTS / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    svg_plot(mean_curves, references["long_run"], RESULTS / f"{args.name}.svg")
    print("\n".join(lines))


def to_final(mean_curves: dict[str, list[float]]) -> dict[str, dict]:
    """Per other method: the evaluations after which our mean hypervolume (over seeds) reaches
    that method's mean final one, and how many times fewer than its whole budget that is."""
    ours, *others = mean_curves
    out = {}
    for method in others:
        final = mean_curves[method][-1]
        n = first_at_least(mean_curves[ours], final)
        fewer = round(len(mean_curves[method]) / n, 2) if n else None
        out[method] = {"evaluations": n, "times_fewer": fewer}
    return out


def reaching(curve: list[float], reference_hv: float) -> int | None:
    """Evaluations until the hypervolume ``curve`` reaches 98% of ``reference_hv``."""
    return first_at_least(curve, TARGET * reference_hv)


def first_at_least(curve: list[float], value: float) -> int | None:
    """Evaluations until ``curve`` first reaches ``value`` (``None``: never)."""
    return next((i + 1 for i, v in enumerate(curve) if v >= value), None)


def summarise(
    per_method: dict[str, list], name: str, reference_hv: float, budgets: dict[str, int]
) -> dict:
    """Per method, evaluations to 98% of the reference ``name`` over the seeds; and the best
    other method's median over ours."""
    methods = []
    for method, seeds in per_method.items():
        needed = [s[f"evaluations_to_98_of_{name}"] for s in seeds]
        methods.append(
            {
                "method": method,
                "budget": budgets[method],
                "reached_in": f"{sum(n is not None for n in needed)}/{len(needed)} seeds",
                "median_evaluations_to_98": float(
                    np.median([n if n is not None else np.inf for n in needed])
                ),
                "mean_evaluations_to_98_censored": float(
                    np.mean([n if n is not None else budgets[method] for n in needed])
                ),
                "mean_final_hv_fraction": float(np.mean([s["final_hv"] for s in seeds]))
                / reference_hv,
                "mean_seconds": float(np.mean([s["seconds"] for s in seeds])),
            }
        )
    ours_median = methods[0]["median_evaluations_to_98"]
    best_other = min((m["median_evaluations_to_98"] for m in methods[1:]), default=None)
    ratio = (
        best_other / ours_median if best_other is not None and np.isfinite(ours_median) else None
    )
    # no other method's median within its budget: the ratio is only known to exceed this
    others_budget = min((m["budget"] for m in methods[1:]), default=None)
    at_least = others_budget / ours_median if ratio == np.inf else None
    return {
        "methods": methods,
        "ratio_best_other_to_ours_median": None if ratio == np.inf else ratio,
        "ratio_at_least": at_least,
    }


def table(summary: dict) -> list[str]:
    lines = [
        "| method | budget | reached 98% | median evaluations to 98% "
        "| mean (censored at budget) | final HV / reference |",
        "|---|---|---|---|---|---|",
    ]
    for s in summary["methods"]:
        lines.append(
            f"| {s['method']} | {s['budget']} | {s['reached_in']} "
            f"| {s['median_evaluations_to_98']:.0f} "
            f"| {s['mean_evaluations_to_98_censored']:.1f} | {s['mean_final_hv_fraction']:.4f} |"
        )
    ratio, at_least = summary["ratio_best_other_to_ours_median"], summary["ratio_at_least"]
    if len(summary["methods"]) == 1:
        text = "no other method compared"
    elif at_least:
        text = f"more than {at_least:.2f} (no other method's median within the budget)"
    else:
        text = f"{ratio:.2f}" if ratio else "none (ours reaches 98% in fewer than half the seeds)"
    lines += ["", f"Best other method's median / ours: {text}"]
    return lines


if __name__ == "__main__":
    main()
