"""Bad input through the real ``nas`` command: one line naming the problem, exit code 2, no
traceback, and the database exactly as it was."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from nas.store import Store
from tests.conftest import tiny_spec


def nas(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "nas.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def dump(db: Path) -> list[str]:
    with sqlite3.connect(db) as conn:
        return list(conn.iterdump())


@pytest.fixture
def workdir(tmp_path: Path) -> tuple[Path, Path, str]:
    """A directory with a SQLite database that already holds one job, and that job's id."""
    db = tmp_path / "nas.db"
    with Store(f"sqlite:///{db}") as store:
        job = store.create_job("existing", tiny_spec())
    return tmp_path, db, job.id


def write_spec(directory: Path, text: str) -> str:
    (directory / "spec.yaml").write_text(text)
    return "spec.yaml"


def assert_user_error(result: subprocess.CompletedProcess, *expected: str) -> None:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    for text in expected:
        assert text in lines[0]


def spec_with(**change: object) -> str:
    return yaml.safe_dump(tiny_spec(**change))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("name: x\nsearch_space: [cnn1d\n", ["spec.yaml: malformed YAML at line"]),
        (spec_with(search_space={"name": "nope"}), ["unknown search space 'nope'", "cnn1d"]),
        (
            spec_with(search_space={"name": "cnn1d", "choices": {"depht.*": [1]}}),
            ["unknown dimension 'depht.*'", "depth.*"],
        ),
        (
            spec_with(search_space={"name": "cnn1d", "choices": {"depth.2": [9]}}),
            ["value 9 is not a choice of dimension 'depth.2'", "[1, 2, 3]"],
        ),
    ],
    ids=["malformed-yaml", "unknown-space", "unknown-dimension", "value-outside-choices"],
)
def test_bad_spec(workdir: tuple[Path, Path, str], text: str, expected: list[str]) -> None:
    directory, db, _ = workdir
    before = dump(db)
    result = nas("run", write_spec(directory, text), "--db", str(db), cwd=directory)
    assert_user_error(result, *expected)
    assert dump(db) == before


@pytest.mark.parametrize("command", [["jobs"], ["status", "abc"], ["run", "spec.yaml"]])
def test_unreachable_database(tmp_path: Path, command: list[str]) -> None:
    write_spec(tmp_path, spec_with())
    result = nas(*command, "--db", "postgresql+psycopg://nas@127.0.0.1:1/nas", cwd=tmp_path)
    assert_user_error(result, "cannot reach database postgresql+psycopg://nas@127.0.0.1:1/nas")


def test_sqlite_file_in_missing_directory(tmp_path: Path) -> None:
    result = nas("jobs", "--db", str(tmp_path / "no" / "such" / "nas.db"), cwd=tmp_path)
    assert_user_error(result, str(tmp_path / "no" / "such"))


def test_unreachable_cluster(workdir: tuple[Path, Path, str]) -> None:
    directory, db, _ = workdir
    before = dump(db)
    result = nas(
        "run",
        write_spec(directory, spec_with()),
        "--db",
        str(db),
        "--address",
        "127.0.0.1:1",
        cwd=directory,
    )
    assert_user_error(result, "cannot reach Ray cluster at 127.0.0.1:1")
    assert dump(db) == before


@pytest.mark.parametrize(
    "command",
    [
        ["status", "feedbeef"],
        ["pareto", "feedbeef"],
        ["pareto", "feedbeef", "--json"],
        ["export", "feedbeef", "1", "--format", "pt2", "-o", "out"],
    ],
)
def test_unknown_job(workdir: tuple[Path, Path, str], command: list[str]) -> None:
    directory, db, _ = workdir
    before = dump(db)
    assert_user_error(nas(*command, "--db", str(db), cwd=directory), "unknown job 'feedbeef'")
    assert dump(db) == before
    assert not (directory / "out").exists()


def test_unknown_subnet(workdir: tuple[Path, Path, str]) -> None:
    directory, db, job = workdir
    before = dump(db)
    result = nas(
        "export", job, "999", "--format", "onnx", "-o", "out", "--db", str(db), cwd=directory
    )
    assert_user_error(result, f"unknown subnet 999 in job '{job}'")
    assert dump(db) == before


def test_front_of_unfinished_job(workdir: tuple[Path, Path, str]) -> None:
    directory, db, job = workdir
    assert_user_error(nas("pareto", job, "--db", str(db), cwd=directory), "has no Pareto front yet")


def test_missing_spec_file(tmp_path: Path) -> None:
    assert_user_error(nas("run", "absent.yaml", cwd=tmp_path), "cannot read spec absent.yaml")


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("http://127.0.0.1:1", "cannot reach Ray cluster at 127.0.0.1:1"),
        ("127.0.0.1:6380", "is not a Ray Jobs API address"),
    ],
    ids=["unreachable", "not-the-jobs-api"],
)
def test_submit_to_a_bad_cluster_address(
    workdir: tuple[Path, Path, str], address: str, expected: str
) -> None:
    directory, db, _ = workdir
    before = dump(db)
    spec = write_spec(directory, spec_with())
    result = nas("submit", spec, "--db", str(db), "--address", address, cwd=directory)
    assert_user_error(result, expected)
    assert dump(db) == before  # no job row for a job that never reached a cluster


@pytest.mark.parametrize("command", [["logs"], ["cancel"]])
def test_cluster_commands_on_unknown_job(workdir: tuple[Path, Path, str], command: list) -> None:
    directory, db, _ = workdir
    assert_user_error(nas(*command, "feedbeef", "--db", str(db), cwd=directory), "unknown job")


def test_logs_of_a_job_that_was_not_submitted(workdir: tuple[Path, Path, str]) -> None:
    directory, db, job = workdir
    result = nas("logs", job, "--db", str(db), cwd=directory)
    assert_user_error(result, f"job {job} was not submitted to a cluster")


def test_cancel_marks_a_local_job_and_refuses_twice(workdir: tuple[Path, Path, str]) -> None:
    directory, db, job = workdir
    assert nas("cancel", job, "--db", str(db), cwd=directory).returncode == 0
    with Store(f"sqlite:///{db}") as store:
        assert store.get_job(job).status == "cancelled"
    assert_user_error(
        nas("cancel", job, "--db", str(db), cwd=directory),
        f"job '{job}' is cancelled; only a pending or running job can be cancelled",
    )
