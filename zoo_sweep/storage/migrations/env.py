"""Alembic's entry point, run programmatically (zoo_sweep.storage.migrate): the caller hands over an open
connection in ``config.attributes["connection"]`` and owns its transaction, so no alembic.ini is needed."""

from alembic import context

from zoo_sweep.storage.schema import VERSION_TABLE, metadata

context.configure(connection=context.config.attributes["connection"], target_metadata=metadata,
                  version_table=VERSION_TABLE)
with context.begin_transaction():
    context.run_migrations()
