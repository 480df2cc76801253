"""Frozen records: the only shape in which rows leave the store.

Callers never hold ORM objects or sessions, so nothing they keep can lazy-load, go stale in a
closed session or write to the database behind the store's back.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

JOB_STATUSES = ("pending", "running", "done", "failed", "cancelled")
#: A job in one of these states can still be cancelled.
ACTIVE_JOB_STATUSES = ("pending", "running")
JOB_STAGES = ("train", "profile", "search", "front", "done")
RUN_STATUSES = ("running", "done", "stopped", "failed")
SUBNET_SOURCES = ("profile", "search")


def metric_key(metric: str, target: str = "") -> str:
    """The name users see: ``latency_ms`` on target ``cpu`` is ``latency_ms@cpu``.

    A target-independent metric (target ``""``, e.g. accuracy or MACs) is its bare name.
    """
    return f"{metric}@{target}" if target else metric


def split_metric_key(key: str) -> tuple[str, str]:
    """Invert :func:`metric_key`: ``"latency_ms@cpu"`` -> ``("latency_ms", "cpu")``."""
    metric, at, target = key.partition("@")
    if not metric or (at and not target) or "@" in target:
        raise ValueError(f"bad metric key {key!r}; expected 'metric' or 'metric@target'")
    return metric, target


def config_key(config: dict[str, Any]) -> str:
    """Canonical JSON of an architecture config, so equal configs are stored once per job."""
    return json.dumps(config, sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True)
class JobRecord:
    id: str
    name: str
    spec: dict[str, Any]
    status: str
    stage: str | None
    stage_detail: str | None
    error: str | None
    created_at: datetime
    updated_at: datetime
    cluster_address: str | None = None
    submission_id: str | None = None


@dataclass(frozen=True)
class TrainingRunRecord:
    id: int
    job_id: str
    hparams: dict[str, Any]
    status: str
    epochs_done: int
    checkpoint_path: str | None


@dataclass(frozen=True)
class CurvePoint:
    epoch: int
    name: str
    value: float


@dataclass(frozen=True)
class SubnetRecord:
    id: int
    job_id: str
    config: dict[str, Any]
    source: str
    weights_path: str | None
    metrics: dict[str, float]
    """Every measurement of this subnet, keyed by :func:`metric_key`."""
    predicted: dict[str, float] = field(default_factory=dict)
    """What the search's predictors expected before measuring, keyed like ``metrics``."""


@dataclass(frozen=True)
class Measurement:
    """One measured number of a subnet, as written by the controller.

    ``target`` is ``""`` for target-independent metrics, else a hardware target's name;
    ``spread`` and ``repeats`` describe repeated measurements such as latency.
    """

    metric: str
    value: float
    target: str = ""
    spread: float | None = None
    repeats: int | None = None

    def __post_init__(self) -> None:
        # '@' separates metric and target in metric keys, so neither may contain one.
        if not self.metric or "@" in self.metric or "@" in self.target:
            raise ValueError(
                f"metric={self.metric!r}, target={self.target!r}: names must be non-empty "
                "and free of '@'; pass the hardware target as target="
            )

    @property
    def key(self) -> str:
        return metric_key(self.metric, self.target)


@dataclass(frozen=True)
class PredictionPair:
    """What a predictor said of a subnet's metric (``key``, as :func:`metric_key`) in search
    ``iteration``, and what was measured afterwards (``None`` if not measured yet)."""

    subnet_id: int
    key: str
    iteration: int
    predicted: float
    measured: float | None


@dataclass(frozen=True)
class FrontRecord:
    job_id: str
    target: str
    objectives: list[str]
    points: list[SubnetRecord]
    """Front members in the order they were saved."""


@dataclass(frozen=True)
class SearchIterationRecord:
    iteration: int
    evaluations: int
    hypervolume: float
    scores: dict[str, Any]
    """Per learned metric key: the chosen regressor and its held-out rank correlations."""


@dataclass(frozen=True)
class LatencyPredictorRecord:
    target: str
    table: dict[str, float]
    """Median latency in milliseconds of each layer signature, measured alone on the target."""
    scores: dict[str, Any]
    """How well the predictor fitted on the table does on subnets it had not seen."""


@dataclass(frozen=True)
class StopDecisionRecord:
    """The stopping rule's decision on run ``run_id`` after ``epoch``: the predicted final score
    (``mean`` in ``[low, high]``), the bar it had to reach (``threshold``), the probability of
    reaching it, and why; the predicted fields are ``None`` where the fallback decided."""

    run_id: int
    epoch: int
    stop: bool
    mean: float | None
    low: float | None
    high: float | None
    threshold: float | None
    probability: float | None
    reason: str
