# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The reservation's candidate indexes: slots by (state, approved, node_id, slot_index), and
the drained nodes.

A reservation takes the first free, approved slot in (node_id, slot_index) order on a node
that is not drained. With only an index on ``state``, both databases read every free slot
and sorted them for each reservation; ``ix_slots_free`` hands them the first one in order
(and still serves lookups by state, its first column), and ``ix_nodes_drained`` (partial:
only drained nodes) makes the set of nodes to skip a lookup instead of a scan of nodes.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade():
    op.create_index('ix_slots_free', 'slots', ['state', 'approved', 'node_id', 'slot_index'])
    op.drop_index('ix_slots_state', 'slots')
    op.create_index('ix_nodes_drained', 'nodes', ['id'], sqlite_where=sa.text('schedulable = 0'),
                    postgresql_where=sa.text('NOT schedulable'))


def downgrade():
    op.drop_index('ix_nodes_drained', 'nodes')
    op.create_index('ix_slots_state', 'slots', ['state'])
    op.drop_index('ix_slots_free', 'slots')
