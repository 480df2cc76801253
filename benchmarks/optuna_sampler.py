"""How many trials each Optuna sampler needs to reach 95% and 98% of a known Pareto front's
hypervolume, side by side in one run: ours (``PredictorGuidedSampler``; once learning both
objectives, once given the cost as a function of the params, ``exact=``), Optuna's
NSGAIISampler, TPESampler and RandomSampler, each in a real in-memory study.

Problems (both two-objective, over categorical and integer parameters):

- ``synthetic``: a network-like quality (max) against cost (min) over 7,776 configs; the true
  front and its hypervolume come from enumerating every config.
- ``cnn1d``: validation accuracy (BN recalibrated; on ``--val-samples`` freshly generated
  samples, 20,000 by default) against MACs of subnets of the supernet of the newest finished
  job in ``--db`` (skipped when there is none); the known front is that of
  a large random sample measured before the runs: ``--sample`` uniform draws and
  ``--spread-sample`` size-spread draws (``known_front_sample``), inside the box of the uniform
  ones. Runs may go past the known front: the results also give the hypervolume of every
  measured point pooled, as a fraction of the known one, to show how far the sample is from the
  true front, and the trials each method needed against the uniform sample's front alone.

On both problems a run stops when it reaches 98% or its budget (``--budget``, ``--cnn1d-budget``).

Also the sampler's own time per trial in a study that already holds 1,000 trials (random ones,
on the synthetic problem), where its predictors are fitted on ``max_fit`` of them.

    python benchmarks/optuna_sampler.py [--seeds 10] [--db .nas/nas.db] [--job ID] [--workers 2]
        [--val-samples 20000] [--device cpu]

On one H100 host with 16 workers (``--device cuda --workers 16``) it took 25 minutes (the
6,000-subnet sample 4.6 of them). On 2 cores it takes many hours: a subnet takes 1 to 2 s to
measure on 20,000 validation samples (0.4 s on the job's 4,000, ``--val-samples 0``), most of
the other methods' runs go to the 600-trial budget, and our sampler costs 1 to 1.5 s a trial
on that space (about 3 s with a step per trial, ``batch=1``). The synthetic problem alone
takes about 5 minutes.

Every finished run and sample chunk is kept in ``--log``
(``.nas/benchmark-runs/optuna_sampler.jsonl``): run the same command again after a cut (a time
limit, a lost machine) and only what was not finished is run.

Results: benchmarks/results/optuna_sampler.{json,md}.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import optuna
from common import Source, add_source_arguments, one_thread
from run_log import RUN_LOGS, RunLog, worker_pool

from nas.pareto import non_dominated
from nas.search import PredictorGuidedSampler, hypervolume, size_spread_sample
from search_spaces import Config, SearchSpace

RESULTS = Path(__file__).parent / "results"
DIRECTIONS = ["max", "min"]
TARGETS = (0.95, 0.98)

Cost = Callable[[dict], float]
#: Each sampler from a seed and the problem's cost as a function of a trial's params, which
#: only ours can use (``exact=``): a user who can count MACs or parameters hands it over.
SAMPLERS: dict[str, Callable[[int, Cost], optuna.samplers.BaseSampler]] = {
    "ours (PredictorGuidedSampler)": lambda s, c: PredictorGuidedSampler(seed=s),
    "ours, cost computed (exact={1: cost})": lambda s, c: PredictorGuidedSampler(
        seed=s, exact={1: c}
    ),
    "optuna NSGAIISampler": lambda s, c: optuna.samplers.NSGAIISampler(population_size=16, seed=s),
    "optuna TPESampler": lambda s, c: optuna.samplers.TPESampler(seed=s, multivariate=True),
    "optuna RandomSampler": lambda s, c: optuna.samplers.RandomSampler(seed=s),
}

# ---- problem 1: synthetic, front by enumeration -------------------------------------------
SYNTHETIC = {
    "depth": list(range(1, 7)),
    "width": list(range(8, 65, 8)),
    "kernel": [3, 5, 7],
    "expand": list(range(1, 7)),
    "act": ["relu", "gelu", "hswish"],
    "norm": ["batch", "layer", "none"],
}
ACT = {"relu": (0.0, 1.0), "gelu": (0.012, 1.15), "hswish": (0.008, 1.05)}  # (gain, cost factor)
NORM = {"batch": (0.02, 1.0), "layer": (0.015, 1.1), "none": (0.0, 0.95)}


def synthetic_metrics(p: dict) -> tuple[float, float]:
    """Quality saturates in log-capacity, with gains from the choices and an interaction (big
    kernels help shallow networks, hurt deep ones); cost is MACs-like."""
    act_gain, act_cost = ACT[p["act"]]
    norm_gain, norm_cost = NORM[p["norm"]]
    macs = p["depth"] * p["width"] ** 2 * p["expand"] * p["kernel"] / 3
    capacity = np.log(macs) / np.log(6 * 64**2 * 6 * 7 / 3)
    receptive = 0.015 * (p["kernel"] - 5) * (3 - p["depth"]) / 2
    quality = 0.6 + 0.3 * (1 - np.exp(-3 * capacity)) + act_gain + norm_gain + receptive
    return float(quality), float(macs * act_cost * norm_cost)


def synthetic_cost(params: dict) -> float:
    return synthetic_metrics(params)[1]


def synthetic_objective(trial: optuna.Trial) -> tuple[float, float]:
    params = {
        "depth": trial.suggest_int("depth", 1, 6),
        "width": trial.suggest_int("width", 8, 64, step=8),
        "kernel": trial.suggest_categorical("kernel", SYNTHETIC["kernel"]),
        "expand": trial.suggest_int("expand", 1, 6),
        "act": trial.suggest_categorical("act", SYNTHETIC["act"]),
        "norm": trial.suggest_categorical("norm", SYNTHETIC["norm"]),
    }
    return synthetic_metrics(params)


def synthetic_front() -> dict:
    """Every config's objectives: the reference point (worst of each) and the true front's
    hypervolume."""
    rows = [
        synthetic_metrics(dict(zip(SYNTHETIC, values, strict=True)))
        for values in itertools.product(*SYNTHETIC.values())
    ]
    reference = [min(r[0] for r in rows), max(r[1] for r in rows)]
    front = [rows[i] for i in non_dominated(rows, DIRECTIONS)]
    return {
        "configs": len(rows),
        "front_size": len(front),
        "reference": reference,
        "hypervolume": hypervolume(front, DIRECTIONS, reference),
    }


# ---- problem 2: the cnn1d supernet of a finished job --------------------------------------
def cnn1d_problem(source: Source):
    """``(source pinned to its job, space, objective, evaluator)``: the objective suggests every
    dimension as a categorical and measures the canonical config (memoised); its ``cost`` gives
    a trial's MACs from its params."""
    source, space, evaluate = source.open()
    seconds = [0.0]

    def cost(params: dict) -> float:
        return float(evaluate.supernet.macs(space.canonical(params)))

    def objective(trial: optuna.Trial) -> tuple[float, float]:
        config = {
            d.name: trial.suggest_categorical(d.name, list(d.choices)) for d in space.dimensions
        }
        start = time.perf_counter()
        metrics = evaluate.one(space.canonical(config))
        seconds[0] += time.perf_counter() - start
        return metrics["accuracy"], metrics["macs"]

    objective.measuring = lambda: seconds[0]  # type: ignore[attr-defined]
    objective.cost = cost  # type: ignore[attr-defined]
    return source, space, objective, evaluate


