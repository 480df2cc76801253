"""ORM tables of the store. Nothing outside ``nas.store`` imports this module.

Columns are plain and portable (SQLite and PostgreSQL); JSON holds configs, specs and
hyperparameters exactly as the rest of the service passes them around.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any
from uuid import uuid4

from sqlalchemy import (
    JSON,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def new_job_id() -> str:
    return uuid4().hex[:12]


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that always comes back timezone-aware in UTC.

    SQLite has no timezone type and returns naive values; storing UTC and re-attaching it on
    the way out gives both backends the same behaviour.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}; the store keeps UTC-aware timestamps")
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime()}


class JobRow(Base):
    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_created_at", "created_at"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_job_id)
    name: Mapped[str] = mapped_column(String(255))
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16))
    stage: Mapped[str | None] = mapped_column(String(16))
    stage_detail: Mapped[str | None] = mapped_column(String(255))
    error: Mapped[str | None] = mapped_column(Text)
    # where a submitted job's controller runs: the Ray Jobs API address and submission id
    cluster_address: Mapped[str | None] = mapped_column(String(255))
    submission_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class TrainingRunRow(Base):
    __tablename__ = "training_runs"

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), index=True)
    hparams: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16))
    epochs_done: Mapped[int] = mapped_column(default=0)
    checkpoint_path: Mapped[str | None] = mapped_column(String)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class CurvePointRow(Base):
    __tablename__ = "curve_points"
    __table_args__ = (UniqueConstraint("run_id", "epoch", "name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("training_runs.id"))
    epoch: Mapped[int]
    name: Mapped[str] = mapped_column(String(128))
    value: Mapped[float]


class SubnetRow(Base):
    __tablename__ = "subnets"
    # The unique key makes get-or-create by config cheap and keeps one row per config and job;
    # the narrow (job, id) index serves counts and id-ordered scans of one job's subnets.
    __table_args__ = (
        UniqueConstraint("job_id", "config_key"),
        Index("ix_subnets_job_id", "job_id", "id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"))
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    config_key: Mapped[str] = mapped_column(String)
    source: Mapped[str] = mapped_column(String(16))
    weights_path: Mapped[str | None] = mapped_column(String)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class MeasurementRow(Base):
    __tablename__ = "measurements"
    # (metric, target) is what Pareto queries and `subnets(require=...)` filter on.
    __table_args__ = (
        UniqueConstraint("subnet_id", "metric", "target"),
        Index("ix_measurements_metric_target", "metric", "target"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    subnet_id: Mapped[int] = mapped_column(ForeignKey("subnets.id"))
    metric: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(64), default="", server_default="")
    value: Mapped[float]
    spread: Mapped[float | None]
    repeats: Mapped[int | None]


class FrontRow(Base):
    __tablename__ = "fronts"
    __table_args__ = (UniqueConstraint("job_id", "target"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"))
    target: Mapped[str] = mapped_column(String(64))
    objectives: Mapped[list[str]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class FrontMemberRow(Base):
    __tablename__ = "front_members"

    front_id: Mapped[int] = mapped_column(ForeignKey("fronts.id"), primary_key=True)
    subnet_id: Mapped[int] = mapped_column(ForeignKey("subnets.id"), primary_key=True)
    position: Mapped[int]


class PredictionRow(Base):
    """What a predictor said of a subnet before it was measured (labels front points)."""

    __tablename__ = "predictions"
    __table_args__ = (UniqueConstraint("subnet_id", "metric", "target"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    subnet_id: Mapped[int] = mapped_column(ForeignKey("subnets.id"))
    metric: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(64), default="", server_default="")
    value: Mapped[float]
    iteration: Mapped[int]


class SearchIterationRow(Base):
    """One round of predictor-guided search: evaluations so far, hypervolume, predictor scores."""

    __tablename__ = "search_iterations"
    __table_args__ = (UniqueConstraint("job_id", "iteration"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"))
    iteration: Mapped[int]
    evaluations: Mapped[int]
    hypervolume: Mapped[float]
    scores: Mapped[dict[str, Any]] = mapped_column(JSON)


class LatencyPredictorRow(Base):
    """A hardware target's latency lookup table (layer signature -> median ms) and the
    held-out quality of the predictor fitted on it."""

    __tablename__ = "latency_predictors"
    __table_args__ = (UniqueConstraint("job_id", "target"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"))
    target: Mapped[str] = mapped_column(String(64))
    table: Mapped[dict[str, Any]] = mapped_column(JSON)
    scores: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class StopDecisionRow(Base):
    """The learning-curve rule's verdict on one training run after one epoch."""

    __tablename__ = "stop_decisions"
    __table_args__ = (UniqueConstraint("run_id", "epoch"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("training_runs.id"))
    epoch: Mapped[int]
    stop: Mapped[bool]
    mean: Mapped[float | None]
    low: Mapped[float | None]
    high: Mapped[float | None]
    threshold: Mapped[float | None]
    probability: Mapped[float | None]
    reason: Mapped[str] = mapped_column(Text)
