# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Tenant networks: each tenant's identifiers on the overlay and the fabric, and the plan the
node gets with each job.

* **The tenant's record** (``TenantNetwork``): a VNI (the overlay on the slot network), an
  InfiniBand partition key, a RoCE VLAN and a fabric subnet, each the lowest free one of its
  configured range (``Settings.tenant_*``), given in the transaction of the tenant's first
  reservation (:func:`ensure`, from ``service.reserve``). The database's unique constraints
  refuse a second tenant with the same one; a reservation that loses that race (PostgreSQL:
  the other transaction committed first) rolls back to its savepoint and takes the next free
  one. A range with nothing left refuses the reservation (409), naming the range.
* **Kept, not released**: the record stays with the tenant when it has nothing left running,
  so a partition key or VLAN is never handed to another tenant while a subnet manager or a
  switch that missed a release (a crashed node, an SM host that was down) may still hold the
  old tenant's membership in it. A range is sized for the tenants a site will ever have.
* **A slot's fabric address** is a host of its tenant's subnet: the lowest host number no
  live allocation of the tenant holds, given when the allocation's first allocate job is
  claimed (:func:`fabric_host`) and kept to its end; a partial unique index refuses two live
  allocations of a tenant with the same one.
* **The plan** (:func:`plan`, the worker's ``spec['network']``): ``{tenant, vni, mtu, peers:
  [{node_id, underlay_ip}], pkey, vlan, fabric: {address} | None}``. ``peers`` are the other
  nodes holding live allocations of the tenant that have an underlay address (a node without
  one is no overlay peer); ``pkey`` (full membership, ``0x8001`` style), ``vlan`` and
  ``fabric`` are None for a slot without a fabric PF.
* **Peers kept current** (:func:`announce`): when a tenant's set of nodes changes (a node gets
  the tenant's first live allocation, loses its last one, an allocation moves to another node,
  or a node of the tenant changes its underlay address), each *other* node of the tenant gets a
  ``network`` outbox job, carried by one of the tenant's allocations on it: the worker runs it
  like the node's other jobs (one job per node at a time, held while the node does not answer),
  computes the tenant's plan for that node when it claims the job (so it is the newest word,
  and a job for a node that no longer holds the tenant is cancelled), and the node's
  ``tenant_network`` writes it into the tenant's leases there and rewrites its flows (no slot is
  touched; the same plan twice changes nothing). A node with a pending one gets no second.
* **Audit**: the record's creation (``tenant_network.assign``), and every change of fabric
  membership: an allocation joining its tenant's fabric when its allocate job succeeded
  (``fabric.join``) and leaving it when released (``fabric.leave``); a change of the tenant's
  set of nodes (``tenant_network.nodes``: the node that joined or left, the nodes told) and each
  node that applied its new plan (``tenant_network.peers``: the node, VNI and peers).
"""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from gpuaas_control import audit
from gpuaas_control.config import Settings, parse_pool, parse_range
from gpuaas_control.errors import Conflict
from gpuaas_control.models import (
    ACTIVE_STATES, JOB_NETWORK, JOB_PENDING, RELEASING, Allocation, Node, OutboxJob, Slot, TenantNetwork, utcnow)

# Full membership: the high bit of the 16-bit P_Key as the port's table holds it.
PKEY_FULL = 0x8000
# How many times a reservation takes the next free identifiers after losing a race.
ATTEMPTS = 8


@dataclass(frozen=True)
class Ranges:
    """The configured ranges, parsed (None: off)."""

    vni: range
    pkey: range | None
    vlan: range | None
    pool: ipaddress.IPv4Network | None
    prefix: int
    mtu: int

    @classmethod
    def of(cls, settings: Settings) -> Ranges:
        return cls(vni=parse_range('tenant_vni_range', settings.tenant_vni_range),
                   pkey=parse_range('tenant_pkey_range', settings.tenant_pkey_range),
                   vlan=parse_range('tenant_vlan_range', settings.tenant_vlan_range),
                   pool=parse_pool(settings.tenant_fabric_pool),
                   prefix=settings.tenant_fabric_prefix, mtu=settings.tenant_overlay_mtu)


@functools.lru_cache(maxsize=None)
def default_ranges() -> Ranges:
    """The ranges of the settings' defaults (a caller that passes none: tests, tools)."""
    fields = Settings.model_fields
    return Ranges(vni=parse_range('tenant_vni_range', fields['tenant_vni_range'].default),
                  pkey=parse_range('tenant_pkey_range', fields['tenant_pkey_range'].default),
                  vlan=parse_range('tenant_vlan_range', fields['tenant_vlan_range'].default),
                  pool=parse_pool(fields['tenant_fabric_pool'].default),
                  prefix=fields['tenant_fabric_prefix'].default, mtu=fields['tenant_overlay_mtu'].default)


