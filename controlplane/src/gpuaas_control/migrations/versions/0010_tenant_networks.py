# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Tenant networks: each tenant's VNI, InfiniBand partition key, RoCE VLAN and fabric subnet
(tenant_networks, unique across tenants), each allocation's host number in its tenant's
fabric subnet (allocations.fabric_host, unique among the tenant's live allocations) and each
node's underlay address for the overlay (nodes.underlay_ip).

Tenants and allocations made before have none: a tenant gets its record with its next
allocation; an allocation made before keeps running without a fabric address.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

from gpuaas_control.models import UTCDateTime

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None

_ACTIVE_SQL = "state IN ('requested', 'provisioning', 'running', 'releasing')"


def upgrade():
    op.create_table(
        'tenant_networks',
        sa.Column('tenant_id', sa.String(63), sa.ForeignKey('tenants.id'), primary_key=True),
        sa.Column('vni', sa.Integer, nullable=False),
        sa.Column('pkey', sa.Integer, nullable=True),
        sa.Column('vlan', sa.Integer, nullable=True),
        sa.Column('fabric_subnet', sa.String(18), nullable=True),
        sa.Column('created_at', UTCDateTime(), nullable=False),
        *(sa.UniqueConstraint(column, name='uq_tenant_networks_' + column)
          for column in ('vni', 'pkey', 'vlan', 'fabric_subnet')),
    )
    with op.batch_alter_table('allocations') as batch:
        batch.add_column(sa.Column('fabric_host', sa.Integer, nullable=True))
    op.create_index('uq_allocations_active_fabric_host', 'allocations', ['tenant_id', 'fabric_host'],
                    unique=True, sqlite_where=sa.text(_ACTIVE_SQL), postgresql_where=sa.text(_ACTIVE_SQL))
    with op.batch_alter_table('nodes') as batch:
        batch.add_column(sa.Column('underlay_ip', sa.String(15), nullable=True))


def downgrade():
    with op.batch_alter_table('nodes') as batch:
        batch.drop_column('underlay_ip')
    op.drop_index('uq_allocations_active_fabric_host', table_name='allocations')
    with op.batch_alter_table('allocations') as batch:
        batch.drop_column('fabric_host')
    op.drop_table('tenant_networks')
