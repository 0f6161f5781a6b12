"""`zoo-sweep db version|upgrade`: the store's schema version, and upgrading an older store in place."""

from __future__ import annotations

import typer
from rich.console import Console

from zoo_sweep.cli import output
from zoo_sweep.errors import UserError

db_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None,
                     help="The store's schema: its version, and upgrading a store written by an older zoo-sweep.")
out = Console(file=output.stdout, highlight=False)  # masked, as every line the CLI prints


def _open(ctx: typer.Context):
    """The store at any version (these commands are how to move on), reached once here: an unreachable server
    or a file that is no database is the one line every other command gives."""
    import sqlalchemy as sa

    store = ctx.obj.store(create=False, check=False)
    try:
        with store.connect() as conn:
            sa.inspect(conn).get_table_names()  # the first read: a file whose pages are damaged fails here
    except sa.exc.DBAPIError as e:
        raise UserError(store._open_error(e)) from None
    return store


@db_app.command()
def version(ctx: typer.Context):
    """Print the store's schema version and the one this zoo-sweep needs."""
    from zoo_sweep.storage import migrate
    from zoo_sweep.storage.schema import SCHEMA_VERSION

    store = _open(ctx)
    with store.connect() as conn:
        found = migrate.inspect_store(conn, store.where)
    v = "empty (no store yet)" if found.version is None else str(found.version)
    out.print(f"store schema version {v}; this zoo-sweep needs {SCHEMA_VERSION} ({store.where})")


@db_app.command()
def upgrade(ctx: typer.Context):
    """Upgrade an older store in place to this zoo-sweep's schema, keeping every row (one transaction)."""
    from zoo_sweep.storage import migrate

    store = _open(ctx)
    u = migrate.upgrade(store.engine, store.where)
    if u.before == u.after and not u.added:
        out.print(f"store schema is version {u.after} already: nothing to do ({store.where})")
    elif u.before != u.after:
        out.print(f"upgraded the store from schema version {u.before} to {u.after} ({store.where})")
    if u.added:
        out.print(f"added {len(u.added)} metric column(s): {', '.join(u.added)} (NULL for earlier results)")