def pkey_text(pkey: int | None, full: bool = False) -> str | None:
    """'0x0101' (the partition key) or, with ``full``, '0x8101' (a full member's P_Key)."""
    return None if pkey is None else '0x%04x' % (pkey | (PKEY_FULL if full else 0))


def view(network: TenantNetwork | None) -> dict | None:
    """What operators see of a tenant's network."""
    if network is None:
        return None
    return {'vni': network.vni, 'pkey': pkey_text(network.pkey), 'vlan': network.vlan,
            'fabric_subnet': network.fabric_subnet, 'assigned_at': network.created_at}


def _first_free(session, column, candidates):
    used = set(session.execute(select(column).where(column.is_not(None))).scalars())
    return next((value for value in candidates if value not in used), None)


def _subnets(ranges: Ranges):
    return (str(net) for net in ranges.pool.subnets(new_prefix=ranges.prefix)) if ranges.pool else ()


def _choose(session, ranges: Ranges) -> dict:
    """The lowest free identifier of each range; Conflict naming a range with none left."""
    chosen = {}
    for name, column, candidates, shown in (
            ('vni', TenantNetwork.vni, ranges.vni, 'GPUAAS_TENANT_VNI_RANGE'),
            ('pkey', TenantNetwork.pkey, ranges.pkey, 'GPUAAS_TENANT_PKEY_RANGE'),
            ('vlan', TenantNetwork.vlan, ranges.vlan, 'GPUAAS_TENANT_VLAN_RANGE'),
            ('fabric_subnet', TenantNetwork.fabric_subnet, _subnets(ranges) if ranges.pool else None,
             'GPUAAS_TENANT_FABRIC_POOL')):
        if candidates is None:
            chosen[name] = None
            continue
        chosen[name] = _first_free(session, column, candidates)
        if chosen[name] is None:
            raise Conflict('no free %s is left for a new tenant network (%s): an operator must widen '
                           'the range' % (name.replace('_', ' '), shown))
    return chosen


def ensure(session, actor: audit.Actor, tenant_id: str, ranges: Ranges) -> TenantNetwork:
    """The tenant's network record, given now if it has none (in the caller's transaction,
    before any audit entry of it: a savepoint rolled back must not hold one)."""
    network = session.get(TenantNetwork, tenant_id)
    if network is not None:
        return network
    for _attempt in range(ATTEMPTS):
        values = _choose(session, ranges)
        network = TenantNetwork(tenant_id=tenant_id, created_at=utcnow(), **values)
        try:
            with session.begin_nested():
                session.add(network)
        except IntegrityError:
            # Another transaction took one of them (or gave this tenant its record) first.
            existing = session.get(TenantNetwork, tenant_id, populate_existing=True)
            if existing is not None:
                return existing
            continue
        audit.append(session, actor, 'tenant_network.assign', 'tenant', tenant_id,
                     after={key: value for key, value in view(network).items() if key != 'assigned_at'})
        return network
    raise Conflict('tenant %s: its network identifiers were taken by other tenants %d times in a row; '
                   'try again' % (tenant_id, ATTEMPTS))


def fabric_address(network: TenantNetwork | None, host: int | None) -> str | None:
    """'a.b.c.d/nn': host ``host`` of the tenant's fabric subnet."""
    if network is None or network.fabric_subnet is None or host is None:
        return None
    subnet = ipaddress.IPv4Network(network.fabric_subnet)
    return '%s/%d' % (subnet.network_address + host, subnet.prefixlen)


