"""Latency of the API over a large job: the front query and the job page's calls.

A synthetic job of 100,000 subnets and 1,000,000 measurements (accuracy, test accuracy, MACs,
params and latency on six hardware targets per subnet), 20,000 predictions (the 10% of subnets
the search chose), 10 training runs of 50 epochs with their stop decisions, 200 search
iterations and a front per target, is bulk-inserted (SQLAlchemy core, in chunks) into SQLite and
into PostgreSQL. Then every call the job page makes goes through the real app (FastAPI's
TestClient, the token checked), repeated, and the median and 90th percentile are kept.

    python benchmarks/api_latency.py [--subnets 100000] [--repeats 30]
        [--postgres postgresql+psycopg://postgres@127.0.0.1:5432/test]

Writes ``benchmarks/results/api_latency.{json,md}``. The bulk insert reaches into the store's
tables (``nas.store.models``) because writing a million rows one ``Store`` call at a time would
take hours; every timed read goes through the app and the ``Store``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from uuid import uuid4

import numpy as np
import psycopg
import yaml
from fastapi.testclient import TestClient
from psycopg import sql
from sqlalchemy import create_engine, insert, select, text
from sqlalchemy.engine import make_url

from nas.service import create_app
from nas.spec import JobSpec
from nas.store import Store
from nas.store.models import (
    CurvePointRow,
    MeasurementRow,
    PredictionRow,
    StopDecisionRow,
    SubnetRow,
)
from nas.store.records import config_key

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
TOKEN = "benchmark-token-0123456789"
TARGETS = ["cpu", "cpu-ort", "gpu", "edge", "phone", "server"]
CHUNK = 20_000
RUNS, EPOCHS = 10, 50
TARGET_MS = 100.0


def spec() -> dict[str, Any]:
    data = yaml.safe_load((REPO / "examples" / "mnist1d.yaml").read_text())
    data["name"] = "api-latency-benchmark"
    data["hardware_targets"] = [{"name": t} for t in TARGETS]
    return data


def chunks(rows: list[dict], size: int = CHUNK) -> Iterator[list[dict]]:
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


def pareto_2d(accuracy: np.ndarray, cost: np.ndarray) -> np.ndarray:
    """Indices of the non-dominated (max accuracy, min cost) points, by increasing cost."""
    order = np.lexsort((-accuracy, cost))
    best = np.maximum.accumulate(accuracy[order])
    keep = np.ones(len(order), dtype=bool)
    keep[1:] = accuracy[order][1:] > best[:-1]
    return order[keep]


def fill(url: str, subnets: int, seed: int = 0) -> tuple[str, dict[str, float]]:
    """Write the synthetic job; return its id and how long each part took."""
    rng = np.random.default_rng(seed)
    timings: dict[str, float] = {}
    with Store(url) as store:
        job = store.create_job(spec()["name"], spec())
        space = JobSpec.model_validate(spec()).space()
    engine = create_engine(url)
    started = time.perf_counter()
    configs = []
    seen: set[str] = set()
    while len(configs) < subnets:
        config = space.canonical(space.sample(rng))
        if (key := config_key(config)) not in seen:
            seen.add(key)
            configs.append((config, key))
    timings["sample_configs_s"] = time.perf_counter() - started

    started = time.perf_counter()
    rows = [
        {
            "job_id": job.id,
            "config": c,
            "config_key": k,
            "source": "search" if i % 10 == 9 else "profile",
            "weights_path": None,
        }
        for i, (c, k) in enumerate(configs)
    ]
    with engine.begin() as conn:
        for part in chunks(rows):
            conn.execute(insert(SubnetRow), part)
        query = select(SubnetRow.config_key, SubnetRow.id).where(SubnetRow.job_id == job.id)
        ids_by_key = {key: subnet_id for key, subnet_id in conn.execute(query)}
    ids = np.array([ids_by_key[k] for _, k in configs])
    timings["insert_subnets_s"] = time.perf_counter() - started

    # metrics: accuracy grows with size, costs with size, plus noise
    size = rng.random(subnets)
    accuracy = 0.90 + 0.08 * size**0.5 + 0.01 * rng.standard_normal(subnets)
    macs = 2e4 + 3e6 * size * rng.uniform(0.8, 1.2, subnets)
    params = 2e3 + 2e5 * size * rng.uniform(0.8, 1.2, subnets)
    latency = {
        t: (0.2 + i) * (0.1 + size) * rng.uniform(0.9, 1.1, subnets) for i, t in enumerate(TARGETS)
    }
    started = time.perf_counter()
    columns = [
        ("accuracy", "", accuracy),
        ("test_accuracy", "", accuracy - 0.005),
        ("macs", "", macs),
        ("params", "", params),
    ] + [("latency_ms", t, latency[t]) for t in TARGETS]
    with engine.begin() as conn:
        for metric, target, values in columns:
            measured = [
                {
                    "subnet_id": int(s),
                    "metric": metric,
                    "target": target,
                    "value": float(v),
                    "spread": 0.01 if target else None,
                    "repeats": 30 if target else None,
                }
                for s, v in zip(ids, values, strict=True)
            ]
            for part in chunks(measured):
                conn.execute(insert(MeasurementRow), part)
    timings["insert_measurements_s"] = time.perf_counter() - started

    started = time.perf_counter()
    searched = np.flatnonzero(np.arange(subnets) % 10 == 9)
    predictions = [
        {
            "subnet_id": int(ids[i]),
            "metric": metric,
            "target": target,
            "value": float(values[i] * rng.uniform(0.97, 1.03)),
            "iteration": int(n // 50),
        }
        for n, i in enumerate(searched)
        for metric, target, values in [
            ("accuracy", "", accuracy),
            ("latency_ms", "cpu", latency["cpu"]),
        ]
    ]
    with engine.begin() as conn:
        for part in chunks(predictions):
            conn.execute(insert(PredictionRow), part)
    timings["insert_predictions_s"] = time.perf_counter() - started

    started = time.perf_counter()
    with Store(url) as store:
        points, decisions = [], []
        for r in range(RUNS):
            run = store.create_training_run(job.id, {"tuned": {"lr": 10 ** rng.uniform(-3, -1)}})
            curve = 0.9 + 0.08 * (1 - np.exp(-np.arange(1, EPOCHS + 1) / (5 + r)))
            for epoch, value in enumerate(curve, start=1):
                for name, v in [
                    ("val_acc/largest", value),
                    ("val_acc/smallest", value - 0.05),
                    ("train_loss", 1 / epoch),
                ]:
                    points.append(
                        {"run_id": run.id, "epoch": epoch, "name": name, "value": float(v)}
                    )
                if epoch < EPOCHS:
                    decisions.append(
                        {"run_id": run.id, "epoch": epoch, "stop": False, "mean": float(value),
                         "low": float(value) - 0.01, "high": float(value) + 0.01,
                         "threshold": 0.97, "probability": 0.5, "reason": "continue"}
                    )  # fmt: skip
            store.update_training_run(run.id, status="done", epochs_done=EPOCHS)
        with engine.begin() as conn:
            conn.execute(insert(CurvePointRow), points)
            conn.execute(insert(StopDecisionRow), decisions)
        for iteration in range(1, 201):
            scores = {"accuracy": {"model": "ridge", "spearman": 0.9, "kendall": 0.7, "mae": 0.003}}
            store.add_search_iteration(
                job.id, iteration, 16 + 8 * iteration, 0.01 * iteration, scores
            )
        fronts = {"": macs, **latency}
        for target, cost in fronts.items():
            chosen = pareto_2d(accuracy, cost)
            keys = ["accuracy", "macs" if not target else f"latency_ms@{target}"]
            store.save_front(job.id, target, keys, [int(ids[i]) for i in chosen])
        store.update_job(job.id, status="done", stage="done", stage_detail="")
    timings["runs_and_fronts_s"] = time.perf_counter() - started

    started = time.perf_counter()
    backend = make_url(url).get_backend_name()
    if backend == "postgresql":  # fresh rows: statistics and the visibility map for the planner
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE"))
    else:
        with engine.begin() as conn:
            conn.execute(text("ANALYZE"))
    timings["analyze_s"] = time.perf_counter() - started
    engine.dispose()
    return job.id, timings


def calls(job_id: str) -> dict[str, str]:
    """The front query, then every call the job page and the jobs table make."""
    return {
        "front": f"/api/jobs/{job_id}/front",
        "front target=cpu": f"/api/jobs/{job_id}/front?target=cpu",
        "job status": f"/api/jobs/{job_id}",
        "fronts (7 targets)": f"/api/jobs/{job_id}/fronts",
        "training runs": f"/api/jobs/{job_id}/runs",
        "predictions (2000 of 20000)": f"/api/jobs/{job_id}/predictions",
        "jobs list": "/api/jobs",
    }


class NoRunner:
    def start(self, job_id: str) -> None:
        raise AssertionError("the benchmark submits nothing")

    def close(self) -> None:
        pass


def time_calls(url: str, job_id: str, repeats: int, warmup: int = 3) -> dict[str, dict]:
    app = create_app(url, TOKEN, runner=NoRunner(), artifacts=tempfile.gettempdir())
    results = {}
    with TestClient(app, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        for name, path in calls(job_id).items():
            samples, cpu = [], []
            for i in range(warmup + repeats):
                started, started_cpu = time.perf_counter(), time.process_time()
                response = client.get(path)
                elapsed = (time.perf_counter() - started) * 1000
                elapsed_cpu = (time.process_time() - started_cpu) * 1000
                assert response.status_code == 200, (path, response.text)
                if i >= warmup:
                    samples.append(elapsed)
                    cpu.append(elapsed_cpu)
            results[name] = {
                "path": path,
                "median_ms": round(statistics.median(samples), 2),
                "p90_ms": round(float(np.percentile(samples, 90)), 2),
                "median_cpu_ms": round(statistics.median(cpu), 2),
                "bytes": len(response.content),
            }
            print(
                f"  {name:<30} median {results[name]['median_ms']:8.2f} ms, "
                f"CPU {results[name]['median_cpu_ms']:8.2f} ms",
                flush=True,
            )
    return results


@contextmanager
def postgres_database(admin_url: str) -> Iterator[str]:
    admin = make_url(admin_url)
    name = f"nas_bench_{uuid4().hex[:8]}"
    libpq = admin.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(libpq, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield admin.set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(libpq, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def run_backend(label: str, url: str, args: argparse.Namespace) -> dict[str, Any]:
    print(f"{label}: filling {args.subnets} subnets", flush=True)
    job_id, timings = fill(url, args.subnets)
    with Store(url) as store:
        counts = {"subnets": store.subnet_count(job_id)}
    engine = create_engine(url)
    with engine.connect() as conn:
        counts["measurements"] = conn.execute(
            select(text("count(*)")).select_from(MeasurementRow)
        ).scalar()
        counts["predictions"] = conn.execute(
            select(text("count(*)")).select_from(PredictionRow)
        ).scalar()
    engine.dispose()
    print(f"{label}: {counts}, fill {timings}", flush=True)
    return {"rows": counts, "fill": {k: round(v, 1) for k, v in timings.items()},
            "calls": time_calls(url, job_id, args.repeats)}  # fmt: skip


def write_markdown(report: dict[str, Any], path: Path) -> None:
    lines = [
        "# API latency on a job of 100,000 subnets and 1,000,000 measurements",
        "",
        f"Median and 90th percentile of {report['repeats']} requests each (after 3 warm-up "
        "requests), through the real app (FastAPI TestClient, token checked, JSON encoded), "
        f"on {report['machine']}. Target: median under {TARGET_MS:.0f} ms.",
        "",
        "The CPU column is this process's CPU time per request (client, app and, for SQLite,",
        "the database; PostgreSQL's own server process is not counted): the work a request",
        "costs, whatever else the machine is doing.",
        "",
        "| call | SQLite median (p90) ms | SQLite CPU ms | PostgreSQL median (p90) ms "
        "| PostgreSQL CPU ms | response bytes |",
        "|---|---|---|---|---|---|",
    ]
    sqlite, postgres = (
        report["backends"]["sqlite"]["calls"],
        report["backends"]["postgresql"]["calls"],
    )
    for name in sqlite:
        lines.append(
            f"| {name} | {sqlite[name]['median_ms']:.1f} ({sqlite[name]['p90_ms']:.1f}) "
            f"| {sqlite[name]['median_cpu_ms']:.1f} "
            f"| {postgres[name]['median_ms']:.1f} ({postgres[name]['p90_ms']:.1f}) "
            f"| {postgres[name]['median_cpu_ms']:.1f} | {sqlite[name]['bytes']:,} |"
        )
    worst = max(c["median_ms"] for b in report["backends"].values() for c in b["calls"].values())
    lines += [
        "",
        f"Slowest median: {worst:.1f} ms ({'under' if worst < TARGET_MS else 'OVER'} the "
        f"{TARGET_MS:.0f} ms target).",
        "",
        "Rows: " + "; ".join(f"{k}: {v['rows']}" for k, v in report["backends"].items()) + ".",
        "Filling (bulk insert, seconds): "
        + "; ".join(f"{k}: {v['fill']}" for k, v in report["backends"].items())
        + ".",
        "",
        "Each query is indexed: a front reads its members by the front's key and their metrics",
        "and predictions by the (subnet, metric, target) unique index; the subnet count uses the",
        "(job, id) index; curves and stop decisions go through the runs of the job; predictions",
        "walk the job's subnets in order and stop at 2,000 points (the page's default).",
    ]
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subnets", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument(
        "--postgres",
        default=os.environ.get(
            "NAS_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
        ),
    )
    parser.add_argument("--out", default=str(RESULTS / "api_latency"))
    args = parser.parse_args()
    report: dict[str, Any] = {
        "subnets": args.subnets,
        "repeats": args.repeats,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores shared with other work, "
        f"load average {os.getloadavg()[0]:.1f} at the start (the benchmark ran at nice 15)",
        "backends": {},
    }
    with tempfile.TemporaryDirectory() as directory:
        url = f"sqlite:///{Path(directory) / 'bench.db'}"
        report["backends"]["sqlite"] = run_backend("sqlite", url, args)
    with postgres_database(args.postgres) as url:
        report["backends"]["postgresql"] = run_backend("postgresql", url, args)
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    write_markdown(report, out.with_suffix(".md"))
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
