"""Read models: payees, balances, earnings, payout periods, payouts and attempts, dead letters, daily
totals, and the projector's bookkeeping (its Kafka positions and each payee's last applied event).

Money is integer minor units with the currency's exponent beside it; nothing here is a float.

Revision ID: 0003
Revises: 0002
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def money(name: str, nullable: bool = False) -> sa.Column:
    return sa.Column(f"{name}_minor", sa.BigInteger, nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "projection_positions",
        sa.Column("projector", sa.Text, primary_key=True),
        sa.Column("topic", sa.Text, primary_key=True),
        sa.Column("partition", sa.Integer, primary_key=True),
        sa.Column("next_offset", sa.BigInteger, nullable=False),
        sa.Column("updated_at", TS, nullable=False, server_default=sa.func.now()),
    )
    op.create_table(  # the last event applied per payee: idempotency on the event's own identity
        "projection_heads",
        sa.Column("payee_id", sa.Text, primary_key=True),
        sa.Column("last_sequence", sa.BigInteger, nullable=False),
        sa.Column("last_event_id", sa.Text, nullable=False),
        sa.Column("last_hash", sa.Text, nullable=False, comment="SHA-256 of the last event's stored bytes: anchors the chain's head"),
        sa.Column("updated_at", TS, nullable=False, server_default=sa.func.now()),
    )
    op.create_table(
        "payees",
        sa.Column("payee_id", sa.Text, primary_key=True),
        sa.Column("frequency", sa.Text),
        sa.Column("day_of_week", sa.SmallInteger),
        sa.Column("day_of_month", sa.SmallInteger),
        sa.Column("cutoff_time", sa.Text),
        sa.Column("timezone", sa.Text),
        sa.Column("plan", sa.Text),
        sa.Column("payout_method", sa.Text),
        sa.Column("destination", sa.Text),
        money("minimum_payout", nullable=True),
        sa.Column("minimum_payout_currency", sa.Text),
        sa.Column("held", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("hold_reason", sa.Text, nullable=False, server_default=""),
        sa.Column("events", sa.BigInteger, nullable=False),
        sa.Column("first_event_at", TS, nullable=False),
        sa.Column("last_event_at", TS, nullable=False),
    )
    op.create_table(
        "payee_balances",
        sa.Column("payee_id", sa.Text, primary_key=True),
        sa.Column("currency", sa.Text, primary_key=True),
        sa.Column("exponent", sa.SmallInteger, nullable=False),
        money("earned_net"), money("settled"), money("in_flight"), money("unpaid"),
        money("unclosed_gross", nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.CheckConstraint("earned_net_minor = settled_minor + in_flight_minor + unpaid_minor",
                           name="payee_balances_balanced"),
    )
    op.create_table(
        "earnings",
        sa.Column("event_id", sa.Text, primary_key=True),
        sa.Column("payee_id", sa.Text, nullable=False),
        sa.Column("sequence", sa.BigInteger, nullable=False),
        sa.Column("kind", sa.Text, nullable=False, comment="payment, refund, deduction, bonus"),
        sa.Column("business_id", sa.Text, nullable=False, comment="payment_id, refund_id or adjustment_id"),
        sa.Column("payment_id", sa.Text, comment="the payment a refund refers to"),
        sa.Column("name", sa.Text, comment="an adjustment's name"),
        sa.Column("currency", sa.Text, nullable=False),
        sa.Column("exponent", sa.SmallInteger, nullable=False),
        money("amount"),
        sa.Column("signed_amount_minor", sa.BigInteger, nullable=False, comment="+ payments and bonuses, - refunds and deductions"),
        sa.Column("services", sa.Integer, nullable=False, server_default="0"),
        sa.Column("source", sa.Text, nullable=False, server_default=""),
        sa.Column("occurred_at", TS, nullable=False),
        sa.Column("recorded_at", TS, nullable=False),
        sa.UniqueConstraint("payee_id", "sequence", name="earnings_payee_sequence"),
    )
    op.create_index("earnings_payee_occurred", "earnings", ["payee_id", "occurred_at"])
    op.create_table(
        "payout_periods",
        sa.Column("payee_id", sa.Text, primary_key=True),
        sa.Column("period_id", sa.Text, primary_key=True),
        sa.Column("currency", sa.Text, primary_key=True),
        sa.Column("exponent", sa.SmallInteger, nullable=False),
        sa.Column("period_start", TS, nullable=False),
        sa.Column("period_end", TS, nullable=False),
        sa.Column("decision", sa.Text, nullable=False, comment="payout or carried"),
        sa.Column("carried_reason", sa.Text, nullable=False, server_default=""),
        money("gross"), money("fee"), money("deductions"), money("carry_over"), money("net"),
        sa.Column("payment_count", sa.Integer, nullable=False),
        sa.Column("late_payment_count", sa.Integer, nullable=False),
        sa.Column("payout_id", sa.Text),
        sa.Column("closed_at", TS, nullable=False),
    )
    op.create_table(
        "payouts",
        sa.Column("payout_id", sa.Text, primary_key=True),
        sa.Column("payee_id", sa.Text, nullable=False),
        sa.Column("period_id", sa.Text, nullable=False),
        sa.Column("trigger", sa.Text, nullable=False),
        sa.Column("plan", sa.Text, nullable=False),
        sa.Column("method", sa.Text, nullable=False),
        sa.Column("currency", sa.Text, nullable=False),
        sa.Column("exponent", sa.SmallInteger, nullable=False),
        money("gross"), sa.Column("services", sa.Integer, nullable=False), sa.Column("rate_bp", sa.Integer, nullable=False),
        money("payee_share"), money("fee"), money("carry_over"), money("net"),
        sa.Column("deductions", JSONB, nullable=False, comment='[{"name", "amount_minor"}]'),
        sa.Column("payment_count", sa.Integer, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("provider", sa.Text, nullable=False, server_default=""),
        sa.Column("provider_reference", sa.Text, nullable=False, server_default=""),
        sa.Column("reason_code", sa.Text, nullable=False, server_default=""),
        sa.Column("message", sa.Text, nullable=False, server_default=""),
        sa.Column("reversed", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("next_attempt_due", TS),
        sa.Column("requested_at", TS, nullable=False),
        sa.Column("accepted_at", TS),
        sa.Column("finished_at", TS),
        sa.Column("updated_at", TS, nullable=False),
    )
    op.create_index("payouts_status_requested", "payouts", ["status", "requested_at"])
    op.create_index("payouts_payee", "payouts", ["payee_id", "requested_at"])
    op.create_table(
        "payout_attempts",
        sa.Column("payout_id", sa.Text, primary_key=True),
        sa.Column("attempt", sa.Integer, primary_key=True),
        sa.Column("payee_id", sa.Text, nullable=False),
        sa.Column("provider", sa.Text, nullable=False),
        sa.Column("submitted_at", TS, nullable=False),
        sa.Column("outcome", sa.Text, nullable=False, comment="'' while at the provider, accepted, settled, failed"),
        sa.Column("provider_reference", sa.Text, nullable=False),
        sa.Column("reason_code", sa.Text, nullable=False),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("retryable", sa.Boolean, nullable=False),
        sa.Column("finished_at", TS),
    )
    op.create_table(
        "dead_letters",
        sa.Column("dlq_id", sa.Text, primary_key=True, comment="partition:offset in ledger.dlq"),
        sa.Column("source_topic", sa.Text, nullable=False),
        sa.Column("source_partition", sa.Integer, nullable=False),
        sa.Column("source_offset", sa.BigInteger, nullable=False),
        sa.Column("stage", sa.Text, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("rejected_at", sa.Text, nullable=False),
        sa.Column("replayed_from", sa.Text),
        sa.Column("key", sa.LargeBinary),
        sa.Column("value", sa.LargeBinary, nullable=False),
    )
    op.create_table(
        "daily_totals",
        sa.Column("day", sa.Date, primary_key=True, comment="UTC day of occurred_at (earnings) or of the outcome"),
        sa.Column("currency", sa.Text, primary_key=True),
        sa.Column("exponent", sa.SmallInteger, nullable=False),
        sa.Column("payments", sa.BigInteger, nullable=False), money("payments"),
        sa.Column("refunds", sa.BigInteger, nullable=False), money("refunds"),
        money("adjustments"),
        sa.Column("payouts_requested", sa.BigInteger, nullable=False), money("payouts_requested"),
        sa.Column("payouts_settled", sa.BigInteger, nullable=False), money("payouts_settled"),
        sa.Column("payouts_failed", sa.BigInteger, nullable=False), money("payouts_failed"),
        money("fees"),
    )


def downgrade() -> None:
    for table in ("daily_totals", "dead_letters", "payout_attempts", "payouts", "payout_periods", "earnings",
                  "payee_balances", "payees", "projection_heads", "projection_positions"):
        op.drop_table(table)
