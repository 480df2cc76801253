"""The service's database: one ``Store`` with the few queries the rest of ``nas`` needs.

SQLAlchemy is an implementation detail of this package; what leaves it are the frozen records
below, ``StoreError`` and ``NotFoundError``.
"""

from nas.store.records import (
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
from nas.store.store import Store, resolve_url, upgrade_schema

__all__ = [
    "CurvePoint",
    "FrontRecord",
    "JobRecord",
    "LatencyPredictorRecord",
    "Measurement",
    "PredictionPair",
    "SearchIterationRecord",
    "StopDecisionRecord",
    "Store",
    "SubnetRecord",
    "TrainingRunRecord",
    "config_key",
    "metric_key",
    "resolve_url",
    "split_metric_key",
    "upgrade_schema",
]
