"""The ``nas`` command: run jobs, list them, watch them, query fronts, export subnets.

Any error a user can cause (``NasError``, ``ConfigError``) prints one line on stderr and exits
with code 2; ``--json`` output is documented in README.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Column, Table

from nas.errors import NasError
from nas.store import FrontRecord, JobRecord, Store, resolve_url, split_metric_key
from nas.views import artifacts_dir, front_json, job_json, stage_states
from search_spaces import ConfigError

EXIT_USER_ERROR = 2


# ---- commands ------------------------------------------------------------------------------
def cmd_run(args: argparse.Namespace, console: Console) -> int:
    from nas.spec import load_spec

    spec = load_spec(args.spec)  # every spec error surfaces before anything is written
    url = resolve_url(args.db)
    with Store(url) as store:
        return run_job(
            store, args, console, lambda: store.create_job(spec.name, spec.model_dump(mode="json"))
        )


def cmd_resume(args: argparse.Namespace, console: Console) -> int:
    with Store(resolve_url(args.db)) as store:
        job = store.get_job(args.job)
        if _is_jobs_api(args.address):
            return submit_job(store, args, console, lambda client: job)
        return run_job(store, args, console, lambda: job)


def cmd_submit(args: argparse.Namespace, console: Console) -> int:
    """Send the job's controller to the cluster; a job of the same spec whose controller
    died, failed or was cancelled is resumed rather than started again."""
    from nas.spec import load_spec

    spec = load_spec(args.spec)
    spec_json = spec.model_dump(mode="json")
    with Store(resolve_url(args.db)) as store:

        def job_to_submit(client: Any) -> JobRecord:
            return _resumable(store, client, spec_json) or store.create_job(spec.name, spec_json)

        return submit_job(store, args, console, job_to_submit)


def submit_job(
    store: Store,
    args: argparse.Namespace,
    console: Console,
    job_to_submit: Callable[[Any], JobRecord],
) -> int:
    """Check the cluster first, then get the job and start its controller there."""
    from nas.submission import jobs_client, submit_controller

    client = jobs_client(args.address)
    job = job_to_submit(client)
    artifacts = artifacts_dir(args.artifacts, store.url).absolute()
    submission = submit_controller(client, job.id, store.url, artifacts)
    store.update_job(job.id, cluster_address=args.address, submission_id=submission)
    if args.json:
        print(json.dumps({"job": job.id, "submission": submission, "address": args.address}))
    else:
        console.print(f"submitted job {job.id} to {args.address} as {submission}", highlight=False)
        console.print(job.id, highlight=False)
    return 0


def _resumable(store: Store, client: Any, spec_json: dict[str, Any]) -> JobRecord | None:
    """The unfinished job of this spec whose controller is known not to run, if any."""
    from nas.submission import ACTIVE_STATES, controller_state

    for job in store.list_jobs():
        if job.spec != spec_json or job.status == "done":
            continue
        state = controller_state(client, job.submission_id) if job.submission_id else None
        if state in ACTIVE_STATES:
            raise NasError(
                f"job {job.id} of this spec is already {state.lower()} on the cluster "
                f"(submission {job.submission_id}); 'nas cancel {job.id}' stops it"
            )
        if job.status in ("failed", "cancelled") or state is not None:
            return job
    return None


def _is_jobs_api(address: str | None) -> bool:
    return bool(address) and address.startswith(("http://", "https://"))


def _submitted_client(job: JobRecord) -> Any:
    """A Jobs API client for a job's cluster, or the error that it never went to one."""
    from nas.submission import jobs_client

    if not job.submission_id or not job.cluster_address:
        raise NasError(f"job {job.id} was not submitted to a cluster (it ran with 'nas run')")
    return jobs_client(job.cluster_address)


def cmd_logs(args: argparse.Namespace, console: Console) -> int:
    from nas.submission import controller_logs

    with Store(resolve_url(args.db)) as store:
        job = store.get_job(args.job)
    print(controller_logs(_submitted_client(job), job.submission_id), end="")
    return 0


def cmd_cancel(args: argparse.Namespace, console: Console) -> int:
    """Mark the job cancelled (its controller stops at its next step), then stop the Ray job."""
    from nas.submission import stop_controller

    with Store(resolve_url(args.db)) as store:
        job = store.cancel_job(args.job)
    if job.submission_id and job.cluster_address:
        stop_controller(_submitted_client(job), job.submission_id)
    console.print(f"cancelled job {job.id}", highlight=False)
    return 0


