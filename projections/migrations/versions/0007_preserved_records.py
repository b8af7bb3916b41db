"""Records `ledger down` saved from the embedded broker (memory only) for `ledger up` to put back.

`preserved_records`: inputs the sequencer had not consumed (payments.incoming, ledger.commands) and
dead letters the projector had not projected, raw (key, value, headers, timestamp), in the order they
were read. `ledger up` produces them back into the new, empty topics and then deletes them.
`archived_positions`: per partition of ledger.events, the offset before which every record is known to
be in event_archive (written by `ledger down` and by the restore), so the next save or the at-risk
count reads only the tail after it.

Revision ID: 0007
Revises: 0006
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "preserved_records",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True, comment="restore order"),
        sa.Column("broker_run", sa.Text, nullable=False, comment="which run of the embedded broker it was read from"),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("topic", sa.Text, nullable=False),
        sa.Column("partition", sa.Integer, nullable=False),
        sa.Column("record_offset", sa.BigInteger, nullable=False),
        sa.Column("key", sa.LargeBinary, nullable=True),
        sa.Column("value", sa.LargeBinary, nullable=True),
        sa.Column("headers", JSONB, nullable=False, comment='[[name, base64 value or null], ...] in order'),
        sa.Column("timestamp_ms", sa.BigInteger, nullable=True),
        sa.Column("saved_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.CheckConstraint("kind IN ('input', 'dead_letter')", name="preserved_records_kind"),
        # saving the same broker's tail again (a `ledger down` retried) adds nothing
        sa.UniqueConstraint("broker_run", "topic", "partition", "record_offset", name="preserved_records_position"),
    )
    op.create_table(
        "archived_positions",
        sa.Column("topic", sa.Text, primary_key=True),
        sa.Column("partition", sa.Integer, primary_key=True),
        sa.Column("next_offset", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("archived_positions")
    op.drop_table("preserved_records")
