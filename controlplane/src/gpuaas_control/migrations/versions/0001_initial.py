# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The first schema: tenants, tokens, nodes, slots, allocations, outbox, events, usage,
and the append-only, hash-chained audit ledger.

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

from gpuaas_control.models import UTCDateTime

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None

ACTIVE = "state IN ('requested', 'provisioning', 'running', 'releasing')"

PG_APPEND_ONLY = """
CREATE FUNCTION gpuaas_audit_append_only() RETURNS trigger AS $$
BEGIN
  RAISE EXCEPTION 'audit_log is append-only: % is refused', TG_OP;
END
$$ LANGUAGE plpgsql
"""


def upgrade():
    op.create_table(
        'tenants',
        sa.Column('id', sa.String(63), primary_key=True),
        sa.Column('max_gpus', sa.Integer, nullable=False),
        sa.Column('created_at', UTCDateTime, nullable=False),
    )
    op.create_table(
        'api_tokens',
        sa.Column('id', sa.Integer, primary_key=True, autoincrement=True),
        sa.Column('token_hash', sa.String(64), nullable=False, unique=True),
        sa.Column('role', sa.String(16), nullable=False),
        sa.Column('tenant_id', sa.String(63), sa.ForeignKey('tenants.id'), nullable=True),
        sa.Column('name', sa.String(63), nullable=False),
        sa.Column('created_at', UTCDateTime, nullable=False),
        sa.Column('revoked_at', UTCDateTime, nullable=True),
    )
    op.create_table(
        'nodes',
        sa.Column('id', sa.String(63), primary_key=True),
        sa.Column('schedulable', sa.Boolean, nullable=False),
        sa.Column('drain_reason', sa.Text, nullable=True),
        sa.Column('discovery', sa.JSON, nullable=True),
        sa.Column('discovered_at', UTCDateTime, nullable=True),
        sa.Column('approved_slots', sa.JSON, nullable=True),
        sa.Column('approved_at', UTCDateTime, nullable=True),
        sa.Column('created_at', UTCDateTime, nullable=False),
        sa.Column('updated_at', UTCDateTime, nullable=False),
    )
    op.create_table(
        'slots',
        sa.Column('id', sa.String(80), primary_key=True),
        sa.Column('node_id', sa.String(63), sa.ForeignKey('nodes.id'), nullable=False),
        sa.Column('slot_index', sa.Integer, nullable=False),
        sa.Column('gpu_address', sa.String(32), nullable=False),
        sa.Column('gpu_model', sa.String(16), nullable=False),
        sa.Column('numa_node', sa.Integer, nullable=False),
        sa.Column('cpulist', sa.String(255), nullable=True),
        sa.Column('companions', sa.JSON, nullable=False),
        sa.Column('nvme_address', sa.String(32), nullable=True),
        sa.Column('fabric_pf_address', sa.String(32), nullable=True),
        sa.Column('fabric_vf_pci_address', sa.String(32), nullable=True),
        sa.Column('mac', sa.String(17), nullable=False),
        sa.Column('ip', sa.String(15), nullable=False),
        sa.Column('capacity_metadata', sa.JSON, nullable=False),
        sa.Column('fingerprint', sa.JSON, nullable=True),
        sa.Column('destructive_wipe_policy', sa.String(32), nullable=False),
        sa.Column('approved', sa.Boolean, nullable=False),
        sa.Column('approved_by', sa.String(255), nullable=True),
        sa.Column('approved_at', UTCDateTime, nullable=True),
        sa.Column('state', sa.String(16), nullable=False),
        sa.Column('allocation_id', sa.String(40), nullable=True),
        sa.Column('state_reason', sa.Text, nullable=True),
        sa.Column('updated_at', UTCDateTime, nullable=False),
        sa.UniqueConstraint('node_id', 'slot_index', name='uq_slots_node_index'),
    )
    op.create_index('ix_slots_state', 'slots', ['state'])
    op.create_table(
        'allocations',
        sa.Column('id', sa.String(40), primary_key=True),
        sa.Column('tenant_id', sa.String(63), sa.ForeignKey('tenants.id'), nullable=False),
        sa.Column('slot_id', sa.String(80), sa.ForeignKey('slots.id'), nullable=False),
        sa.Column('node_id', sa.String(63), sa.ForeignKey('nodes.id'), nullable=False),
        sa.Column('state', sa.String(16), nullable=False),
        sa.Column('idempotency_key', sa.String(64), nullable=True),
        sa.Column('image', sa.String(255), nullable=False),
        sa.Column('image_checksum', sa.String(80), nullable=False),
        sa.Column('image_format', sa.String(8), nullable=False),
        sa.Column('ssh_keys', sa.JSON, nullable=False),
        sa.Column('vcpus', sa.Integer, nullable=False),
        sa.Column('memory_mib', sa.Integer, nullable=False),
        sa.Column('disk_gib', sa.Integer, nullable=False),
        sa.Column('hostname', sa.String(63), nullable=True),
        sa.Column('request', sa.JSON, nullable=False),
        sa.Column('mac', sa.String(17), nullable=False),
        sa.Column('address', sa.String(15), nullable=True),
        sa.Column('ssh', sa.JSON, nullable=True),
        sa.Column('telemetry_token', sa.String(255), nullable=True),
        sa.Column('hostdevs_attached', sa.Boolean, nullable=True),
        sa.Column('timings', sa.JSON, nullable=False),
        sa.Column('error', sa.Text, nullable=True),
        sa.Column('created_at', UTCDateTime, nullable=False),
        sa.Column('updated_at', UTCDateTime, nullable=False),
        sa.Column('running_at', UTCDateTime, nullable=True),
        sa.Column('release_requested_at', UTCDateTime, nullable=True),
        sa.Column('ended_at', UTCDateTime, nullable=True),
        sa.UniqueConstraint('tenant_id', 'idempotency_key', name='uq_allocations_idempotency'),
    )
    op.create_index('uq_allocations_active_slot', 'allocations', ['slot_id'], unique=True,
                    sqlite_where=sa.text(ACTIVE), postgresql_where=sa.text(ACTIVE))
    op.create_index('ix_allocations_tenant_state', 'allocations', ['tenant_id', 'state'])
    op.create_table(
        'outbox',
        sa.Column('id', sa.Integer, primary_key=True, autoincrement=True),
        sa.Column('allocation_id', sa.String(40), sa.ForeignKey('allocations.id'), nullable=False),
        sa.Column('kind', sa.String(16), nullable=False),
        sa.Column('status', sa.String(16), nullable=False),
        sa.Column('attempts', sa.Integer, nullable=False),
        sa.Column('available_at', UTCDateTime, nullable=False),
        sa.Column('claimed_by', sa.String(128), nullable=True),
        sa.Column('claim_token', sa.String(32), nullable=True),
        sa.Column('lease_expires_at', UTCDateTime, nullable=True),
        sa.Column('last_error', sa.Text, nullable=True),
        sa.Column('created_at', UTCDateTime, nullable=False),
        sa.Column('updated_at', UTCDateTime, nullable=False),
        sa.Column('finished_at', UTCDateTime, nullable=True),
    )
    op.create_index('ix_outbox_status_available', 'outbox', ['status', 'available_at'])
    op.create_index('ix_outbox_allocation', 'outbox', ['allocation_id'])
    op.create_table(
        'events',
        sa.Column('id', sa.Integer, primary_key=True, autoincrement=True),
        sa.Column('allocation_id', sa.String(40), sa.ForeignKey('allocations.id'), nullable=False),
        sa.Column('at', UTCDateTime, nullable=False),
        sa.Column('kind', sa.String(16), nullable=False),
        sa.Column('message', sa.Text, nullable=False),
        sa.Column('data', sa.JSON, nullable=False),
    )
    op.create_index('ix_events_allocation', 'events', ['allocation_id', 'id'])
    op.create_table(
        'usage_records',
        sa.Column('id', sa.Integer, primary_key=True, autoincrement=True),
        sa.Column('allocation_id', sa.String(40), sa.ForeignKey('allocations.id'),
                  nullable=False, unique=True),
        sa.Column('tenant_id', sa.String(63), sa.ForeignKey('tenants.id'), nullable=False),
        sa.Column('slot_id', sa.String(80), nullable=False),
        sa.Column('node_id', sa.String(63), nullable=False),
        sa.Column('gpu_model', sa.String(16), nullable=False),
        sa.Column('gpus', sa.Integer, nullable=False),
        sa.Column('allocated_start', UTCDateTime, nullable=False),
        sa.Column('allocated_end', UTCDateTime, nullable=True),
        sa.Column('running_start', UTCDateTime, nullable=True),
        sa.Column('running_end', UTCDateTime, nullable=True),
    )
    op.create_index('ix_usage_tenant', 'usage_records', ['tenant_id'])
    op.create_table(
        'audit_log',
        sa.Column('seq', sa.Integer, primary_key=True, autoincrement=False),
        sa.Column('at', UTCDateTime, nullable=False),
        sa.Column('actor', sa.String(128), nullable=False),
        sa.Column('role', sa.String(16), nullable=False),
        sa.Column('action', sa.String(64), nullable=False),
        sa.Column('target_type', sa.String(32), nullable=False),
        sa.Column('target_id', sa.String(128), nullable=False),
        sa.Column('before', sa.JSON, nullable=True),
        sa.Column('after', sa.JSON, nullable=True),
        sa.Column('prev_hash', sa.String(64), nullable=False, unique=True),
        sa.Column('hash', sa.String(64), nullable=False, unique=True),
    )
    op.create_table(
        'audit_head',
        sa.Column('id', sa.Integer, primary_key=True, autoincrement=False),
        sa.Column('seq', sa.Integer, nullable=False),
        sa.Column('hash', sa.String(64), nullable=False),
    )
    op.execute(sa.text("INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, '%s')" % ('0' * 64)))

    # Append-only: the database itself refuses to change or remove an audit entry.
    if op.get_bind().dialect.name == 'postgresql':
        op.execute(sa.text(PG_APPEND_ONLY))
        op.execute(sa.text('CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON '
                           'audit_log FOR EACH ROW EXECUTE FUNCTION gpuaas_audit_append_only()'))
        op.execute(sa.text('CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log '
                           'FOR EACH STATEMENT EXECUTE FUNCTION gpuaas_audit_append_only()'))
    else:
        for verb in ('UPDATE', 'DELETE'):
            op.execute(sa.text(
                'CREATE TRIGGER audit_log_no_%s BEFORE %s ON audit_log BEGIN '
                "SELECT RAISE(ABORT, 'audit_log is append-only: %s is refused'); END"
                % (verb.lower(), verb, verb)))


def downgrade():
    if op.get_bind().dialect.name == 'postgresql':
        op.execute(sa.text('DROP TRIGGER audit_log_no_truncate ON audit_log'))
        op.execute(sa.text('DROP TRIGGER audit_log_append_only ON audit_log'))
        op.execute(sa.text('DROP FUNCTION gpuaas_audit_append_only()'))
    for table in ('audit_head', 'audit_log', 'usage_records', 'events', 'outbox',
                  'allocations', 'slots', 'nodes', 'api_tokens', 'tenants'):
        op.drop_table(table)
