"""What the CLI's ``--json`` and the HTTP API both answer: the JSON shapes of jobs, stages and
fronts (documented in README.md), and where a job's artifacts live. One place, so that the two
interfaces cannot drift apart."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from nas.store import FrontRecord, JobRecord
from nas.store.records import JOB_STAGES


def artifacts_dir(explicit: str | None, db_url: str) -> Path:
    """``--artifacts``, else ``NAS_ARTIFACTS``, else ``artifacts/`` beside a SQLite file."""
    chosen = explicit or os.environ.get("NAS_ARTIFACTS")
    if chosen:
        return Path(chosen)
    if db_url.startswith("sqlite:///"):
        return Path(db_url.removeprefix("sqlite:///")).parent / "artifacts"
    return Path(".nas/artifacts")


def job_json(job: JobRecord) -> dict[str, Any]:
    return {
        "id": job.id,
        "name": job.name,
        "status": job.status,
        "stage": job.stage,
        "stage_detail": job.stage_detail,
        "error": job.error,
        "created_at": job.created_at.isoformat(),
        "updated_at": job.updated_at.isoformat(),
    }


def stage_states(job: JobRecord) -> list[dict[str, str]]:
    """Each stage before ``done`` as finished (``done``), current (the job's status) or waiting."""
    current = JOB_STAGES.index(job.stage) if job.stage else -1
    states = []
    for i, stage in enumerate(JOB_STAGES[:-1]):
        if i < current:
            states.append({"stage": stage, "state": "done", "detail": ""})
        elif i == current:
            states.append({"stage": stage, "state": job.status, "detail": job.stage_detail or ""})
        else:
            states.append({"stage": stage, "state": "waiting", "detail": ""})
    return states


def front_json(front: FrontRecord) -> dict[str, Any]:
    return {
        "job": front.job_id,
        "target": front.target or None,
        "objectives": front.objectives,
        "points": [
            {"subnet": p.id, "config": p.config, "metrics": p.metrics}
            | ({"predicted": p.predicted} if p.predicted else {})
            for p in front.points
        ],
    }
