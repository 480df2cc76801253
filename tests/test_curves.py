"""Learning-curve prediction, the stopping rule, its Optuna pruner and the replay command.

Fixtures: synthetic curves made here, and ``tests/data/*_curves_40.jsonl.gz``, 40 real curves
(``val_acc`` and ``val_loss``, 50 epochs) sampled from each of the mnist1d and digits runs
that the early-stopping benchmark replays.
"""

from __future__ import annotations

import gzip
import json
import math
from dataclasses import asdict
from pathlib import Path

import numpy as np
import optuna
import pytest

from nas.cli import main
from nas.errors import NasError
from nas.predictors import (
    ConfigFeaturizer,
    CurveDataError,
    LearningCurvePredictor,
    LearningCurvePruner,
    StopDecision,
    StoppingRule,
)
from nas.predictors.curves import (
    MetricScale,
    curve_summary,
    metric_resolution,
    prefix_summaries,
)
from nas.predictors.replay import LearningCurveMethod, RuleSettings, load_curves, replay
from nas.spec import EarlyStoppingSpec

DATA = Path(__file__).parent / "data"
MNIST1D = DATA / "mnist1d_curves_40.jsonl.gz"
DIGITS = DATA / "digits_curves_40.jsonl.gz"
EPOCHS = 20


def synthetic_run(rng: np.random.Generator, quality: float, speed: float) -> list[float]:
    """A saturating accuracy curve: ``quality`` is where it ends, ``speed`` how fast it gets
    there, plus a little evaluation noise."""
    t = np.arange(1, EPOCHS + 1)
    curve = 0.1 + (quality - 0.1) * (1 - np.exp(-t / speed)) + rng.normal(0, 0.004, EPOCHS)
    return np.clip(curve, 0, 1).tolist()


def synthetic_runs(n: int, seed: int = 0) -> tuple[list[list[float]], list[dict]]:
    rng = np.random.default_rng(seed)
    curves, configs = [], []
    for _ in range(n):
        quality = float(rng.uniform(0.3, 0.95))
        speed = float(rng.uniform(1.5, 6.0))
        curves.append(synthetic_run(rng, quality, speed))
        configs.append({"optimizer": str(rng.choice(["adam", "sgd"])), "lr": 10**-speed})
    return curves, configs


# ---- features ------------------------------------------------------------------------------
def test_featurizer_one_hot_log_scale_and_unknown_values() -> None:
    configs = [
        {"optimizer": "adam", "lr": 1e-3, "depth": 2, "seed": 7},
        {"optimizer": "sgd", "lr": 1e-1, "depth": 4, "seed": 8, "kernel": 3},
    ]
    featurizer = ConfigFeaturizer().fit(configs)
    assert featurizer.names() == ["depth", "kernel", "log10(lr)", "optimizer=adam", "optimizer=sgd"]
    rows = featurizer.transform([*configs, {"optimizer": "rmsprop", "lr": 1e-2, "new_key": "x"}])
    np.testing.assert_allclose(rows[0], [2, 3, -3, 1, 0])  # missing kernel: the mean seen
    np.testing.assert_allclose(rows[1], [4, 3, -1, 0, 1])
    np.testing.assert_allclose(rows[2], [3, 3, -2, 0, 0])  # unseen optimizer: no column set


def test_prefix_summaries_match_curve_summary() -> None:
    curve = np.random.default_rng(1).random(12)
    expected = np.vstack([curve_summary(curve[None, :t]) for t in range(1, 13)])
    np.testing.assert_allclose(prefix_summaries(curve), expected, atol=1e-12)


