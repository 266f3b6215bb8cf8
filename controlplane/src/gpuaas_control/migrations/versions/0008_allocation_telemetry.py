# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Each allocation's telemetry as last collected from its node's sink: the guest agent's last
health sample and its slot acceptance result (GET /v1/allocations/{id}/telemetry).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

from gpuaas_control.models import UTCDateTime

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        'allocation_telemetry',
        sa.Column('allocation_id', sa.String(40), sa.ForeignKey('allocations.id'), primary_key=True),
        sa.Column('collected_at', UTCDateTime(), nullable=False),
        sa.Column('samples', sa.Integer, nullable=False),
        sa.Column('first_at', UTCDateTime(), nullable=True),
        sa.Column('last_at', UTCDateTime(), nullable=True),
        sa.Column('health', sa.JSON, nullable=True),
        sa.Column('health_at', UTCDateTime(), nullable=True),
        sa.Column('acceptance_status', sa.String(16), nullable=True),
        sa.Column('acceptance', sa.JSON, nullable=True),
        sa.Column('acceptance_at', UTCDateTime(), nullable=True),
        sa.Column('error', sa.Text, nullable=True),
    )


def downgrade():
    op.drop_table('allocation_telemetry')
