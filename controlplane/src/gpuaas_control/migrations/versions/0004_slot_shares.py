# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Each slot's share of its NUMA node: vcpus, memory_mib and the host's CPUs.

Discovery now gives each slot its own CPU slice (``cpulist``, already a column) and memory
share; the control plane keeps them to reserve only slots a shape fits, to show each slot's
capacity, and to hand the node the record its slot_check accepts. Slots approved before have
none (NULL): no shape fits them until the node's map is approved again.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('slots') as batch:
        batch.add_column(sa.Column('vcpus', sa.Integer, nullable=True))
        batch.add_column(sa.Column('memory_mib', sa.Integer, nullable=True))
        batch.add_column(sa.Column('host_cpulist', sa.String(255), nullable=True))


def downgrade():
    with op.batch_alter_table('slots') as batch:
        batch.drop_column('host_cpulist')
        batch.drop_column('memory_mib')
        batch.drop_column('vcpus')