def test_metric_resolution() -> None:
    assert metric_resolution(np.arange(0, 301) / 300) == pytest.approx(1 / 300)
    assert metric_resolution(np.random.default_rng(0).random(300)) == 0.0
    # stored rounded to 5 decimals: the step is still 1/300, to well within a step at 1.0
    assert 300 * metric_resolution(np.round(np.arange(0, 301) / 300, 5)) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("scale", "values", "read_as"),
    [
        (MetricScale(0.0, 1.0, 1e-3), [0.0, 0.2, 0.5, 1.0], [1e-3, 0.2, 0.5, 1 - 1e-3]),
        (MetricScale(0.0, math.inf, 1e-3), [0.0, 1.0, 30.0], [1e-3, 1.0, 30.0]),
        (MetricScale(-math.inf, 1.0, 1e-3), [-5.0, 0.0, 1.0], [-5.0, 0.0, 1 - 1e-3]),
        (MetricScale(), [-3.0, 0.0, 2.5], [-3.0, 0.0, 2.5]),
    ],
)
def test_metric_scale_round_trip_and_noise_factor(scale: MetricScale, values, read_as) -> None:
    modelled = scale.forward(values)
    np.testing.assert_allclose(scale.inverse(modelled), read_as, atol=1e-9)
    assert np.all(np.diff(modelled) > 0)
    assert np.all(scale.noise_factor(modelled) > 0)


def test_accuracy_is_modelled_on_the_logit_with_its_steps() -> None:
    curves = load_curves(DIGITS)  # accuracies on 300 samples, many near 1
    predictor = LearningCurvePredictor(bounds=(0, 1)).fit(curves.values[:30], curves.configs[:30])
    assert predictor.resolution_ == pytest.approx(1 / 300, rel=1e-4)
    near_top = predictor.predict(curves.values[30, :40], curves.configs[30])
    low_run = predictor.predict(np.full(40, 0.6), curves.configs[30])
    for p in (near_top, low_run):
        for end in (p.low, p.high):  # a quantised final: intervals end on its steps
            assert 300 * end == pytest.approx(round(300 * end), abs=0.01)
        assert p.prob_above(1.0) == 0.0 and p.prob_below(0.0) == 0.0
        assert p.prob_above(-0.5) == 1.0
    # the same reading noise is a smaller move in accuracy near 1 than at 0.6
    assert near_top.high - near_top.low < low_run.high - low_run.low


def test_a_rounded_reading_of_the_interval_end_step_is_covered() -> None:
    step = 0.00333333  # learned from readings stored to 5 decimals
    curves = load_curves(DIGITS)
    p = LearningCurvePredictor(bounds=(0, 1)).fit(curves.values[:30], curves.configs[:30])
    prediction = p.predict(curves.values[30, :40], curves.configs[30])
    high_step = round(prediction.high / step)
    assert prediction.covers(round(prediction.high, 5))  # the end step, as a file stores it
    assert prediction.covers(prediction.low)
    assert not prediction.covers(round(prediction.low - step, 5))  # one step out is out
    if high_step < 300:
        assert not prediction.covers(round(prediction.high + step, 5))


# ---- predictor -----------------------------------------------------------------------------
def test_predictor_interval_covers_held_out_finals() -> None:
    curves, configs = synthetic_runs(240)
    predictor = LearningCurvePredictor().fit(curves[:120], configs[:120])
    inside = [
        p.covers(curve[-1])
        for curve, config in zip(curves[120:], configs[120:], strict=True)
        for p in predictor.predict_prefixes(curve[:-1], config)
    ]
    assert 0.85 <= np.mean(inside) <= 0.97


def test_predictor_on_real_curves_ranks_and_covers() -> None:
    curves = load_curves(MNIST1D)
    values, configs = curves.values, list(curves.configs)
    predictor = LearningCurvePredictor(bounds=(0, 1)).fit(values[:28], configs[:28])
    quality = predictor.score(values[28:], configs[28:])
    assert quality["spearman"] > 0.6
    assert quality["coverage"] >= 0.75
    for i in range(28, 40):
        p = predictor.predict(values[i, :12], configs[i])
        assert 0.0 <= p.low <= p.mean <= p.high <= 1.0


