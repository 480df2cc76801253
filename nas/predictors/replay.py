"""Replay finished learning curves as sequential searches, to compare early-stopping methods.

A curve file holds one JSON object per line (plain or gzip-compressed): ``id``, a ``config``
object (the run's hyperparameters and architecture, used as features) and a list of numbers,
one per epoch, named by the metric (``val_acc`` by default). Every curve has the same length.

``replay`` draws ``orders`` random subsets of ``subset`` curves, each in a random order, and
plays every method on the same orders: runs arrive one after another and train epoch by epoch;
after each epoch but the last the method may stop the run. A run trained to the end is
*finished*: the learning-curve rule fits on finished runs, and only finished runs count as
found. Per method and averaged over orders:

- ``epochs_fraction``: epochs trained / (runs x epochs per run);
- ``p_best_kept``: how often a run with the subset's best final value is finished;
- ``top3_recall``: how many of the three best final values are matched by finished runs, / 3
  (a finished run tied with the third best counts, so ties cannot make it fail);
- ``mean_regret``: best final value in the subset minus best final value among finished runs.

For the learning-curve rule also, over the runs it judged with its model (after the fallback):
``spearman_at_25``, the Spearman correlation, per order then averaged, between the mean
predicted from the first 25% of each curve and the true final value (also for runs stopped
before 25%); ``coverage_90``, the fraction of the predictions the rule decided on (one per run
and epoch judged) whose 90% interval holds the run's true final value
(``CurvePrediction.covers``). A metric whose values all lie in [0, 1] is treated as bounded by
0 and 1 (``fraction_bounds``).

Optuna's pruners are driven through a real in-memory study (``ask``, ``report`` every epoch,
``should_prune``, ``tell``), so what is measured is Optuna's own logic.
"""

from __future__ import annotations

import gzip
import json
import math
import time
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import spearmanr

from nas.predictors.curves import (
    MODES,
    CurveDataError,
    LearningCurvePredictor,
    StoppingRule,
)

SPEARMAN_FRACTION = 0.25


# ---- curve files -------------------------------------------------------------------------------
@dataclass(frozen=True)
class CurveSet:
    """Finished learning curves of one metric, all of one length."""

    ids: tuple[str, ...]
    configs: tuple[Mapping[str, Any], ...]
    values: np.ndarray  # (runs, epochs)
    metric: str
    source: str

    @property
    def horizon(self) -> int:
        return int(self.values.shape[1])

    def subset(self, index: Sequence[int]) -> CurveSet:
        return CurveSet(
            tuple(self.ids[i] for i in index),
            tuple(self.configs[i] for i in index),
            self.values[np.asarray(index)],
            self.metric,
            self.source,
        )


