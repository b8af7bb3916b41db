"""Analyst views over the read models, and the read-only role `ledger_analyst` (docs/analytics.md).

Money stays integer minor units with the exponent beside it; the one conversion to major units
(minor_to_major) is exact numeric arithmetic, never float. Ratios are numeric too.

The role is cluster-wide while these tables live in one schema (tests migrate many schemas of one
database), so it is created only when missing, and the grants name current_schema(). The downgrade
revokes this schema's grants and drops the views, but leaves the role: other schemas or databases of
the cluster may still grant to it, and LOGIN roles of people are members of it; a DBA drops it once no
ledger uses it (DROP ROLE refuses while any grant to it remains anywhere).

Revision ID: 0004
Revises: 0003
"""
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

ROLE = "ledger_analyst"

# What an analyst may SELECT: the read models and their bookkeeping. Not payout_controls nor
# payout_control_history (operations' emergency stop), not event_archive (raw Avro evidence for
# auditors), not alembic_version.
READ_MODEL_TABLES = ("payees", "payee_balances", "earnings", "payout_periods", "payouts", "payout_attempts",
                     "dead_letters", "daily_totals", "projection_heads", "projection_positions")

MINOR_TO_MAJOR = """
CREATE FUNCTION minor_to_major(amount_minor bigint, exponent integer) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$ SELECT round(amount_minor::numeric / (10::numeric ^ exponent), exponent)::text $$
"""

VIEWS = {
    # Earnings lines per payee, currency and UTC calendar month: before commission, fees and payouts.
    "v_earnings_by_payee_month": """
        SELECT payee_id, currency, exponent,
               date_trunc('month', occurred_at AT TIME ZONE 'UTC')::date AS month,
               count(*) FILTER (WHERE kind = 'payment') AS payments,
               coalesce(sum(amount_minor) FILTER (WHERE kind = 'payment'), 0)::bigint AS gross_minor,
               count(*) FILTER (WHERE kind = 'refund') AS refunds,
               coalesce(sum(amount_minor) FILTER (WHERE kind = 'refund'), 0)::bigint AS refunds_minor,
               coalesce(sum(signed_amount_minor) FILTER (WHERE kind IN ('bonus', 'deduction')), 0)::bigint
                   AS adjustments_minor,
               sum(signed_amount_minor)::bigint AS net_minor
        FROM earnings
        GROUP BY payee_id, currency, exponent, date_trunc('month', occurred_at AT TIME ZONE 'UTC')
    """,
    # Attempts per provider, method and reason; a final failure is the last attempt of a failed payout
    # (a settled payout that bounced included: its reason is the payout's, not the settled attempt's).
    "v_payout_failure_rate": """
        WITH classified AS (
            SELECT a.provider, p.method,
                   p.status = 'failed' AND a.attempt = max(a.attempt) OVER (PARTITION BY a.payout_id) AS final_failure,
                   a.outcome, a.reason_code AS attempt_reason, p.reason_code AS payout_reason
            FROM payout_attempts a JOIN payouts p ON p.payout_id = a.payout_id
        ), reasoned AS (
            SELECT provider, method, final_failure, final_failure OR outcome = 'failed' AS failed,
                   CASE WHEN final_failure THEN payout_reason ELSE attempt_reason END AS reason_code
            FROM classified
        )
        SELECT provider, method, reason_code,
               count(*) AS attempts,
               count(*) FILTER (WHERE failed) AS failed_attempts,
               count(*) FILTER (WHERE final_failure) AS final_failures,
               (sum(count(*)) OVER (PARTITION BY provider, method))::bigint AS provider_attempts,
               round(count(*) FILTER (WHERE final_failure)::numeric
                     / sum(count(*)) OVER (PARTITION BY provider, method), 6) AS failure_rate
        FROM reasoned
        GROUP BY provider, method, reason_code
    """,
    # Payouts not finished yet, by how long ago they were requested (requested_at: the close's cutoff).
    "v_pending_payouts_by_age": """
        WITH pending AS (
            SELECT currency, exponent, net_minor, requested_at,
                   CASE WHEN now() - requested_at < interval '1 hour' THEN 1
                        WHEN now() - requested_at < interval '24 hours' THEN 2
                        WHEN now() - requested_at < interval '7 days' THEN 3
                        ELSE 4 END AS bucket_order
            FROM payouts
            WHERE status NOT IN ('settled', 'failed', 'cancelled')
        )
        SELECT currency, exponent, bucket_order,
               (ARRAY['<1h', '1-24h', '1-7d', '>7d'])[bucket_order] AS age_bucket,
               count(*) AS payouts, sum(net_minor)::bigint AS net_minor, min(requested_at) AS oldest_requested_at
        FROM pending
        GROUP BY currency, exponent, bucket_order
    """,
    # Every close (paid or carried) per period and currency. payout_periods has no payee_share: a paid
    # close takes it from its payout; a carried close's net is its own net = share - deductions - fee.
    "v_fees_and_commission_by_period": """
        WITH closes AS (
            SELECT c.period_id, c.currency, c.exponent, c.period_start, c.period_end, c.decision,
                   c.gross_minor, c.fee_minor, c.deductions_minor,
                   CASE WHEN c.decision = 'payout' THEN p.payee_share_minor
                        ELSE c.net_minor + c.deductions_minor + c.fee_minor END AS payee_share_minor,
                   p.net_minor AS payout_net_minor
            FROM payout_periods c LEFT JOIN payouts p ON p.payout_id = c.payout_id
        )
        SELECT period_id, currency, exponent, min(period_start) AS period_start, max(period_end) AS period_end,
               count(*) AS closes,
               count(*) FILTER (WHERE decision = 'payout') AS payouts,
               count(*) FILTER (WHERE decision = 'carried') AS carried,
               sum(gross_minor)::bigint AS gross_minor,
               sum(payee_share_minor)::bigint AS payee_share_minor,
               (sum(gross_minor) - sum(payee_share_minor))::bigint AS commission_minor,
               sum(fee_minor)::bigint AS fee_minor,
               sum(deductions_minor)::bigint AS deductions_minor,
               (sum(payee_share_minor) - sum(deductions_minor) - sum(fee_minor))::bigint AS net_minor,
               coalesce(sum(payout_net_minor), 0)::bigint AS payout_net_minor
        FROM closes
        GROUP BY period_id, currency, exponent
    """,
    # daily_totals with exact major-unit text beside every amount.
    "v_daily_totals": """
        SELECT day, currency, exponent,
               payments, payments_minor, minor_to_major(payments_minor, exponent) AS payments_major,
               refunds, refunds_minor, minor_to_major(refunds_minor, exponent) AS refunds_major,
               adjustments_minor, minor_to_major(adjustments_minor, exponent) AS adjustments_major,
               payouts_requested, payouts_requested_minor,
               minor_to_major(payouts_requested_minor, exponent) AS payouts_requested_major,
               payouts_settled, payouts_settled_minor,
               minor_to_major(payouts_settled_minor, exponent) AS payouts_settled_major,
               payouts_failed, payouts_failed_minor,
               minor_to_major(payouts_failed_minor, exponent) AS payouts_failed_major,
               fees_minor, minor_to_major(fees_minor, exponent) AS fees_major
        FROM daily_totals
    """,
}

