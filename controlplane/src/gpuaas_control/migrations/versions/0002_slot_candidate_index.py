# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The reservation's candidate index: slots by (state, approved, node_id, slot_index).

A reservation takes the first free, approved slot in (node_id, slot_index) order. With only
an index on ``state``, both databases read every free slot and sort them for each
reservation; this index hands them the first one in order (and still serves lookups by
state, its first column).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02
"""

from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade():
    op.create_index('ix_slots_free', 'slots', ['state', 'approved', 'node_id', 'slot_index'])
    op.drop_index('ix_slots_state', 'slots')


def downgrade():
    op.create_index('ix_slots_state', 'slots', ['state'])
    op.drop_index('ix_slots_free', 'slots')
