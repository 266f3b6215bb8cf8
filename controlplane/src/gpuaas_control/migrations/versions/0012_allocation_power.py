# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""An allocation's power: stop, start, reboot and the serial console (issue 18, item 5).

* The states stopping, stopped, starting and rebooting hold their slot like running: the
  partial unique indexes over active allocations (one per slot; a tenant's fabric hosts, 0010)
  are made again over them.
* ``usage_records.stopped_periods``: when the VM was stopped, so running time is not billed
  while it is.
* ``allocation_console``: the newest part of each allocation's console log as last read from
  its node, and when its tenant last asked for it.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

from gpuaas_control.models import UTCDateTime

revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None

OLD_ACTIVE = "state IN ('requested', 'provisioning', 'running', 'releasing')"
NEW_ACTIVE = ("state IN ('requested', 'provisioning', 'running', 'stopping', 'stopped', 'starting', "
              "'rebooting', 'releasing')")


def _active_index(where):
    for name, columns in (('uq_allocations_active_slot', ['slot_id']),
                          ('uq_allocations_active_fabric_host', ['tenant_id', 'fabric_host'])):
        op.drop_index(name, table_name='allocations')
        op.create_index(name, 'allocations', columns, unique=True,
                        sqlite_where=sa.text(where), postgresql_where=sa.text(where))


def upgrade():
    _active_index(NEW_ACTIVE)
    with op.batch_alter_table('usage_records') as batch:
        batch.add_column(sa.Column('stopped_periods', sa.JSON, nullable=True))
    op.create_table(
        'allocation_console',
        sa.Column('allocation_id', sa.String(40), sa.ForeignKey('allocations.id'), primary_key=True),
        sa.Column('requested_at', UTCDateTime(), nullable=False),
        sa.Column('collected_at', UTCDateTime(), nullable=True),
        sa.Column('text', sa.Text, nullable=True),
        sa.Column('size', sa.Integer, nullable=True),
        sa.Column('truncated', sa.Boolean, nullable=True),
        sa.Column('modified_at', UTCDateTime(), nullable=True),
        sa.Column('error', sa.Text, nullable=True),
    )


def downgrade():
    op.drop_table('allocation_console')
    with op.batch_alter_table('usage_records') as batch:
        batch.drop_column('stopped_periods')
    _active_index(OLD_ACTIVE)