def load_curves(path: str | Path, metric: str = "val_acc") -> CurveSet:
    """Reads a ``.jsonl`` or ``.jsonl.gz`` curve file; any problem is one ``CurveDataError``."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    ids: list[str] = []
    configs: list[Mapping[str, Any]] = []
    curves: list[list[float]] = []
    try:
        with opener(path, "rt", encoding="utf-8") as lines:
            for number, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                run_id, config, curve = _parse_line(line, number, metric, path)
                if curves and len(curve) != len(curves[0]):
                    raise CurveDataError(
                        f"{path}:{number}: '{metric}' has {len(curve)} points, the first curve "
                        f"has {len(curves[0])}; all curves must have one length"
                    )
                ids.append(run_id)
                configs.append(config)
                curves.append(curve)
    except FileNotFoundError:
        raise CurveDataError(f"curve file {path} does not exist") from None
    except IsADirectoryError:
        raise CurveDataError(f"curve file {path} is a directory") from None
    except (OSError, EOFError, UnicodeDecodeError) as error:
        raise CurveDataError(f"cannot read curve file {path}: {error}") from None
    if len(curves) < 2:
        raise CurveDataError(f"{path}: need at least 2 curves, found {len(curves)}")
    if len(curves[0]) < 2:
        raise CurveDataError(f"{path}: curves need at least 2 points, found {len(curves[0])}")
    return CurveSet(tuple(ids), tuple(configs), np.array(curves), metric, str(path))


def _parse_line(
    line: str, number: int, metric: str, path: Path
) -> tuple[str, Mapping[str, Any], list[float]]:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as error:
        raise CurveDataError(f"{path}:{number}: not valid JSON ({error.msg})") from None
    if not isinstance(row, dict):
        raise CurveDataError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
    if metric not in row:
        lists = sorted(k for k, v in row.items() if isinstance(v, list))
        raise CurveDataError(
            f"{path}:{number}: no metric '{metric}'; curves on this line: {', '.join(lists)}"
        )
    curve = row[metric]
    if (
        not isinstance(curve, list)
        or not curve
        or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            for v in curve
        )
    ):
        raise CurveDataError(f"{path}:{number}: '{metric}' must be a list of finite numbers")
    config = row.get("config", {})
    if not isinstance(config, dict):
        raise CurveDataError(f"{path}:{number}: 'config' must be a JSON object")
    return str(row.get("id", number)), config, [float(v) for v in curve]


# ---- methods -------------------------------------------------------------------------------------
@dataclass
class OrderResult:
    """What one method did on one order: epochs trained per run (``horizon`` = finished), and
    the learning-curve method's diagnostics."""

    epochs: np.ndarray
    diagnostics: dict[str, Any] = field(default_factory=dict)


class ReplayMethod(ABC):
    """An early-stopping method replayed on one order of runs at a time."""

    name: str

    @abstractmethod
    def run(self, curves: CurveSet, mode: str) -> OrderResult:
        """Plays the runs of ``curves`` in their order; returns the epochs each one trained."""


class NoStopping(ReplayMethod):
    """Trains every run to the end."""

    name = "no-stopping"

    def run(self, curves: CurveSet, mode: str) -> OrderResult:
        return OrderResult(np.full(len(curves.ids), curves.horizon))


class TopFractionAt(ReplayMethod):
    """At ``at`` of the epochs, keep a run only if its value then is within the best
    ``fraction`` of the values all runs so far had at that epoch (itself included)."""

    def __init__(self, fraction: float = 0.1, at: float = 0.2):
        self.fraction = fraction
        self.at = at
        self.name = f"top-{fraction:.0%}-at-{at:.0%}"

    def run(self, curves: CurveSet, mode: str) -> OrderResult:
        sign = 1.0 if mode == "max" else -1.0
        horizon = curves.horizon
        check = min(horizon - 1, max(1, round(self.at * horizon)))
        seen: list[float] = []
        epochs = np.full(len(curves.ids), horizon)
        for i, curve in enumerate(curves.values):
            value = sign * curve[check - 1]
            seen.append(value)
            keep = math.ceil(self.fraction * len(seen))
            if sum(v > value for v in seen) >= keep:
                epochs[i] = check
        return OrderResult(epochs)


class OptunaPruner(ReplayMethod):
    """One of Optuna's pruners, driven through a real in-memory study."""

    def __init__(self, name: str, make_pruner: Callable[[int], Any]):
        self.name = f"optuna-{name}"
        self.make_pruner = make_pruner

    def run(self, curves: CurveSet, mode: str) -> OrderResult:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        horizon = curves.horizon
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study = optuna.create_study(
                study_name="replay",  # Hyperband's brackets hash the name: keep it fixed
                direction="maximize" if mode == "max" else "minimize",
                pruner=self.make_pruner(horizon),
                sampler=optuna.samplers.RandomSampler(seed=0),
            )
        epochs = np.full(len(curves.ids), horizon)
        for i, curve in enumerate(curves.values):
            trial = study.ask()
            for epoch, value in enumerate(curve, start=1):
                trial.report(float(value), epoch)
                if epoch < horizon and trial.should_prune():
                    study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                    epochs[i] = epoch
                    break
            else:
                study.tell(trial, float(curve[-1]))
        return OrderResult(epochs)


