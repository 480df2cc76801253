"""Schema versions: the Alembic migrations in ``migrations/`` and the check that a database
matches this code before anything reads or writes it.

A database without any of our tables gets the current tables at once, so the embedded default
needs no extra step. Any other database must already be at the newest revision: an older one is
upgraded only on request (``nas db upgrade``), never behind the user's back, and one at a
revision this code does not know (written by a newer ``nas``) is refused.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, inspect, text

from nas.errors import StoreError
from nas.store.models import Base

MIGRATIONS = Path(__file__).parent / "migrations"

#: The revision whose tables databases made before migrations existed already have.
BASELINE = "0001"

#: Our own name for Alembic's bookkeeping table, so that a database shared with other
#: Alembic users (Optuna's RDB storage keeps its own ``alembic_version``) stays unambiguous.
VERSION_TABLE = "nas_alembic_version"


def _config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    """The revision this code's models correspond to."""
    head = ScriptDirectory.from_config(_config()).get_current_head()
    assert head is not None, "the migrations directory holds no revision"
    return head


def current_revision(connection: Connection) -> str | None:
    context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
    return context.get_current_revision()


def prepare(engine: Engine, shown_url: str) -> None:
    """Create the tables of an empty database; refuse one whose schema is not this code's."""
    with engine.begin() as connection:
        _lock(connection)
        if not _ours(connection):  # other applications' tables may share the database
            Base.metadata.create_all(connection)
            command.stamp(_config(connection), "head")
            return
        revision = current_revision(connection)
    head = head_revision()
    if revision == head:
        return
    known = {script.revision for script in ScriptDirectory.from_config(_config()).walk_revisions()}
    if revision is not None and revision not in known:
        raise StoreError(
            f"database {shown_url} has schema revision {revision}, which this version of nas "
            f"does not know (was it written by a newer one?)"
        )
    raise StoreError(
        f"database {shown_url} has schema revision {revision or 'none'}, this version of nas "
        f"needs {head}: run 'nas db upgrade --db URL'"
    )


def upgrade(engine: Engine) -> tuple[str | None, str]:
    """Migrate the database to the newest revision; the revisions before and after.

    A database made before migrations existed (our tables, no revision) is taken to be at
    the baseline revision, which describes exactly those tables.
    """
    with engine.begin() as connection:
        _lock(connection)
        before = current_revision(connection)
        config = _config(connection)
        if before is None and _ours(connection):
            command.stamp(config, BASELINE)
        command.upgrade(config, "head")
        return before, current_revision(connection) or ""


def our_tables_only(name: str | None, type_: str, parent_names: object) -> bool:
    """Alembic's ``include_name`` filter: compare and migrate our tables, never another
    application's that share the database."""
    return type_ != "table" or name in Base.metadata.tables


def _ours(connection: Connection) -> bool:
    """Whether the database holds any of our tables or our version table."""
    names = set(inspect(connection).get_table_names())
    return bool(names & {VERSION_TABLE, *Base.metadata.tables})


def _lock(connection: Connection) -> None:
    """Serialise schema changes of processes starting together against one PostgreSQL."""
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(hashtext('nas-schema'))"))