def test_a_run_ahead_of_every_finished_run_is_predicted_ahead_and_kept() -> None:
    """Finished runs that all ended near 0.65, whatever their start (their final value is best
    predicted as such); a run already at 0.85 and climbing must be predicted above the best of
    them, and the strictest rule (compare with the best finished run) must keep it."""
    rng = np.random.default_rng(4)
    speeds = np.linspace(1.5, 6.0, 15)
    curves = [synthetic_run(rng, float(rng.uniform(0.64, 0.66)), speed) for speed in speeds]
    configs = [{"optimizer": "sgd", "lr": 0.01}] * 15
    predictor = LearningCurvePredictor(bounds=(0, 1)).fit(curves, configs)
    finals = [c[-1] for c in curves]
    leader = synthetic_run(np.random.default_rng(9), quality=0.95, speed=2.0)[:6]
    assert leader[-1] > max(finals)
    prediction = predictor.predict(leader, configs[0])
    assert prediction.mean > max(finals)
    rule = StoppingRule(predictor, k=1, threshold=0.3, patience=1, min_finished=5)
    assert not rule.decide(leader, configs[0], finals).stop


def test_a_run_unlike_the_finished_runs_gets_a_wider_interval() -> None:
    """Nearest-neighbour scores are normalised by how far the neighbours are: the same curve
    with a config far outside everything fitted on gets a wider interval."""
    curves, configs = synthetic_runs(40, seed=5)
    predictor = LearningCurvePredictor(config_weights=(1.0,)).fit(curves, configs)
    seen = predictor.predict(curves[0][:6], configs[0])
    unseen = predictor.predict(curves[0][:6], {**configs[0], "lr": 1e-30})
    assert unseen.high - unseen.low > seen.high - seen.low


def test_finished_runs_that_never_moved_still_give_a_distribution() -> None:
    """Three finished runs of a quantised accuracy that sat on one value: no spread at all
    among them, and still a finite, proper distribution (not a division by zero)."""
    flat = [[0.5, 0.75, 0.75, 0.75, 0.75]] * 3
    predictor = LearningCurvePredictor(bounds=(0, 1)).fit(flat, [{}] * 3)
    prediction = predictor.predict([0.5, 0.75], {})
    assert math.isfinite(prediction.spread) and prediction.spread > 0
    assert 0.0 <= prediction.prob_above(0.75) <= 1.0
    assert prediction.prob_above(0.9) < prediction.prob_above(0.5)


def test_predictor_errors_are_nas_errors() -> None:
    with pytest.raises(NasError, match="not fitted"):
        LearningCurvePredictor().predict([0.1], {})
    curves, configs = synthetic_runs(10)
    predictor = LearningCurvePredictor().fit(curves, configs)
    with pytest.raises(CurveDataError, match="1 to 19 points"):
        predictor.predict(curves[0], configs[0])
    with pytest.raises(CurveDataError, match="one length"):
        LearningCurvePredictor().fit([[0.1, 0.2], [0.1, 0.2, 0.3]], [{}, {}])


# ---- the stopping rule ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def fitted() -> tuple[LearningCurvePredictor, list[float]]:
    curves, configs = synthetic_runs(30, seed=3)
    return LearningCurvePredictor().fit(curves, configs), [c[-1] for c in curves]


def test_rule_stops_a_clearly_bad_run(fitted) -> None:
    predictor, finals = fitted
    bad = synthetic_run(np.random.default_rng(5), quality=0.35, speed=2.0)[:8]
    decision = StoppingRule(predictor).decide(bad, {"optimizer": "sgd", "lr": 0.01}, finals)
    assert decision.stop
    assert decision.probability is not None and decision.probability < 0.1
    assert decision.threshold == pytest.approx(sorted(finals)[-3] - StoppingRule().tolerance)
    assert decision.reason.startswith("stop: P(final >")


