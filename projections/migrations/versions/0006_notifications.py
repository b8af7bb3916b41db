"""Payee notifications: contacts (kept out of the immutable ledger) and an outbox of deliveries.

Contacts (email address, webhook URL) are personal data: they live only here, in an ordinary table
that can be updated and erased, and never in ledger.events, whose events are immutable and replayed
forever. The outbox holds one row per (ledger event, channel): the unique key is what makes a notice
idempotent however often the notifier re-reads the ledger, and the row's id is the stable delivery id
(Message-ID / X-Ledger-Delivery) a receiver dedupes on.

Revision ID: 0006
Revises: 0005
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "payee_contacts",
        sa.Column("payee_id", sa.Text, primary_key=True),
        sa.Column("email", sa.Text, nullable=True),
        sa.Column("webhook_url", sa.Text, nullable=True),
        sa.Column("updated_at", TS, nullable=False, server_default=sa.func.now()),
        sa.Column("updated_by", sa.Text, nullable=False, server_default=""),
        sa.CheckConstraint("email IS NOT NULL OR webhook_url IS NOT NULL", name="payee_contacts_some_channel"),
    )
    op.create_table(
        "payee_notifications",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column("event_id", sa.Text, nullable=False),
        sa.Column("payee_id", sa.Text, nullable=False),
        sa.Column("payout_id", sa.Text, nullable=False),
        sa.Column("kind", sa.Text, nullable=False),
        # 'none' only on a no_contact row: the payee had no contact when the event was read
        sa.Column("channel", sa.Text, nullable=False),
        sa.Column("target", sa.Text, nullable=False, server_default=""),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("next_attempt_at", TS, nullable=True),
        sa.Column("last_error", sa.Text, nullable=False, server_default=""),
        sa.Column("created_at", TS, nullable=False, server_default=sa.func.now()),
        sa.Column("sent_at", TS, nullable=True),
        sa.Column("payload", JSONB, nullable=False),
        sa.UniqueConstraint("event_id", "channel", name="payee_notifications_event_channel"),
        sa.CheckConstraint("kind IN ('settled', 'failed')", name="payee_notifications_kind"),
        sa.CheckConstraint("channel IN ('email', 'webhook', 'none')", name="payee_notifications_channel"),
        sa.CheckConstraint("status IN ('pending', 'sent', 'given_up', 'no_contact')", name="payee_notifications_status"),
        sa.CheckConstraint("attempts >= 0", name="payee_notifications_attempts"),
    )
    # the delivery step's query: due pending rows, oldest first
    op.create_index("payee_notifications_due", "payee_notifications", ["next_attempt_at", "id"],
                    postgresql_where=sa.text("status = 'pending'"))
    op.create_index("payee_notifications_payee", "payee_notifications", ["payee_id", "id"])
    op.create_index("payee_notifications_payout", "payee_notifications", ["payout_id"])


def downgrade() -> None:
    op.drop_table("payee_notifications")
    op.drop_table("payee_contacts")