# Idempotent across the schemas of one cluster; a concurrent migration elsewhere may create it between
# the check and the CREATE (unique_violation). A user without CREATEROLE gets a message saying what to do.
CREATE_ROLE = f"""
DO $$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = '{ROLE}') THEN
    BEGIN
      CREATE ROLE {ROLE} NOLOGIN;
    EXCEPTION
      WHEN duplicate_object OR unique_violation THEN NULL;
      WHEN insufficient_privilege THEN
        RAISE EXCEPTION 'role {ROLE} does not exist and % may not create roles: a DBA must run '
                        '"CREATE ROLE {ROLE} NOLOGIN", then migrate again', current_user;
    END;
  END IF;
END $$;
"""


def _relations() -> list[str]:
    return [*READ_MODEL_TABLES, *VIEWS]


def _grants(verb: str) -> str:
    """GRANT or REVOKE this migration's privileges, naming the schema it runs in."""
    to_from = "TO" if verb == "GRANT" else "FROM"
    names = ", ".join(f"'{name}'" for name in _relations())
    return f"""
DO $$
DECLARE
  relation text;
BEGIN
  EXECUTE format('{verb} USAGE ON SCHEMA %I {to_from} {ROLE}', current_schema());
  FOREACH relation IN ARRAY ARRAY[{names}] LOOP
    EXECUTE format('{verb} SELECT ON %I.%I {to_from} {ROLE}', current_schema(), relation);
  END LOOP;
  EXECUTE format('{verb} EXECUTE ON FUNCTION %I.minor_to_major(bigint, integer) {to_from} {ROLE}', current_schema());
END $$;
"""


def upgrade() -> None:
    op.execute(MINOR_TO_MAJOR)
    for name, query in VIEWS.items():
        op.execute(f"CREATE VIEW {name} AS {query}")
    op.execute(CREATE_ROLE)
    op.execute(_grants("GRANT"))


def downgrade() -> None:
    op.execute(_grants("REVOKE"))
    for name in reversed(list(VIEWS)):
        op.execute(f"DROP VIEW {name}")
    op.execute("DROP FUNCTION minor_to_major(bigint, integer)")