def cmd_db_upgrade(args: argparse.Namespace, console: Console) -> int:
    from nas.store import upgrade_schema

    url = resolve_url(args.db)
    before, after = upgrade_schema(url)
    if before == after:
        print(f"{_safe(url)} is at schema revision {after}")
    else:
        print(f"upgraded {_safe(url)} from schema revision {before or 'none'} to {after}")
    return 0


def run_job(
    store: Store, args: argparse.Namespace, console: Console, job_to_run: Callable[[], JobRecord]
) -> int:
    """Connect to Ray, then get the job (created only once Ray is up) and run its stages."""
    from nas.cluster import ray_session
    from nas.controller import Controller

    with ray_session(args.address):
        job = job_to_run()
        console.print(f"job {job.id} ({job.name}) in {_safe(store.url)}", highlight=False)
        with _progress_bars(console) as on_progress:
            Controller(store, job.id, artifacts_dir(args.artifacts, store.url), on_progress).run()
    front = store.front(job.id)
    if args.json:
        print(json.dumps(front_json(front)))
    else:
        console.print(front_table(front, f"job {job.id}: measured Pareto front"))
        console.print(f"done: job {job.id}", highlight=False)
    return 0


def cmd_jobs(args: argparse.Namespace, console: Console) -> int:
    with Store(resolve_url(args.db)) as store:
        jobs = store.list_jobs()
    if args.json:
        print(json.dumps([job_json(j) for j in jobs]))
        return 0
    table = Table("id", "name", "status", "stage", "created")
    for j in jobs:
        table.add_row(j.id, j.name, j.status, j.stage or "", f"{j.created_at:%Y-%m-%d %H:%M}")
    console.print(table)
    return 0


def cmd_status(args: argparse.Namespace, console: Console) -> int:
    from nas.trials import run_curves

    with Store(resolve_url(args.db)) as store:
        job = store.get_job(args.job)
        runs = store.training_runs(job.id)
        curve = store.curve(runs[-1].id) if runs else []
        subnets = store.subnets(job.id)
        iterations = store.search_iterations(job.id)
        latency = store.latency_predictors(job.id)
        last_decision = {d.run_id: d for d in store.stop_decisions(job.id)}
        curves = {r.id: run_curves(store.curve(r.id)) for r in runs}
    training = [
        {"id": r.id, "status": r.status, "epochs_done": r.epochs_done, "curve": curves[r.id]}
        | ({"tuned": r.hparams["tuned"]} if r.hparams.get("tuned") else {})
        | ({"last_decision": last_decision[r.id].reason} if r.id in last_decision else {})
        for r in runs
    ]
    status = {
        **job_json(job),
        "training": training,
        "last_curve_point": {p.name: p.value for p in curve if p.epoch == curve[-1].epoch}
        if curve
        else {},
        "subnets_measured": len(subnets),
        "stages": stage_states(job),
        "search": [
            {"iteration": i.iteration, "evaluations": i.evaluations, "hypervolume": i.hypervolume}
            | {"predictors": i.scores}
            for i in iterations
        ],
        "latency_predictors": {p.target: p.scores for p in latency},
    } | ({"controller": _controller_json(job)} if job.submission_id else {})
    if args.json:
        print(json.dumps(status))
        return 0
    console.print(f"job {job.id} ({job.name}): {job.status}", highlight=False)
    if "controller" in status:
        c = status["controller"]
        console.print(
            f"  controller: {c['state']} on {c['address']} ({c['submission']})", highlight=False
        )
    for row in status["stages"]:
        console.print(f"  {row['stage']:<8} {row['state']:<8} {row['detail']}", highlight=False)
    for r in training:
        tuned = ", ".join(f"{k}={v:.4g}" for k, v in r.get("tuned", {}).items())
        decision = f"; {r['last_decision']}" if "last_decision" in r else ""
        line = f"  training run {r['id']}: {r['status']}, {r['epochs_done']} epochs"
        console.print(line + (f" ({tuned})" if tuned else "") + decision, highlight=False)
        largest = " ".join(f"{v:.3f}" for v in r["curve"].get("val_acc/largest", []))
        if largest and len(runs) > 1:
            console.print(f"    largest val acc by epoch: {largest}", highlight=False)
    for name, value in status["last_curve_point"].items():
        console.print(f"  last {name}: {value:.4f}", highlight=False)
    console.print(f"  subnets measured: {len(subnets)}", highlight=False)
    for i in iterations:
        scores = ", ".join(
            f"{key} {s['model']} spearman {s['spearman']:.2f}" for key, s in i.scores.items()
        )
        line = f"  search iteration {i.iteration}: {i.evaluations} evaluations, "
        console.print(line + f"hypervolume {i.hypervolume:.4g}  {scores}", highlight=False)
    for p in latency:
        held_out = p.scores.get("held_out")
        if held_out:
            console.print(
                f"  latency predictor {p.target}: {p.scores['layers']} layers, held out on "
                f"{p.scores['fitted_on']} subnets: {held_out['within_10']:.0%} within 10%, "
                f"MAPE {held_out['mape']:.1%}, spearman {held_out['spearman']:.2f}",
                highlight=False,
            )
    if job.error:
        console.print(f"  error: {job.error}", highlight=False)
    return 0