def fabric_host(session, allocation: Allocation, network: TenantNetwork) -> int | None:
    """The allocation's host number in its tenant's subnet, given now if it has none; None
    when the tenant has no subnet or every host of it is held by a live allocation."""
    if allocation.fabric_host is not None or network.fabric_subnet is None:
        return allocation.fabric_host
    hosts = ipaddress.IPv4Network(network.fabric_subnet).num_addresses - 2
    for _attempt in range(ATTEMPTS):
        used = set(session.execute(select(Allocation.fabric_host).where(
            Allocation.tenant_id == allocation.tenant_id, Allocation.state.in_(ACTIVE_STATES),
            Allocation.fabric_host.is_not(None), Allocation.id != allocation.id)).scalars())
        host = next((number for number in range(1, hosts + 1) if number not in used), None)
        if host is None:
            return None
        try:
            with session.begin_nested():
                allocation.fabric_host = host
                session.flush()
        except IntegrityError:
            continue    # another of the tenant's allocations took it first
        return host
    return None


def peers(session, allocation: Allocation) -> list[dict]:
    """The other nodes holding live allocations of the tenant, with an underlay address."""
    rows = session.execute(
        select(Node.id, Node.underlay_ip).join(Allocation, Allocation.node_id == Node.id).where(
            Allocation.tenant_id == allocation.tenant_id, Allocation.state.in_(ACTIVE_STATES),
            Allocation.id != allocation.id, Node.id != allocation.node_id,
            Node.underlay_ip.is_not(None)).distinct().order_by(Node.id)).all()
    return [{'node_id': node_id, 'underlay_ip': underlay_ip} for node_id, underlay_ip in rows]


def plan(session, settings: Settings, allocation: Allocation, slot: Slot, allocate: bool) -> dict | None:
    """The job's ``network`` (see the module's docstring); None when the tenant has no record
    (its allocations were made before tenant networks). ``allocate``: give the allocation its
    fabric host if it has none (a release only reads)."""
    network = session.get(TenantNetwork, allocation.tenant_id)
    if network is None:
        return None
    fabric = slot.fabric_pf_address is not None
    host = allocation.fabric_host
    if fabric and allocate:
        host = fabric_host(session, allocation, network)
    address = fabric_address(network, host) if fabric else None
    return {'tenant': allocation.tenant_id, 'vni': network.vni, 'mtu': settings.tenant_overlay_mtu,
            'peers': peers(session, allocation),
            'pkey': pkey_text(network.pkey, full=True) if fabric else None,
            'vlan': network.vlan if fabric else None,
            'fabric': {'address': address} if address else None}


def audit_membership(session, actor: audit.Actor, allocation: Allocation, slot: Slot, joined: bool):
    """An audit entry for the allocation joining (or leaving) its tenant's fabric: its
    partition or VLAN; nothing for a slot without a fabric PF or a tenant without a record."""
    network = session.get(TenantNetwork, allocation.tenant_id)
    if network is None or slot.fabric_pf_address is None:
        return
    member = {'allocation_id': allocation.id, 'slot_id': slot.id, 'node_id': slot.node_id,
              'fabric_pf_address': slot.fabric_pf_address, 'fabric_vf_index': slot.fabric_vf_index,
              'pkey': pkey_text(network.pkey), 'vlan': network.vlan,
              'fabric_address': fabric_address(network, allocation.fabric_host)}
    audit.append(session, actor, 'fabric.join' if joined else 'fabric.leave', 'tenant',
                 allocation.tenant_id, before=None if joined else member, after=member if joined else None)


# -- peers kept current on the tenant's other nodes -------------------------------------------

# The states in which an allocation's lease is live on its node (a releasing one has left its
# tenant): a network job's carrier is one of them.
CARRIER_STATES = tuple(state for state in ACTIVE_STATES if state != RELEASING)


def _nodes(session, tenant_id: str, states=ACTIVE_STATES) -> dict:
    """{node id: the oldest of the tenant's allocations in ``states`` on it}."""
    nodes = {}
    for node_id, allocation_id in session.execute(
            select(Allocation.node_id, Allocation.id).where(
                Allocation.tenant_id == tenant_id, Allocation.state.in_(states))
            .order_by(Allocation.node_id, Allocation.created_at, Allocation.id)).all():
        nodes.setdefault(node_id, allocation_id)
    return nodes


