# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The control plane over a fleet: node reachability and cleanup jobs.

A node the worker cannot reach (ansible-runner's ``runner_on_unreachable``) is marked
unreachable (``unreachable_since``, ``unreachable_error``), skipped by reservation (through
the partial index ``ix_nodes_unreachable``, as drained nodes are) and probed on a backoff
(``probe_failures``, ``next_probe_at``) until it answers. An outbox job may name the slot it
is for (``outbox.slot_id``): the release of a slot an allocation left on such a node, which
keeps that slot blocked until it ran. Existing nodes are reachable; existing jobs are for
their allocation's slot.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

from gpuaas_control.models import UTCDateTime

revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('nodes') as batch:
        batch.add_column(sa.Column('unreachable_since', UTCDateTime(), nullable=True))
        batch.add_column(sa.Column('unreachable_error', sa.Text, nullable=True))
        batch.add_column(sa.Column('probe_failures', sa.Integer, nullable=False, server_default='0'))
        batch.add_column(sa.Column('next_probe_at', UTCDateTime(), nullable=True))
    op.create_index('ix_nodes_unreachable', 'nodes', ['id'],
                    sqlite_where=sa.text('unreachable_since IS NOT NULL'),
                    postgresql_where=sa.text('unreachable_since IS NOT NULL'))
    with op.batch_alter_table('outbox') as batch:
        batch.add_column(sa.Column('slot_id', sa.String(80), nullable=True))
        batch.create_foreign_key('fk_outbox_slot_id_slots', 'slots', ['slot_id'], ['id'])


def downgrade():
    with op.batch_alter_table('outbox') as batch:
        batch.drop_constraint('fk_outbox_slot_id_slots', type_='foreignkey')
        batch.drop_column('slot_id')
    op.drop_index('ix_nodes_unreachable', 'nodes')
    with op.batch_alter_table('nodes') as batch:
        batch.drop_column('next_probe_at')
        batch.drop_column('probe_failures')
        batch.drop_column('unreachable_error')
        batch.drop_column('unreachable_since')
