"""Alerts: evaluated in the service, stored with their history, delivered to webhooks and email.

`alerts` keeps every alert ever raised (resolved ones included: they are the history); a partial unique
index allows one open alert per (rule, key). `alert_deliveries` is the outbox of webhook posts and
emails, one row per (alert, transition, channel, target), retried with backoff until sent or given up.
Analysts may read `alerts`; not the deliveries, whose targets are operators' addresses and URLs.

Revision ID: 0005
Revises: 0004
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)
ROLE = "ledger_analyst"


def _grant(verb: str) -> str:
    to_from = "TO" if verb == "GRANT" else "FROM"
    # The role is created by 0004; the schema is named at run time (tests migrate many schemas).
    return f"""
DO $$
BEGIN
  IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = '{ROLE}') THEN
    EXECUTE format('{verb} SELECT ON %I.alerts {to_from} {ROLE}', current_schema());
  END IF;
END $$;
"""


def upgrade() -> None:
    op.create_table(
        "alerts",
        sa.Column("id", sa.BigInteger, sa.Identity(always=False), primary_key=True),
        sa.Column("rule", sa.Text, nullable=False),
        sa.Column("key", sa.Text, nullable=False, server_default="", comment="the currency for run_total, '' otherwise"),
        sa.Column("severity", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("summary", sa.Text, nullable=False),
        sa.Column("value", sa.Numeric, comment="the latest measured value; NULL when it could not be judged"),
        sa.Column("threshold", sa.Numeric, nullable=False),
        sa.Column("fired_at", TS, nullable=False),
        sa.Column("last_evaluated_at", TS, nullable=False),
        sa.Column("acknowledged_at", TS),
        sa.Column("acknowledged_by", sa.Text),
        sa.Column("resolved_at", TS),
        sa.Column("resolved_by", sa.Text),
        sa.Column("resolution", sa.Text),
        sa.CheckConstraint("rule IN ('failure_rate', 'pending_payouts', 'processing_delay', 'run_total', "
                           "'gateway_latency', 'webhook_backlog')", name="alerts_rule"),
        sa.CheckConstraint("severity IN ('warning', 'critical')", name="alerts_severity"),
        sa.CheckConstraint("status IN ('firing', 'acknowledged', 'resolved')", name="alerts_status"),
        sa.CheckConstraint("(status = 'resolved') = (resolved_at IS NOT NULL AND resolution IS NOT NULL)",
                           name="alerts_resolved_fields"),
        sa.CheckConstraint("resolution IS NULL OR resolution IN ('cleared', 'operator')", name="alerts_resolution"),
    )
    op.create_index("alerts_one_open_per_rule_key", "alerts", ["rule", "key"], unique=True,
                    postgresql_where=sa.text("status <> 'resolved'"))
    op.create_index("alerts_fired_at", "alerts", ["fired_at"])
    op.create_table(
        "alert_deliveries",
        sa.Column("id", sa.BigInteger, sa.Identity(always=False), primary_key=True),
        sa.Column("alert_id", sa.BigInteger, sa.ForeignKey("alerts.id", ondelete="CASCADE"), nullable=False),
        sa.Column("transition", sa.Text, nullable=False),
        sa.Column("channel", sa.Text, nullable=False),
        sa.Column("target", sa.Text, nullable=False, comment="a webhook URL or an email address"),
        sa.Column("payload", JSONB, nullable=False, comment="the alert as it was at the transition"),
        sa.Column("status", sa.Text, nullable=False, server_default="pending"),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("next_attempt_at", TS, nullable=False),
        sa.Column("last_error", sa.Text, nullable=False, server_default=""),
        sa.Column("sent_at", TS),
        sa.Column("created_at", TS, nullable=False),
        sa.CheckConstraint("transition IN ('fired', 'escalated', 'acknowledged', 'resolved')",
                           name="alert_deliveries_transition"),
        sa.CheckConstraint("channel IN ('webhook', 'email')", name="alert_deliveries_channel"),
        sa.CheckConstraint("status IN ('pending', 'sent', 'given_up')", name="alert_deliveries_status"),
        sa.UniqueConstraint("alert_id", "transition", "channel", "target", name="alert_deliveries_once"),
    )
    op.create_index("alert_deliveries_due", "alert_deliveries", ["next_attempt_at"],
                    postgresql_where=sa.text("status = 'pending'"))
    op.execute(_grant("GRANT"))


def downgrade() -> None:
    op.execute(_grant("REVOKE"))
    op.drop_table("alert_deliveries")
    op.drop_table("alerts")
