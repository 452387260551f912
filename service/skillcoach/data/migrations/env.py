"""Alembic environment: the URL comes from the caller's Settings, never from alembic.ini."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool, text

url = context.config.get_main_option("sqlalchemy.url")
assert url, "skillcoach.data.migrate sets sqlalchemy.url"

# NullPool: one short-lived connection; through PgBouncer (transaction mode) that is one server
# connection for one transaction, which is all a migration needs.
# hide_parameters: a failed statement logged by a migration must not show its values.
engine = create_engine(url, poolclass=pool.NullPool, hide_parameters=True)
with engine.connect() as connection:
    context.configure(
        connection=connection, transactional_ddl=True, transaction_per_migration=False
    )
    with context.begin_transaction():
        # A transaction-scoped lock works through PgBouncer's transaction pooling (a session
        # lock would not): replicas that migrate at once run one after the other.
        connection.execute(text("SELECT pg_advisory_xact_lock(7243311)"))
        context.run_migrations()
engine.dispose()
