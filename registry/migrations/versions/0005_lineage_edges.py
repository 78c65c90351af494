"""Lineage edges: each version's registry parents in a table indexed by the parent, so the
children of an adapter are an index lookup instead of a scan of every stored lineage.

Existing versions are backfilled from their stored lineage with the same rule publishing
uses (``hub.lineage.parent_edges``).

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import json

import sqlalchemy as sa
from alembic import op

from lorahive.hub.lineage import parent_edges

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "lineage_edges",
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("parent_repo", sa.String(length=129), nullable=False),
        sa.Column("parent_version", sa.String(length=64), nullable=True),
        sa.Column("weight", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(["version_id"], ["versions.id"]),
        sa.PrimaryKeyConstraint("version_id", "parent_repo"),
    )
    with op.batch_alter_table("lineage_edges") as batch_op:
        batch_op.create_index(batch_op.f("ix_lineage_edges_parent_repo"), ["parent_repo"],
                              unique=False)
    conn = op.get_bind()
    edges = sa.table("lineage_edges", sa.column("version_id"), sa.column("parent_repo"),
                     sa.column("parent_version"), sa.column("weight"))
    rows = []
    for vid, raw in conn.execute(sa.text(
            "SELECT id, lineage FROM versions WHERE lineage IS NOT NULL")):
        lineage = json.loads(raw) if isinstance(raw, str | bytes) else raw
        rows += [{"version_id": vid, "parent_repo": repo, "parent_version": version,
                  "weight": weight} for repo, version, weight in parent_edges(lineage)]
    if rows:
        conn.execute(edges.insert(), rows)


def downgrade() -> None:
    with op.batch_alter_table("lineage_edges") as batch_op:
        batch_op.drop_index(batch_op.f("ix_lineage_edges_parent_repo"))
    op.drop_table("lineage_edges")
