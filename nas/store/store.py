"""The ``Store``: every read and write of the service's database, each in one transaction.

SQLAlchemy stays in this package. Each public method runs in one ``_session``, which commits,
rolls back on any error and closes, so a failed call leaves the database as it was. Database
errors leave as ``StoreError`` with one line, unknown ids as ``NotFoundError``, rows as the
frozen records of ``records.py``.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, Select, and_, create_engine, event, func, or_, select, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from nas.errors import ConflictError, NotFoundError, StoreError
from nas.store import schema
from nas.store.models import (
    CurvePointRow,
    FrontMemberRow,
    FrontRow,
    JobRow,
    LatencyPredictorRow,
    MeasurementRow,
    PredictionRow,
    SearchIterationRow,
    StopDecisionRow,
    SubnetRow,
    TrainingRunRow,
    new_job_id,
    utcnow,
)
from nas.store.records import (
    ACTIVE_JOB_STATUSES,
    JOB_STAGES,
    JOB_STATUSES,
    RUN_STATUSES,
    SUBNET_SOURCES,
    CurvePoint,
    FrontRecord,
    JobRecord,
    LatencyPredictorRecord,
    Measurement,
    PredictionPair,
    SearchIterationRecord,
    StopDecisionRecord,
    SubnetRecord,
    TrainingRunRecord,
    config_key,
    metric_key,
    split_metric_key,
)

DEFAULT_DB_PATH = Path(".nas") / "nas.db"
SQLITE_BUSY_TIMEOUT_MS = 30_000  # wait for a concurrent writer instead of failing at once
POSTGRES_CONNECT_TIMEOUT_S = 10  # an unreachable host fails in seconds, not minutes


def resolve_url(db: str | None = None) -> str:
    """Choose the database: the ``db`` argument, else ``$NAS_DB``, else ``.nas/nas.db`` in cwd.

    A value without ``://`` is a SQLite file path. Only the default location gets its directory
    created; a directory the user named that does not exist is more likely a typo than a wish.
    """
    value = db or os.environ.get("NAS_DB")
    if not value:
        path = Path.cwd() / DEFAULT_DB_PATH
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise StoreError(f"cannot create directory {path.parent}: {err.strerror}") from err
        return f"sqlite:///{path}"
    if "://" not in value:
        value = f"sqlite:///{Path(value).expanduser().absolute()}"
    _check_sqlite_directory(value)
    return value


class Store:
    """The service's database: SQLite by default, PostgreSQL (or any SQLAlchemy URL) by URL.

    Construction connects once and checks the schema (an empty database gets its tables, one
    at an older schema revision asks for ``nas db upgrade``), so a wrong, unreachable or
    outdated database fails here, before any work starts. Returned records are frozen copies;
    holding them keeps no session or connection open.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self._shown_url = _hide_password(url)
        self._engine = _open_engine(url)
        self._sessions = sessionmaker(self._engine, expire_on_commit=False)
        self._current: ContextVar[Session | None] = ContextVar(f"store{id(self)}", default=None)
        try:
            with self._errors("reach database"), self._engine.connect():
                pass
            with self._errors("prepare the schema of database"):
                schema.prepare(self._engine, self._shown_url)
        except StoreError:
            self._engine.dispose()
            raise

    def __repr__(self) -> str:
        return f"Store({self._shown_url!r})"

    def close(self) -> None:
        """Close pooled connections; the store must not be used afterwards."""
        self._engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- jobs ---------------------------------------------------------------------------------

    def create_job(self, name: str, spec: dict[str, Any]) -> JobRecord:
        with self._session("create job") as session:
            now = utcnow()
            row = JobRow(
                id=new_job_id(),
                name=name,
                spec=spec,
                status="pending",
                created_at=now,
                updated_at=now,
            )
            session.add(row)
            session.flush()
            return _job_record(row)

    def get_job(self, job_id: str) -> JobRecord:
        with self._session("read job") as session:
            return _job_record(_job(session, job_id))

    def list_jobs(self) -> list[JobRecord]:
        """All jobs, newest first."""
        with self._session("list jobs") as session:
            rows = session.scalars(select(JobRow).order_by(JobRow.created_at.desc(), JobRow.id))
            return [_job_record(row) for row in rows]

    def update_job(
        self,
        job_id: str,
        *,
        status: str | None = None,
        stage: str | None = None,
        stage_detail: str | None = None,
        error: str | None = None,
        cluster_address: str | None = None,
        submission_id: str | None = None,
    ) -> None:
        """Change only the fields given (``None`` leaves a field as it is); bump ``updated_at``."""
        _check_choice("status", status, JOB_STATUSES)
        _check_choice("stage", stage, JOB_STAGES)
        with self._session("update job") as session:
            row = _job(session, job_id)
            _update(
                row,
                status=status,
                stage=stage,
                stage_detail=stage_detail,
                error=error,
                cluster_address=cluster_address,
                submission_id=submission_id,
            )

    def cancel_job(self, job_id: str) -> JobRecord:
        """Mark a pending or running job ``cancelled``; its controller stops at its next step.

        One conditional UPDATE, so a job that finishes meanwhile is never marked cancelled.
        """
        with self._session("cancel job") as session:
            row = _job(session, job_id)
            changed = session.execute(
                update(JobRow)
                .where(JobRow.id == job_id, JobRow.status.in_(ACTIVE_JOB_STATUSES))
                .values(status="cancelled", updated_at=utcnow())
                .execution_options(synchronize_session=False)
            ).rowcount
            session.refresh(row)
            if not changed:
                raise ConflictError(
                    f"job {job_id!r} is {row.status}; only a pending or running "
                    "job can be cancelled"
                )
            return _job_record(row)

    # -- training runs and learning curves ----------------------------------------------------

    def create_training_run(self, job_id: str, hparams: dict[str, Any]) -> TrainingRunRecord:
        with self._session("create training run") as session:
            _job(session, job_id)
            now = utcnow()
            row = TrainingRunRow(
                job_id=job_id,
                hparams=hparams,
                status="running",
                epochs_done=0,
                created_at=now,
                updated_at=now,
            )
            session.add(row)
            session.flush()
            return _run_record(row)

    def training_runs(self, job_id: str) -> list[TrainingRunRecord]:
        """The job's training runs in creation order."""
        with self._session("read training runs") as session:
            _job(session, job_id)
            query = select(TrainingRunRow).where(TrainingRunRow.job_id == job_id)
            return [_run_record(row) for row in session.scalars(query.order_by(TrainingRunRow.id))]

    def update_training_run(
        self,
        run_id: int,
        *,
        status: str | None = None,
        epochs_done: int | None = None,
        checkpoint_path: str | None = None,
    ) -> None:
        """Change only the fields given; bump ``updated_at``."""
        _check_choice("status", status, RUN_STATUSES)
        with self._session("update training run") as session:
            row = _run(session, run_id)
            _update(row, status=status, epochs_done=epochs_done, checkpoint_path=checkpoint_path)

    def add_curve_points(self, run_id: int, epoch: int, values: dict[str, float]) -> None:
        """Record one epoch's numbers; adding the same (epoch, name) again overwrites the value.

        Select-then-write inside the transaction works alike on every backend, and the
        controller is the only writer of its job's rows, so no race needs an upsert statement.
        """
        with self._session("add curve points") as session:
            _run(session, run_id)
            query = select(CurvePointRow).where(
                CurvePointRow.run_id == run_id, CurvePointRow.epoch == epoch
            )
            existing = {row.name: row for row in session.scalars(query)}
            for name, value in values.items():
                if name in existing:
                    existing[name].value = value
                else:
                    session.add(CurvePointRow(run_id=run_id, epoch=epoch, name=name, value=value))

    def curve(self, run_id: int) -> list[CurvePoint]:
        """The run's curve points ordered by epoch, then name."""
        with self._session("read curve") as session:
            _run(session, run_id)
            query = (
                select(CurvePointRow)
                .where(CurvePointRow.run_id == run_id)
                .order_by(CurvePointRow.epoch, CurvePointRow.name)
            )
            return [CurvePoint(row.epoch, row.name, row.value) for row in session.scalars(query)]

    def curves(self, job_id: str) -> dict[int, list[CurvePoint]]:
        """Every training run's curve points (by epoch, then name) in one indexed query."""
        with self._session("read curves") as session:
            _job(session, job_id)
            query = (
                select(
                    CurvePointRow.run_id,
                    CurvePointRow.epoch,
                    CurvePointRow.name,
                    CurvePointRow.value,
                )
                .join(TrainingRunRow, TrainingRunRow.id == CurvePointRow.run_id)
                .where(TrainingRunRow.job_id == job_id)
                .order_by(CurvePointRow.run_id, CurvePointRow.epoch, CurvePointRow.name)
            )
            curves: dict[int, list[CurvePoint]] = {}
            for run_id, epoch, name, value in session.execute(query):
                curves.setdefault(run_id, []).append(CurvePoint(epoch, name, value))
            return curves

    def add_stop_decision(self, decision: StopDecisionRecord) -> None:
        """Record the rule's decision on a run after an epoch; deciding again replaces it."""
        with self._session("add stop decision") as session:
            _run(session, decision.run_id)
            row = session.scalar(
                select(StopDecisionRow).where(
                    StopDecisionRow.run_id == decision.run_id,
                    StopDecisionRow.epoch == decision.epoch,
                )
            )
            if row is None:
                row = StopDecisionRow(run_id=decision.run_id, epoch=decision.epoch)
                session.add(row)
            for name in ("stop", "mean", "low", "high", "threshold", "probability", "reason"):
                setattr(row, name, getattr(decision, name))

    def stop_decisions(self, job_id: str) -> list[StopDecisionRecord]:
        """Every decision on the job's runs, by run, then epoch."""
        with self._session("read stop decisions") as session:
            _job(session, job_id)
            query = (
                select(StopDecisionRow)
                .join(TrainingRunRow, TrainingRunRow.id == StopDecisionRow.run_id)
                .where(TrainingRunRow.job_id == job_id)
                .order_by(StopDecisionRow.run_id, StopDecisionRow.epoch)
            )
            return [
                StopDecisionRecord(
                    r.run_id,
                    r.epoch,
                    r.stop,
                    r.mean,
                    r.low,
                    r.high,
                    r.threshold,
                    r.probability,
                    r.reason,
                )
                for r in session.scalars(query)
            ]

    # -- subnets and measurements -------------------------------------------------------------

    def add_subnet(self, job_id: str, config: dict[str, Any], source: str) -> SubnetRecord:
        """Get or create the job's subnet with this config; an existing row is returned as is."""
        _check_choice("source", source, SUBNET_SOURCES)
        key = config_key(config)
        with self._session("add subnet") as session:
            _job(session, job_id)
            row = session.scalar(
                select(SubnetRow).where(SubnetRow.job_id == job_id, SubnetRow.config_key == key)
            )
            if row is None:
                row = SubnetRow(job_id=job_id, config=config, config_key=key, source=source)
                session.add(row)
                session.flush()
            return _subnet_records(session, [row], [row.id])[0]

    def set_subnet_weights(self, subnet_id: int, path: str) -> None:
        with self._session("set subnet weights") as session:
            _subnet(session, subnet_id).weights_path = path

    def add_measurements(self, subnet_id: int, measurements: Sequence[Measurement]) -> None:
        """Write measurements; one that exists for (subnet, metric, target) is replaced."""
        with self._session("add measurements") as session:
            _subnet(session, subnet_id)
            query = select(MeasurementRow).where(MeasurementRow.subnet_id == subnet_id)
            existing = {(row.metric, row.target): row for row in session.scalars(query)}
            for m in measurements:
                row = existing.get((m.metric, m.target))
                if row is None:
                    row = MeasurementRow(subnet_id=subnet_id, metric=m.metric, target=m.target)
                    session.add(row)
                    existing[(m.metric, m.target)] = row
                row.value, row.spread, row.repeats = m.value, m.spread, m.repeats

    def add_predictions(self, subnet_id: int, values: dict[str, float], iteration: int) -> None:
        """Record what was predicted for a subnet (by metric key); a repeat replaces it."""
        with self._session("add predictions") as session:
            _subnet(session, subnet_id)
            query = select(PredictionRow).where(PredictionRow.subnet_id == subnet_id)
            existing = {(row.metric, row.target): row for row in session.scalars(query)}
            for key, value in values.items():
                metric, target = split_metric_key(key)
                row = existing.get((metric, target))
                if row is None:
                    row = PredictionRow(subnet_id=subnet_id, metric=metric, target=target)
                    session.add(row)
                row.value, row.iteration = value, iteration

    def add_search_iteration(
        self, job_id: str, iteration: int, evaluations: int, hypervolume: float, scores: dict
    ) -> None:
        """Record one round of the search; recording the same round again replaces it."""
        with self._session("add search iteration") as session:
            _job(session, job_id)
            row = session.scalar(
                select(SearchIterationRow).where(
                    SearchIterationRow.job_id == job_id, SearchIterationRow.iteration == iteration
                )
            )
            if row is None:
                row = SearchIterationRow(job_id=job_id, iteration=iteration)
                session.add(row)
            row.evaluations, row.hypervolume, row.scores = evaluations, hypervolume, scores

    def search_iterations(self, job_id: str) -> list[SearchIterationRecord]:
        with self._session("read search iterations") as session:
            _job(session, job_id)
            query = select(SearchIterationRow).where(SearchIterationRow.job_id == job_id)
            return [
                SearchIterationRecord(r.iteration, r.evaluations, r.hypervolume, r.scores)
                for r in session.scalars(query.order_by(SearchIterationRow.iteration))
            ]

    def save_latency_predictor(
        self,
        job_id: str,
        target: str,
        *,
        table: dict[str, float] | None = None,
        scores: dict[str, Any] | None = None,
    ) -> None:
        """Store a target's latency table and/or its predictor's scores (``None`` keeps what is
        stored); the first save needs the table."""
        with self._session("save latency predictor") as session:
            _job(session, job_id)
            row = session.scalar(
                select(LatencyPredictorRow).where(
                    LatencyPredictorRow.job_id == job_id, LatencyPredictorRow.target == target
                )
            )
            if row is None:
                if table is None:
                    raise ValueError(f"target {target!r} of job {job_id!r} has no latency table")
                row = LatencyPredictorRow(job_id=job_id, target=target, scores={})
                session.add(row)
            if table is not None:
                row.table = table
            if scores is not None:
                row.scores = scores

    def latency_predictors(self, job_id: str) -> list[LatencyPredictorRecord]:
        """The job's latency tables and predictor scores, one per target, in creation order."""
        with self._session("read latency predictors") as session:
            _job(session, job_id)
            query = select(LatencyPredictorRow).where(LatencyPredictorRow.job_id == job_id)
            return [
                LatencyPredictorRecord(row.target, row.table, row.scores)
                for row in session.scalars(query.order_by(LatencyPredictorRow.id))
            ]

    def subnet_count(self, job_id: str) -> int:
        """How many subnets the job holds, counted on the (job, id) index."""
        with self._session("count subnets") as session:
            _job(session, job_id)
            query = select(func.count()).select_from(SubnetRow).where(SubnetRow.job_id == job_id)
            return int(session.scalar(query) or 0)

    def prediction_pairs(self, job_id: str, limit: int) -> tuple[list[PredictionPair], bool]:
        """Predictions the job's search made, each with the measurement that followed, in the
        order the subnets were created (the search's order): at most ``limit`` of them, and
        whether there are more.

        The query walks the job's subnets on the (job, id) index and looks their predictions
        and measurements up by the (subnet, metric, target) keys, stopping at ``limit``.
        """
        with self._session("read predictions") as session:
            _job(session, job_id)
            measured = MeasurementRow
            query = (
                select(
                    PredictionRow.subnet_id,
                    PredictionRow.metric,
                    PredictionRow.target,
                    PredictionRow.iteration,
                    PredictionRow.value,
                    measured.value,
                )
                .select_from(SubnetRow)
                .join(PredictionRow, PredictionRow.subnet_id == SubnetRow.id)
                .outerjoin(  # at most one measurement per (subnet, metric, target)
                    measured,
                    and_(
                        measured.subnet_id == PredictionRow.subnet_id,
                        measured.metric == PredictionRow.metric,
                        measured.target == PredictionRow.target,
                    ),
                )
                .where(SubnetRow.job_id == job_id)
                .order_by(SubnetRow.id, PredictionRow.metric, PredictionRow.target)
                .limit(limit + 1)
            )
            pairs = [
                PredictionPair(subnet_id, metric_key(metric, target), iteration, value, truth)
                for subnet_id, metric, target, iteration, value, truth in session.execute(query)
            ]
            return pairs[:limit], len(pairs) > limit

    def get_subnet(self, job_id: str, subnet_id: int) -> SubnetRecord:
        with self._session("read subnet") as session:
            _job(session, job_id)
            row = session.get(SubnetRow, subnet_id)
            if row is None or row.job_id != job_id:
                raise NotFoundError(f"unknown subnet {subnet_id} in job {job_id!r}")
            return _subnet_records(session, [row], [subnet_id])[0]

    def subnets(self, job_id: str, *, require: Sequence[str] = ()) -> list[SubnetRecord]:
        """The job's subnets with their metrics, in creation order.

        ``require`` keeps only subnets measured on every given metric key (e.g. ``accuracy``,
        ``latency_ms@cpu``); the filter runs in SQL on the (metric, target) index.
        """
        keys = sorted(set(require))
        pairs = [split_metric_key(key) for key in keys]
        with self._session("read subnets") as session:
            _job(session, job_id)
            ids = select(SubnetRow.id).where(SubnetRow.job_id == job_id)
            if pairs:
                ids = (
                    select(MeasurementRow.subnet_id)
                    .where(MeasurementRow.subnet_id.in_(ids))
                    .where(
                        or_(
                            *(
                                and_(
                                    MeasurementRow.metric == metric, MeasurementRow.target == target
                                )
                                for metric, target in pairs
                            )
                        )
                    )
                    .group_by(MeasurementRow.subnet_id)
                    .having(func.count() == len(pairs))
                )
            query = select(SubnetRow).where(SubnetRow.id.in_(ids)).order_by(SubnetRow.id)
            rows = session.scalars(query)
            return _subnet_records(session, list(rows), ids)

    # -- Pareto fronts ------------------------------------------------------------------------

    def save_front(
        self, job_id: str, target: str, objectives: Sequence[str], subnet_ids: Sequence[int]
    ) -> None:
        """Store the front of (job, target) in the given order, replacing any previous one.

        The front row is kept and its members replaced, so the job's first front stays first.
        """
        repeated = sorted(i for i, count in Counter(subnet_ids).items() if count > 1)
        if repeated:
            raise ValueError(f"subnet_ids repeat {repeated}; a front lists each subnet once")
        with self._session("save front") as session:
            _job(session, job_id)
            query = select(SubnetRow.id).where(
                SubnetRow.job_id == job_id, SubnetRow.id.in_(subnet_ids)
            )
            known = set(session.scalars(query))
            missing = [i for i in subnet_ids if i not in known]
            if missing:
                raise NotFoundError(f"unknown subnets {missing} in job {job_id!r}")
            front = session.scalar(
                select(FrontRow).where(FrontRow.job_id == job_id, FrontRow.target == target)
            )
            if front is None:
                front = FrontRow(job_id=job_id, target=target)
                session.add(front)
            else:
                for member in session.scalars(
                    select(FrontMemberRow).where(FrontMemberRow.front_id == front.id)
                ):
                    session.delete(member)
            front.objectives = list(objectives)
            front.created_at = utcnow()
            session.flush()
            session.add_all(
                FrontMemberRow(front_id=front.id, subnet_id=subnet_id, position=position)
                for position, subnet_id in enumerate(subnet_ids)
            )

    def front(self, job_id: str, target: str | None = None) -> FrontRecord:
        """The job's front for ``target``; ``None`` means its first (usually only) front."""
        with self._session("read front") as session:
            _job(session, job_id)
            fronts = list(
                session.scalars(
                    select(FrontRow).where(FrontRow.job_id == job_id).order_by(FrontRow.id)
                )
            )
            chosen = next((f for f in fronts if target is None or f.target == target), None)
            if chosen is None:
                if not fronts:
                    raise NotFoundError(f"job {job_id!r} has no Pareto front yet")
                available = ", ".join(repr(f.target) for f in fronts)
                raise NotFoundError(
                    f"job {job_id!r} has no front for target {target!r}; available: {available}"
                )
            return _front_records(session, job_id, [chosen])[0]

    def fronts(self, job_id: str) -> list[FrontRecord]:
        """Every front of the job in the order first saved, read in one go (three queries)."""
        with self._session("read fronts") as session:
            _job(session, job_id)
            query = select(FrontRow).where(FrontRow.job_id == job_id).order_by(FrontRow.id)
            return _front_records(session, job_id, list(session.scalars(query)))

    def front_targets(self, job_id: str) -> list[str]:
        """Targets the job has fronts for, in the order they were first saved."""
        with self._session("read fronts") as session:
            _job(session, job_id)
            query = select(FrontRow.target).where(FrontRow.job_id == job_id).order_by(FrontRow.id)
            return list(session.scalars(query))

    # -- sessions and errors ------------------------------------------------------------------

    @contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        """Turn any SQLAlchemy/DBAPI error into a one-line ``StoreError``."""
        try:
            yield
        except SQLAlchemyError as err:
            raise StoreError(f"cannot {action} {self._shown_url}: {_reason(err)}") from err

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Run the store calls of this block, in this thread, in one transaction.

        One connection and one commit instead of one per call (a web page's calls cost a few
        round trips, not dozens), and every read sees the same snapshot. Any error rolls back
        all of the block's writes.
        """
        with self._session("run transaction"):
            yield

    @contextmanager
    def _session(self, action: str) -> Iterator[Session]:
        """One transaction: commit on success, roll back on any error, always close; inside
        :meth:`transaction`, that block's session."""
        current = self._current.get()
        if current is not None:
            with self._errors(f"{action} in database"):
                yield current
            return
        with self._errors(f"{action} in database"):
            session = self._sessions()
            token = self._current.set(session)
            try:
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                raise
            finally:
                self._current.reset(token)
                session.close()