def optuna_pruners() -> list[OptunaPruner]:
    """Optuna's pruners with their documented defaults (``max_resource`` set to the number of
    epochs where a pruner needs it; ``PercentilePruner`` keeps the top 25% as in Optuna's
    docs; ``PatientPruner`` wraps a ``MedianPruner`` with a patience of 3 epochs)."""
    from optuna import pruners

    return [
        OptunaPruner("median", lambda horizon: pruners.MedianPruner()),
        OptunaPruner("percentile-25", lambda horizon: pruners.PercentilePruner(25.0)),
        OptunaPruner("successive-halving", lambda horizon: pruners.SuccessiveHalvingPruner()),
        OptunaPruner("hyperband", lambda horizon: pruners.HyperbandPruner(max_resource=horizon)),
        OptunaPruner(
            "patient-median", lambda horizon: pruners.PatientPruner(pruners.MedianPruner(), 3)
        ),
    ]


@dataclass(frozen=True)
class RuleSettings:
    """The learning-curve rule's settings (see ``StoppingRule``), with its defaults: picked on
    replays of the mnist1d and digits curves; ``benchmarks/early_stopping.py`` reports them on
    both, and what tuning on one file alone picks for the other."""

    k: int = 3
    tolerance: float = 0.002
    threshold: float = 0.015
    patience: int = 2
    min_epochs: int = 1
    model_from: int = 5
    min_finished: int = 5
    fallback_keep: float = 1.0
    fallback_peers: int = 5
    decay: float = 1.0
    rung_factor: float = 4.0
    rung_keep: float = 0.5

    def rule(self, predictor: LearningCurvePredictor | None, mode: str) -> StoppingRule:
        return StoppingRule(predictor, mode=mode, **asdict(self))  # type: ignore[arg-type]


class LearningCurveMethod(ReplayMethod):
    """Our rule: ``StoppingRule`` over a ``LearningCurvePredictor`` refitted whenever a run
    finishes."""

    name = "learning-curve"

    def __init__(
        self,
        settings: RuleSettings | None = None,
        name: str | None = None,
        make_predictor: Callable[[], LearningCurvePredictor] | None = None,
    ):
        self.settings = settings or RuleSettings()
        self.make_predictor = make_predictor
        if name:
            self.name = name

    def run(self, curves: CurveSet, mode: str) -> OrderResult:
        horizon = curves.horizon
        at_25 = max(1, round(SPEARMAN_FRACTION * horizon))
        epochs = np.full(len(curves.ids), horizon)
        finished: list[int] = []
        rule = self.settings.rule(None, mode)
        bounds = fraction_bounds(curves.values)
        make_predictor = self.make_predictor or (lambda: LearningCurvePredictor(bounds=bounds))
        predicted_25, true_25 = [], []
        covered = judged = 0
        for i, curve in enumerate(curves.values):
            finals = curves.values[finished, -1].tolist()
            fitted = rule.predictor is not None and rule.predictor.n_fitted_ == len(finished)
            if len(finished) >= self.settings.min_finished and not fitted:
                rule.predictor = make_predictor().fit(
                    curves.values[finished], [curves.configs[j] for j in finished]
                )
            predictions = []
            peers = [curves.values[j, : epochs[j]] for j in range(i)]
            if rule.uses_model(1, len(finished)):
                # every prediction the model would make on this run, computed once
                predictions = rule.predictor.predict_prefixes(curve[:-1], curves.configs[i])
                predicted_25.append(predictions[at_25 - 1].mean)
                true_25.append(curve[-1])
            for t in range(1, horizon):
                if predictions:
                    recent = predictions[max(0, t - rule.patience) : t][::-1]
                    decision = rule.at_rung(curve[:t], peers) or rule.decide_from(t, recent, finals)
                else:
                    decision = rule.decide(curve[:t], curves.configs[i], finals, peers)
                if decision.stop:
                    epochs[i] = t
                    break
            else:
                finished.append(i)
            made = predictions[: min(epochs[i], horizon - 1)]  # the predictions decided on
            covered += sum(p.covers(curve[-1]) for p in made)
            judged += len(made)
        diagnostics = {
            "predicted_25": predicted_25,
            "true_25": true_25,
            "covered": covered,
            "judged": judged,
        }
        return OrderResult(epochs, diagnostics)


