# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The schema. Alembic's migrations (``migrations/versions``) create exactly this; a test
compares the two.

Safety nets that hold even if the code above them is wrong:

* ``allocations``: a partial unique index on ``slot_id`` over the active states, so a slot
  can never hold two live allocations;
* ``slots``: ``(node_id, slot_index)`` unique;
* ``audit_log``: ``prev_hash`` unique (the chain cannot fork) and triggers refusing UPDATE
  and DELETE (created by the migration).
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

# Allocation states. requested -> provisioning -> running -> releasing -> released;
# failed when provisioning gave up and the slot was handed back (or blocked). A running
# allocation's VM is stopped, started and rebooted by its tenant (lifecycle.POWER):
# running -> stopping -> stopped -> starting -> running, running -> rebooting -> running;
# the slot stays the allocation's throughout.
REQUESTED = 'requested'
PROVISIONING = 'provisioning'
RUNNING = 'running'
STOPPING = 'stopping'
STOPPED = 'stopped'
STARTING = 'starting'
REBOOTING = 'rebooting'
RELEASING = 'releasing'
RELEASED = 'released'
FAILED = 'failed'
POWER_STATES = (STOPPING, STOPPED, STARTING, REBOOTING)
ALLOCATION_STATES = (REQUESTED, PROVISIONING, RUNNING) + POWER_STATES + (RELEASING, RELEASED, FAILED)
ACTIVE_STATES = (REQUESTED, PROVISIONING, RUNNING) + POWER_STATES + (RELEASING,)
TERMINAL_STATES = (RELEASED, FAILED)

# Slot states: free (schedulable when approved and its node is not drained), reserved (an
# active allocation holds it), blocked (a release could not finish: an operator must look).
SLOT_FREE = 'free'
SLOT_RESERVED = 'reserved'
SLOT_BLOCKED = 'blocked'
SLOT_STATES = (SLOT_FREE, SLOT_RESERVED, SLOT_BLOCKED)

# Outbox job kinds and statuses.
JOB_ALLOCATE = 'allocate'
JOB_RELEASE = 'release'
# A running allocation's VM: the node's stop, start and reboot playbooks (slot_power).
JOB_STOP = 'stop'
JOB_START = 'start'
JOB_REBOOT = 'reboot'
POWER_JOBS = (JOB_STOP, JOB_START, JOB_REBOOT)
# A tenant's new overlay plan for one of its nodes (networks.announce): the allocation is one of
# the tenant's on that node, the job's carrier; no slot is touched.
JOB_NETWORK = 'network'
JOB_PENDING = 'pending'
JOB_RUNNING = 'running'
JOB_DONE = 'done'
JOB_FAILED = 'failed'
JOB_CANCELLED = 'cancelled'

ROLE_OPERATOR = 'operator'
ROLE_TENANT = 'tenant'
# Reads the operator views (GET) and nothing else: for the inventory plugin, dashboards and
# AWX, which need the slot table but must not change it (deps.get_actor refuses it any other
# method, deps.get_operator every operator route that acts).
ROLE_READER = 'reader'
ROLES = (ROLE_OPERATOR, ROLE_READER, ROLE_TENANT)
# The roles that see the operator views.
OPERATOR_VIEW_ROLES = (ROLE_OPERATOR, ROLE_READER)

