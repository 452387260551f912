"""Index idempotency keys by age, for the retention job (skillcoach.data.idempotency).

Revision ID: 0002
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # The table holds at most a retention period of keys, so a plain CREATE INDEX (which
    # blocks writes to this table while it builds) is brief.
    op.create_index("idempotency_keys_created_at", "idempotency_keys", ["created_at"])


def downgrade() -> None:
    op.drop_index("idempotency_keys_created_at", table_name="idempotency_keys")