def fraction_bounds(values: np.ndarray) -> tuple[float, float] | None:
    """``(0, 1)`` for a metric whose values all lie in [0, 1] (an accuracy), else ``None``."""
    return (0.0, 1.0) if values.min() >= 0.0 and values.max() <= 1.0 else None


def default_methods(settings: RuleSettings | None = None) -> list[ReplayMethod]:
    """Ours, Optuna's five pruners, "top 10% at 20%" and no stopping."""
    return [
        LearningCurveMethod(settings),
        *optuna_pruners(),
        TopFractionAt(0.1, 0.2),
        NoStopping(),
    ]


# ---- the replay ------------------------------------------------------------------------------
def order_metrics(finals: np.ndarray, finished: np.ndarray, sign: float) -> dict[str, float]:
    """``p_best_kept``, ``top3_recall`` and ``regret`` of one order (see the module docstring)."""
    score = sign * finals
    best = score.max()
    third = np.sort(score)[-min(3, len(score))]
    kept = score[finished]
    return {
        "best_kept": float(np.any(kept >= best)),
        "top3_recall": min(3, int(np.sum(kept >= third))) / min(3, len(score)),
        "regret": float(best - (kept.max() if kept.size else score.min())),
    }


def replay(
    curves: CurveSet,
    methods: Sequence[ReplayMethod] | None = None,
    *,
    orders: int = 50,
    subset: int = 100,
    mode: str = "max",
    seed: int = 0,
) -> dict[str, Any]:
    """Replays every method on the same ``orders`` random orders of random ``subset``s."""
    if mode not in MODES:
        raise CurveDataError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if orders < 1:
        raise CurveDataError(f"orders must be >= 1, got {orders}")
    if subset < 2:
        raise CurveDataError(f"subset must be >= 2, got {subset}")
    methods = list(methods) if methods is not None else default_methods()
    size = min(subset, len(curves.ids))
    sign = 1.0 if mode == "max" else -1.0
    rng = np.random.default_rng(seed)
    draws = [rng.choice(len(curves.ids), size=size, replace=False) for _ in range(orders)]
    report = []
    for method in methods:
        started = time.perf_counter()
        rows, extras = [], []
        for index in draws:
            order = curves.subset(index)
            result = method.run(order, mode)
            finished = result.epochs >= curves.horizon
            rows.append(
                {
                    **order_metrics(order.values[:, -1], finished, sign),
                    "epochs": float(result.epochs.sum()) / (size * curves.horizon),
                }
            )
            extras.append(result.diagnostics)
        entry: dict[str, Any] = {
            "name": method.name,
            "epochs_fraction": _mean(r["epochs"] for r in rows),
            "p_best_kept": _mean(r["best_kept"] for r in rows),
            "top3_recall": _mean(r["top3_recall"] for r in rows),
            "mean_regret": _mean(r["regret"] for r in rows),
        }
        if isinstance(method, LearningCurveMethod):
            entry.update(_model_quality(extras))
        entry["seconds"] = round(time.perf_counter() - started, 2)
        report.append(entry)
    return {
        "file": curves.source,
        "metric": curves.metric,
        "mode": mode,
        "epochs": curves.horizon,
        "orders": orders,
        "subset": size,
        "seed": seed,
        "methods": report,
    }


def _model_quality(extras: Sequence[Mapping[str, Any]]) -> dict[str, float | None]:
    correlations = []
    for d in extras:
        if len(d["predicted_25"]) >= 3:
            rho = spearmanr(d["predicted_25"], d["true_25"])[0]
            if np.isfinite(rho):
                correlations.append(float(rho))
    judged = sum(d["judged"] for d in extras)
    return {
        "spearman_at_25": _mean(correlations) if correlations else None,
        "coverage_90": float(sum(d["covered"] for d in extras) / judged) if judged else None,
    }


def _mean(values: Any) -> float:
    return float(np.mean(list(values)))