def test_rule_keeps_a_clearly_good_run(fitted) -> None:
    predictor, finals = fitted
    good = synthetic_run(np.random.default_rng(6), quality=0.97, speed=2.0)[:8]
    decision = StoppingRule(predictor).decide(good, {"optimizer": "adam", "lr": 0.01}, finals)
    assert not decision.stop
    assert decision.probability is not None and decision.probability > 0.5
    assert decision.low is not None and decision.high is not None
    assert decision.low <= decision.mean <= decision.high


def test_rule_never_stops_before_enough_runs_finished(fitted) -> None:
    predictor, finals = fitted
    bad = [0.1] * 10
    decision = StoppingRule(predictor, min_finished=10).decide(bad, {}, finals[:9])
    assert not decision.stop
    assert decision.mean is None and decision.probability is None
    assert "fallback" in decision.reason and "9 of 10" in decision.reason
    assert StoppingRule(predictor, min_finished=10).decide(bad, {}, finals).stop


def test_model_stops_no_run_before_model_from(fitted) -> None:
    """Before epoch ``model_from`` only the rungs may stop a run: the model's low probability
    is reported, not acted on."""
    predictor, finals = fitted
    bad = [0.1] * 6
    rule = StoppingRule(predictor, threshold=0.1, model_from=5, rung_keep=1.0)
    early = rule.decide(bad[:4], {}, finals)
    assert not early.stop and early.probability is not None and early.probability < 0.05
    assert "no run before epoch 5" in early.reason
    assert rule.decide(bad[:5], {}, finals).stop
    anytime = StoppingRule(predictor, threshold=0.1, model_from=1, rung_keep=1.0)
    assert anytime.decide(bad[:2], {}, finals).stop


def test_rule_patience_needs_consecutive_low_probabilities(fitted) -> None:
    predictor, finals = fitted
    bad = [0.1] * 5
    rule = StoppingRule(predictor, patience=2, threshold=0.1)
    assert not rule.decide(bad[:1], {}, finals).stop
    assert rule.decide(bad, {}, finals).stop


def test_threshold_shrinks_as_the_run_gets_on(fitted) -> None:
    predictor, finals = fitted
    rule = StoppingRule(predictor, threshold=0.1)  # decay=1 by default
    assert rule.threshold_at(2) == pytest.approx(0.1 * (1 - 2 / EPOCHS))
    assert rule.threshold_at(EPOCHS - 1) == pytest.approx(0.1 / EPOCHS)
    assert StoppingRule(predictor, threshold=0.1, decay=0.0).threshold_at(EPOCHS - 1) == 0.1
    assert StoppingRule(threshold=0.1).threshold_at(5) == 0.1  # no predictor, no horizon
    # a middling run: stopped early at a fixed threshold, judged by the shrunk one late on
    curve = synthetic_run(np.random.default_rng(7), quality=0.8, speed=3.0)
    late = StoppingRule(predictor, threshold=0.5, patience=1).decide(curve[:18], {}, finals)
    assert late.reason.endswith(f"{0.5 * (1 - 18 / EPOCHS):.3g} (top 3 of 30 finished runs)")


def test_rule_in_min_mode_stops_a_high_loss() -> None:
    curves, configs = synthetic_runs(30, seed=4)
    losses = [[1 - v for v in c] for c in curves]
    predictor = LearningCurvePredictor().fit(losses, configs)
    finals = [c[-1] for c in losses]
    rule = StoppingRule(predictor, mode="min")
    assert rule.decide([0.9] * 8, {}, finals).stop
    assert not rule.decide(
        [1 - v for v in synthetic_run(np.random.default_rng(9), 0.97, 2.0)[:8]], {}, finals
    ).stop


def test_decision_is_plain_frozen_data(fitted) -> None:
    predictor, finals = fitted
    decision = StoppingRule(predictor).decide([0.2, 0.3, 0.35], {}, finals)
    assert isinstance(decision, StopDecision)
    json.dumps(asdict(decision))
    with pytest.raises(AttributeError):
        decision.stop = True  # type: ignore[misc]


