"""Partition leases: which instance of a processor owns which partition of its topic, fenced by an epoch.

`partition_leases` holds one row per (group, partition): its owner (NULL when free), the epoch (fencing
token) that grows by one on every claim, and when the lease expires by PostgreSQL's clock (owner and
expiry are NULL after a graceful release; the epoch is kept so the next claim still raises it). A write
made for a partition locks its row FOR SHARE and checks owner, epoch and expiry in the same transaction
(runtime/partition_leases.py, guard()), so a new owner's claim waits until that write is committed.
`partition_members` holds each instance's heartbeat: the live members (expiry still ahead) share the
partitions between them by a deterministic rule, so every member computes the same map.

Revision ID: 0010
Revises: 0009
"""
import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "partition_leases",
        sa.Column("grp", sa.Text, primary_key=True, comment="the group sharing a topic's partitions (a processor)"),
        sa.Column("partition", sa.Integer, primary_key=True),
        sa.Column("owner", sa.Text, nullable=True, comment="the member holding the lease; NULL when released"),
        sa.Column("epoch", sa.BigInteger, nullable=False, server_default="0",
                  comment="fencing token: + 1 on every claim, kept on release"),
        sa.Column("expires_at", TS, nullable=True, comment="by PostgreSQL's now(); NULL when released"),
    )
    op.create_table(
        "partition_members",
        sa.Column("grp", sa.Text, primary_key=True),
        sa.Column("member", sa.Text, primary_key=True, comment="host-pid-random of one instance"),
        sa.Column("expires_at", TS, nullable=False, comment="last heartbeat + ttl: live while in the future"),
    )


def downgrade() -> None:
    for table in ("partition_members", "partition_leases"):
        op.drop_table(table)
