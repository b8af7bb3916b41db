"""Provider breakers: a circuit breaker that opens in one transfer processor instance opens in all of them.

One row per provider: when its breaker last opened, and which instance opened it. Partitioned transfer
processors (`ledger transfers --partitioned`) write the row when their breaker for that provider opens
and read the rows about once a second; a row opened less than the cooldown ago opens their own breaker
too, from the same moment, so a provider in trouble gets its pause from the whole ledger, not from one
instance while the others keep calling it.

Revision ID: 0012
Revises: 0011
"""
import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "provider_breakers",
        sa.Column("provider", sa.Text, primary_key=True),
        sa.Column("opened_at", sa.DateTime(timezone=True), nullable=False,
                  comment="when the breaker last opened (the opening instance's clock)"),
        sa.Column("opened_by", sa.Text, nullable=False, comment="the transfer processor instance that opened it"),
    )


def downgrade() -> None:
    op.drop_table("provider_breakers")
