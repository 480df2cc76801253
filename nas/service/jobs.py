"""Jobs submitted over HTTP: the spec checked as the CLI checks it, then run in the background.

A submitted job runs exactly as ``nas resume JOB`` would run it (the same ``Controller``), in a
child process: the server stays responsive while torch trains, and a crash of the job cannot
take the server down. Jobs run one at a time, in submission order, because a local Ray instance
takes every core of the machine; a job sent while another runs waits as ``pending``.
"""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import yaml

from nas import spec as spec_module
from nas.errors import NasError, SpecError
from nas.spec import JobSpec
from nas.store import Store

#: Content types a spec may be sent as; anything else is read as YAML (a superset of JSON).
JSON_TYPES = ("application/json",)
MAX_SPEC_BYTES = 1 << 20


class ForbiddenImportError(NasError):
    """A spec sent over HTTP would import user code the server does not allow."""


def parse_submitted_spec(body: bytes, content_type: str, allowed_modules: Sequence[str]) -> JobSpec:
    """The spec of a ``POST /api/jobs`` body (JSON or YAML), validated by the CLI's code once
    the modules it would import are known to be allowed (validating imports them)."""
    if len(body) > MAX_SPEC_BYTES:
        raise SpecError(f"spec: {len(body)} bytes; at most {MAX_SPEC_BYTES} are accepted")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as error:
        raise SpecError(f"spec: not UTF-8 text ({error.reason} at byte {error.start})") from None
    media = content_type.split(";")[0].strip().lower()
    try:
        data = json.loads(text) if media in JSON_TYPES else yaml.safe_load(text)
    except json.JSONDecodeError as error:
        raise SpecError(f"spec: malformed JSON at line {error.lineno}: {error.msg}") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or "invalid YAML"
        raise SpecError(f"spec: malformed YAML{where}: {problem}") from None
    except RecursionError:
        raise SpecError("spec: nested too deeply") from None
    check_imports(spec_module.spec_imports(data), allowed_modules)
    return spec_module.parse_spec(data, "spec")


def check_imports(modules: Sequence[str], allowed: Sequence[str]) -> None:
    """Every module a spec imports must be an allowed module or inside an allowed package."""
    for module in modules:
        if not any(module == a or module.startswith(f"{a}.") for a in allowed):
            listed = ", ".join(allowed) if allowed else "none (start nas serve --allow-module M)"
            raise ForbiddenImportError(
                f"spec imports module '{module}', which this server does not allow; "
                f"allowed: {listed}"
            )


def submit(store: Store, spec: JobSpec) -> Any:
    """Create the job of a validated spec (``pending``)."""
    return store.create_job(spec.name, spec.model_dump(mode="json"))


class JobRunner(Protocol):
    """Runs stored jobs in the background; ``start`` returns at once."""

    def start(self, job_id: str) -> None: ...

    def close(self) -> None: ...


class ProcessRunner:
    """Runs each job as ``nas resume JOB`` in a child process, one job at a time.

    A job cancelled before its turn is skipped. A child that exits with an error before its
    controller could record one (Ray did not start, say) marks the job ``failed`` with the
    last line it printed; its whole output is in ``ARTIFACTS/JOB/service.log``.
    """

    def __init__(self, store: Store, artifacts: Path, ray_address: str | None = None) -> None:
        self.store, self.artifacts, self.ray_address = store, artifacts, ray_address
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._current: subprocess.Popen[bytes] | None = None
        self._thread = threading.Thread(target=self._work, name="nas-job-runner", daemon=True)
        self._thread.start()

    def command(self, job_id: str) -> list[str]:
        argv = [sys.executable, "-m", "nas.cli", "resume", job_id, "--db", self.store.url]
        argv += ["--artifacts", str(self.artifacts)]
        return argv + (["--address", self.ray_address] if self.ray_address else [])

    def start(self, job_id: str) -> None:
        self._queue.put(job_id)

    def close(self) -> None:
        """Stop taking jobs; a job still running is stopped (``nas resume`` continues it)."""
        self._queue.put(None)
        current = self._current
        if current is not None and current.poll() is None:
            current.terminate()
        self._thread.join(timeout=30)

    def _work(self) -> None:
        while (job_id := self._queue.get()) is not None:
            try:
                self._run(job_id)
            except NasError:
                pass  # the database went away; the job stays as it is, resumable

    def _run(self, job_id: str) -> None:
        if self.store.get_job(job_id).status != "pending":
            return  # cancelled while it waited
        log = self.artifacts / job_id / "service.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("wb") as out:
            self._current = subprocess.Popen(
                self.command(job_id), stdout=out, stderr=subprocess.STDOUT
            )
            code = self._current.wait()
            self._current = None
        job = self.store.get_job(job_id)
        if code != 0 and job.status in ("pending", "running"):
            lines = log.read_text(errors="replace").strip().splitlines()
            reason = lines[-1] if lines else f"nas resume exited with code {code}"
            self.store.update_job(job_id, status="failed", error=reason[:1000])