def announce(session, actor: audit.Actor, tenant_id: str, node_id: str, why: str,
             allocation_id: str | None = None, now=None) -> list[str]:
    """After the tenant's allocations on ``node_id`` changed, in the caller's transaction:
    ``allocation_id`` became live there (``why`` 'joined') or stopped being (``left``: it ended
    or moved away), or the node's underlay address changed (``underlay``). When that changed
    the tenant's set of nodes (or its peers' addresses), each other node of the tenant gets a
    network job, unless one is pending there already; audited. The nodes told."""
    if session.get(TenantNetwork, tenant_id) is None:
        return []
    session.flush()   # the caller's state changes, which the statements below read
    # The nodes where the tenant has a live lease (one only releasing there takes its flows with it).
    nodes = _nodes(session, tenant_id, CARRIER_STATES)
    if why != 'underlay' and session.execute(select(Allocation.id).where(
            Allocation.tenant_id == tenant_id, Allocation.node_id == node_id, Allocation.id != allocation_id,
            Allocation.state.in_(ACTIVE_STATES)).limit(1)).first() is not None:
        return []   # another of the tenant's allocations holds the node: the set is the same
    now = now or utcnow()
    # The allocation's own node (another than ``node_id`` when it moved) gets the plan with its allocate job.
    moved_to = session.get(Allocation, allocation_id).node_id if allocation_id else None
    told = sorted(other for other in nodes if other not in (node_id, moved_to))
    for other in told:
        pending = session.execute(select(OutboxJob.id).join(Allocation, Allocation.id == OutboxJob.allocation_id).where(
            OutboxJob.kind == JOB_NETWORK, OutboxJob.status == JOB_PENDING, Allocation.tenant_id == tenant_id,
            Allocation.node_id == other).limit(1)).first()
        if pending is None:
            session.add(OutboxJob(allocation_id=nodes[other], kind=JOB_NETWORK, status=JOB_PENDING, attempts=0,
                                  available_at=now, created_at=now, updated_at=now))
    if told:
        audit.append(session, actor, 'tenant_network.nodes', 'tenant', tenant_id, None,
                     {'node_id': node_id, 'change': why, 'nodes': sorted(nodes), 'told': told})
    return told


def carrier(session, allocation: Allocation) -> Allocation | None:
    """The allocation a network job runs for: its own, while its lease is live on its node, else
    another of the tenant's there (the job is the node's, not the allocation's); None when the
    node holds none of the tenant's any more (nothing to update: its last one took the tenant's
    flows with it)."""
    if allocation.state in CARRIER_STATES:
        return allocation
    other = _nodes(session, allocation.tenant_id, CARRIER_STATES).get(allocation.node_id)
    return session.get(Allocation, other, with_for_update=True) if other else None


def overlay_plan(session, settings: Settings, allocation: Allocation) -> dict | None:
    """The node's part of the tenant's plan for the allocation's node: {tenant, vni, mtu, peers}."""
    network = session.get(TenantNetwork, allocation.tenant_id)
    if network is None:
        return None
    return {'tenant': allocation.tenant_id, 'vni': network.vni, 'mtu': settings.tenant_overlay_mtu,
            'peers': peers(session, allocation)}


def check_result(claim, result) -> str | None:
    """What is wrong with a network job's gpuaas_result (None: it is the claim's)."""
    if not isinstance(result, dict):
        return 'the network playbook returned no gpuaas_result (set_stats)'
    if result.get('node_id') != claim.node_id or result.get('tenant') != claim.tenant:
        return 'the network playbook reported %r' % ({k: result.get(k) for k in ('node_id', 'tenant')},)
    return None


def updated(session, actor: audit.Actor, claim, result: dict) -> None:
    """A node applied the tenant's new plan: audited with what it now holds."""
    plan = claim.allocation['network']
    audit.append(session, actor, 'tenant_network.peers', 'tenant', claim.tenant, None,
                 {'node_id': claim.node_id, 'vni': plan['vni'],
                  'peers': [peer['node_id'] for peer in plan['peers']],
                  'slots': list(result.get('slots') or []), 'leases_updated': list(result.get('leases_updated') or [])})
