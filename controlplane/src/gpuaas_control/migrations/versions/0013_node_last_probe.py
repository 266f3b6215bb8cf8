# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""When the worker last probed an unreachable node (``nodes.last_probe_at``).

The inventory (``GET /v1/inventory``, the inventory plugin's host vars) and the node views
show it beside ``unreachable_since`` and ``next_probe_at``, so an operator sees whether the
worker is still asking. NULL: never probed (it answers, or it has just stopped answering).

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

from gpuaas_control.models import UTCDateTime

revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('nodes') as batch:
        batch.add_column(sa.Column('last_probe_at', UTCDateTime(), nullable=True))


def downgrade():
    with op.batch_alter_table('nodes') as batch:
        batch.drop_column('last_probe_at')