def known_front_sample(space: SearchSpace, uniform: int, spread: int) -> list[Config]:
    """The configs whose measured front stands for the known one: ``uniform`` drawn uniformly
    (as many runs start) and ``spread`` size-spread draws (``size_spread_sample``), which reach
    the small and large subnets at the front's two ends that uniform draws, bunched around
    middle sizes, rarely do."""
    rng, spread_rng = np.random.default_rng(12345), np.random.default_rng(54321)
    configs = [space.sample(rng) for _ in range(uniform)]
    return configs + [size_spread_sample(space, spread_rng) for _ in range(spread)]


# ---- runs ----------------------------------------------------------------------------------
class Front:
    """The non-dominated points seen so far and their hypervolume, updated point by point."""

    def __init__(self, reference: list[float]):
        self.reference, self.points, self.hypervolume = reference, [], 0.0

    def add(self, point: list[float]) -> float:
        rows = self.points + [point]
        self.points = [rows[i] for i in non_dominated(rows, DIRECTIONS)]
        if point in self.points:
            self.hypervolume = hypervolume(self.points, DIRECTIONS, self.reference)
        return self.hypervolume


def run_study(
    study: optuna.Study,
    objective,
    budget: int,
    stop: Callable[[list[float]], bool],
    measuring: Callable[[], float] = lambda: 0.0,
) -> tuple[list[list[float]], float]:
    """Ask and tell until ``stop(point)`` or ``budget`` trials: the points, in order, and the
    seconds spent on anything but measuring (the sampler's and Optuna's own time: a sampler
    samples inside ``suggest_*``). ``measuring()`` gives the seconds measured so far."""
    points: list[list[float]] = []
    start, measured_before = time.perf_counter(), measuring()
    for _ in range(budget):
        trial = study.ask()
        values = objective(trial)
        study.tell(trial, values)
        points.append(list(values))
        if stop(points[-1]):
            break
    return points, time.perf_counter() - start - (measuring() - measured_before)


