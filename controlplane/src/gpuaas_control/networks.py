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
* **Audit**: the record's creation (``tenant_network.assign``), and every change of fabric
  membership: an allocation joining its tenant's fabric when its allocate job succeeded
  (``fabric.join``) and leaving it when released (``fabric.leave``).
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
from gpuaas_control.models import ACTIVE_STATES, Allocation, Node, Slot, TenantNetwork, utcnow

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
