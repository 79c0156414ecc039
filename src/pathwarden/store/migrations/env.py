"""Alembic environment for pathwarden's store.

pathwarden runs migrations itself when a store is opened
(:func:`pathwarden.store.sql.open_store`): it hands over an already open,
already transactional synchronous connection in ``config.attributes``
(obtained through ``AsyncConnection.run_sync``), so there is no alembic.ini
and no URL here. Offline (SQL script) mode is not supported.
"""

from __future__ import annotations

from alembic import context

connection = context.config.attributes.get("connection")
if connection is None or context.is_offline_mode():
    raise RuntimeError(
        "pathwarden migrations run only through pathwarden.store.open_store(), "
        "which supplies the database connection"
    )

context.configure(
    connection=connection,
    target_metadata=None,
    # SQLite cannot ALTER most things in place; batch mode rebuilds tables.
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