def reached(points: list[list[float]], reference: list[float], known_hv: float) -> dict:
    """The first trial count at which each target fraction of ``known_hv`` is reached."""
    found: dict[str, int | None] = {f"{t:.2f}": None for t in TARGETS}
    front = Front(reference)
    for n, point in enumerate(points, start=1):
        hv = front.add(point)
        for t in TARGETS:
            if found[f"{t:.2f}"] is None and hv >= t * known_hv:
                found[f"{t:.2f}"] = n
    return found


def new_study(sampler: optuna.samplers.BaseSampler) -> optuna.Study:
    return optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)


def run_one(args: tuple) -> dict:
    """One sampler with one seed on one problem, in a worker process, until it reaches the
    highest target fraction of the known hypervolume or its budget."""
    problem, method, seed, budget, source, truth = args
    warnings.simplefilter("ignore")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if problem == "synthetic":
        objective, measuring, cost = synthetic_objective, lambda: 0.0, synthetic_cost
    else:
        objective = cnn1d_problem(source)[2]
        measuring, cost = objective.measuring, objective.cost
    study = new_study(SAMPLERS[method](seed, cost))
    front, goal = Front(truth["reference"]), max(TARGETS) * truth["hypervolume"]
    points, spent = run_study(
        study, objective, budget, lambda point: front.add(point) >= goal, measuring
    )
    return {"problem": problem, "method": method, "seed": seed, "points": points, "seconds": spent}


def measure(args: tuple) -> list[list[float]]:
    """``[accuracy, macs]`` of each of a chunk of cnn1d configs, in a worker process."""
    source, configs = args
    _, _, _, evaluate = cnn1d_problem(source)
    return [[m["accuracy"], m["macs"]] for m in evaluate(configs)]


def overhead(existing: int, timed: int, seed: int = 0) -> dict:
    """Our sampler's seconds per trial in a synthetic study already holding ``existing`` random
    trials (Optuna's own bookkeeping included, the objective excluded)."""
    study = new_study(optuna.samplers.RandomSampler(seed=seed))
    study.optimize(synthetic_objective, n_trials=existing)
    study.sampler = PredictorGuidedSampler(seed=seed)
    _, spent = run_study(study, synthetic_objective, timed, lambda point: False)
    return {"existing_trials": existing, "timed_trials": timed, "seconds_per_trial": spent / timed}


