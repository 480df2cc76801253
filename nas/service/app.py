"""The HTTP API and the web page: ``create_app`` builds the FastAPI application.

Every route under ``/api`` needs the bearer token; ``/health`` and the page's static files
(which hold no data: the page asks the API for everything, with the token) do not. Errors are
JSON ``{"detail": "one line"}``: 401 without the token, 403 for a spec importing code the
server does not allow, 404 for an unknown id, 409 for a request the job's state refuses, 422 for
a bad spec or parameter, 503 when the database cannot be used.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import fields
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException as StarletteHTTPException

from nas.errors import ConflictError, NasError, NotFoundError, SpecError, StoreError
from nas.service.auth import token_dependency
from nas.service.jobs import ForbiddenImportError, JobRunner, ProcessRunner, parse_submitted_spec
from nas.service.jobs import submit as submit_job
from nas.store import StopDecisionRecord, Store
from nas.trials import run_curves
from nas.views import artifacts_dir, front_json, job_json, stage_states

STATIC = Path(__file__).parent / "static"
logger = logging.getLogger("nas.service")

#: Ids as the store makes them; anything else cannot name a job and is a 422, not a query.
JobId = Annotated[str, PathParam(pattern=r"^[A-Za-z0-9_-]{1,64}$", description="job id")]
#: Subnet ids are 32-bit integer keys on every backend.
SubnetId = Annotated[int, PathParam(ge=1, le=2**31 - 1, description="subnet id")]
TargetName = Annotated[
    str | None,
    Query(
        pattern=r"^[A-Za-z0-9_.-]*$",
        max_length=64,
        description="hardware target; none: the front of the spec's objectives",
    ),
]

ERRORS: list[tuple[type[Exception], int]] = [
    (NotFoundError, 404),
    (SpecError, 422),
    (ForbiddenImportError, 403),
    (ConflictError, 409),
    (StoreError, 503),
    (NasError, 409),  # anything else a user can cause: e.g. exporting a subnet not yet scored
]
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"description": text, "content": {"application/json": {"example": {"detail": text}}}}
    for code, text in [
        (401, "missing or wrong bearer token"),
        (404, "unknown job, subnet or front"),
        (422, "invalid parameter"),
        (503, "the database cannot be used"),
    ]
}
SPEC_BODY = {
    "description": "a job spec as in examples/mnist1d.yaml, in YAML or JSON",
    "required": True,
    "content": {
        "application/json": {"schema": {"type": "object"}},
        "application/yaml": {"schema": {"type": "string"}},
    },
}


def create_app(
    store_url: str,
    token: str,
    allowed_modules: Sequence[str] = (),
    ray_address: str | None = None,
    *,
    artifacts: str | Path | None = None,
    runner: JobRunner | None = None,
) -> FastAPI:
    """The service over the database at ``store_url``.

    ``token`` guards every ``/api`` route. Specs sent over HTTP may import user code only from
    ``allowed_modules``. Submitted jobs run on the Ray cluster at ``ray_address`` (default a
    local instance), one at a time, writing artifacts under ``artifacts`` (default as the CLI);
    ``runner`` replaces that (tests).
    """
    store = Store(store_url)  # an unreachable database fails here, before the server starts
    artifacts_path = artifacts_dir(str(artifacts) if artifacts else None, store.url).resolve()
    jobs_runner = runner or ProcessRunner(store, artifacts_path, ray_address)
    allowed = tuple(allowed_modules)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            jobs_runner.close()
            store.close()

    app = FastAPI(
        title="nas",
        summary="Neural architecture search jobs: status, Pareto fronts, curves, exports",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.store = store
    _install_error_handlers(app)

    @app.get("/health", tags=["health"])
    def health() -> dict[str, str]:
        """Open to all: whether the server runs (no database access, no token)."""
        return {"status": "ok"}

    api = APIRouter(
        prefix="/api", dependencies=[Depends(token_dependency(token))], responses=ERROR_RESPONSES
    )

    @api.get("/jobs", tags=["jobs"])
    def list_jobs() -> list[dict[str, Any]]:
        """Every job, newest first."""
        return [job_json(j) for j in store.list_jobs()]

    @api.post(
        "/jobs",
        status_code=201,
        tags=["jobs"],
        openapi_extra={"requestBody": SPEC_BODY},
        responses={403: {"description": "the spec imports code the server does not allow"}},
    )
    async def create_job(request: Request) -> dict[str, Any]:
        """Validate a spec (as `nas run` does), store its job and start it in the background."""
        body = await request.body()
        spec = parse_submitted_spec(body, request.headers.get("content-type", ""), allowed)
        job = submit_job(store, spec)
        jobs_runner.start(job.id)
        return job_json(job)

    @api.get("/jobs/{job_id}", tags=["jobs"])
    def job_status(job_id: JobId) -> dict[str, Any]:
        """The job with its stages, subnet count, search iterations, predictors and fronts."""
        with store.transaction():  # one connection and snapshot for the whole answer
            job = store.get_job(job_id)
            return {
                **job_json(job),
                "spec": job.spec,
                "stages": stage_states(job),
                "subnets": store.subnet_count(job_id),
                "fronts": store.front_targets(job_id),
                "search": [
                    {
                        "iteration": i.iteration,
                        "evaluations": i.evaluations,
                        "hypervolume": i.hypervolume,
                        "predictors": i.scores,
                    }
                    for i in store.search_iterations(job_id)
                ],
                "latency_predictors": {
                    p.target: p.scores for p in store.latency_predictors(job_id)
                },
            }

    @api.post("/jobs/{job_id}/cancel", tags=["jobs"], responses={409: {"description": "finished"}})
    def cancel_job(job_id: JobId) -> dict[str, Any]:
        """Cancel a pending or running job; its controller stops at its next step."""
        return job_json(store.cancel_job(job_id))

    @api.get("/jobs/{job_id}/fronts", tags=["fronts"])
    def fronts(job_id: JobId) -> list[dict[str, Any]]:
        """Every stored front of the job: the spec's objectives, then one per target."""
        return [front_json(f) for f in store.fronts(job_id)]

    @api.get("/jobs/{job_id}/front", tags=["fronts"])
    def front(job_id: JobId, target: TargetName = None) -> dict[str, Any]:
        """One front, as `nas pareto JOB [--target T] --json` prints it."""
        return front_json(store.front(job_id, target))

    @api.get("/jobs/{job_id}/runs", tags=["training"])
    def training_runs(job_id: JobId) -> list[dict[str, Any]]:
        """Supernet training runs: hyperparameters, learning curves and every stop decision."""
        with store.transaction():
            runs = store.training_runs(job_id)
            curves = store.curves(job_id)
            stop_decisions = store.stop_decisions(job_id)
        decisions: dict[int, list[StopDecisionRecord]] = {}
        for d in stop_decisions:
            decisions.setdefault(d.run_id, []).append(d)
        return [
            {
                "id": r.id,
                "status": r.status,
                "epochs_done": r.epochs_done,
                "tuned": r.hparams.get("tuned", {}),
                "curves": run_curves(curves.get(r.id, [])),
                "decisions": [_decision_json(d) for d in decisions.get(r.id, [])],
            }
            for r in runs
        ]

    @api.get("/jobs/{job_id}/predictions", tags=["predictors"])
    def predictions(
        job_id: JobId, limit: Annotated[int, Query(ge=1, le=100_000)] = 2000
    ) -> dict[str, Any]:
        """What the search's predictors said of the subnets it chose, beside what was then
        measured: at most ``limit`` pairs, in search order; ``truncated`` if there are more."""
        pairs, truncated = store.prediction_pairs(job_id, limit)
        return {
            "truncated": truncated,
            "points": [
                {
                    "subnet": p.subnet_id,
                    "metric": p.key,
                    "iteration": p.iteration,
                    "predicted": p.predicted,
                    "measured": p.measured,
                }
                for p in pairs
            ],
        }

    @api.get("/jobs/{job_id}/subnets/{subnet_id}", tags=["subnets"])
    def subnet(job_id: JobId, subnet_id: SubnetId) -> dict[str, Any]:
        """A subnet's config, its measured metrics and what was predicted before measuring."""
        s = store.get_subnet(job_id, subnet_id)
        return {
            "subnet": s.id,
            "job": s.job_id,
            "source": s.source,
            "config": s.config,
            "metrics": s.metrics,
            "predicted": s.predicted,
            "exportable": s.weights_path is not None,
        }

    @api.get(
        "/jobs/{job_id}/subnets/{subnet_id}/export",
        tags=["subnets"],
        response_class=FileResponse,
        responses={
            200: {"content": {"application/octet-stream": {}, "application/zip": {}}},
            409: {"description": "the subnet has not been evaluated"},
        },
    )
    def export(
        job_id: JobId,
        subnet_id: SubnetId,
        format: Annotated[Literal["pt2", "onnx", "safetensors"], Query()] = "pt2",  # noqa: A002
    ) -> FileResponse:
        """The subnet as a standalone model, as `nas export` writes it: `model.pt2`, or a zip
        of the folder where the export is several files (safetensors: weights, config.json and
        the loader's source; onnx: the graph and its external weights file)."""
        from nas.export import export_subnet

        directory = Path(tempfile.mkdtemp(prefix="nas-export-"))
        cleanup = BackgroundTask(shutil.rmtree, directory, ignore_errors=True)
        try:
            path = export_subnet(store, job_id, subnet_id, format, directory / "model")
            name = f"{job_id}-subnet{subnet_id}{path.suffix}"
            if len(list(path.parent.iterdir())) > 1:
                path = Path(shutil.make_archive(str(directory / "model"), "zip", path.parent))
                name = f"{job_id}-subnet{subnet_id}-{format}.zip"
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)
            raise
        media = "application/zip" if path.suffix == ".zip" else "application/octet-stream"
        return FileResponse(path, media_type=media, filename=name, background=cleanup)

    app.include_router(api)

    @app.get("/", include_in_schema=False)
    @app.get("/jobs/{job_id}", include_in_schema=False)
    def page(job_id: str | None = None) -> FileResponse:
        """The web page: one static file; the job to show is read from the address."""
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


