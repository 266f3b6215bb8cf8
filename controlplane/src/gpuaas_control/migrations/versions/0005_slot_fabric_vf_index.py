# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Each slot's fabric VF index: which VF of its fabric PF is the slot's.

Slots now share a fabric PF where a host has fewer PFs than GPUs, each with a VF of its own:
the k-th slot paired with a PF has its VF k. The control plane keeps the index discovery gave
(``fabric_vf_index``) to show it and to hand the node the record its slot_check accepts. Slots
approved before have NULL (each had VF 0 of its own PF; slot_check finds the index from the
VF's address), until the node's map is approved again.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('slots') as batch:
        batch.add_column(sa.Column('fabric_vf_index', sa.Integer, nullable=True))


def downgrade():
    with op.batch_alter_table('slots') as batch:
        batch.drop_column('fabric_vf_index')
