"""Sequencer claims: ledger-wide dedupe while several sequencer instances each own partitions.

`sequencer_claims` holds a dedupe key (a payment, refund or adjustment id) from the moment the
partition that will chain it claims it, before the event is produced, until that partition's next
checkpoint has written it to `sequencer_recorded`. A key is claimed once (primary key): another
partition that meets the same id finds the claim and judges its record against it (a duplicate, or
a conflict when the content differs), even though it cannot see the other partition's chain.

Revision ID: 0011
Revises: 0010
"""
import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sequencer_claims",
        sa.Column("dedupe_key", sa.Text, primary_key=True),
        sa.Column("partition", sa.Integer, nullable=False, comment="the ledger.events partition that chains it"),
        sa.Column("event_id", sa.Text, nullable=False),
        sa.Column("digest", sa.Text, nullable=False, comment="content digest of the claimed event"),
        sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    )
    op.create_index("sequencer_claims_partition", "sequencer_claims", ["partition"])


def downgrade() -> None:
    op.drop_table("sequencer_claims")
