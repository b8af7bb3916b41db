"""Daily totals per partition of ledger.events: `daily_totals_by_partition` (the partition in its key) and
`daily_totals` a view summing it, one row per UTC day and currency as before; `v_daily_totals` on top.

Why: partitioned projectors (`ledger projector --partitioned`) each fold some partitions of ledger.events
only, and a total over every payee is nobody's to write. Each fold writes the rows of its partitions; the
single projector writes the same rows (it knows the partition of every event it reads), so a ledger
moves between the two modes without a rebuild.

The totals stored before are sums over all partitions and cannot be split: they go, with the projector's
heads, checkpoints and stored payouts (the checkpoint's state format changes too). The projector's next
start therefore folds the whole ledger again and writes every row (absolute values: the other tables
get the values they have); until it has caught up, daily_totals is incomplete. Downgrade sums the
partitions back into a table.

Revision ID: 0013
Revises: 0012
"""
import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

ROLE = "ledger_analyst"  # migration 0004
COUNTS = ("payments", "payments_minor", "refunds", "refunds_minor", "adjustments_minor", "payouts_requested",
          "payouts_requested_minor", "payouts_settled", "payouts_settled_minor", "payouts_failed",
          "payouts_failed_minor", "fees_minor")
SUMS = ", ".join(f"sum({column})::bigint AS {column}" for column in COUNTS)
DAILY_TOTALS = f"""
    SELECT day, currency, exponent, {SUMS}
    FROM daily_totals_by_partition
    GROUP BY day, currency, exponent
"""
V_DAILY_TOTALS = """
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
"""
PROJECTOR_STATE = ("DELETE FROM {table} WHERE processor = 'projector:read-models' "
                   "OR processor LIKE 'projector:read-models:p%'")


def _daily_table(name: str, by_partition: bool) -> None:
    op.create_table(
        name,
        sa.Column("day", sa.Date, primary_key=True, comment="UTC day of occurred_at (earnings) or of the outcome"),
        sa.Column("currency", sa.Text, primary_key=True),
        *([sa.Column("partition", sa.Integer, primary_key=True,
                     comment="the ledger.events partition of the events counted (their payees')")]
          if by_partition else []),
        sa.Column("exponent", sa.SmallInteger, nullable=False),
        *(sa.Column(column, sa.BigInteger, nullable=False) for column in COUNTS),
    )


def _grant(*relations: str) -> None:
    """SELECT for the analysts' role, naming the schema this runs in (as migration 0004 does)."""
    for relation in relations:
        op.execute(f"DO $$ BEGIN EXECUTE format('GRANT SELECT ON %I.{relation} TO {ROLE}', current_schema()); "
                   "END $$")


def upgrade() -> None:
    op.execute("DROP VIEW v_daily_totals")
    op.drop_table("daily_totals")
    _daily_table("daily_totals_by_partition", by_partition=True)
    op.execute(f"CREATE VIEW daily_totals AS {DAILY_TOTALS}")
    op.execute(f"CREATE VIEW v_daily_totals AS {V_DAILY_TOTALS}")
    _grant("daily_totals_by_partition", "daily_totals", "v_daily_totals")
    op.execute("DELETE FROM projection_heads")  # the projector's next start writes every row again
    for table in ("processor_checkpoints", "processor_entities"):
        op.execute(PROJECTOR_STATE.format(table=table))


def downgrade() -> None:
    op.execute("DROP VIEW v_daily_totals")
    op.execute("DROP VIEW daily_totals")
    _daily_table("daily_totals", by_partition=False)
    columns = ", ".join(COUNTS)
    op.execute(f"INSERT INTO daily_totals (day, currency, exponent, {columns}) "
               f"SELECT day, currency, exponent, {SUMS} FROM daily_totals_by_partition "
               "GROUP BY day, currency, exponent")
    op.drop_table("daily_totals_by_partition")
    op.execute(f"CREATE VIEW v_daily_totals AS {V_DAILY_TOTALS}")
    _grant("daily_totals", "v_daily_totals")
    for table in ("processor_checkpoints", "processor_entities"):  # of a state format the older code cannot read
        op.execute(PROJECTOR_STATE.format(table=table))
