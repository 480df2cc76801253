"""Shared pytest fixtures."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from uuid import uuid4

import psycopg
import pytest
import torch
from psycopg import sql
from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL, make_url

from nas.store import Store
from nas.store.models import Base
from nas.store.schema import VERSION_TABLE
from search_spaces import SearchSpace, Supernet, get_space
from tests.supernets import randomised_supernet

# =============================================================================================
# Store fixtures: every store test runs on SQLite and on a real PostgreSQL.
#
# PostgreSQL is required, not optional: CI has it, so an unreachable server fails the tests
# instead of skipping them. Point NAS_TEST_POSTGRES at another server if needed (any database
# the user may connect to; a fresh one is created beside it for the session and dropped after).
# =============================================================================================

POSTGRES_ADMIN_URL = os.environ.get(
    "NAS_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def _libpq(url: URL) -> str:
    """The same URL as psycopg itself understands it (no '+driver')."""
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, dropped at the end."""
    admin = make_url(POSTGRES_ADMIN_URL)
    name = f"nas_test_{uuid4().hex[:10]}"
    try:
        with psycopg.connect(_libpq(admin), autocommit=True, connect_timeout=5) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    except psycopg.Error as err:
        pytest.fail(
            f"PostgreSQL at {admin.render_as_string()} is needed for the store tests "
            f"(set NAS_TEST_POSTGRES): {err}",
            pytrace=False,
        )
    yield admin.set(database=name).render_as_string(hide_password=False)
    with psycopg.connect(_libpq(admin), autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def empty_database(backend: str, request: pytest.FixtureRequest, directory: Path) -> str:
    """An empty database: a new SQLite file in ``directory``, or the session's PostgreSQL
    database with its tables dropped so that the caller starts from nothing."""
    if backend == "sqlite":
        return f"sqlite:///{directory / 'nas.db'}"
    url: str = request.getfixturevalue("postgres_url")
    engine = create_engine(url)
    try:
        Base.metadata.drop_all(engine)
        with engine.begin() as connection:
            connection.execute(text(f"DROP TABLE IF EXISTS {VERSION_TABLE}"))
    finally:
        engine.dispose()
    return url


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database of each backend, for every test."""
    return empty_database(request.param, request, tmp_path)


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    with Store(store_url) as opened:
        yield opened


# ============================================================================ end store fixtures


# =============================================================================================
# Shared fixtures for job specs and Ray.
# =============================================================================================

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_SPEC = REPO / "examples" / "mnist1d.yaml"


def tiny_spec(**overrides: object) -> dict:
    """The example spec shrunk to a few seconds of work (two epochs, a handful of subnets)."""
    import yaml

    spec = yaml.safe_load(EXAMPLE_SPEC.read_text())
    spec["name"] = "tiny"
    # a narrower supernet (at most twice as wide inside a block, kernels up to 5) trains
    # 3.5x faster and still has a front to find
    spec["search_space"]["choices"] = {"expand.*": [1, 2], "kernel.*": [3, 5]}
    spec["training"].update(epochs=2, batch_size=256, random_subnets=1, cpus=1)
    spec["hardware_targets"][0].update(warmup=2, repeats=5)
    spec["search"].update(
        strategy="predictive", profile_samples=3, budget=9, batch=2, population=16, generations=5
    )
    spec.update(overrides)
    return spec


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[None]:
    """One local Ray instance for the whole test session (it takes seconds to start)."""
    from nas.cluster import ray_session

    with ray_session(num_cpus=2):
        yield


# =============================================================================================
# Search-space fixtures.
# =============================================================================================


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny tensors: one thread is faster and does not thrash on a busy CI machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def space() -> SearchSpace:
    return get_space("cnn1d")


@pytest.fixture(scope="module")
def supernet(space: SearchSpace) -> Supernet:
    return randomised_supernet(space)