# -- helpers ----------------------------------------------------------------------------------


def upgrade_schema(url: str) -> tuple[str | None, str]:
    """Migrate the database at ``url`` to this code's schema (``nas db upgrade``); the
    revisions before and after."""
    engine = _open_engine(url)
    try:
        return schema.upgrade(engine)
    except SQLAlchemyError as err:
        shown = _hide_password(url)
        raise StoreError(f"cannot upgrade the schema of database {shown}: {_reason(err)}") from err
    finally:
        engine.dispose()


def _open_engine(url: str) -> Engine:
    """An engine for ``url`` (nothing connects yet), or a one-line error about the URL."""
    _check_sqlite_directory(url)
    try:
        return _create_engine(url)
    except (SQLAlchemyError, ImportError) as err:
        raise StoreError(f"cannot use database URL {_hide_password(url)}: {_reason(err)}") from err


def _create_engine(url: str) -> Engine:
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        engine = create_engine(parsed)
        event.listen(engine, "connect", _configure_sqlite)
        return engine
    connect_args: dict[str, Any] = {}
    if backend == "postgresql" and "connect_timeout" not in parsed.query:
        connect_args["connect_timeout"] = POSTGRES_CONNECT_TIMEOUT_S
    # pre-ping: a long-running controller survives a database restart between stages.
    return create_engine(parsed, pool_pre_ping=True, connect_args=connect_args)


