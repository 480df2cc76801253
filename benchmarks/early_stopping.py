"""Early stopping on real learning curves: our learning-curve rule against Optuna's pruners.

Pass the curve files (one JSON object per line, ``.jsonl`` or ``.jsonl.gz``: ``id``, a
``config`` object and a list per metric; the format of ``nas curves replay``, see README.md):

    .venv/bin/python benchmarks/early_stopping.py RUNS_A.jsonl.gz RUNS_B.jsonl.gz

About ten minutes per file on one core at 50 orders; ``--jobs N`` replays the methods in N
processes. Every finished replay is kept in ``--log``
(``.nas/benchmark-runs/early_stopping.jsonl``): run the same command again after a cut and
only the replays not finished are run. It writes ``benchmarks/results/early_stopping.json``
(every figure) and ``early_stopping.md`` (the tables), and does, on the same random orders
for every method (``--orders`` random subsets of ``--subset`` curves, each in a random order):

1. every file: all methods of ``nas curves replay`` side by side, ours at its defaults;
2. every file: a sweep of our rule's settings (``GRID``) and of each Optuna pruner's own
   main setting (``OPTUNA_GRID``), i.e. each one's trade-off between epochs and regret; both
   ways of asking "at equal or lower regret, fewer epochs?": against each setting of each
   Optuna pruner (its default first), the cheapest setting of ours whose mean regret is no
   higher; and against our defaults, each pruner's cheapest setting whose regret is no higher
   than theirs;
3. generalisation: the setting tuned on file A (the cheapest in the sweep that meets every
   target there: the epochs, the interval's coverage, and keeping the true best with
   probability >= 0.95 and the true top 3 with recall >= 0.90 with a margin of about one
   standard error, ``TUNING_MARGIN``; see ``tuned`` where none has it), with its
   figures on every other file B (predictors are always fitted on B's own finished runs:
   what transfers is the rule's settings); and the defaults, one setting for every file,
   against every target on each;
4. decision latency: ``StoppingRule.decide`` on one core, predictor fitted on 30 runs;
5. early ranking: how well the predicted final, and the value itself, rank held-out runs at
   epochs 1, 2, 4 and 8, for a predictor fitted on 10, 20 or 40 runs (why the aggressive
   Optuna pruners, which rank on the value alone, are hard to beat while few runs have
   finished).
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
from run_log import RUN_LOGS, RunLog, worker_pool
from scipy.stats import spearmanr

from nas.predictors.curves import LearningCurvePredictor
from nas.predictors.replay import (
    CurveSet,
    LearningCurveMethod,
    OptunaPruner,
    RuleSettings,
    default_methods,
    fraction_bounds,
    load_curves,
    replay,
)

RESULTS = Path(__file__).parent / "results"
TARGETS = {"epochs_fraction": 0.35, "p_best_kept": 0.95, "top3_recall": 0.90}
# Tuning on a file asks for this much more than the keep targets: about one standard error of
# each figure at 50 orders (binomial, 0.03 at p = 0.95; 0.02 for a recall of 0.9 over 3 runs
# an order). The cheapest setting that only just meets a target on one file is as likely to
# miss it on the next as not.
TUNING_MARGIN = {"p_best_kept": 0.03, "top3_recall": 0.02}
COVERAGE = (0.85, 0.95)
DEFAULT = RuleSettings()
# the defaults before these: rungs at 1, 3, 9, 27, the model from the first epoch on, fitted
# once ten unfiltered runs have finished, at twice the threshold
PREVIOUS = replace(
    DEFAULT, threshold=0.03, model_from=1, min_finished=10, fallback_peers=10, rung_factor=3.0
)
# compared with the best finished run only, judged on one epoch, fitted on three runs
CHEAP = replace(DEFAULT, k=1, patience=1, min_finished=3, threshold=0.15, model_from=1)
GRID = [
    replace(DEFAULT, threshold=0.0075),
    DEFAULT,
    replace(DEFAULT, threshold=0.03),
    replace(DEFAULT, threshold=0.06),
    replace(DEFAULT, threshold=0.1),
    replace(DEFAULT, threshold=0.2),
    PREVIOUS,
    # the rule without rungs
    replace(DEFAULT, rung_keep=1.0),
    replace(DEFAULT, rung_keep=1.0, threshold=0.2),
    # the model from the first epoch on; rungs at 1, 3, 9, 27; ten unfiltered runs first
    replace(DEFAULT, model_from=1),
    replace(DEFAULT, rung_factor=3.0),
    replace(DEFAULT, min_finished=10, fallback_peers=10),
    replace(DEFAULT, rung_keep=1 / 3),
    replace(DEFAULT, rung_keep=1 / 3, threshold=0.1),
    replace(DEFAULT, rung_factor=2.0),
    replace(DEFAULT, rung_factor=2.0, rung_keep=0.4),
    replace(DEFAULT, rung_keep=0.25),
    replace(DEFAULT, rung_keep=0.2),
    # deeper cuts at the rungs: the rung rule's end of the trade-off (picked on seeds 0 and 1)
    replace(DEFAULT, rung_keep=0.15),
    replace(DEFAULT, rung_keep=0.125),
    replace(DEFAULT, rung_keep=0.1),
    CHEAP,
    replace(CHEAP, rung_keep=1 / 3),
    replace(CHEAP, rung_keep=0.25),
    replace(CHEAP, rung_keep=0.2),
]
FIGURES = ("epochs_fraction", "p_best_kept", "top3_recall", "mean_regret")


def optuna_grid() -> list[tuple[str, OptunaPruner]]:
    """Each Optuna pruner of ``default_methods()`` (named by its name there) at other values
    of its own main settings: warm-up steps and startup trials, the percentile kept, the
    minimum resource and reduction factor, the patience."""
    from optuna import pruners

    def at(default: str, setting: str, make: Any) -> tuple[str, OptunaPruner]:
        return default, OptunaPruner(f"{default.removeprefix('optuna-')}, {setting}", make)

    median, percentile = "optuna-median", "optuna-percentile-25"
    halving, hyperband = "optuna-successive-halving", "optuna-hyperband"
    patient = "optuna-patient-median"
    return [
        *(
            at(median, f"n_warmup_steps={n}", lambda h, n=n: pruners.MedianPruner(n_warmup_steps=n))
            for n in (1, 2, 5, 10)
        ),
        at(median, "n_startup_trials=10", lambda h: pruners.MedianPruner(n_startup_trials=10)),
        *(
            at(percentile, f"percentile={q}", lambda h, q=q: pruners.PercentilePruner(q))
            for q in (5.0, 10.0, 15.0, 35.0)
        ),
        at(
            percentile,
            "n_warmup_steps=2",
            lambda h: pruners.PercentilePruner(25.0, n_warmup_steps=2),
        ),
        *(
            at(
                halving,
                f"min_resource={r}, reduction_factor={f}",
                lambda h, r=r, f=f: pruners.SuccessiveHalvingPruner(
                    min_resource=r, reduction_factor=f
                ),
            )
            for r, f in ((1, 2), (1, 3), (1, 6), (2, 4), (4, 4), (2, 3))
        ),
        *(
            at(
                hyperband,
                f"reduction_factor={f}",
                lambda h, f=f: pruners.HyperbandPruner(max_resource=h, reduction_factor=f),
            )
            for f in (2, 4, 6)
        ),
        *(
            at(
                patient,
                f"patience={n}",
                lambda h, n=n: pruners.PatientPruner(pruners.MedianPruner(), n),
            )
            for n in (0, 1, 2)
        ),
    ]


def label(settings: RuleSettings) -> str:
    changed = {k: v for k, v in asdict(settings).items() if v != getattr(DEFAULT, k)}
    return (
        ", ".join(
            f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in changed.items()
        )
        or "defaults"
    )


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def label_all(settings: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in settings.items())


def meets_all(row: dict[str, Any], margin: dict[str, float] | None = None) -> bool:
    """Every target: the keep targets (raised by ``margin``), the epochs and the interval's
    coverage."""
    coverage = row.get("coverage_90")
    return bool(
        meets(row, margin)
        and row["epochs_fraction"] <= TARGETS["epochs_fraction"]
        and coverage is not None
        and COVERAGE[0] <= coverage <= COVERAGE[1]
    )


def meets(row: dict[str, Any], margin: dict[str, float] | None = None) -> bool:
    """The keep targets, each raised by ``margin``."""
    margin = margin or {}
    return all(row[k] >= TARGETS[k] + margin.get(k, 0.0) for k in ("p_best_kept", "top3_recall"))


def replay_one(task: tuple[str, str, str, int, int, int, int]) -> dict[str, Any]:
    """One method's replay report, for ``task = (path, metric, method, index, orders, subset,
    seed)``: ``default_methods()[index]``, ``GRID[index]`` or ``optuna_grid()[index]``. Methods
    are rebuilt in the process that replays them (Optuna's pruner factories do not pickle)."""
    path, metric, method, index, orders, subset, seed = task
    curves = load_curves(path, metric)
    if method == "main":
        chosen = default_methods()[index]
    elif method == "optuna":
        chosen = optuna_grid()[index][1]
    else:
        chosen = LearningCurveMethod(GRID[index], name=label(GRID[index]))
    return replay(curves, [chosen], orders=orders, subset=subset, seed=seed)


def tuned(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The cheapest setting that meets every target, the keep targets with ``TUNING_MARGIN``;
    where none has that margin, the one that keeps the best most of those meeting every target
    (of all, where none does). Tuning that ignored a target, the epochs or the coverage say,
    would pick a setting already failing it: a file where no setting has the margin would
    otherwise get the setting that keeps the best most whatever its epochs."""
    good = [r for r in rows if meets_all(r, TUNING_MARGIN)]
    if good:
        return min(good, key=lambda r: r["epochs_fraction"])
    candidates = [r for r in rows if meets_all(r)] or rows
    return max(
        candidates, key=lambda r: (r["p_best_kept"], r["top3_recall"], -r["epochs_fraction"])
    )


def versus_optuna(
    pruners: list[dict[str, Any]], rows: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Against each Optuna pruner setting, the cheapest of ours (``rows``) with no higher mean
    regret."""
    out = []
    for pruner in pruners:
        fair = [r for r in rows if r["mean_regret"] <= pruner["mean_regret"] + 1e-12]
        ours = min(fair, key=lambda r: r["epochs_fraction"]) if fair else None
        out.append(
            {
                "pruner": pruner["name"],
                "default": pruner["default"],
                "pruner_epochs": pruner["epochs_fraction"],
                "pruner_regret": pruner["mean_regret"],
                "ours": ours["name"] if ours else None,
                "ours_epochs": ours["epochs_fraction"] if ours else None,
                "ours_regret": ours["mean_regret"] if ours else None,
                "fewer_epochs": bool(ours and ours["epochs_fraction"] < pruner["epochs_fraction"]),
            }
        )
    return out


def optuna_at_our_regret(
    ours: dict[str, Any], pruners: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Per Optuna pruner, its cheapest setting (default or ``optuna_grid``) whose mean regret is
    no higher than ``ours``; ours uses fewer epochs when it has none or that one uses more."""
    out = []
    for family in dict.fromkeys(p["family"] for p in pruners):
        fair = [
            p
            for p in pruners
            if p["family"] == family and p["mean_regret"] <= ours["mean_regret"] + 1e-12
        ]
        cheapest = min(fair, key=lambda p: p["epochs_fraction"]) if fair else None
        out.append(
            {
                "pruner": family,
                "setting": cheapest["name"] if cheapest else None,
                "its_epochs": cheapest["epochs_fraction"] if cheapest else None,
                "its_regret": cheapest["mean_regret"] if cheapest else None,
                "settings_tried": sum(p["family"] == family for p in pruners),
                "ours_fewer": bool(
                    cheapest is None or ours["epochs_fraction"] < cheapest["epochs_fraction"]
                ),
            }
        )
    return out


def latency(curves: CurveSet, seed: int) -> dict[str, float]:
    """Milliseconds per ``StoppingRule.decide`` (predictor fitted on 30 runs), and per refit."""
    rng = random.Random(seed)
    index = rng.sample(range(len(curves.ids)), 31)
    fit_on, query = index[:30], index[30]
    started = time.perf_counter()
    predictor = LearningCurvePredictor(bounds=fraction_bounds(curves.values)).fit(
        curves.values[fit_on], [curves.configs[i] for i in fit_on]
    )
    fit_ms = 1e3 * (time.perf_counter() - started)
    rule = DEFAULT.rule(predictor, "max")
    finals = curves.values[fit_on, -1].tolist()
    times = []
    for _ in range(300):
        t = rng.randrange(1, curves.horizon)
        started = time.perf_counter()
        rule.decide(curves.values[query, :t].tolist(), curves.configs[query], finals)
        times.append(time.perf_counter() - started)
    return {
        "decide_ms_median": 1e3 * float(np.median(times)),
        "decide_ms_p99": 1e3 * float(np.quantile(times, 0.99)),
        "fit_30_runs_ms": fit_ms,
    }


def early_ranking(curves: CurveSet, seed: int, repeats: int = 8) -> list[dict[str, Any]]:
    """Spearman correlation with the true final of held-out runs (100, or what is left) of
    their value at epoch ``t`` and of the final predicted from their first ``t`` epochs, for a
    predictor fitted on ``fitted_on`` random runs; mean over ``repeats`` random splits."""
    rng = np.random.default_rng(seed)
    bounds = fraction_bounds(curves.values)
    rows = []
    for fitted_on in (10, 20, 40):
        rho: dict[int, list[tuple[float, float]]] = {t: [] for t in (1, 2, 4, 8)}
        for _ in range(repeats):
            order = rng.permutation(len(curves.ids))
            train, test = order[:fitted_on], order[fitted_on : fitted_on + 100]
            predictor = LearningCurvePredictor(bounds=bounds).fit(
                curves.values[train], [curves.configs[i] for i in train]
            )
            finals = curves.values[test, -1]
            for t in rho:
                means = [
                    predictor.predict(curves.values[i, :t], curves.configs[i]).mean for i in test
                ]
                rho[t].append(
                    (spearmanr(curves.values[test, t - 1], finals)[0], spearmanr(means, finals)[0])
                )
        for t, pairs in rho.items():
            value, predicted = np.mean(pairs, axis=0)
            rows.append(
                {"fitted_on": fitted_on, "epoch": t, "value": value, "predicted": predicted}
            )
    return rows


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "# Early stopping on real learning curves",
        "",
        f"{result['orders']} random orders of {result['subset']} curves per file, "
        f"{result['seconds']:.0f} s in {result['jobs']} process(es) for the replays not "
        "already in the run log. Produced by "
        "`benchmarks/early_stopping.py`; every figure is in `early_stopping.json`.",
        "",
        "Targets for ours: epochs <= 35%, P(best kept) >= 0.95, top-3 recall >= 0.90, "
        "90% interval coverage in [0.85, 0.95]; at equal or lower regret, fewer epochs than "
        "every Optuna pruner.",
        "",
        f"## Our defaults on every file ({label_all(result['defaults'])})",
        "",
        "The same settings on every file. They were picked on replays of both files with "
        "seeds 0 and 1 (200 orders each); this run's orders are drawn with seed "
        f"{result['seed']}. The "
        "generalisation table below shows what tuning on one file alone picks and how that "
        "does on the other.",
        "",
        'Two ways to ask "at equal or lower regret, fewer epochs than the Optuna pruner?": '
        "(a) at each pruner's regret, is some setting of ours (sweep below) cheaper, against its "
        "default setting and against every setting of its own tried; (b) at our defaults' "
        "regret, does each pruner's cheapest setting with no higher regret (its default or its "
        "own sweep) use more epochs than our defaults?",
        "",
        "| file | epochs | P(best kept) | top-3 recall | mean regret | coverage | "
        "epochs, keep and coverage targets met | (a) pruner defaults | (a) all pruner settings "
        "| (b) pruners |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, f in result["files"].items():
        ours = f["replay"]["methods"][0]
        versus = f["versus_optuna"]
        defaults = [v for v in versus if v["default"]]
        at_ours = f["optuna_at_our_regret"]
        lines.append(
            f"| {name} | {ours['epochs_fraction']:.1%} | {ours['p_best_kept']:.2f} | "
            f"{ours['top3_recall']:.2f} | {ours['mean_regret']:.4f} | {fmt(ours['coverage_90'])} | "
            f"{'yes' if f['defaults_meet_targets'] else 'no'} | "
            f"{sum(v['fewer_epochs'] for v in defaults)} of {len(defaults)} | "
            f"{sum(v['fewer_epochs'] for v in versus)} of {len(versus)} | "
            f"{sum(v['ours_fewer'] for v in at_ours)} of {len(at_ours)} |"
        )
    for name, f in result["files"].items():
        lines += [
            "",
            f"## {name} ({f['runs']} runs, {f['epochs']} epochs)",
            "",
            "| method | epochs | P(best kept) | top-3 recall | mean regret |",
            "|---|---|---|---|---|",
        ]
        for m in f["replay"]["methods"]:
            lines.append(
                f"| {m['name']} | {m['epochs_fraction']:.1%} | {m['p_best_kept']:.2f} | "
                f"{m['top3_recall']:.2f} | {m['mean_regret']:.4f} |"
            )
        ours = f["replay"]["methods"][0]
        lines += [
            "",
            f"Ours: Spearman of predicted and true finals at 25% of the curve "
            f"{fmt(ours['spearman_at_25'])}; 90% interval coverage {fmt(ours['coverage_90'])}.",
            "",
            "(a) Against each Optuna pruner setting (its default first, then its own sweep), "
            "the cheapest setting of ours (sweep below) with no higher mean regret:",
            "",
            "| pruner | its epochs | its regret | ours | our epochs | our regret | fewer? |",
            "|---|---|---|---|---|---|---|",
        ]
        for v in sorted(f["versus_optuna"], key=lambda v: not v["default"]):
            ours_epochs = "-" if v["ours"] is None else f"{v['ours_epochs']:.1%}"
            ours_regret = "-" if v["ours"] is None else f"{v['ours_regret']:.4f}"
            lines.append(
                f"| {v['pruner']} | {v['pruner_epochs']:.1%} | {v['pruner_regret']:.4f} | "
                f"{v['ours'] or 'none'} | {ours_epochs} | {ours_regret} | "
                f"{'yes' if v['fewer_epochs'] else 'no'} |"
            )
        lines += [
            "",
            f"(b) Each Optuna pruner's cheapest setting with no higher mean regret than our "
            f"defaults ({ours['epochs_fraction']:.1%} of the epochs, regret "
            f"{ours['mean_regret']:.4f}):",
            "",
            "| pruner | settings tried | its cheapest as good | its epochs | its regret | "
            "ours fewer? |",
            "|---|---|---|---|---|---|",
        ]
        for v in f["optuna_at_our_regret"]:
            its = "-" if v["setting"] is None else f"{v['its_epochs']:.1%}"
            its_regret = "-" if v["setting"] is None else f"{v['its_regret']:.4f}"
            lines.append(
                f"| {v['pruner']} | {v['settings_tried']} | {v['setting'] or 'none'} | {its} | "
                f"{its_regret} | {'yes' if v['ours_fewer'] else 'no'} |"
            )
        lines += [
            "",
            "Sweep of our settings:",
            "",
            "| setting | epochs | P(best kept) | top-3 recall | mean regret | coverage |",
            "|---|---|---|---|---|---|",
        ]
        for r in f["sweep"]:
            lines.append(
                f"| {r['name']} | {r['epochs_fraction']:.1%} | {r['p_best_kept']:.2f} | "
                f"{r['top3_recall']:.2f} | {r['mean_regret']:.4f} | {fmt(r['coverage_90'])} |"
            )
    lines += [
        "",
        "## Generalisation: tuned on one file, evaluated on the other",
        "",
        "The cheapest setting of the sweep that meets every target on the file it is tuned on, "
        "keeping the best with probability >= "
        f"{TARGETS['p_best_kept'] + TUNING_MARGIN['p_best_kept']:.2f} and the top 3 with recall "
        f">= {TARGETS['top3_recall'] + TUNING_MARGIN['top3_recall']:.2f} (those targets plus "
        "about one standard error); where none has that margin, of those that meet every "
        "target, the one that keeps the best most. Then replayed on the other (its "
        "predictor fitted on that file's own finished runs). Targets met: every target, "
        "coverage included.",
        "",
        "| tuned on | setting | evaluated on | epochs | P(best kept) | top-3 recall | "
        "mean regret | coverage | targets met |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for g in result["generalisation"]:
        e = g["evaluated"]
        lines.append(
            f"| {g['tuned_on']} | {g['setting']} | {g['evaluated_on']} | "
            f"{e['epochs_fraction']:.1%} | {e['p_best_kept']:.2f} | {e['top3_recall']:.2f} | "
            f"{e['mean_regret']:.4f} | {fmt(e['coverage_90'])} | "
            f"{'yes' if g['targets_met'] else 'no'} |"
        )
    lines += [
        "",
        "## Early ranking: the predicted final against the value itself",
        "",
        "Spearman correlation with the true final of 100 held-out runs, of their value at "
        "epoch t and of the final our predictor gives from their first t epochs, fitted on "
        "10, 20 or 40 runs (mean of 8 random splits). Optuna's median, percentile and "
        "successive-halving pruners stop most runs after one or two epochs on their rank "
        "there; while it ranks no better than the value, a predictor cannot stop those runs "
        "more safely.",
        "",
        "| file | fitted on | epoch | value | predicted final |",
        "|---|---|---|---|---|",
    ]
    for name, f in result["files"].items():
        lines += [
            f"| {name} | {r['fitted_on']} | {r['epoch']} | {r['value']:.2f} | "
            f"{r['predicted']:.2f} |"
            for r in f["early_ranking"]
        ]
    lat = result["latency"]
    lines += [
        "",
        "## Decision latency (one core)",
        "",
        "| file | decide, median | decide, p99 | refit on 30 runs |",
        "|---|---|---|---|",
        *(
            f"| {name} | {v['decide_ms_median']:.3f} ms | {v['decide_ms_p99']:.3f} ms | "
            f"{v['fit_30_runs_ms']:.0f} ms |"
            for name, v in lat.items()
        ),
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", help="curve files (.jsonl or .jsonl.gz)")
    parser.add_argument("--metric", default="val_acc")
    parser.add_argument("--orders", type=int, default=50)
    parser.add_argument("--subset", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--jobs", type=int, default=1, help="processes replaying methods")
    parser.add_argument(
        "--log",
        type=Path,
        default=RUN_LOGS / "early_stopping.jsonl",
        help="finished replays, kept to resume after a cut",
    )
    args = parser.parse_args(argv)
    started = time.perf_counter()
    names = {path: Path(path).name.split(".")[0] for path in args.files}
    tasks = {
        f"{names[path]} {method} {index}": (
            path, args.metric, method, index, args.orders, args.subset, args.seed
        )
        for path in args.files
        for method, count in (
            ("main", len(default_methods())),
            ("sweep", len(GRID)),
            ("optuna", len(optuna_grid())),
        )
        for index in range(count)
    }  # fmt: skip
    setup = {
        "benchmark": "early_stopping",
        **{k: getattr(args, k) for k in ("metric", "orders", "subset", "seed")},
        "files": sorted(names.values()),
        "defaults": asdict(DEFAULT),
        "sweep": [label(settings) for settings in GRID],
        "optuna_sweep": [pruner.name for _, pruner in optuna_grid()],
    }
    log = RunLog(args.log, setup)
    print(f"replaying {len(tasks)} methods and settings in {args.jobs} processes", flush=True)
    with worker_pool(args.jobs) as pool:
        ranking_futures = {
            path: pool.apply_async(early_ranking, (load_curves(path, args.metric), args.seed))
            for path in args.files
        }
        replays = log.run(pool, replay_one, tasks, "replays")
        ranking = {path: future.get() for path, future in ranking_futures.items()}
    reports = {(t[0], t[2], t[3]): r for t, r in zip(tasks.values(), replays, strict=True)}
    files: dict[str, Any] = {}
    lat: dict[str, Any] = {}
    for path, name in names.items():
        curves = load_curves(path, args.metric)
        main_report = reports[(path, "main", 0)]
        main_report["methods"] = [
            reports[(path, "main", i)]["methods"][0] for i in range(len(default_methods()))
        ]
        main_report["file"] = Path(path).name  # results name the file, not where it lies
        rows = [
            {"settings": asdict(settings), **reports[(path, "sweep", i)]["methods"][0]}
            for i, settings in enumerate(GRID)
        ]
        pruners = [
            {"family": m["name"], "default": True, **m}
            for m in main_report["methods"]
            if m["name"].startswith("optuna-")
        ] + [
            {"family": family, "default": False, **reports[(path, "optuna", i)]["methods"][0]}
            for i, (family, _) in enumerate(optuna_grid())
        ]
        files[name] = {
            "runs": len(curves.ids),
            "epochs": curves.horizon,
            "replay": main_report,
            "sweep": rows,
            "optuna_sweep": pruners,
            "versus_optuna": versus_optuna(pruners, rows),
            "optuna_at_our_regret": optuna_at_our_regret(main_report["methods"][0], pruners),
            "defaults_meet_targets": meets_all(main_report["methods"][0]),
            "early_ranking": ranking[path],
        }
        lat[name] = latency(curves, args.seed)
    generalisation = []
    for a, fa in files.items():
        chosen = tuned(fa["sweep"])
        for b, fb in files.items():
            if b == a:
                continue
            evaluated = next(r for r in fb["sweep"] if r["settings"] == chosen["settings"])
            generalisation.append(
                {
                    "tuned_on": a,
                    "evaluated_on": b,
                    "setting": chosen["name"],
                    "settings": chosen["settings"],
                    "on_tuning_file": {k: chosen[k] for k in FIGURES},
                    "evaluated": {k: evaluated[k] for k in (*FIGURES, "coverage_90")},
                    "targets_met": meets_all(evaluated),
                }
            )
    import optuna
    import sklearn

    result = {
        "orders": args.orders,
        "subset": args.subset,
        "seed": args.seed,
        "metric": args.metric,
        "defaults": asdict(DEFAULT),
        "targets": TARGETS,
        "files": files,
        "generalisation": generalisation,
        "latency": lat,
        "seconds": time.perf_counter() - started,
        "jobs": args.jobs,
        "environment": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "optuna": optuna.__version__,
            "scikit-learn": sklearn.__version__,
            "machine": platform.machine(),
        },
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "early_stopping.json").write_text(json.dumps(result, indent=1))
    (args.out / "early_stopping.md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