# ---- summary -------------------------------------------------------------------------------
def summarise(runs: list[dict], reference: list[float], known_hv: float, budget: int) -> dict:
    """Per method: trials to each target per seed, their median (``None``: not reached by half
    the seeds within ``budget``) and the seconds per trial outside the objective."""
    methods: dict[str, dict] = {}
    for run in runs:
        entry = methods.setdefault(run["method"], {"seeds": [], "seconds_per_trial": []})
        entry["seeds"].append({"seed": run["seed"], **reached(run["points"], reference, known_hv)})
        entry["seconds_per_trial"].append(run["seconds"] / len(run["points"]))
    for entry in methods.values():
        for t in TARGETS:
            counts = [s[f"{t:.2f}"] for s in entry["seeds"]]
            median = float(np.median([c if c is not None else np.inf for c in counts]))
            entry[f"median_trials_to_{t:.2f}"] = median if np.isfinite(median) else None
            entry[f"reached_{t:.2f}"] = f"{sum(c is not None for c in counts)}/{len(counts)}"
        entry["seconds_per_trial"] = float(np.mean(entry["seconds_per_trial"]))
    best = [e["median_trials_to_0.98"] for m, e in methods.items() if not m.startswith("ours")]
    ratios: dict[str, float | str | None] = {}
    for method in (m for m in methods if m.startswith("ours")):
        mine = methods[method]["median_trials_to_0.98"]
        if mine is None:
            ratios[method] = None
        elif all(b is None for b in best):
            ratios[method] = f"> {budget / mine:.1f} (no other method reached 98% within {budget})"
        else:
            ratios[method] = round(min(b for b in best if b is not None) / mine, 2)
    return {"methods": methods, "best_other_over_ours_to_0.98": ratios}