_ACTIVE_SQL = "state IN (%s)" % ', '.join("'%s'" % state for state in ACTIVE_STATES)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class UTCDateTime(TypeDecorator):
    """A timezone-aware UTC datetime on every backend (SQLite keeps it naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError('naive datetime %r: the control plane stores UTC only' % (value,))
        value = value.astimezone(dt.timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == 'sqlite' else value

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.timezone.utc)
        return value.astimezone(dt.timezone.utc)


class Base(DeclarativeBase):
    pass


class Tenant(Base):
    __tablename__ = 'tenants'

    id: Mapped[str] = mapped_column(String(63), primary_key=True)
    # As CloudStack's max.account.gpus: -1 is unlimited.
    max_gpus: Mapped[int] = mapped_column(Integer, nullable=False, default=-1)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)


class TenantNetwork(Base):
    """A tenant's network identifiers (networks.py), given on its first allocation and kept
    while the tenant exists: the overlay's VNI, the InfiniBand partition key, the RoCE VLAN
    and the fabric subnet its slots take their fabric addresses from. Unique across tenants:
    the database refuses a second tenant with the same one, whatever the code above does."""

    __tablename__ = 'tenant_networks'
    __table_args__ = tuple(UniqueConstraint(column, name='uq_tenant_networks_' + column)
                           for column in ('vni', 'pkey', 'vlan', 'fabric_subnet'))

    tenant_id: Mapped[str] = mapped_column(ForeignKey('tenants.id'), primary_key=True)
    vni: Mapped[int] = mapped_column(Integer, nullable=False)
    # The 15-bit partition key (0x0001-0x7ffe); NULL when no pkey range is configured.
    pkey: Mapped[int | None] = mapped_column(Integer, nullable=True)
    vlan: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # 'a.b.c.d/nn'; NULL when no fabric address pool is configured.
    fabric_subnet: Mapped[str | None] = mapped_column(String(18), nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)


# A token's lifetime in whole days (0: it never expires) and a rotation's grace period, in
# seconds, during which the token it replaces still works.
TOKEN_MAX_DAYS = 3650
TOKEN_MAX_GRACE = 7 * 86400


class ApiToken(Base):
    __tablename__ = 'api_tokens'

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    token_hash: Mapped[str] = mapped_column(String(64), nullable=False, unique=True)
    role: Mapped[str] = mapped_column(String(16), nullable=False)
    tenant_id: Mapped[str | None] = mapped_column(ForeignKey('tenants.id'), nullable=True)
    name: Mapped[str] = mapped_column(String(63), nullable=False, default='')
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # None: never (tokens made before migration 0003, or with a lifetime of 0 days).
    expires_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # Coarse: written at most once a minute per token (service.LAST_USED_EVERY).
    last_used_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # The token that replaced this one (``gpuaas token rotate``); a token is rotated once.
    replaced_by: Mapped[int | None] = mapped_column(ForeignKey('api_tokens.id'), nullable=True)


class Node(Base):
    __tablename__ = 'nodes'
    __table_args__ = (
        # The drained nodes, which a reservation skips (service._take_slot_statement).
        Index('ix_nodes_drained', 'id', sqlite_where=text('schedulable = 0'),
              postgresql_where=text('NOT schedulable')),
        # The unreachable nodes, which a reservation skips too and the worker probes.
        Index('ix_nodes_unreachable', 'id', sqlite_where=text('unreachable_since IS NOT NULL'),
              postgresql_where=text('unreachable_since IS NOT NULL')),
    )

    id: Mapped[str] = mapped_column(String(63), primary_key=True)
    schedulable: Mapped[bool] = mapped_column(Boolean, nullable=False, default=True)
    drain_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    discovery: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    discovered_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # The approved slot map as the operator posted it (docs/approved-slot-map.md).
    approved_slots: Mapped[list | None] = mapped_column(JSON, nullable=True)
    approved_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # The node's address on the underlay network, where the other nodes' overlay tunnels end
    # (tenant networks); NULL: not set, the node is no overlay peer of anyone.
    underlay_ip: Mapped[str | None] = mapped_column(String(15), nullable=True)
    # Reachability, as the worker last found it: NULL while the node answers; since when a run
    # (or a probe) could not reach it, what it said, how many probes failed since, when the last
    # one ran and when the next one is due. An unreachable node is skipped by reservation and
    # its jobs wait.
    unreachable_since: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    unreachable_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    probe_failures: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    next_probe_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_probe_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)


class Slot(Base):
    __tablename__ = 'slots'
    __table_args__ = (
        UniqueConstraint('node_id', 'slot_index', name='uq_slots_node_index'),
        # The reservation's candidate order (service._take_slot_statement), and lookups by state.
        Index('ix_slots_free', 'state', 'approved', 'node_id', 'slot_index'),
    )

    id: Mapped[str] = mapped_column(String(80), primary_key=True)
    node_id: Mapped[str] = mapped_column(ForeignKey('nodes.id'), nullable=False)
    slot_index: Mapped[int] = mapped_column(Integer, nullable=False)
    gpu_address: Mapped[str] = mapped_column(String(32), nullable=False)
    # '{vendor_id}:{device_id}', as lspci -n shows it: what a request's gpu_model names.
    gpu_model: Mapped[str] = mapped_column(String(16), nullable=False)
    numa_node: Mapped[int] = mapped_column(Integer, nullable=False)
    cpulist: Mapped[str | None] = mapped_column(String(255), nullable=True)
    # The slot's share of its NUMA node (discovery's): the largest shape it takes. NULL for a
    # slot approved before shares existed, which no shape fits until approved again.
    vcpus: Mapped[int | None] = mapped_column(Integer, nullable=True)
    memory_mib: Mapped[int | None] = mapped_column(Integer, nullable=True)
    host_cpulist: Mapped[str | None] = mapped_column(String(255), nullable=True)
    # The MiB of 64-bit BARs its devices bring into the VM (discovery's); NULL when approved before.
    bar_mib: Mapped[int | None] = mapped_column(Integer, nullable=True)
    companions: Mapped[list] = mapped_column(JSON, nullable=False, default=list)
    nvme_address: Mapped[str | None] = mapped_column(String(32), nullable=True)
    fabric_pf_address: Mapped[str | None] = mapped_column(String(32), nullable=True)
    # Which VF of its fabric PF is the slot's (discovery's: slots may share a PF). NULL for a slot
    # approved before PFs were shared (its VF was VF 0 of its own PF) or without a fabric PF.
    fabric_vf_index: Mapped[int | None] = mapped_column(Integer, nullable=True)
    fabric_vf_pci_address: Mapped[str | None] = mapped_column(String(32), nullable=True)
    mac: Mapped[str] = mapped_column(String(17), nullable=False)
    ip: Mapped[str] = mapped_column(String(15), nullable=False)
    capacity_metadata: Mapped[dict] = mapped_column(JSON, nullable=False)
    fingerprint: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    destructive_wipe_policy: Mapped[str] = mapped_column(String(32), nullable=False)
    approved: Mapped[bool] = mapped_column(Boolean, nullable=False, default=True)
    approved_by: Mapped[str | None] = mapped_column(String(255), nullable=True)
    approved_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    state: Mapped[str] = mapped_column(String(16), nullable=False, default=SLOT_FREE)
    allocation_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    state_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    # Why the slot's approved GPU is not there (gone from the bus, or replaced: approval's
    # 'absent'); NULL when it is. An absent slot keeps its row, id, MAC and IP, and is never
    # reserved; an allocation holding it is reported (AllocationView.slot_absent).
    absent_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)


class Allocation(Base):
    __tablename__ = 'allocations'
    __table_args__ = (
        # The backstop: one active allocation per slot, whatever the code above does.
        Index('uq_allocations_active_slot', 'slot_id', unique=True,
              sqlite_where=text(_ACTIVE_SQL), postgresql_where=text(_ACTIVE_SQL)),
        UniqueConstraint('tenant_id', 'idempotency_key', name='uq_allocations_idempotency'),
        Index('ix_allocations_tenant_state', 'tenant_id', 'state'),
        # A tenant's live allocations never share a fabric address (networks.fabric_host).
        Index('uq_allocations_active_fabric_host', 'tenant_id', 'fabric_host', unique=True,
              sqlite_where=text(_ACTIVE_SQL), postgresql_where=text(_ACTIVE_SQL)),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey('tenants.id'), nullable=False)
    slot_id: Mapped[str] = mapped_column(ForeignKey('slots.id'), nullable=False)
    node_id: Mapped[str] = mapped_column(ForeignKey('nodes.id'), nullable=False)
    state: Mapped[str] = mapped_column(String(16), nullable=False)
    idempotency_key: Mapped[str | None] = mapped_column(String(64), nullable=True)
    image: Mapped[str] = mapped_column(String(255), nullable=False)
    image_checksum: Mapped[str] = mapped_column(String(80), nullable=False)
    image_format: Mapped[str] = mapped_column(String(8), nullable=False)
    ssh_keys: Mapped[list] = mapped_column(JSON, nullable=False)
    vcpus: Mapped[int] = mapped_column(Integer, nullable=False)
    memory_mib: Mapped[int] = mapped_column(Integer, nullable=False)
    disk_gib: Mapped[int] = mapped_column(Integer, nullable=False)
    hostname: Mapped[str | None] = mapped_column(String(63), nullable=True)
    request: Mapped[dict] = mapped_column(JSON, nullable=False, default=dict)
    # Known at reservation from the layout; confirmed by the node.
    mac: Mapped[str] = mapped_column(String(17), nullable=False)
    address: Mapped[str | None] = mapped_column(String(15), nullable=True)
    ssh: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    # The tenant's way in from outside the node ({ssh_host, ssh_port, user}), as the node reports it,
    # and the networks the slot's SSH port answers (empty: any), as the tenant asked.
    access: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    ssh_source_cidrs: Mapped[list | None] = mapped_column(JSON, nullable=True, default=list)
    telemetry_token: Mapped[str | None] = mapped_column(String(255), nullable=True)
    # The slot's host number in its tenant's fabric subnet (TenantNetwork.fabric_subnet),
    # given when its first allocate job is claimed; NULL: none (no fabric, or made before 0010).
    fabric_host: Mapped[int | None] = mapped_column(Integer, nullable=True)
    hostdevs_attached: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    timings: Mapped[dict] = mapped_column(JSON, nullable=False, default=dict)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    running_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    release_requested_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    ended_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)


class OutboxJob(Base):
    __tablename__ = 'outbox'
    __table_args__ = (Index('ix_outbox_status_available', 'status', 'available_at'),
                      Index('ix_outbox_allocation', 'allocation_id'))

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    allocation_id: Mapped[str] = mapped_column(ForeignKey('allocations.id'), nullable=False)
    kind: Mapped[str] = mapped_column(String(16), nullable=False)
    # A cleanup: the release of a slot the allocation left on a node that stopped answering
    # (it holds that slot blocked until the node answers and the release ran). NULL: the job
    # is for the allocation's own slot.
    slot_id: Mapped[str | None] = mapped_column(ForeignKey('slots.id'), nullable=True)
    status: Mapped[str] = mapped_column(String(16), nullable=False, default=JOB_PENDING)
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    available_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    claimed_by: Mapped[str | None] = mapped_column(String(128), nullable=True)
    claim_token: Mapped[str | None] = mapped_column(String(32), nullable=True)
    lease_expires_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)


class Event(Base):
    __tablename__ = 'events'
    __table_args__ = (Index('ix_events_allocation', 'allocation_id', 'id'),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    allocation_id: Mapped[str] = mapped_column(ForeignKey('allocations.id'), nullable=False)
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    kind: Mapped[str] = mapped_column(String(16), nullable=False)
    message: Mapped[str] = mapped_column(Text, nullable=False)
    data: Mapped[dict] = mapped_column(JSON, nullable=False, default=dict)


# Slot acceptance, as the guest agent reported it (absent: not reported yet).
ACCEPTANCE_PASSED = 'passed'
ACCEPTANCE_FAILED = 'failed'
ACCEPTANCE_STATES = (ACCEPTANCE_PASSED, ACCEPTANCE_FAILED)


class AllocationTelemetry(Base):
    """One per allocation: the node's telemetry sink summary as last collected (the guest
    agent's last health sample and its slot acceptance result)."""

    __tablename__ = 'allocation_telemetry'

    allocation_id: Mapped[str] = mapped_column(ForeignKey('allocations.id'), primary_key=True)
    collected_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, nullable=False)
    samples: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    first_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    health: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    health_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    acceptance_status: Mapped[str | None] = mapped_column(String(16), nullable=True)
    acceptance: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    acceptance_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # What the last collection could not use (a damaged summary on the node), for operators.
    error: Mapped[str | None] = mapped_column(Text, nullable=True)


