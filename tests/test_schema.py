"""Schema migrations on SQLite and PostgreSQL: the migrations build exactly the models' tables,
an older database is refused until ``nas db upgrade`` migrates it with its rows intact, and a
database from a newer version is refused."""

from __future__ import annotations

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, text

from nas.cli import main
from nas.store import Store
from nas.store.models import Base
from nas.store.schema import BASELINE, VERSION_TABLE, _config, head_revision, our_tables_only


def migrate(url: str, revision: str) -> None:
    engine = create_engine(url)
    try:
        with engine.begin() as connection:
            command.upgrade(_config(connection), revision)
    finally:
        engine.dispose()


def execute(url: str, statement: str) -> None:
    engine = create_engine(url)
    try:
        with engine.begin() as connection:
            connection.execute(text(statement))
    finally:
        engine.dispose()


def test_migrations_build_exactly_the_models_tables(store_url: str) -> None:
    migrate(store_url, "head")
    engine = create_engine(store_url)
    try:
        with engine.connect() as connection:
            opts = {"version_table": VERSION_TABLE, "include_name": our_tables_only}
            context = MigrationContext.configure(connection, opts=opts)
            differences = compare_metadata(context, Base.metadata)
    finally:
        engine.dispose()
    assert differences == []


def test_an_older_database_is_refused_until_upgraded(store_url: str, capsys) -> None:
    migrate(store_url, BASELINE)
    execute(
        store_url,
        "INSERT INTO jobs (id, name, spec, status, created_at, updated_at) "
        "VALUES ('old', 'before', '{}', 'done', '2026-01-01 00:00:00', '2026-01-01 00:00:00')",
    )
    assert main(["jobs", "--db", store_url]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("nas: error: database ") and error.count("\n") == 0
    assert f"has schema revision {BASELINE}, this version of nas needs {head_revision()}" in error
    assert "run 'nas db upgrade --db URL'" in error

    assert main(["db", "upgrade", "--db", store_url]) == 0
    assert f"from schema revision {BASELINE} to {head_revision()}" in capsys.readouterr().out
    with Store(store_url) as store:
        job = store.get_job("old")
    assert (job.name, job.status, job.submission_id) == ("before", "done", None)
    assert main(["db", "upgrade", "--db", store_url]) == 0  # a second upgrade changes nothing
    assert f"is at schema revision {head_revision()}" in capsys.readouterr().out


def test_a_database_from_before_migrations_is_taken_as_the_baseline(store_url: str) -> None:
    migrate(store_url, BASELINE)
    execute(store_url, f"DROP TABLE {VERSION_TABLE}")
    assert main(["db", "upgrade", "--db", store_url]) == 0
    with Store(store_url) as store:
        assert store.list_jobs() == []


def test_a_database_from_a_newer_version_is_refused(store_url: str, capsys) -> None:
    Store(store_url).close()
    execute(store_url, f"UPDATE {VERSION_TABLE} SET version_num = '9999'")
    assert main(["jobs", "--db", store_url]) == 2
    assert "has schema revision 9999, which this version of nas does not know" in (
        capsys.readouterr().err
    )
