"""Alembic environment: the app's metadata, and the connection the app hands over.

The app runs ``alembic upgrade head`` programmatically (``backend_stub.storage.upgrade``) with
its own connection in ``config.attributes["connection"]``. For the alembic command line, set
the database URL with ``-x url=...`` or ``TINYML_BACKEND_DB_URL``.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import engine_from_config, pool

from backend_stub.config import database_password, default_database_url, with_password
from backend_stub.storage import Base

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    url = context.get_x_argument(as_dictionary=True).get("url") or default_database_url()
    return with_password(url, database_password())  # from a file or the environment


def run_migrations_offline() -> None:
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True,
                      render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        # render_as_batch: SQLite cannot ALTER most things; batch mode copies the table.
        context.configure(connection=connection, target_metadata=target_metadata,
                          render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = engine_from_config({"sqlalchemy.url": _url()}, prefix="sqlalchemy.",
                                poolclass=pool.NullPool)
    with engine.connect() as conn:
        context.configure(connection=conn, target_metadata=target_metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