def _configure_sqlite(dbapi_connection: Any, _record: Any) -> None:
    """WAL lets readers (CLI, web page) run beside the controller's writes; the busy timeout
    makes a second writer wait instead of failing; SQLite enforces foreign keys only if asked."""
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
    finally:
        cursor.close()


def _check_sqlite_directory(url: str) -> None:
    """A SQLite file in a missing directory gets a clear error instead of 'unable to open'."""
    try:
        parsed = make_url(url)
    except SQLAlchemyError as err:
        raise StoreError(f"invalid database URL {_hide_password(url)}: {_reason(err)}") from err
    database = parsed.database
    if parsed.get_backend_name() != "sqlite" or not database or database == ":memory:":
        return
    if database.startswith("file:"):  # URI filenames are passed through to SQLite as they are
        return
    directory = Path(database).expanduser().absolute().parent
    if not directory.is_dir():
        raise StoreError(
            f"directory {directory} does not exist (database {_hide_password(url)}); "
            "create it first"
        )


def _hide_password(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except SQLAlchemyError:
        return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


def _reason(err: BaseException) -> str:
    """The first line of the driver's own message (SQLAlchemy's adds SQL and links)."""
    cause = getattr(err, "orig", None) or err
    lines = [line.strip() for line in str(cause).splitlines() if line.strip()]
    return lines[0] if lines else type(cause).__name__


def _update(row: JobRow | TrainingRunRow, **changes: Any) -> None:
    """Set the fields given (``None`` means unchanged) and bump ``updated_at``."""
    for field, value in changes.items():
        if value is not None:
            setattr(row, field, value)
    row.updated_at = utcnow()


def _check_choice(name: str, value: str | None, allowed: Sequence[str]) -> None:
    if value is not None and value not in allowed:
        raise ValueError(f"{name}={value!r}; allowed: {', '.join(allowed)}")


def _job(session: Session, job_id: str) -> JobRow:
    row = session.get(JobRow, job_id)
    if row is None:
        raise NotFoundError(f"unknown job {job_id!r}; see `nas jobs`")
    return row


def _run(session: Session, run_id: int) -> TrainingRunRow:
    row = session.get(TrainingRunRow, run_id)
    if row is None:
        raise NotFoundError(f"unknown training run {run_id}")
    return row


def _subnet(session: Session, subnet_id: int) -> SubnetRow:
    row = session.get(SubnetRow, subnet_id)
    if row is None:
        raise NotFoundError(f"unknown subnet {subnet_id}")
    return row


def _job_record(row: JobRow) -> JobRecord:
    return JobRecord(
        id=row.id,
        name=row.name,
        spec=row.spec,
        status=row.status,
        stage=row.stage,
        stage_detail=row.stage_detail,
        error=row.error,
        created_at=row.created_at,
        updated_at=row.updated_at,
        cluster_address=row.cluster_address,
        submission_id=row.submission_id,
    )


def _run_record(row: TrainingRunRow) -> TrainingRunRecord:
    return TrainingRunRecord(
        id=row.id,
        job_id=row.job_id,
        hparams=row.hparams,
        status=row.status,
        epochs_done=row.epochs_done,
        checkpoint_path=row.checkpoint_path,
    )


def _front_records(session: Session, job_id: str, fronts: list[FrontRow]) -> list[FrontRecord]:
    """The fronts' members with their metrics: members by the front key, metrics by subnet."""
    front_ids = [f.id for f in fronts]
    members = session.execute(
        select(FrontMemberRow.front_id, SubnetRow)
        .join(SubnetRow, SubnetRow.id == FrontMemberRow.subnet_id)
        .where(FrontMemberRow.front_id.in_(front_ids))
        .order_by(FrontMemberRow.front_id, FrontMemberRow.position)
    ).all()
    unique = list({row.id: row for _, row in members}.values())
    ids = select(FrontMemberRow.subnet_id).where(FrontMemberRow.front_id.in_(front_ids))
    records = {r.id: r for r in _subnet_records(session, unique, ids)}
    points: dict[int, list[SubnetRecord]] = {f.id: [] for f in fronts}
    for front_id, row in members:
        points[front_id].append(records[row.id])
    return [FrontRecord(job_id, f.target, list(f.objectives), points[f.id]) for f in fronts]


def _subnet_records(
    session: Session, rows: list[SubnetRow], ids: Select[Any] | list[int]
) -> list[SubnetRecord]:
    """Attach measured and predicted metrics to subnet rows, one query each over ``ids`` (a
    list or a subquery)."""
    metrics = _values_by_subnet(session, MeasurementRow, rows, ids)
    predicted = _values_by_subnet(session, PredictionRow, rows, ids)
    return [
        SubnetRecord(
            id=row.id,
            job_id=row.job_id,
            config=row.config,
            source=row.source,
            weights_path=row.weights_path,
            metrics=metrics[row.id],
            predicted=predicted[row.id],
        )
        for row in rows
    ]


def _values_by_subnet(
    session: Session,
    table: type[MeasurementRow] | type[PredictionRow],
    rows: list[SubnetRow],
    ids: Select[Any] | list[int],
) -> dict[int, dict[str, float]]:
    """``{subnet id: {metric key: value}}`` from a table of (subnet, metric, target, value)."""
    values: dict[int, dict[str, float]] = {row.id: {} for row in rows}
    query = select(table.subnet_id, table.metric, table.target, table.value)
    for subnet_id, metric, target, value in session.execute(query.where(table.subnet_id.in_(ids))):
        if subnet_id in values:
            values[subnet_id][metric_key(metric, target)] = value
    return values
