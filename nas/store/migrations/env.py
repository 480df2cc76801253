"""Alembic's entry point: migrations run on the connection that ``nas.store.schema`` hands in."""

from alembic import context

from nas.store.models import Base
from nas.store.schema import VERSION_TABLE, our_tables_only

context.configure(
    connection=context.config.attributes["connection"],
    target_metadata=Base.metadata,
    version_table=VERSION_TABLE,
    include_name=our_tables_only,
    render_as_batch=True,  # SQLite changes columns by copying the table; batch mode does that
)
with context.begin_transaction():
    context.run_migrations()