def test_fallback_ranks_among_the_runs_seen_so_far() -> None:
    peers = [[0.2 + 0.1 * i] * 6 for i in range(6)]  # values 0.2 ... 0.7 at every epoch
    rule = StoppingRule(
        min_finished=10, fallback_keep=0.5, fallback_peers=5, patience=2, rung_keep=1.0
    )
    low = rule.decide([0.25] * 4, {}, [0.8] * 3, peers)
    assert low.stop and low.mean is None and low.probability is None
    assert "fallback" in low.reason and "3 of 10" in low.reason
    # kept: the best ceil(0.5 * 7) = 4 of the 6 peers and itself, i.e. not below the 4th peer
    assert low.threshold == pytest.approx(0.4)
    assert not rule.decide([0.65] * 4, {}, [], peers).stop  # among the best half
    assert not rule.decide([0.9, 0.25], {}, [], peers).stop  # low for one epoch only
    assert not rule.decide([0.25] * 4, {}, [], peers[:4]).stop  # too few runs to rank against
    assert not StoppingRule(min_finished=10, rung_keep=1.0).decide([0.0] * 4, {}, [], peers).stop
    mins = StoppingRule(
        mode="min", min_finished=10, fallback_keep=0.5, fallback_peers=5, patience=1,
        min_epochs=1, rung_keep=1.0,
    )  # fmt: skip
    assert mins.decide([0.65], {}, [], peers).stop and not mins.decide([0.25], {}, [], peers).stop


def test_rungs_are_min_epochs_times_powers_of_the_factor() -> None:
    assert [t for t in range(1, 60) if StoppingRule().is_rung(t)] == [1, 4, 16]
    rule = StoppingRule(min_epochs=1, rung_factor=2)
    assert [t for t in range(1, 40) if rule.is_rung(t)] == [1, 2, 4, 8, 16, 32]


def test_rung_rule_keeps_the_best_half_of_the_runs_seen_there() -> None:
    peers = [[0.1 * i] * 8 for i in range(1, 11)]  # values 0.1 ... 1.0 at every epoch
    rule = StoppingRule(rung_keep=0.5, fallback_peers=10, min_epochs=2, rung_factor=3)
    low = rule.decide([0.3, 0.3], {}, [], peers)
    assert low.stop and "rung at epoch 2" in low.reason and low.probability is None
    # kept: the best ceil(0.5 * 11) = 6 of the 10 peers and itself, i.e. not below the 6th
    assert low.threshold == pytest.approx(0.5)
    assert not rule.decide([0.5, 0.5], {}, [], peers).stop  # tied with the last kept
    assert not rule.decide([0.3] * 3, {}, [], peers).stop  # epoch 3 is no rung
    assert rule.decide([0.3] * 6, {}, [], peers).stop  # epoch 6 is
    # ranked by the best value reached so far: a dip at the rung does not stop a good run
    assert not rule.decide([0.9] * 5 + [0.3], {}, [], peers).stop
    # nor does a peer's dip lower the bar: peers that peaked at 0.9 and 1.0 still count so
    dipped = [p[:5] + [0.0] * 3 if p[0] > 0.85 else p for p in peers]
    assert rule.decide([0.3] * 6, {}, [], dipped).threshold == pytest.approx(0.5)
    assert not rule.decide([0.3, 0.3], {}, [], peers[:9]).stop  # too few runs seen there
    assert not StoppingRule(rung_keep=1.0).decide([0.0, 0.0], {}, [], peers).stop
    mins = StoppingRule(mode="min", rung_keep=0.5, min_epochs=2)
    assert mins.decide([0.8, 0.8], {}, [], peers).stop
    assert not mins.decide([0.3, 0.3], {}, [], peers).stop
    assert not mins.decide([0.3, 0.8], {}, [], peers).stop  # its best so far is the lowest


