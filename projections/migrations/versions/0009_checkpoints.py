"""Checkpoints: each processor's state with the exact log positions it covers, and state that leaves memory.

`processor_checkpoints` holds one row per processor: its state (a versioned blob with its SHA-256),
the next offset per topic partition it covers, and the hash of the record just before each of those
offsets (the proof: a checkpoint is used only if the log still holds that record at that offset).
`processor_entities` keeps a processor's per-entity state that must not stay in memory (a payout that is
settled, failed or cancelled), written in the checkpoint's transaction. `sequencer_recorded` and
`sequencer_payments` are the sequencer's dedupe ids and what remains refundable of each payment: they
grow with the history, so they live here with unique keys and are looked up per batch.

Revision ID: 0009
Revises: 0008
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "processor_checkpoints",
        sa.Column("processor", sa.Text, primary_key=True),
        sa.Column("format", sa.Integer, nullable=False, comment="the state format version; another one is never loaded"),
        sa.Column("positions", JSONB, nullable=False, comment="{topic: {partition: next offset}} the state covers"),
        sa.Column("proofs", JSONB, nullable=False, comment="{topic: {partition: hash of the record at next offset - 1}}"),
        sa.Column("state", sa.LargeBinary, nullable=False),
        sa.Column("state_sha256", sa.Text, nullable=False),
        sa.Column("events", sa.BigInteger, nullable=False, comment="records folded into the state since a full replay"),
        sa.Column("written_at", TS, nullable=False),
    )
    op.create_table(
        "processor_entities",
        sa.Column("processor", sa.Text, primary_key=True),
        sa.Column("kind", sa.Text, primary_key=True),
        sa.Column("key", sa.Text, primary_key=True),
        sa.Column("state", sa.LargeBinary, nullable=False),
    )
    op.create_table(
        "sequencer_recorded",
        sa.Column("dedupe_key", sa.Text, primary_key=True, comment="event type and business id, or event:<id>"),
        sa.Column("event_id", sa.Text, nullable=False),
        sa.Column("digest", sa.Text, nullable=False, comment="SHA-256 of the content: a reuse with other content is refused"),
    )
    op.create_table(
        "sequencer_payments",
        sa.Column("payment_id", sa.Text, primary_key=True),
        sa.Column("payee_id", sa.Text, nullable=False),
        sa.Column("currency", sa.Text, nullable=False),
        sa.Column("amount_minor", sa.BigInteger, nullable=False),
        sa.Column("refunded_minor", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    for table in ("sequencer_payments", "sequencer_recorded", "processor_entities", "processor_checkpoints"):
        op.drop_table(table)
