"""The sequencer's durable intake state: refunds waiting for their payment, and its run marker.

`sequencer_waiting` holds a refund that arrived before its payment (another partition, another
producer, a retry): the sequencer commits past it on the input topic and keeps its original record
here, bounded in count and time, until the payment is chained (then the refund is chained too) or the
wait runs out (then it is dead-lettered). `sequencer_runs` says whether the last run stopped cleanly
and which record it was processing alone when it died, so a record that kills the process is
dead-lettered as a poison record instead of being retried forever.

Revision ID: 0008
Revises: 0007
"""
import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "sequencer_waiting",
        sa.Column("source_topic", sa.Text, primary_key=True),
        sa.Column("source_partition", sa.Integer, primary_key=True),
        sa.Column("source_offset", sa.BigInteger, primary_key=True),
        sa.Column("waits_for", sa.Text, nullable=False, comment="the payment id the refund needs"),
        sa.Column("key", sa.LargeBinary, nullable=True),
        sa.Column("value", sa.LargeBinary, nullable=False),
        sa.Column("headers", sa.LargeBinary, nullable=False, comment="the record's headers, JSON [[name, hex]]"),
        sa.Column("waiting_since", TS, nullable=False),
    )
    op.create_index("sequencer_waiting_since", "sequencer_waiting", ["waiting_since"])
    op.create_table(
        "sequencer_runs",
        sa.Column("name", sa.Text, primary_key=True, comment="the sequencer's consumer group"),
        sa.Column("running", sa.Boolean, nullable=False, comment="true from start until a clean stop"),
        sa.Column("topic", sa.Text, nullable=True, comment="the record being processed alone, if any"),
        sa.Column("partition", sa.Integer, nullable=True),
        sa.Column("offset", sa.BigInteger, nullable=True),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("updated_at", TS, nullable=False, server_default=sa.func.now()),
    )


def downgrade() -> None:
    op.drop_table("sequencer_runs")
    op.drop_index("sequencer_waiting_since", table_name="sequencer_waiting")
    op.drop_table("sequencer_waiting")