#: What the API shows of a stop decision (its run id is implied: it is listed under its run).
DECISION_FIELDS = [f.name for f in fields(StopDecisionRecord) if f.name != "run_id"]


def _decision_json(decision: StopDecisionRecord) -> dict[str, Any]:
    return {name: getattr(decision, name) for name in DECISION_FIELDS}


def _install_error_handlers(app: FastAPI) -> None:
    """Every error as ``{"detail": "one line"}`` with its status code."""

    def handle_nas_error(_: Request, error: Exception) -> JSONResponse:
        code = next(c for kind, c in ERRORS if isinstance(error, kind))
        return JSONResponse({"detail": str(error)}, status_code=code)

    for kind, _code in ERRORS:
        app.add_exception_handler(kind, handle_nas_error)

    def handle_validation(_: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, RequestValidationError)
        first = error.errors()[0] if error.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in first.get("loc", ())) or "request"
        return JSONResponse({"detail": f"{where}: {first.get('msg')}"}, status_code=422)

    def handle_http(_: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, StarletteHTTPException)
        return JSONResponse(
            {"detail": str(error.detail)}, status_code=error.status_code, headers=error.headers
        )

    def handle_bug(_: Request, error: Exception) -> JSONResponse:
        """A bug, not bad input: still JSON, with the traceback in the server's log."""
        logger.error("unhandled error", exc_info=error)
        return JSONResponse({"detail": f"internal error: {type(error).__name__}"}, status_code=500)

    app.add_exception_handler(RequestValidationError, handle_validation)
    app.add_exception_handler(StarletteHTTPException, handle_http)
    app.add_exception_handler(Exception, handle_bug)