def table(name: str, summary: dict) -> list[str]:
    lines = [
        f"| {name} | reached 95% | median trials to 95% | reached 98% | median trials to 98% "
        "| s/trial (sampler) |",
        "|---|---|---|---|---|---|",
    ]
    for method, e in summary["methods"].items():
        cells = []
        for t in TARGETS:
            median = e[f"median_trials_to_{t:.2f}"]
            cells += [e[f"reached_{t:.2f}"], "not reached" if median is None else f"{median:g}"]
        lines.append(f"| {method} | {' | '.join(cells)} | {e['seconds_per_trial']:.3f} |")
    lines.append("")
    for method, ratio in summary["best_other_over_ours_to_0.98"].items():
        lines.append(f"Best other method's median trials to 98% / {method}'s: {ratio}  ")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--budget", type=int, default=1000, help="trials per synthetic run")
    parser.add_argument("--cnn1d-budget", type=int, default=600, help="trials per cnn1d run")
    parser.add_argument("--sample", type=int, default=3000, help="random cnn1d subnets measured")
    parser.add_argument(
        "--spread-sample", type=int, default=3000, help="size-spread cnn1d subnets measured"
    )
    parser.add_argument("--overhead-trials", type=int, default=40)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--log",
        type=Path,
        default=RUN_LOGS / "optuna_sampler.jsonl",
        help="finished runs and sample chunks are kept here; a run cut short resumes from it",
    )
    add_source_arguments(parser)
    args = parser.parse_args()
    if args.sample < 1:  # the known front's box is the uniform sample's
        parser.error(f"--sample must be at least 1, got {args.sample}")
    warnings.simplefilter("ignore")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    started = time.perf_counter()

    truth = synthetic_front()
    try:
        source, space, _, evaluate = cnn1d_problem(Source.from_args(args))
    except SystemExit as missing:
        cnn1d: dict = {"skipped": str(missing)}
    else:
        cnn1d = {"job": source.job, "validation_samples": len(evaluate.splits.y_val)}
    setup = {
        "benchmark": "optuna_sampler",
        "job": cnn1d.get("job"),
        "validation_samples": cnn1d.get("validation_samples"),
        "sample": args.sample,
        "spread_sample": args.spread_sample,
        "budget": args.budget,
        "cnn1d_budget": args.cnn1d_budget,
        "stop_at": max(TARGETS),
    }
    log = RunLog(args.log, setup)
    tasks = [
        ("synthetic", m, s, args.budget, None, truth) for s in range(args.seeds) for m in SAMPLERS
    ]
    with worker_pool(args.workers, one_thread) as pool:
        if "job" in cnn1d:
            configs = known_front_sample(space, args.sample, args.spread_sample)
            chunks = {
                f"sample/{i}": (source, configs[i : i + 100]) for i in range(0, len(configs), 100)
            }
            measured = log.run(pool, measure, chunks, "cnn1d sample")
            points = [point for chunk in measured for point in chunk]
            uniform = points[: args.sample]
            # the box of the uniform sample alone: the size-spread draws add front points
            # inside it, and their far smaller subnets would otherwise stretch it
            reference = [min(p[0] for p in uniform), max(p[1] for p in uniform)]
            cnn1d |= {
                "sample": args.sample,
                "spread_sample": args.spread_sample,
                "reference": reference,
                "hypervolume": hypervolume(points, DIRECTIONS, reference),
                "uniform_hypervolume": hypervolume(uniform, DIRECTIONS, reference),
            }
            tasks = [  # the long runs first, so that no worker starts one when the rest are done
                ("cnn1d", m, s, args.cnn1d_budget, source, cnn1d)
                for s in range(args.seeds)
                for m in SAMPLERS
            ] + tasks
        runs = log.run(pool, run_one, {f"{t[0]}/{t[1]}/{t[2]}": t for t in tasks}, "runs")

    result: dict = {"seeds": args.seeds, "targets": list(TARGETS)}
    synthetic_runs = [r for r in runs if r["problem"] == "synthetic"]
    result["synthetic"] = {
        **truth,
        "budget": args.budget,
        **summarise(synthetic_runs, truth["reference"], truth["hypervolume"], args.budget),
    }
    if "hypervolume" in cnn1d:
        cnn1d_runs = [r for r in runs if r["problem"] == "cnn1d"]
        pooled = points + [p for r in cnn1d_runs for p in r["points"]]
        reference, known = cnn1d["reference"], cnn1d["hypervolume"]
        cnn1d.update(
            pooled_hv_fraction=hypervolume(pooled, DIRECTIONS, reference) / known,
            budget=args.cnn1d_budget,
            **summarise(cnn1d_runs, reference, known, args.cnn1d_budget),
            uniform_only=summarise(
                cnn1d_runs, reference, cnn1d["uniform_hypervolume"], args.cnn1d_budget
            ),
        )
    result["cnn1d"] = cnn1d
    result["overhead"] = overhead(1000, args.overhead_trials)
    result["wall_seconds"] = time.perf_counter() - started
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "optuna_sampler.json").write_text(json.dumps(result, indent=2))

    s = result["synthetic"]
    lines = [
        f"# Optuna samplers to 95% and 98% of a known front ({args.seeds} seeds, medians)",
        "",
        f"## synthetic: {s['configs']} configs, true front of {s['front_size']} points by "
        f"enumeration, runs stop at 98% or {args.budget} trials",
        "",
        *table("synthetic", s),
        "",
    ]
    if "skipped" in cnn1d:
        lines += ["## cnn1d: skipped", "", cnn1d["skipped"], ""]
    else:
        share = cnn1d["uniform_hypervolume"] / cnn1d["hypervolume"]
        lines += [
            f"## cnn1d: job {cnn1d['job']}, accuracy on {cnn1d['validation_samples']} validation "
            f"samples, known front from {cnn1d['sample']} uniformly random and "
            f"{cnn1d['spread_sample']} size-spread random subnets (every point measured in the "
            f"runs, pooled with the sample: {cnn1d['pooled_hv_fraction']:.4f} of its "
            f"hypervolume), runs stop at 98% or {args.cnn1d_budget} trials",
            "",
            *table("cnn1d", cnn1d),
            "",
            f"### cnn1d against the front of the {cnn1d['sample']} uniformly random subnets "
            f"alone ({share:.4f} of the known front's hypervolume; same runs)",
            "",
            *table("cnn1d, uniform sample's front", cnn1d["uniform_only"]),
            "",
        ]
    o = result["overhead"]
    lines += [
        f"## Our sampler's time per trial with {o['existing_trials']} trials in the study",
        "",
        f"{o['seconds_per_trial']:.3f} s per trial over {o['timed_trials']} trials "
        "(objective excluded).",
    ]
    (RESULTS / "optuna_sampler.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
