"""Content digest of each version (what a publish compares to find identical files).

Existing versions get the digest of their files without ``README.md``: before this revision
the registry generated that card whenever the publisher sent none.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import hashlib
import json

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("versions") as batch_op:
        batch_op.add_column(sa.Column("content_sha256", sa.String(length=64), nullable=True))
        batch_op.create_index(batch_op.f("ix_versions_content_sha256"), ["content_sha256"],
                              unique=False)
    conn = op.get_bind()
    files: dict[int, list[list]] = {}
    for vid, path, sha, size in conn.execute(sa.text(
            "SELECT version_id, path, sha256, size FROM files")):
        if path != "README.md":
            files.setdefault(vid, []).append([path, sha, int(size)])
    for vid, rows in files.items():
        digest = hashlib.sha256(json.dumps(sorted(rows), separators=(",", ":")).encode())
        conn.execute(sa.text("UPDATE versions SET content_sha256 = :d WHERE id = :i"),
                     {"d": digest.hexdigest(), "i": vid})


def downgrade() -> None:
    with op.batch_alter_table("versions") as batch_op:
        batch_op.drop_index(batch_op.f("ix_versions_content_sha256"))
        batch_op.drop_column("content_sha256")
