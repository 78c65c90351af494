"""Download counts on adapters and versions.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("adapters") as batch_op:
        batch_op.add_column(sa.Column("downloads", sa.Integer(), nullable=False, server_default="0"))
    with op.batch_alter_table("versions") as batch_op:
        batch_op.add_column(sa.Column("downloads", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("versions") as batch_op:
        batch_op.drop_column("downloads")
    with op.batch_alter_table("adapters") as batch_op:
        batch_op.drop_column("downloads")
