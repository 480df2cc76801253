"""The stage machine of one job: TRAIN, PROFILE, SEARCH, FRONT, DONE.

The controller is the only writer of its job's rows. Work runs on Ray (the trainer as an actor
driven one epoch at a time, evaluations and latency measurements as tasks); results come back
as plain data and are stored as they arrive. Every stage first looks at what the database
already holds, so a controller restarted on a half-finished job redoes nothing that finished.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import ray

from nas.cluster import WORKER_RETRIES
from nas.errors import ClusterError, InfeasibleError, JobCancelled
from nas.hardware import measure_layer_table, measure_subnets
from nas.pareto import non_dominated
from nas.predictors.latency import LatencyPredictor, latency_scores
from nas.search import Iteration, run_nsga2, run_predictive_search, size_spread_design
from nas.spec import ConstraintSpec, JobSpec, directions
from nas.store import (
    Measurement,
    StopDecisionRecord,
    Store,
    SubnetRecord,
    TrainingRunRecord,
    config_key,
    metric_key,
)
from nas.trials import (
    CurveJudge,
    FinishedRun,
    next_tuned,
    run_curves,
    run_settings,
    scores,
)
from search_spaces import Config, SearchSpace
from workers.datasets import load_dataset
from workers.evaluator import evaluate_configs
from workers.trainer import CHECKPOINT_NAME, SupernetTrainer

#: What the evaluator measures of every subnet, besides latency per hardware target.
SUBNET_METRICS = ("accuracy", "test_accuracy", "macs", "params")

#: How stored scores name the layer-table latency predictor.
LAYER_TABLE_MODEL = "layer-table+linear"

#: What a stored stop decision keeps of the rule's ``StopDecision``.
DECISION = ("stop", "mean", "low", "high", "threshold", "probability", "reason")

#: ``(stage, done, total, detail)``: how the controller tells a user interface where it is.
ProgressCallback = Callable[[str, int, int, str], None]


def _silent(stage: str, done: int, total: int, detail: str) -> None:
    """The default progress callback: report nothing."""


class Controller:
    """Runs one stored job to completion on the connected Ray cluster."""

    def __init__(
        self,
        store: Store,
        job_id: str,
        artifacts: str | Path,
        on_progress: ProgressCallback = _silent,
    ):
        self.store = store
        self.job = store.get_job(job_id)
        self.spec = JobSpec.model_validate(self.job.spec)
        self.space: SearchSpace = self.spec.space()
        self.space_data = {"name": self.space.name, "kwargs": self.space.describe()}
        self.input_shape = list(load_dataset(**self.spec.dataset_kwargs()).x_train.shape[1:])
        self.artifacts = Path(artifacts).resolve() / job_id
        self.on_progress = on_progress
        self.checkpoint: str | None = None

    # ---- the stage machine ------------------------------------------------------------
    def run(self) -> None:
        """Run every stage that has not finished; on failure the job is marked failed."""
        self.store.update_job(self.job.id, status="running", error="" if self.job.error else None)
        try:
            self.check_feasible()
            self.train()
            self.profile()
            self.search()
            self.save_fronts()
        except BaseException as error:
            # a cancelled job keeps its status, however its controller was stopped (Ray ends
            # a cancelled Ray job's process with SIGTERM, which Ray turns into SystemExit)
            if self.store.get_job(self.job.id).status != "cancelled":
                reason = str(error).splitlines()[0] if str(error) else type(error).__name__
                self.store.update_job(self.job.id, status="failed", error=reason)
            raise
        self.store.update_job(self.job.id, status="done", stage="done", stage_detail="")

    def _enter(self, stage: str, detail: str = "") -> None:
        self._check_cancelled()
        self.store.update_job(self.job.id, stage=stage, stage_detail=detail)

    def _progress(self, stage: str, done: int, total: int, detail: str = "") -> None:
        self._check_cancelled()
        self.store.update_job(self.job.id, stage_detail=detail or f"{done}/{total}")
        self.on_progress(stage, done, total, detail)

    def _check_cancelled(self) -> None:
        """Stop at the next step once the job is marked cancelled (``nas cancel`` or the API's
        cancel route: the database is how a canceller reaches a controller it cannot signal)."""
        if self.store.get_job(self.job.id).status == "cancelled":
            raise JobCancelled(f"job {self.job.id} was cancelled")

    # ---- before any work --------------------------------------------------------------
    def check_feasible(self) -> None:
        """Fail at once when the smallest subnet already breaks an upper bound on a cost.

        The smallest subnet has the fewest MACs and params of the space (exactly) and is its
        fastest (in practice), so a ``max`` on any of them that it breaks, no subnet meets:
        better one clear error now than a trained supernet and an empty front.
        """
        bounded = [c for c in self.spec.constraints if c.max is not None and c.metric != "accuracy"]
        if not bounded:
            return
        smallest = self.space.min()
        supernet = self.space.build_supernet()
        values = {
            "macs": float(supernet.macs(smallest)),
            "params": float(supernet.params(smallest)),
        }
        for c in bounded:
            target = c.metric.partition("@")[2]
            if target and c.metric not in values:
                values[c.metric] = self._latency(target, [smallest])[0]["median_ms"]
            if values[c.metric] > c.max:
                raise InfeasibleError(
                    f"no subnet satisfies {c.metric} <= {c.max:g}: the smallest subnet of the "
                    f"space already has {c.metric}={values[c.metric]:.4g}"
                )

    # ---- TRAIN --------------------------------------------------------------------------
    def train(self) -> None:
        """Train ``training.trials`` supernets (one by default), resuming any unfinished run,
        then take the best finished run's supernet for the later stages."""
        training = self.spec.training
        stopping = training.early_stopping
        judge = CurveJudge(stopping, training.epochs) if stopping else None
        while True:
            runs = self.store.training_runs(self.job.id)
            unfinished = [r for r in runs if r.status == "running"]
            if unfinished:
                run = unfinished[0]
            elif len(runs) < training.trials:
                tuned = next_tuned(training, self._finished_runs(runs), self.spec.seed)
                settings = run_settings(training, tuned, self.spec.seed + len(runs))
                run = self.store.create_training_run(self.job.id, settings)
                runs.append(run)
            else:
                break
            self._enter("train")
            self._train_run(run, f"run {runs.index(run) + 1}/{training.trials}", judge)
        self.checkpoint = self._best_run().checkpoint_path

    def _train_run(self, run: TrainingRunRecord, name: str, judge: CurveJudge | None) -> None:
        """Train one run epoch by epoch; the rule may stop it after any epoch."""
        training = self.spec.training
        checkpoint_dir = str(self.artifacts / f"run-{run.id}")
        checkpoint = str(Path(checkpoint_dir) / CHECKPOINT_NAME)
        run_epoch, close = self._trainer(run, checkpoint_dir, name)
        try:
            # from the database's count, not the checkpoint's: an epoch checkpointed by a
            # controller that died before storing it comes back from the checkpoint
            for epoch in range(run.epochs_done + 1, training.epochs + 1):
                values = run_epoch(epoch)
                self.store.add_curve_points(run.id, epoch, values)
                self.store.update_training_run(
                    run.id, epochs_done=epoch, checkpoint_path=checkpoint
                )
                detail = (
                    f"{name}, epoch {epoch}/{training.epochs}, "
                    f"largest val acc {values['val_acc/largest']:.3f}"
                )
                self._progress("train", epoch, training.epochs, detail)
                if judge and epoch < training.epochs and self._judge(run, epoch, judge):
                    self.store.update_training_run(run.id, status="stopped")
                    return
        finally:
            close()
        self.store.update_training_run(run.id, status="done", checkpoint_path=checkpoint)

    def _trainer(
        self, run: TrainingRunRecord, checkpoint_dir: str, name: str
    ) -> tuple[Callable[[int], dict[str, float]], Callable[[], None]]:
        """``run_epoch(epoch)`` of the run's trainer, and how to release it.

        One worker trains in a Ray actor; several train data-parallel on Ray Train
        (``workers.ddp``, imported only then). Either way a trainer process that dies is
        restarted from the checkpoint and the pending epoch trained again (``run_epoch`` is
        idempotent); only repeated deaths fail the job. A data-parallel epoch tried again, or
        waiting for its workers' resources, shows in the job's status (``name`` is the run's).
        """
        training = self.spec.training
        args = (self.space_data, self.spec.dataset_kwargs(), run.hparams, checkpoint_dir)
        if training.workers > 1:
            from workers.ddp import DataParallelError, DataParallelTrainer

            def on_retry(epoch: int, why: str) -> None:
                detail = f"{name}, epoch {epoch}/{training.epochs}: {why}"
                self._progress("train", epoch - 1, training.epochs, detail)

            trainer = DataParallelTrainer(
                *args, training.workers, training.worker_resources(), WORKER_RETRIES, on_retry
            )

            def run_epoch(epoch: int) -> dict[str, float]:
                try:
                    return trainer.run_epoch(epoch)
                except DataParallelError as error:
                    raise ClusterError(str(error)) from error

            return run_epoch, lambda: None
        resources = training.worker_resources()
        actor_class = ray.remote(
            num_cpus=resources.pop("CPU"),
            num_gpus=resources.pop("GPU", 0),
            resources=resources,
            max_restarts=WORKER_RETRIES,
            max_task_retries=WORKER_RETRIES,
        )(SupernetTrainer)
        actor = actor_class.remote(*args, training.cpus, training.device)
        return lambda epoch: self._get(actor.run_epoch.remote(epoch)), lambda: ray.kill(actor)

    def _judge(self, run: TrainingRunRecord, epoch: int, judge: CurveJudge) -> bool:
        """Store the rule's decision on ``run`` after ``epoch``; whether it stops the run."""
        others = [r for r in self.store.training_runs(self.job.id) if r.id != run.id]
        decision = judge.decide(
            self._scores(run.id), run.hparams["tuned"], self._finished_runs(others)
        )
        self.store.add_stop_decision(
            StopDecisionRecord(run.id, epoch, **{k: getattr(decision, k) for k in DECISION})
        )
        return decision.stop

    def _scores(self, run_id: int) -> list[float]:
        return scores(run_curves(self.store.curve(run_id)))

    def _finished_runs(self, runs: Sequence[TrainingRunRecord]) -> list[FinishedRun]:
        return [
            FinishedRun(r.hparams.get("tuned", {}), self._scores(r.id), r.status == "stopped")
            for r in runs
            if r.status in ("done", "stopped")
        ]

    def _best_run(self) -> TrainingRunRecord:
        """The finished run with the best final score (the only run, without tuning)."""
        done = [r for r in self.store.training_runs(self.job.id) if r.status == "done"]
        return max(done, key=lambda r: self._scores(r.id)[-1])

    # ---- PROFILE ------------------------------------------------------------------------
    def profile(self) -> None:
        """Measure the largest, the smallest and ``profile_samples`` random subnets spread over
        sizes (``size_spread_design``), which the predictors are first fitted on."""
        self._enter("profile")
        rng = np.random.default_rng(self.spec.seed)
        configs = size_spread_design(self.space, self.spec.search.profile_samples, rng)
        self.measure(configs, "profile", "profile")

    # ---- SEARCH -------------------------------------------------------------------------
    def search(self) -> None:
        """Search with the spec's strategy; every point it ends on is measured for real."""
        self._enter("search")
        if self.spec.search.strategy == "nsga2":
            self._search_nsga2()
        else:
            self._search_predictive()

    def _profiled(self) -> list[SubnetRecord]:
        return [s for s in self.store.subnets(self.job.id) if s.source == "profile"]

    def _search_nsga2(self) -> None:
        settings = self.spec.search
        generation = 0

        def evaluate(configs: list[Config]) -> list[dict[str, float]]:
            nonlocal generation
            generation += 1
            detail = f"generation {generation}/{settings.generations}"
            return [s.metrics for s in self.measure(configs, "search", detail)]

        run_nsga2(
            self.space,
            evaluate,
            objectives=self.spec.objectives,
            directions=directions(self.spec.objectives),
            constraints=[c.model_dump() for c in self.spec.constraints],
            population=settings.population,
            generations=settings.generations,
            initial=[s.config for s in self._profiled()],
            seed=self.spec.seed,
        )

    def _search_predictive(self) -> None:
        """Predictor-guided NSGA-II; each iteration's hypervolume and the predictions that
        chose each measured subnet are stored.

        MACs and params are computed exactly. Latency on a target is predicted from the
        target's layer table (``nas.predictors.latency``), refitted after every iteration on
        all subnets measured so far; the search receives it as a function of a config, like
        the exact metrics, and its predictions are stored and scored here. Any other metric
        is learned by the search's own predictors.
        """
        settings = self.spec.search
        supernet = self.space.build_supernet()
        keys = {*self.spec.objectives, *(c.metric for c in self.spec.constraints)}
        computed = {
            "macs": lambda c: float(supernet.macs(c)),
            "params": lambda c: float(supernet.params(c)),
        }
        computed = {k: f for k, f in computed.items() if k in keys}
        profiled = self._profiled()
        latency = {
            key: self._latency_predictor(key.partition("@")[2], profiled)
            for key in sorted(keys)
            if key.partition("@")[0] == "latency_ms"
        }
        # what the search has measured so far, in order: refits see exactly this, so that a
        # rerun of a finished search predicts (and stores) what the first run did
        seen = [s.config for s in profiled]
        reference = _worst(
            [[s.metrics[k] for k in self.spec.objectives] for s in profiled],
            directions(self.spec.objectives),
        )

        def evaluate(configs: list[Config]) -> list[dict[str, float]]:
            return [s.metrics for s in self.measure(configs, "search", "measuring")]

        def record(it: Iteration) -> None:
            measured = {config_key(s.config): s.metrics for s in self.store.subnets(self.job.id)}
            for config, predicted in it.predictions:
                subnet = self.store.add_subnet(self.job.id, config, "search")
                learned = {k: v for k, v in predicted.items() if k not in computed}
                self.store.add_predictions(subnet.id, learned, it.iteration)
            seen.extend(c for c, _ in it.predictions)
            scores = dict(it.scores)
            for key, predictor in latency.items():
                if it.predictions:
                    guesses = [p[key] for _, p in it.predictions]
                    truth = [measured[config_key(c)][key] for c, _ in it.predictions]
                    scores[key] = {"model": LAYER_TABLE_MODEL, **latency_scores(guesses, truth)}
                predictor.fit(seen, [measured[config_key(c)][key] for c in seen])
            self.store.add_search_iteration(
                self.job.id, it.iteration, it.evaluations, it.hypervolume, scores
            )
            detail = f"iteration {it.iteration}, hypervolume {it.hypervolume:.4g}"
            self._progress("search", it.evaluations, settings.budget, detail)

        predicted = {key: _one_at_a_time(p) for key, p in latency.items()}
        run_predictive_search(
            self.space,
            evaluate,
            objectives=self.spec.objectives,
            directions=directions(self.spec.objectives),
            initial=[s.config for s in profiled],
            budget=settings.budget,
            reference=reference,
            exact=computed | predicted,
            constraints=[c.model_dump() for c in self.spec.constraints],
            batch=settings.batch,
            population=settings.population,
            generations=settings.generations,
            seed=self.spec.seed,
            on_iteration=record,
        )

    def _latency_predictor(
        self, target_name: str, profiled: list[SubnetRecord]
    ) -> LatencyPredictor:
        """The target's layer table (measured once per job, on the target's node) with its
        correction fitted on the profiled subnets; that fit's cross-validated quality is
        stored with the job."""
        target = self.spec.target(target_name)
        shape = target.input_shape or self.input_shape
        stored = {p.target: p for p in self.store.latency_predictors(self.job.id)}
        if target_name not in stored:
            self._progress("search", 0, 1, f"measuring the layer table of target {target_name}")
            layers = self.space.all_layers(shape)
            table = self._get(measure_layer_table(target, self.space_data, layers))
            medians = {signature: t["median_ms"] for signature, t in table.items()}
            self.store.save_latency_predictor(self.job.id, target_name, table=medians)
            stored[target_name] = self.store.latency_predictors(self.job.id)[-1]
        predictor = LatencyPredictor(self.space, stored[target_name].table, shape)
        key = metric_key("latency_ms", target_name)
        configs, latencies = [s.config for s in profiled], [s.metrics[key] for s in profiled]
        predictor.fit(configs, latencies)
        if not stored[target_name].scores:
            scores = {
                "model": LAYER_TABLE_MODEL,
                "layers": len(predictor.table),
                "fitted_on": len(latencies),
                "held_out": predictor.cross_validated_scores(configs, latencies),
            }
            self.store.save_latency_predictor(self.job.id, target_name, scores=scores)
        return predictor

    # ---- FRONT --------------------------------------------------------------------------
    def save_fronts(self) -> None:
        """Store the measured front of the search objectives and one per hardware target."""
        self._enter("front")
        named = [k.partition("@")[2] for k in self.spec.objectives if "@" in k]
        fronts = {(named or [""])[0]: list(self.spec.objectives)}
        for target in self.spec.hardware_targets:
            fronts.setdefault(target.name, ["accuracy", metric_key("latency_ms", target.name)])
        subnets = [s for s in self.store.subnets(self.job.id) if self._feasible(s)]
        if not subnets:
            bounds = ", ".join(_bounds(c) for c in self.spec.constraints)
            raise InfeasibleError(f"no measured subnet satisfies the constraints ({bounds})")
        for target, keys in fronts.items():
            measured = [s for s in subnets if all(k in s.metrics for k in keys)]
            rows = [[s.metrics[k] for k in keys] for s in measured]
            chosen = non_dominated(rows, directions(keys))
            self.store.save_front(self.job.id, target, keys, [measured[i].id for i in chosen])

    def _feasible(self, subnet: SubnetRecord) -> bool:
        for c in self.spec.constraints:
            value = subnet.metrics.get(c.metric)
            if value is None or (c.max is not None and value > c.max):
                return False
            if c.min is not None and value < c.min:
                return False
        return True

    # ---- measuring ------------------------------------------------------------------------
    def measure(self, configs: Sequence[Config], source: str, detail: str) -> list[SubnetRecord]:
        """Accuracy, MACs, params and latency on every target of each config, once per config.

        ``source`` is the stage asking (``profile`` or ``search``). Configs the database already
        holds fully measured are not measured again.
        """
        canonical = [self.space.canonical(c) for c in configs]
        ids = [self.store.add_subnet(self.job.id, c, source).id for c in canonical]
        needed = self._missing(dict(zip(ids, canonical, strict=True)))
        total, done = len(needed), 0
        for chunk in _chunks(list(needed.items()), 8 * self.spec.search.evaluators):
            self._measure_chunk(dict(chunk))
            done += len(chunk)
            self._progress(source, done, total, f"{detail}: {done}/{total} subnets")
        by_id = {s.id: s for s in self.store.subnets(self.job.id)}
        return [by_id[i] for i in ids]

    def _missing(self, records: dict[int, Config]) -> dict[int, Config]:
        keys = list(SUBNET_METRICS)
        keys += [metric_key("latency_ms", t.name) for t in self.spec.hardware_targets]
        complete = {s.id for s in self.store.subnets(self.job.id, require=keys)}
        return {i: c for i, c in records.items() if i not in complete}

    def _measure_chunk(self, chunk: dict[int, Config]) -> None:
        ids, configs = list(chunk), list(chunk.values())
        evaluators = self.spec.search.evaluators
        parts = [configs[i::evaluators] for i in range(evaluators)]
        task = ray.remote(num_cpus=1, max_retries=WORKER_RETRIES)(evaluate_configs)
        futures = [
            task.remote(self.space_data, self.spec.dataset_kwargs(), self.checkpoint, part)
            for part in parts
            if part
        ]
        results: list[dict[str, Any]] = [None] * len(configs)  # type: ignore[list-item]
        for offset, part_results in enumerate(self._get(futures)):
            results[offset::evaluators] = part_results
        latencies = {t.name: self._latency(t.name, configs) for t in self.spec.hardware_targets}
        subnets_dir = self.artifacts / "subnets"
        subnets_dir.mkdir(parents=True, exist_ok=True)
        for position, (subnet_id, result) in enumerate(zip(ids, results, strict=True)):
            weights = subnets_dir / f"{subnet_id}.safetensors"
            weights.write_bytes(result["weights"])
            self.store.set_subnet_weights(subnet_id, str(weights))
            rows = [Measurement(k, float(result[k])) for k in SUBNET_METRICS]
            for name, values in latencies.items():
                lat = values[position]
                rows.append(
                    Measurement(
                        "latency_ms", lat["median_ms"], name, lat["spread_ms"], lat["repeats"]
                    )
                )
            self.store.add_measurements(subnet_id, rows)

    def _latency(self, target_name: str, configs: list[Config]) -> list[dict[str, float]]:
        """One task per target, alone on the target's node, measuring in sequence."""
        target = self.spec.target(target_name)
        shape = target.input_shape or self.input_shape
        return self._get(measure_subnets(target, self.space_data, configs, shape))

    @staticmethod
    def _get(futures: Any) -> Any:
        """``ray.get`` that turns a worker's failure into the project's one-line error."""
        try:
            return ray.get(futures)
        except ray.exceptions.RayTaskError as error:
            cause = error.as_instanceof_cause()
            raise ClusterError(f"a Ray task failed: {type(cause).__name__}: {cause}") from error


def _bounds(constraint: ConstraintSpec) -> str:
    """``0.9 <= accuracy``, ``params <= 5e+04``, ``1 <= latency_ms@cpu <= 2``."""
    low = f"{constraint.min:g} <= " if constraint.min is not None else ""
    high = f" <= {constraint.max:g}" if constraint.max is not None else ""
    return f"{low}{constraint.metric}{high}"


def _one_at_a_time(predictor: LatencyPredictor) -> Callable[[Config], float]:
    return lambda config: float(predictor.predict([config])[0])


def _worst(rows: list[list[float]], directions: list[str]) -> list[float]:
    """The worst value of each column: the hypervolume's reference point."""
    matrix = np.asarray(rows, dtype=float)
    return [
        float(c.min() if d == "max" else c.max()) for c, d in zip(matrix.T, directions, strict=True)
    ]


def _chunks(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]
