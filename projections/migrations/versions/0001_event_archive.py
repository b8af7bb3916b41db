"""Event archive: every canonical event's exact bytes, append-only.

Auditors replay from it, and the embedded broker (memory only) is restored from it by `ledger up`.
Idempotency keys on the event's own identity (event_id; payee_id + sequence), not Kafka offsets.

Revision ID: 0001
Revises:
"""
import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "event_archive",
        sa.Column("event_id", sa.Text, primary_key=True),
        sa.Column("payee_id", sa.Text, nullable=False),
        sa.Column("sequence", sa.BigInteger, nullable=False),
        sa.Column("event_type", sa.Text, nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("topic", sa.Text, nullable=False),
        sa.Column("encoded", sa.LargeBinary, nullable=False),
        sa.Column("archived_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.UniqueConstraint("payee_id", "sequence", name="event_archive_payee_sequence"),
    )
    # Append-only: the archive is evidence, so the database itself refuses edits and deletes.
    op.execute(
        """
        CREATE FUNCTION event_archive_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
          RAISE EXCEPTION 'event_archive is append-only: % refused', TG_OP;
        END $$;
        """
    )
    op.execute(
        "CREATE TRIGGER event_archive_no_change BEFORE UPDATE OR DELETE ON event_archive "
        "FOR EACH ROW EXECUTE FUNCTION event_archive_append_only()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER event_archive_no_change ON event_archive")
    op.execute("DROP FUNCTION event_archive_append_only()")
    op.drop_table("event_archive")
