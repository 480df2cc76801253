"""A property-based fuzz of the API from its own OpenAPI schema (schemathesis): whatever the
schema lets a client send, with the token, the server never answers with a server error.

Cases fit the schema or, as often, break it (schemathesis' negative mode: wrong types,
patterns, ranges); either way the answer must be a client error or a success. Examples are
bounded so that the whole fuzz stays under a minute on one core; the export route
(seconds of torch.export per call) gets fewer. Job ids come from the schema's pattern, so most
name no job; half the cases are pointed at the finished job instead.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.schemas import APIOperation

from tests.finished_job import TOKEN, Served, serve_finished_job

AUTH = {"Authorization": f"Bearer {TOKEN}"}
EXAMPLES = 40


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Served:
    directory = tmp_path_factory.mktemp("fuzz")
    return serve_finished_job(f"sqlite:///{directory / 'nas.db'}", directory)


def operations(served: Served) -> list[APIOperation]:
    schema = schemathesis.openapi.from_asgi("/openapi.json", served.app)
    return [result.ok() for result in schema.get_all_operations()]


LABELS = [
    "GET /health",
    "GET /api/jobs",
    "POST /api/jobs",
    "GET /api/jobs/{job_id}",
    "POST /api/jobs/{job_id}/cancel",
    "GET /api/jobs/{job_id}/fronts",
    "GET /api/jobs/{job_id}/front",
    "GET /api/jobs/{job_id}/runs",
    "GET /api/jobs/{job_id}/predictions",
    "GET /api/jobs/{job_id}/subnets/{subnet_id}",
    "GET /api/jobs/{job_id}/subnets/{subnet_id}/export",
]


def test_every_operation_is_fuzzed(served: Served) -> None:
    assert sorted(o.label for o in operations(served)) == sorted(LABELS)


# schemathesis' own pytest plugin does not run under this pytest; drive its strategies instead
@pytest.mark.parametrize("label", LABELS)
def test_no_server_error(served: Served, label: str) -> None:
    operation = next(o for o in operations(served) if o.label == label)
    slow = operation.path.endswith("/export")

    modes = [GenerationMode.POSITIVE] + (
        [GenerationMode.NEGATIVE] if operation.path != "/health" else []
    )
    cases = st.one_of(*(operation.as_strategy(generation_mode=mode) for mode in modes))

    @given(case=cases)
    @settings(
        max_examples=EXAMPLES // 4 if slow else EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        phases=(Phase.explicit, Phase.generate),  # a 5xx is a failure whatever its size
        suppress_health_check=list(HealthCheck),
    )
    def no_server_error(case: schemathesis.Case) -> None:
        parameters = case.path_parameters or {}
        if "job_id" in parameters and len(repr(case)) % 2:
            parameters["job_id"] = served.job.id  # half the cases hit the real job
            if isinstance(parameters.get("subnet_id"), int):
                subnets = served.job.subnets
                parameters["subnet_id"] = subnets[parameters["subnet_id"] % len(subnets)]
        response = case.call_and_validate(headers=AUTH, checks=[not_a_server_error])
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1

    statuses: dict[int, int] = {}
    no_server_error()
    print(label, sorted(statuses.items()))
    # arbitrary objects are almost never valid specs, and the only job there is is done
    if label not in ("POST /api/jobs", "POST /api/jobs/{job_id}/cancel"):
        assert any(200 <= code < 300 for code in statuses), statuses  # it reached real data


def test_the_fuzz_reached_the_real_job(served: Served, tmp_path: Path) -> None:
    """Sanity check of the setup: the finished job is there for the fuzz to find."""
    from fastapi.testclient import TestClient

    with TestClient(served.app, headers=AUTH) as client:
        assert client.get(f"/api/jobs/{served.job.id}").json()["status"] == "done"