class UsageRecord(Base):
    """One per allocation: allocated time (reservation to end) and running time (running to
    end, less the periods its VM was stopped), for billing."""

    __tablename__ = 'usage_records'
    __table_args__ = (Index('ix_usage_tenant', 'tenant_id'),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    allocation_id: Mapped[str] = mapped_column(ForeignKey('allocations.id'), nullable=False,
                                               unique=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey('tenants.id'), nullable=False)
    slot_id: Mapped[str] = mapped_column(String(80), nullable=False)
    node_id: Mapped[str] = mapped_column(String(63), nullable=False)
    gpu_model: Mapped[str] = mapped_column(String(16), nullable=False)
    gpus: Mapped[int] = mapped_column(Integer, nullable=False, default=1)
    allocated_start: Mapped[dt.datetime] = mapped_column(UTCDateTime, nullable=False)
    allocated_end: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    running_start: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    running_end: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # The periods the VM was stopped, as the node confirmed them: [{"from": ISO time, "to": ISO
    # time or null while it is stopped}]. Not running time; still allocated time.
    stopped_periods: Mapped[list | None] = mapped_column(JSON, nullable=True, default=list)


class AllocationConsole(Base):
    """One per allocation: the newest part of its VM's serial console log, as last read from
    its node (``console.py``), and when the tenant last asked for it."""

    __tablename__ = 'allocation_console'

    allocation_id: Mapped[str] = mapped_column(ForeignKey('allocations.id'), primary_key=True)
    requested_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, nullable=False)
    collected_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    text: Mapped[str | None] = mapped_column(Text, nullable=True)
    size: Mapped[int | None] = mapped_column(Integer, nullable=True)
    truncated: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    modified_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # Why the last read gave nothing (the node's reason, for operators), or None.
    error: Mapped[str | None] = mapped_column(Text, nullable=True)


class AuditEntry(Base):
    """Append-only and hash-chained: hash = sha256(prev_hash + canonical JSON of the row)."""

    __tablename__ = 'audit_log'

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime, nullable=False)
    actor: Mapped[str] = mapped_column(String(128), nullable=False)
    role: Mapped[str] = mapped_column(String(16), nullable=False)
    action: Mapped[str] = mapped_column(String(64), nullable=False)
    target_type: Mapped[str] = mapped_column(String(32), nullable=False)
    target_id: Mapped[str] = mapped_column(String(128), nullable=False)
    before: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    after: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    prev_hash: Mapped[str] = mapped_column(String(64), nullable=False, unique=True)
    hash: Mapped[str] = mapped_column(String(64), nullable=False, unique=True)


class AuditHead(Base):
    """The chain's last link (one row): deleting the newest entries breaks the match."""

    __tablename__ = 'audit_head'

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    seq: Mapped[int] = mapped_column(Integer, nullable=False)
    hash: Mapped[str] = mapped_column(String(64), nullable=False)

