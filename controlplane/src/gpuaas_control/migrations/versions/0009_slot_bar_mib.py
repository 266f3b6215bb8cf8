# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Each slot's 64-bit BARs: bar_mib, what its devices bring into the VM's address space.

Discovery gives each slot ``bar_mib`` (its GPU's, companions', NVMe's and VF's 64-bit BARs);
the control plane keeps it to show each slot's capacity and to hand the node the record its
slot_check compares with the devices. Slots approved before have none (NULL): slot_check
reads the devices either way.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('slots') as batch:
        batch.add_column(sa.Column('bar_mib', sa.Integer, nullable=True))


def downgrade():
    with op.batch_alter_table('slots') as batch:
        batch.drop_column('bar_mib')
