# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Absent slots: an approved slot whose GPU is gone from the bus (or replaced) says why.

Discovery now keeps every approved slot's index with its GPU address, and approval reports an
approved slot whose GPU is gone as absent instead of refusing the whole map. The slot keeps
its row (id, MAC, IP, approval); ``absent_reason`` says why it cannot be used, reservation
skips it, and the allocation holding it reports it. NULL: the slot's GPU is there.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('slots') as batch:
        batch.add_column(sa.Column('absent_reason', sa.Text, nullable=True))


def downgrade():
    with op.batch_alter_table('slots') as batch:
        batch.drop_column('absent_reason')