def _controller_json(job: JobRecord) -> dict[str, str]:
    """Where a submitted job's controller runs and the Ray job's state (or why unknown)."""
    from nas.submission import controller_state

    try:
        state = controller_state(_submitted_client(job), job.submission_id)
    except NasError as error:
        state = f"UNKNOWN ({error})"
    return {"address": job.cluster_address, "submission": job.submission_id, "state": state}


def cmd_pareto(args: argparse.Namespace, console: Console) -> int:
    with Store(resolve_url(args.db)) as store:
        store.get_job(args.job)
        front = store.front(args.job, args.target)
    if args.json:
        print(json.dumps(front_json(front)))
    else:
        console.print(front_table(front, f"job {args.job}: measured Pareto front"))
    return 0


def cmd_export(args: argparse.Namespace, console: Console) -> int:
    from nas.export import export_subnet

    with Store(resolve_url(args.db)) as store:
        path = export_subnet(store, args.job, args.subnet, args.format, args.output)
    console.print(f"wrote {path}", highlight=False)
    return 0


def cmd_serve(args: argparse.Namespace, console: Console) -> int:
    from nas.service.server import serve

    return serve(args)


def cmd_curves_replay(args: argparse.Namespace, console: Console) -> int:
    from nas.predictors.replay import load_curves, replay

    curves = load_curves(args.file, args.metric)
    report = replay(curves, orders=args.orders, subset=args.subset, mode=args.mode, seed=args.seed)
    if args.json:
        print(json.dumps(report))
        return 0
    table = Table(
        Column("method", no_wrap=True), "epochs", "P(best)", "top3", "regret", "rho25",
        "cov90",
        title=f"{args.file}: {report['orders']} orders of {report['subset']} curves, "
        f"{report['metric']} ({report['mode']})",
    )  # fmt: skip
    for m in report["methods"]:
        extra = [m.get("spearman_at_25"), m.get("coverage_90")]
        table.add_row(
            m["name"],
            f"{m['epochs_fraction']:.1%}",
            f"{m['p_best_kept']:.2f}",
            f"{m['top3_recall']:.2f}",
            f"{m['mean_regret']:.4f}",
            *("-" if v is None else f"{v:.2f}" for v in extra),
        )
    console.print(table)
    return 0


# ---- output shapes ---------------------------------------------------------------------------
def front_table(front: FrontRecord, title: str) -> Table:
    keys = list(dict.fromkeys([*front.objectives, "test_accuracy", "macs", "params"]))
    keys += sorted(k for p in front.points for k in p.metrics if k not in keys)
    keys = list(dict.fromkeys(keys))
    table = Table("subnet", *keys, title=title)
    for p in front.points:
        table.add_row(str(p.id), *(_fmt(k, p.metrics.get(k)) for k in keys))
    return table


def _fmt(key: str, value: float | None) -> str:
    if value is None:
        return "-"
    metric, _ = split_metric_key(key)
    if metric in ("macs", "params"):
        return f"{int(value):,}"
    return f"{value:.4f}" if "accuracy" in metric else f"{value:.3f}"