def test_rung_rule_stops_a_run_the_model_would_keep() -> None:
    """The first rule that stops wins: a run still likely to beat the finished runs (the model
    keeps it) is stopped at a rung where most runs seen there were ahead of it."""
    curves, configs = synthetic_runs(30, seed=2)
    predictor = LearningCurvePredictor(bounds=(0, 1)).fit(curves, configs)
    finals = [0.3] * 30  # a low bar: the model keeps nearly any run
    run = curves[0][:4]  # epoch 4 is a rung by default
    peers = [[v + 0.4 for v in run]] * 10  # ten runs far ahead there
    assert not StoppingRule(predictor, rung_keep=1.0).decide(run, configs[0], finals, peers).stop
    decision = StoppingRule(predictor).decide(run, configs[0], finals, peers)
    assert decision.stop and "rung" in decision.reason


def test_rungs_save_epochs_in_a_replay() -> None:
    curves = load_curves(DIGITS)
    no_rungs = LearningCurveMethod(RuleSettings(rung_keep=1.0))
    rungs = LearningCurveMethod(RuleSettings(), name="rungs")
    report = replay(curves, [no_rungs, rungs], orders=2, subset=40)
    without, with_rungs = report["methods"]
    assert with_rungs["epochs_fraction"] < without["epochs_fraction"]


def test_defaults_are_one_setting_everywhere() -> None:
    rule = StoppingRule()
    spec = EarlyStoppingSpec().model_dump()
    assert spec == {name: getattr(rule, name) for name in spec}
    assert asdict(RuleSettings()) == spec
    pruner = LearningCurvePruner()
    assert pruner.settings == spec


def test_rule_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="threshold=1.5"):
        StoppingRule(threshold=1.5).decide([0.1], {}, [])
    with pytest.raises(ValueError, match="mode='up'"):
        StoppingRule(mode="up").decide([0.1], {}, [])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="fallback_keep=0"):
        StoppingRule(fallback_keep=0).decide([0.1], {}, [])
    with pytest.raises(ValueError, match="rung_keep=0"):
        StoppingRule(rung_keep=0).decide([0.1], {}, [])
    with pytest.raises(ValueError, match="rung_factor=1"):
        StoppingRule(rung_factor=1).decide([0.1], {}, [])


