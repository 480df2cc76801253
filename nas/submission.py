"""Running a job's controller on a Ray cluster through the Ray Jobs API.

``nas submit`` writes the job into the shared database, then asks the cluster's Jobs API
(the dashboard address, ``http://HEAD:8265``) to run ``nas resume JOB --address auto`` as a Ray
job: the controller runs on the cluster, the submitter returns at once, and everyone reads
progress from the database. Nothing but the job id and the database URL travels; the URL goes
in the Ray job's environment (``NAS_DB``), not on its command line.

Ray's token authentication stays on: the client sends the token that Ray itself finds in
``RAY_AUTH_TOKEN``, the file ``RAY_AUTH_TOKEN_PATH`` names, or ``~/.ray/auth_token``.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit
from uuid import uuid4

from ray.exceptions import AuthenticationError
from ray.job_submission import JobSubmissionClient

from nas.cluster import check_reachable
from nas.errors import ClusterError

#: How long a submission waits for the Jobs API's agent of a head that has just started.
AGENT_WAIT_S = 60.0

#: Ray job states in which the controller is (or is about to be) running.
ACTIVE_STATES = ("PENDING", "RUNNING")


@contextmanager
def _errors(address: str, action: str) -> Iterator[None]:
    """The Jobs API's failures as one line that says what to do."""
    try:
        yield
    except AuthenticationError:
        raise ClusterError(
            f"the Ray cluster at {address} rejected the authentication token: set "
            "RAY_AUTH_TOKEN (or ~/.ray/auth_token) to the token the cluster was started with"
        ) from None
    except (ConnectionError, RuntimeError, ValueError) as error:
        lines = str(error).strip().splitlines()
        raise ClusterError(
            f"cannot {action} at {address}: {lines[0] if lines else type(error).__name__}"
        ) from None


def jobs_client(address: str) -> JobSubmissionClient:
    """A connected, authenticated client of the Jobs API at ``http(s)://HOST:PORT``."""
    parts = urlsplit(address)
    if parts.scheme not in ("http", "https") or not parts.hostname or not parts.port:
        raise ClusterError(
            f"--address {address!r} is not a Ray Jobs API address; jobs are submitted to the "
            "dashboard's http://HOST:PORT (port 8265 unless the cluster chose another)"
        )
    check_reachable(f"{parts.hostname}:{parts.port}")
    with _errors(address, "reach the Ray Jobs API"):
        client = JobSubmissionClient(address)
        client.list_jobs()  # the first call that needs the token: fail here, not later
    return client


def submit_controller(
    client: JobSubmissionClient, job_id: str, db_url: str, artifacts: Path
) -> str:
    """Start ``job_id``'s controller on the cluster; the Ray submission id."""
    submission_id = f"nas-{job_id}-{uuid4().hex[:6]}"
    entrypoint = shlex.join(
        ["nas", "resume", job_id, "--address", "auto", "--artifacts", str(artifacts)]
    )
    deadline = time.monotonic() + AGENT_WAIT_S
    with _errors(client.get_address(), "submit to the Ray Jobs API"):
        while True:
            try:
                client.submit_job(
                    entrypoint=entrypoint,
                    submission_id=submission_id,
                    runtime_env={"env_vars": {"NAS_DB": db_url}},
                    metadata={"nas_job": job_id},
                )
                return submission_id
            except RuntimeError as error:
                # a head that has just started answers before its job agent is up
                if "No available agent" not in str(error) or time.monotonic() > deadline:
                    raise
                time.sleep(1.0)


def controller_state(client: JobSubmissionClient, submission_id: str) -> str:
    """The Ray job state of a submitted controller: PENDING, RUNNING, SUCCEEDED, FAILED..."""
    with _errors(client.get_address(), "ask the Ray Jobs API for a job's state"):
        return str(client.get_job_status(submission_id).value)


def controller_logs(client: JobSubmissionClient, submission_id: str) -> str:
    with _errors(client.get_address(), "read a job's logs from the Ray Jobs API"):
        return client.get_job_logs(submission_id)


def stop_controller(client: JobSubmissionClient, submission_id: str) -> None:
    with _errors(client.get_address(), "stop a job through the Ray Jobs API"):
        client.stop_job(submission_id)