def _safe(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


class _progress_bars:
    """A rich progress bar per stage, fed by the controller's progress callback."""

    def __init__(self, console: Console):
        self.progress = Progress(
            TextColumn("{task.description:<8}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[detail]}"),
            TimeElapsedColumn(),
            console=console,
        )
        self.tasks: dict[str, Any] = {}

    def __enter__(self):
        self.progress.start()
        return self.update

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def update(self, stage: str, done: int, total: int, detail: str) -> None:
        if stage not in self.tasks:
            self.tasks[stage] = self.progress.add_task(stage, total=total, detail="")
        self.progress.update(self.tasks[stage], completed=done, total=total, detail=detail)


# ---- entry point -----------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--db", help="database URL or SQLite file (default: $NAS_DB or .nas/nas.db)"
    )
    parser = argparse.ArgumentParser(prog="nas", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", parents=[common], help="run a search job from a YAML spec")
    run.add_argument("spec")
    run.set_defaults(handler=cmd_run)
    resume = sub.add_parser(
        "resume", parents=[common], help="continue a stopped or failed job where it left off"
    )
    resume.add_argument("job")
    resume.set_defaults(handler=cmd_resume)
    submit = sub.add_parser(
        "submit", parents=[common], help="run a job on a Ray cluster through the Ray Jobs API"
    )
    submit.add_argument("spec")
    submit.set_defaults(handler=cmd_submit)
    for runner in (run, resume, submit):
        runner.add_argument(
            "--address",
            required=runner is submit,
            help="Ray cluster: HOST:PORT (or auto) to run here against it, or the Jobs API's "
            "http://HOST:8265 to run the controller there (default for run/resume: a local "
            "instance)",
        )
        runner.add_argument(
            "--artifacts",
            help="artifact directory, shared by every node (default: $NAS_ARTIFACTS or beside "
            "the db)",
        )
        runner.add_argument("--json", action="store_true", help="print the result as JSON")

    logs = sub.add_parser("logs", parents=[common], help="print a submitted job's controller log")
    logs.add_argument("job")
    logs.set_defaults(handler=cmd_logs)
    cancel = sub.add_parser("cancel", parents=[common], help="cancel a running or submitted job")
    cancel.add_argument("job")
    cancel.set_defaults(handler=cmd_cancel)

    db = sub.add_parser("db", help="database schema")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    upgrade = db_sub.add_parser(
        "upgrade", parents=[common], help="migrate the database to this version's schema"
    )
    upgrade.set_defaults(handler=cmd_db_upgrade)

    jobs = sub.add_parser("jobs", parents=[common], help="list jobs")
    jobs.add_argument("--json", action="store_true")
    jobs.set_defaults(handler=cmd_jobs)

    status = sub.add_parser("status", parents=[common], help="show a job's stages and progress")
    status.add_argument("job")
    status.add_argument("--json", action="store_true")
    status.set_defaults(handler=cmd_status)

    pareto = sub.add_parser("pareto", parents=[common], help="show a job's measured Pareto front")
    pareto.add_argument("job")
    pareto.add_argument("--target", help="hardware target (default: the spec's objectives)")
    pareto.add_argument("--json", action="store_true")
    pareto.set_defaults(handler=cmd_pareto)

    export = sub.add_parser("export", parents=[common], help="export a subnet as a plain model")
    export.add_argument("job")
    export.add_argument("subnet", type=int)
    export.add_argument("--format", required=True, choices=["pt2", "onnx", "safetensors"])
    export.add_argument("-o", "--output", required=True, help="output directory")
    export.set_defaults(handler=cmd_export)

    serve = sub.add_parser(
        "serve", parents=[common], help="the HTTP API and web page (see README: nas serve)"
    )
    serve.add_argument("--address", help="Ray cluster for submitted jobs (default: local)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--token-file", help="file holding the API token (else $NAS_API_TOKEN)")
    serve.add_argument(
        "--allow-module",
        action="append",
        metavar="MODULE",
        help="module (or package) a submitted spec may import code from; repeatable",
    )
    serve.add_argument(
        "--artifacts", help="artifact directory (default: $NAS_ARTIFACTS or beside the db)"
    )
    serve.set_defaults(handler=cmd_serve)

    curves = sub.add_parser("curves", help="learning curves and early stopping")
    curves_sub = curves.add_subparsers(dest="curves_command", required=True)
    replay = curves_sub.add_parser(
        "replay", help="replay finished curves as searches: our stopping rule vs Optuna's"
    )
    replay.add_argument("file", help="curves, one JSON object per line (.jsonl or .jsonl.gz)")
    replay.add_argument("--metric", default="val_acc", help="the curve to replay")
    replay.add_argument("--mode", choices=["max", "min"], default="max")
    replay.add_argument("--orders", type=int, default=50, help="random orders (default 50)")
    replay.add_argument("--subset", type=int, default=100, help="curves per order (default 100)")
    replay.add_argument("--seed", type=int, default=0)
    replay.add_argument("--json", action="store_true")
    replay.set_defaults(handler=cmd_curves_replay)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console = Console(stderr=args.__dict__.get("json", False))
    try:
        return args.handler(args, console)
    except (NasError, ConfigError) as error:
        print(f"nas: error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("nas: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