# ---- Optuna ----------------------------------------------------------------------------------
def test_pruner_in_a_real_study_prunes_bad_and_keeps_good() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    decisions: list[StopDecision] = []
    pruner = LearningCurvePruner(EPOCHS, on_decision=lambda trial, d: decisions.append(d))
    study = optuna.create_study(direction="maximize", pruner=pruner)
    rng = np.random.default_rng(0)

    def objective(trial: optuna.Trial) -> float:
        quality = trial.suggest_float("quality", 0.3, 0.97)
        speed = trial.suggest_float("speed", 1.5, 6.0)
        curve = synthetic_run(rng, quality, speed)
        for epoch, value in enumerate(curve):
            trial.report(value, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return curve[-1]

    startup = np.linspace(0.3, 0.95, 12)
    for quality in startup:
        study.enqueue_trial({"quality": float(quality), "speed": 3.0})
    study.enqueue_trial({"quality": 0.32, "speed": 2.0})  # clearly bad
    study.enqueue_trial({"quality": 0.97, "speed": 2.0})  # clearly good
    study.optimize(objective, n_trials=14)
    states = [t.state for t in study.trials]
    assert states[:12] == [optuna.trial.TrialState.COMPLETE] * 12  # the fallback: never stop
    assert states[12] == optuna.trial.TrialState.PRUNED
    assert states[13] == optuna.trial.TrialState.COMPLETE
    assert study.best_trial.number == 13
    assert any(d.stop for d in decisions) and any("fallback" in d.reason for d in decisions)


def test_pruner_in_a_minimising_study() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # eight finished trials give the loser 1/41 at best, under the default threshold (which
    # shrinks epoch by epoch) for one epoch only, and the rule asks for two in a row
    pruner = LearningCurvePruner(EPOCHS, min_finished=8, threshold=0.1)
    study = optuna.create_study(direction="minimize", pruner=pruner)
    rng = np.random.default_rng(1)

    def objective(trial: optuna.Trial) -> float:
        quality = trial.suggest_float("quality", 0.3, 0.97)
        curve = [1 - v for v in synthetic_run(rng, quality, 3.0)]
        for epoch, value in enumerate(curve):
            trial.report(value, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return curve[-1]

    for quality in [*np.linspace(0.4, 0.95, 8), 0.31]:
        study.enqueue_trial({"quality": float(quality)})
    study.optimize(objective, n_trials=9)
    assert study.trials[-1].state == optuna.trial.TrialState.PRUNED


# ---- replay and the command ------------------------------------------------------------------
def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["curves", "replay", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_replay_json_shape(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, str(DIGITS), "--orders", "2", "--subset", "25", "--json")
    assert code == 0
    report = json.loads(out)
    assert report["orders"] == 2 and report["subset"] == 25
    names = [m["name"] for m in report["methods"]]
    assert names[0] == "learning-curve"
    optuna_names = [n for n in names if n.startswith("optuna-")]
    assert len(optuna_names) == 5
    assert {"no-stopping", "top-10%-at-20%"} <= set(names)
    for m in report["methods"]:
        for key in ("epochs_fraction", "p_best_kept", "top3_recall"):
            assert 0.0 <= m[key] <= 1.0
        assert m["mean_regret"] >= 0.0
    ours = report["methods"][0]
    assert -1.0 <= ours["spearman_at_25"] <= 1.0 and 0.0 <= ours["coverage_90"] <= 1.0
    no_stopping = report["methods"][names.index("no-stopping")]
    assert no_stopping["epochs_fraction"] == 1.0 and no_stopping["mean_regret"] == 0.0


def test_replay_of_a_loss_in_min_mode() -> None:
    curves = load_curves(MNIST1D, "val_loss")
    report = replay(curves, orders=1, subset=30, mode="min")
    assert [m["name"] for m in report["methods"]][0] == "learning-curve"
    assert all(m["mean_regret"] >= 0 for m in report["methods"])


def test_replay_table(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, str(MNIST1D), "--orders", "1", "--subset", "15")
    assert code == 0 and "learning" in out and "optuna" in out and "no-stopping" in out


@pytest.mark.parametrize(
    ("content", "args", "expected"),
    [
        (None, [], "does not exist"),
        ('{"id": 1, "config": {}, "val_acc": [0.1, 0.2]}\n{"id": 2,', [], ":2: not valid JSON"),
        (
            '{"id": 1, "config": {}, "val_acc": [0.1, 0.2]}\n',
            ["--metric", "acc"],
            "no metric 'acc'",
        ),
        ('{"id": 1, "config": {}, "val_acc": [0.1, "x"]}\n', [], "list of finite numbers"),
        ('{"id": 1, "val_acc": [0.1, 0.2]}\n{"id": 2, "val_acc": [0.1]}\n', [], "one length"),
    ],
)
def test_bad_curve_files_are_one_line_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content, args, expected
) -> None:
    path = tmp_path / "curves.jsonl"
    if content is not None:
        path.write_text(content)
    code, out, err = run_cli(capsys, str(path), "--json", *args)
    assert code == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nas: error: ") and expected in lines[0]


def test_gzip_that_is_not_gzip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "curves.jsonl.gz"
    path.write_text("plain text")
    code, _, err = run_cli(capsys, str(path))
    assert code == 2 and len(err.strip().splitlines()) == 1 and "cannot read" in err


def test_fixture_is_gzip_jsonl() -> None:
    with gzip.open(MNIST1D, "rt") as lines:
        first = json.loads(next(iter(lines)))
    assert {"id", "config", "val_acc", "val_loss"} <= set(first)
    assert len(first["val_acc"]) == 50 and math.isfinite(first["val_acc"][0])
