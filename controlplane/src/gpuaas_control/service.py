# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The control plane's operations, each one database transaction (the caller's session).

The API and the CLI call these. Allocation and slot states change only through
``lifecycle`` (here and in the worker alike); privileged mutations append to the audit
ledger in the same transaction, so an entry exists exactly when the change does.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import hashlib
import ipaddress
import secrets

from sqlalchemy import and_, bindparam, case, func, insert, not_, or_, select, update
from sqlalchemy.exc import IntegrityError

from gpuaas_control import audit, lifecycle, networks
from gpuaas_control.collection import approval, contract
from gpuaas_control.errors import Conflict, Forbidden, Invalid, NotFound
from gpuaas_control.models import (
    ACTIVE_STATES,
    FAILED,
    JOB_ALLOCATE,
    JOB_CANCELLED,
    JOB_PENDING,
    JOB_RELEASE,
    RELEASED,
    RELEASING,
    REQUESTED,
    ROLE_OPERATOR,
    ROLE_TENANT,
    ROLES,
    SLOT_BLOCKED,
    SLOT_FREE,
    SLOT_RESERVED,
    TOKEN_MAX_DAYS,
    TOKEN_MAX_GRACE,
    Allocation,
    ApiToken,
    Event,
    Node,
    OutboxJob,
    Slot,
    Tenant,
    UsageRecord,
    utcnow,
)
from gpuaas_control.validation import (
    CPULIST_RE,
    GPU_MODEL_RE,
    HEX_ID_RE,
    NOTE_RE,
    PCI_ADDRESS_RE,
    TENANT_RE,
    TOKEN_NAME_RE,
    show,
)

TOKEN_PREFIX = 'gpuaas_'


# -- tokens and tenants -------------------------------------------------------------------

def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode('utf-8')).hexdigest()


def ensure_tenant(session, tenant_id: str, default_max_gpus: int = -1) -> Tenant:
    if not isinstance(tenant_id, str) or not TENANT_RE.match(tenant_id):
        raise Invalid('tenant %s is not valid: 1-63 characters from lowercase letters, digits, '
                      "'.', '_' and '-', starting with a letter or digit" % show(tenant_id))
    tenant = session.get(Tenant, tenant_id)
    if tenant is None:
        tenant = Tenant(id=tenant_id, max_gpus=default_max_gpus, created_at=utcnow())
        session.add(tenant)
        session.flush()
    return tenant


# A token's last use is recorded when the one stored is older than this: at most one write
# a minute per token, so that a request stays a read (deps.get_actor).
LAST_USED_EVERY = dt.timedelta(seconds=60)


class TokenExpired(Exception):
    """A known token past its expiry: the API answers 401 and says only that."""


def _expiry(days, now):
    if isinstance(days, bool) or not isinstance(days, int) or not 0 <= days <= TOKEN_MAX_DAYS:
        raise Invalid('expires_in %s is not valid: whole days from 0 (never expires) to %d'
                      % (show(days), TOKEN_MAX_DAYS))
    return now + dt.timedelta(days=days) if days else None


def _when(value):
    return value.isoformat() if value else None


def _new_token(session, role, tenant, name, expires_at, now):
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = ApiToken(token_hash=hash_token(token), role=role, tenant_id=tenant, name=name,
                   created_at=now, expires_at=expires_at)
    session.add(row)
    session.flush()
    return token, row


def create_token(session, actor: audit.Actor, role: str, tenant: str | None = None,
                 name: str = '', default_max_gpus: int = -1, expires_in: int = 0):
    """Create a bearer token that expires in ``expires_in`` days (0: never); return (the
    token, its row). Only its sha256 is stored."""
    if role not in ROLES:
        raise Invalid('role must be one of %s, not %s' % (', '.join(ROLES), show(role)))
    if role == ROLE_TENANT and not tenant:
        raise Invalid('a tenant token needs its tenant (--tenant NAME)')
    if role != ROLE_TENANT and tenant:
        raise Invalid('%s token belongs to no tenant' % ('an operator' if role == ROLE_OPERATOR else 'a reader'))
    if name and not TOKEN_NAME_RE.match(name):
        raise Invalid('token name %s is not valid: letters, digits and ._@- (1-63)' % show(name))
    now = utcnow()
    expires_at = _expiry(expires_in, now)
    if tenant:
        ensure_tenant(session, tenant, default_max_gpus)
    token, row = _new_token(session, role, tenant,
                            name or ('%s-%s' % (tenant or role, secrets.token_hex(3))), expires_at, now)
    audit.append(session, actor, 'token.create', 'token', row.id, None,
                 {'id': row.id, 'name': row.name, 'role': role, 'tenant': tenant,
                  'expires_at': _when(expires_at)})
    return token, row


def rotate_token(session, actor: audit.Actor, token_id: int, grace: int = 0, expires_in: int = 0):
    """Replace a working token with a new one of the same name, role and tenant, expiring
    in ``expires_in`` days (0: never); the old one keeps working for ``grace`` seconds.
    Return (the new token, its row, the old row)."""
    if isinstance(grace, bool) or not isinstance(grace, int) or not 0 <= grace <= TOKEN_MAX_GRACE:
        raise Invalid('grace %s is not valid: whole seconds from 0 (at once) to %d'
                      % (show(grace), TOKEN_MAX_GRACE))
    now = utcnow()
    expires_at = _expiry(expires_in, now)
    old = session.get(ApiToken, token_id, with_for_update=True)
    if old is None:
        raise NotFound('no token %s' % show(token_id))
    if old.revoked_at is not None:
        raise Conflict('token %d is revoked: create a new one (gpuaas token create)' % old.id)
    if old.replaced_by is not None:
        raise Conflict('token %d was already rotated: token %d replaces it' % (old.id, old.replaced_by))
    if old.expires_at is not None and old.expires_at <= now:
        raise Conflict('token %d expired at %s: create a new one (gpuaas token create)'
                       % (old.id, old.expires_at.isoformat()))
    token, row = _new_token(session, old.role, old.tenant_id, old.name, expires_at, now)
    before = {'expires_at': _when(old.expires_at), 'replaced_by': None}
    ends = now + dt.timedelta(seconds=grace)
    old.expires_at = ends if old.expires_at is None else min(old.expires_at, ends)
    old.replaced_by = row.id
    audit.append(session, actor, 'token.rotate', 'token', old.id, before,
                 {'expires_at': _when(old.expires_at), 'replaced_by': row.id,
                  'new': {'id': row.id, 'name': row.name, 'role': row.role,
                          'tenant': row.tenant_id, 'expires_at': _when(expires_at)}})
    return token, row, old


def revoke_token(session, actor: audit.Actor, token_id: int) -> ApiToken:
    row = session.get(ApiToken, token_id)
    if row is None:
        raise NotFound('no token %s' % show(token_id))
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        audit.append(session, actor, 'token.revoke', 'token', row.id,
                     {'revoked': False}, {'revoked': True})
    return row


# Every request reads its token: statements built once (see _TENANT_QUOTA below).
_TOKENS = ApiToken.__table__
_TOKEN = select(_TOKENS).where(_TOKENS.c.token_hash == bindparam('token_hash'))
_MARK_USED = update(_TOKENS).where(
    _TOKENS.c.id == bindparam('token_id'),
    _TOKENS.c.last_used_at.is_(None) | (_TOKENS.c.last_used_at < bindparam('stale_before'))
).values(last_used_at=bindparam('used_at'))


# token hash -> (the stale last use this process is recording, when it began): see
# authenticate. By hash, not id: unique across databases too (the tests open many).
_USE_CLAIMS: dict[str, tuple[dt.datetime | None, dt.datetime]] = {}


def authenticate(session, token: str, now: dt.datetime | None = None):
    """(the token's actor, its id if its last use is to be recorded else None), or None for
    an unknown or revoked token. Raises TokenExpired for a token past its expiry."""
    if not token or len(token) > 200:
        return None
    row = session.connection().execute(_TOKEN, {'token_hash': hash_token(token)}).first()
    if row is None or row.revoked_at is not None:
        return None
    now = now or utcnow()
    if row.expires_at is not None and row.expires_at <= now:
        raise TokenExpired()
    who = audit.Actor(name='token:%d:%s' % (row.id, row.name), role=row.role, tenant=row.tenant_id)
    if row.last_used_at is not None and now - row.last_used_at < LAST_USED_EVERY:
        return who, None
    # Stale: one request of this process records it, not every request in flight meanwhile
    # (another try a minute on if that one's write was lost).
    claim = _USE_CLAIMS.get(row.token_hash)
    if claim is not None and claim[0] == row.last_used_at and now - claim[1] < LAST_USED_EVERY:
        return who, None
    _USE_CLAIMS[row.token_hash] = (row.last_used_at, now)
    return who, row.id


def mark_token_used(session, token_id: int, now: dt.datetime) -> bool:
    """Record a use of the token unless one was recorded less than LAST_USED_EVERY ago (by
    another request meanwhile too: the condition is in the UPDATE). True if it wrote."""
    return session.connection().execute(_MARK_USED, {
        'token_id': token_id, 'stale_before': now - LAST_USED_EVERY, 'used_at': now}).rowcount == 1


def set_quota(session, actor: audit.Actor, tenant_id: str, max_gpus: int,
              default_max_gpus: int = -1) -> Tenant:
    if isinstance(max_gpus, bool) or not isinstance(max_gpus, int) or max_gpus < -1:
        raise Invalid('max_gpus must be an integer >= 0, or -1 for unlimited')
    tenant = ensure_tenant(session, tenant_id, default_max_gpus)
    before = tenant.max_gpus
    if before != max_gpus:
        tenant.max_gpus = max_gpus
        audit.append(session, actor, 'quota.set', 'tenant', tenant_id,
                     {'max_gpus': before}, {'max_gpus': max_gpus})
    return tenant


def active_count(session, tenant_id: str) -> int:
    return session.execute(select(func.count()).select_from(Allocation).where(
        Allocation.tenant_id == tenant_id, Allocation.state.in_(ACTIVE_STATES))).scalar_one()


# -- nodes, discovery, approval ----------------------------------------------------------------

def _check_pci(value, where, problems, optional=True):
    if value is None and optional:
        return
    if not isinstance(value, str) or not PCI_ADDRESS_RE.match(value):
        problems.append('%s: %s is not a PCI address (dddd:bb:dd.f)' % (where, show(value)))


def _check_discovery_fields(node_id, discovery):
    """The fields the slot table keeps must have their kernel shapes: a posted discovery is
    data from the network, not from the module."""
    problems = []
    slots = discovery.get('slots') if isinstance(discovery, dict) else None
    if isinstance(slots, list):
        problems = ['slots[%d] is not a mapping' % position
                    for position, slot in enumerate(slots) if not isinstance(slot, dict)]
        if problems:
            raise Invalid('the discovery result is refused: ' + '; '.join(problems[:5]), problems)
    try:
        approval.validate(discovery, [])
    except approval.ApprovalError as exc:
        raise Invalid(str(exc).split(':\n- ')[-1], exc.problems) from None
    if discovery['node_id'] != node_id:
        raise Invalid('the discovery result is of node %s, not %s'
                      % (show(discovery['node_id']), node_id))
    gpus = discovery.get('gpus') or []
    if not isinstance(gpus, list):
        problems.append('gpus must be a list')
        gpus = []
    for position, gpu in enumerate(gpus):
        where = 'gpus[%d]' % position
        if not isinstance(gpu, dict):
            problems.append('%s is not a mapping' % where)
            continue
        _check_pci(gpu.get('address'), where + '.address', problems, optional=False)
        for key in ('vendor_id', 'device_id'):
            if not isinstance(gpu.get(key), str) or not HEX_ID_RE.match(gpu[key]):
                problems.append('%s.%s: %s is not 4 hex digits' % (where, key, show(gpu.get(key))))
    for position, slot in enumerate(discovery['slots']):
        where = 'slots[%d]' % position
        index = slot.get('slot_index')
        try:
            expected = contract.Slot(node_id, index).slot_id
        except contract.ContractError as exc:
            problems.append('%s: %s' % (where, exc))
            continue
        if slot.get('slot_id') != expected:
            problems.append('%s: slot_id %s is not %s' % (where, show(slot.get('slot_id')), expected))
        _check_pci(slot.get('gpu_address'), where + '.gpu_address', problems, optional=False)
        for key in ('nvme_address', 'fabric_pf_address', 'fabric_vf_pci_address'):
            _check_pci(slot.get(key), '%s.%s' % (where, key), problems)
        companions = slot.get('companions') or []
        if not isinstance(companions, list):
            problems.append('%s.companions must be a list' % where)
        else:
            for member in companions:
                _check_pci(member, where + '.companions', problems, optional=False)
        numa = slot.get('numa_node')
        if isinstance(numa, bool) or not isinstance(numa, int) or not -1 <= numa < 1024:
            problems.append('%s.numa_node: %s is not a NUMA node' % (where, show(numa)))
        cpulist = slot.get('cpulist')
        if cpulist is not None and (not isinstance(cpulist, str) or len(cpulist) > 255
                                    or not CPULIST_RE.match(cpulist)):
            problems.append('%s.cpulist: %s is not a CPU list' % (where, show(cpulist)))
    if problems:
        raise Invalid('the discovery result is refused: ' + '; '.join(problems[:5]), problems)


def _discovery_summary(discovery):
    if not discovery:
        return None
    slots = discovery.get('slots') or []
    return {
        'slots': len(slots),
        'eligible': sorted(s['slot_id'] for s in slots if s.get('eligible')),
        'sha256': hashlib.sha256(audit.canonical(discovery).encode('ascii')).hexdigest(),
    }


def record_discovery(session, actor: audit.Actor, node_id: str, discovery) -> Node:
    try:
        contract.NODE_ID.check(node_id, 'node_id')
    except contract.ContractError as exc:
        raise Invalid(str(exc)) from None
    _check_discovery_fields(node_id, discovery)
    node = session.get(Node, node_id, with_for_update=True)
    now = utcnow()
    before = None
    if node is None:
        node = Node(id=node_id, schedulable=True, created_at=now, updated_at=now)
        session.add(node)
    else:
        before = _discovery_summary(node.discovery)
    node.discovery = discovery
    node.discovered_at = now
    node.updated_at = now
    session.flush()
    audit.append(session, actor, 'node.discovery', 'node', node_id, before,
                 _discovery_summary(discovery))
    return node


def get_node(session, node_id: str, lock=False) -> Node:
    node = session.get(Node, node_id, with_for_update=lock) if isinstance(node_id, str) else None
    if node is None:
        raise NotFound('no node %s' % show(node_id))
    return node


def _gpu_model(discovery, gpu_address):
    for gpu in discovery.get('gpus') or []:
        if isinstance(gpu, dict) and gpu.get('address') == gpu_address:
            return '%s:%s' % (gpu['vendor_id'], gpu['device_id'])
    raise Invalid('the discovery result lists no GPU %s for its slot' % show(gpu_address))


def _parse_time(value):
    if value in (None, ''):
        return None
    try:
        parsed = dt.datetime.fromisoformat(str(value).replace('Z', '+00:00'))
        return (parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.timezone.utc)
                ).astimezone(dt.timezone.utc)
    except (ValueError, OverflowError):
        raise Invalid('approved_at %s is not an ISO 8601 time within years 1-9999 UTC'
                      % show(value)) from None


def _slot_view(slot: Slot) -> dict:
    return {'approved': slot.approved, 'gpu_address': slot.gpu_address,
            'destructive_wipe_policy': slot.destructive_wipe_policy,
            'capacity_metadata': slot.capacity_metadata, 'state': slot.state,
            'absent_reason': slot.absent_reason}


def _held_devices(slot) -> dict:
    """The devices besides the GPU that a VM on the slot holds (a slot row, or an approved record)."""
    get = slot.get if isinstance(slot, dict) else lambda key: getattr(slot, key)
    return dict((key, get(key)) for key in ('nvme_address', 'fabric_pf_address', 'fabric_vf_pci_address')) \
        | {'companions': sorted(get('companions') or [])}


def _mark_absent(session, existing, absent, now, changed):
    """Approval's absent slots: each keeps its row and approval and says why; one an allocation
    holds stays held (release it), and its allocation gets an event for its operator."""
    for item in absent:
        slot = existing.get(item['slot_id'])
        if slot is None or slot.absent_reason == item['reason']:
            continue
        before = _slot_view(slot)
        slot.absent_reason = item['reason']
        slot.updated_at = now
        changed.append((slot, before))
        if slot.allocation_id is not None:
            add_event(session, slot.allocation_id, 'slot_absent',
                      "the slot's GPU is no longer there; the operator is told",
                      {'detail': '%s; operator: release the allocation' % item['reason']})


def approve(session, actor: audit.Actor, node_id: str, approved_slots) -> list[Slot]:
    """Apply an operator's approved slot map to the node's latest discovery.

    The collection's own rules (``_approval.validate``) decide; as there, the map is all or
    nothing. Slots missing from the map stop being schedulable; a slot an allocation holds
    cannot be withdrawn or changed. An approved slot whose GPU is gone (or replaced) is
    *absent*: it keeps its row and approval, says why (``absent_reason``) and is not reserved
    until an approval finds its GPU again; the other slots are approved as usual.
    """
    node = get_node(session, node_id, lock=True)
    if not node.discovery:
        raise Conflict('node %s has no discovery result yet: post one first' % node_id)
    if not isinstance(approved_slots, list):
        raise Invalid('approved_slots must be a list (docs/approved-slot-map.md)')
    for position, entry in enumerate(approved_slots):
        if isinstance(entry, dict):
            for key in ('approved_by', 'note'):
                value = entry.get(key)
                if value is not None and (not isinstance(value, str) or not NOTE_RE.match(value)):
                    raise Invalid('approved_slots[%d].%s must be text of at most 255 characters '
                                  'without control characters' % (position, key))
    try:
        reviewed = approval.review(node.discovery, approved_slots)
    except approval.ApprovalError as exc:
        raise Invalid('the approved slot map was refused, no slot is approved', exc.problems) from None

    existing = {s.id: s for s in session.execute(
        select(Slot).where(Slot.node_id == node_id).with_for_update()).scalars()}
    wanted = {r['slot_id']: r for r in reviewed['slots']}
    absent = {item['slot_id']: item for item in reviewed['absent']}
    problems = []
    for slot_id, slot in existing.items():
        record = wanted.get(slot_id)
        if slot.state == SLOT_FREE or slot_id in absent:
            continue
        if record is None and slot.approved:
            problems.append('slot %s is %s (allocation %s): it cannot be withdrawn now; drain '
                            'the node and release it first' % (slot_id, slot.state, slot.allocation_id))
        elif record is not None and record['gpu_address'] != slot.gpu_address:
            problems.append('slot %s is %s and its GPU changed from %s to %s: release it first'
                            % (slot_id, slot.state, slot.gpu_address, record['gpu_address']))
        elif record is not None and _held_devices(record) != _held_devices(slot):
            # A VM holds the slot's NVMe and fabric VF: a discovery that pairs it otherwise (a GPU
            # of its switch lost, and a map without fingerprints) must not move them under it.
            problems.append('slot %s is %s and its devices changed from %s to %s: release it first (keep the '
                            'fingerprints in the map, so a lost GPU moves no other slot\'s devices)'
                            % (slot_id, slot.state, _held_devices(slot), _held_devices(record)))
    if problems:
        raise Conflict('the approved slot map was refused, no slot is approved', problems)

    now = utcnow()
    changed = []
    _mark_absent(session, existing, reviewed['absent'], now, changed)
    for slot_id, slot in existing.items():
        if slot_id not in wanted and slot_id not in absent and slot.approved:
            before = _slot_view(slot)
            slot.approved = False
            slot.updated_at = now
            changed.append((slot, before))
    for slot_id, record in wanted.items():
        index = record['slot_index']
        values = {
            'node_id': node_id,
            'slot_index': index,
            'gpu_address': record['gpu_address'],
            'gpu_model': _gpu_model(node.discovery, record['gpu_address']),
            'numa_node': max(int(record['numa_node']), 0),
            'cpulist': record.get('cpulist'),
            'vcpus': record.get('vcpus'),
            'memory_mib': record.get('memory_mib'),
            'host_cpulist': record.get('host_cpulist'),
            'bar_mib': record.get('bar_mib'),
            'companions': list(record.get('companions') or []),
            'nvme_address': record.get('nvme_address'),
            'fabric_pf_address': record.get('fabric_pf_address'),
            'fabric_vf_index': record.get('fabric_vf_index'),
            'fabric_vf_pci_address': record.get('fabric_vf_pci_address'),
            # The layout, computed here from the collection's formula, not taken from the post.
            'mac': contract.Slot(node_id, index).mac,
            'ip': contract.Slot(node_id, index).ip,
            'capacity_metadata': dict(
                next(e for e in approved_slots if e.get('slot_id') == slot_id)['capacity_metadata']),
            'fingerprint': record.get('fingerprint'),
            'destructive_wipe_policy': record['destructive_wipe_policy'],
            'approved': True,
            'approved_by': record.get('approved_by') or actor.name,
            'approved_at': _parse_time(record.get('approved_at')) or now,
            'absent_reason': None,
        }
        slot = existing.get(slot_id)
        if slot is None:
            slot = Slot(id=slot_id, state=SLOT_FREE, updated_at=now, **values)
            session.add(slot)
            changed.append((slot, None))
            continue
        before = _slot_view(slot)
        for key, value in values.items():
            setattr(slot, key, value)
        if _slot_view(slot) != before:
            slot.updated_at = now
            changed.append((slot, before))
    node.approved_slots = approved_slots
    node.approved_at = now
    node.updated_at = now
    session.flush()
    audit.append(session, actor, 'node.approve', 'node', node_id,
                 {s.id: b for s, b in changed if b is not None} or None,
                 {'approved': sorted(wanted), 'absent': sorted(absent),
                  'changed': sorted(s.id for s, _ in changed)})
    return sorted(session.execute(select(Slot).where(Slot.node_id == node_id)).scalars(),
                  key=lambda s: s.slot_index)


def set_drain(session, actor: audit.Actor, node_id: str, drain: bool, reason: str | None = None) -> Node:
    if reason is not None and not NOTE_RE.match(reason):
        raise Invalid('the drain reason must be text of at most 255 characters without control '
                      'characters')
    node = get_node(session, node_id, lock=True)
    before = {'schedulable': node.schedulable, 'drain_reason': node.drain_reason}
    node.schedulable = not drain
    node.drain_reason = reason if drain else None
    after = {'schedulable': node.schedulable, 'drain_reason': node.drain_reason}
    if before != after:
        node.updated_at = utcnow()
        audit.append(session, actor, 'node.drain' if drain else 'node.undrain', 'node', node_id,
                     before, after)
    return node


def set_underlay(session, actor: audit.Actor, node_id: str, underlay_ip: str | None) -> Node:
    """The node's underlay address for the tenant overlay (None removes it); audited."""
    if underlay_ip is not None:
        try:
            address = ipaddress.IPv4Address(underlay_ip)
        except ValueError:
            address = None
        if address is None or str(address) != underlay_ip or address.is_loopback or address.is_multicast \
                or address.is_unspecified or address.is_link_local or address.is_reserved:
            raise Invalid('underlay_ip %s is not a unicast IPv4 address a tunnel can end at (dotted quad, not '
                          'loopback, link-local, multicast or 0.0.0.0)' % show(underlay_ip))
    node = get_node(session, node_id, lock=True)
    if node.underlay_ip != underlay_ip:
        audit.append(session, actor, 'node.underlay', 'node', node_id,
                     {'underlay_ip': node.underlay_ip}, {'underlay_ip': underlay_ip})
        node.underlay_ip = underlay_ip
        node.updated_at = utcnow()
        # The tenants on the node: their other nodes' tunnels must follow the new address.
        for tenant_id in session.execute(select(Allocation.tenant_id).where(
                Allocation.node_id == node_id, Allocation.state.in_(ACTIVE_STATES)).distinct()).scalars().all():
            networks.announce(session, actor, tenant_id, node_id, 'underlay')
    return node


# -- reservation ---------------------------------------------------------------------------

@dataclasses.dataclass
class AllocationRequest:
    """What a tenant asks for (validated by the API's model before it gets here)."""

    image: str
    image_checksum: str
    ssh_keys: list
    vcpus: int
    memory_mib: int
    image_format: str = 'qcow2'
    disk_gib: int = 20
    hostname: str | None = None
    gpu_model: str | None = None
    node_id: str | None = None
    numa_node: int | None = None
    idempotency_key: str | None = None
    ssh_source_cidrs: list = dataclasses.field(default_factory=list)

    def constraints(self):
        return {'gpu_model': self.gpu_model, 'node_id': self.node_id, 'numa_node': self.numa_node}

    def differences(self, allocation: Allocation) -> list[str]:
        """The fields in which this request is not the one that made ``allocation`` (an
        Idempotency-Key names one request, not any request)."""
        asked = dict(dataclasses.asdict(self), **self.constraints())
        made = dict({key: getattr(allocation, key) for key in _REQUESTED_FIELDS},
                    **(allocation.request or {}))
        made['ssh_source_cidrs'] = made['ssh_source_cidrs'] or []   # NULL: made before 0007, any source
        return [key for key in _REQUESTED_FIELDS + tuple(self.constraints())
                if asked[key] != made.get(key)]


_REQUESTED_FIELDS = ('image', 'image_checksum', 'image_format', 'ssh_keys', 'vcpus',
                     'memory_mib', 'disk_gib', 'hostname', 'ssh_source_cidrs')


def new_allocation_id() -> str:
    return 'alloc-' + secrets.token_hex(10)


def add_event(session, allocation_id: str, kind: str, message: str, data=None) -> Event:
    event = Event(allocation_id=allocation_id, at=utcnow(), kind=kind, message=message,
                  data=data or {})
    session.add(event)
    return event


_SLOTS = Slot.__table__
# The reservation's statements, built once: SQLAlchemy memoizes a statement's cache key, so
# a prebuilt statement skips the 30-100 us of building and keying it on every request.
_TENANT_QUOTA = select(Tenant.__table__.c.max_gpus).where(Tenant.__table__.c.id == bindparam('tenant'))
_LOCK_TENANT = _TENANT_QUOTA.with_for_update()
_INSERT_ALLOCATION = insert(Allocation.__table__)
_INSERT_JOB = insert(OutboxJob.__table__)
_INSERT_USAGE = insert(UsageRecord.__table__)


@functools.lru_cache(maxsize=None)
def _take_slot_statement(gpu_model: bool, node_id: bool, numa_node: bool):
    """``UPDATE slots ... WHERE id = (SELECT the first candidate ... FOR UPDATE SKIP LOCKED)
    AND state = 'free' RETURNING ...``, for one shape of request (which constraints it has).

    PostgreSQL locks the candidate in the subquery, skipping those another reservation holds
    right now (at READ COMMITTED it re-checks a row changed since the statement began, so
    the row it returns is free); SQLite ignores FOR UPDATE: its write transaction already
    excludes every other writer. Without a NUMA preference the candidate is the first free,
    approved slot in (node_id, slot_index) order, which the index ``ix_slots_free`` reads
    without a sort; drained nodes are a set (``ix_nodes_drained``, usually empty) rather
    than a join, which PostgreSQL planned as a walk over every node before the first free
    slot. At 10,000 slots the statement takes about 0.1 ms on either database.
    """
    query = _candidates(select(_SLOTS.c.id), gpu_model, node_id).where(
        # Only a slot whose share fits the shape (a slot approved before shares has none: NULL).
        _SLOTS.c.vcpus >= bindparam('want_vcpus'), _SLOTS.c.memory_mib >= bindparam('want_memory'),
        _distinct_index())
    order = [_SLOTS.c.node_id, _SLOTS.c.slot_index]
    if numa_node:
        order.insert(0, case((_SLOTS.c.numa_node == bindparam('want_numa'), 0), else_=1))
    candidate = (query.order_by(*order).limit(1)
                 .with_for_update(skip_locked=True, of=_SLOTS).scalar_subquery())
    return (update(_SLOTS).where(_SLOTS.c.id == candidate, _SLOTS.c.state == SLOT_FREE)
            .values(state=SLOT_RESERVED, allocation_id=bindparam('take_for'),
                    updated_at=bindparam('take_at'))
            .returning(_SLOTS.c.id, _SLOTS.c.node_id, _SLOTS.c.gpu_model, _SLOTS.c.mac))


_HELD = Slot.__table__.alias('held')
_OVERLAY_NODES = select(Node.__table__.c.id).where(Node.__table__.c.underlay_ip.is_not(None))


def _index_taken():
    """EXISTS: a live allocation of the tenant (``want_tenant``) holds the candidate's slot index
    on another node of the overlay (a node with an underlay address)."""
    allocations = Allocation.__table__.c
    return (select(allocations.id).select_from(Allocation.__table__.join(_HELD, _HELD.c.id == allocations.slot_id))
            .where(allocations.tenant_id == bindparam('want_tenant'), allocations.state.in_(ACTIVE_STATES),
                   allocations.id != bindparam('take_for'),   # the allocation itself, when it moves
                   _HELD.c.slot_index == _SLOTS.c.slot_index, _HELD.c.node_id != _SLOTS.c.node_id,
                   _HELD.c.node_id.in_(_OVERLAY_NODES)).exists())


def _distinct_index():
    """The candidate is off the overlay (its node has no underlay address), or no live
    allocation of the tenant holds its slot index on another node of the overlay: every node
    numbers its slots 10.100.0.(10+i), so two slots of one tenant with one index on two nodes
    of its overlay would have one address (docs/operator-guide.md, "Addressing across nodes")."""
    return or_(_SLOTS.c.node_id.not_in(_OVERLAY_NODES), ~_index_taken())


def _candidates(query, gpu_model: bool, node_id: bool):
    """``query`` narrowed to free, approved slots on schedulable, reachable nodes, and the request's model and node."""
    nodes = Node.__table__.c
    # Drained and unreachable nodes (both partial indexes, usually empty) are skipped.
    skipped = select(nodes.id).where(or_(not_(nodes.schedulable), nodes.unreachable_since.is_not(None)))
    # An absent slot (its GPU gone from the bus) is never a candidate.
    query = query.where(_SLOTS.c.state == SLOT_FREE, _SLOTS.c.approved, _SLOTS.c.absent_reason.is_(None),
                        _SLOTS.c.node_id.not_in(skipped))
    if gpu_model:
        query = query.where(_SLOTS.c.gpu_model == bindparam('want_model'))
    if node_id:
        query = query.where(_SLOTS.c.node_id == bindparam('want_node'))
    return query


def _take_slot(session, request: AllocationRequest, allocation_id: str, now, tenant_id: str):
    """Choose a free slot for the tenant and take it in one statement; its row, or None when
    every candidate is taken (or, on PostgreSQL, held by a reservation still in flight)."""
    lifecycle.check(lifecycle.SLOT_TRANSITIONS, 'a slot', SLOT_FREE, SLOT_RESERVED)
    statement = _take_slot_statement(request.gpu_model is not None, request.node_id is not None,
                                     request.numa_node is not None)
    # Parameter names are not column names: an UPDATE would take those as SET values.
    params = {'want_model': request.gpu_model, 'want_node': request.node_id,
              'want_numa': request.numa_node, 'want_vcpus': request.vcpus, 'want_memory': request.memory_mib,
              'take_for': allocation_id, 'take_at': now, 'want_tenant': tenant_id}
    return session.connection().execute(statement, params).first()


# The worker moves an allocation whose node stopped answering to another slot (fleet.py).
take_slot = _take_slot


def _explain_no_fit(session, request: AllocationRequest, tenant_id: str) -> str:
    wanted = ', '.join('%s=%s' % (k, v) for k, v in request.constraints().items() if v is not None)
    wanted = ' (%s)' % wanted if wanted else ''
    params = {'want_model': request.gpu_model, 'want_node': request.node_id, 'want_tenant': tenant_id,
              'want_vcpus': request.vcpus, 'want_memory': request.memory_mib, 'take_for': ''}
    fits = _candidates(select(_SLOTS.c.id), request.gpu_model is not None, request.node_id is not None).where(
        _SLOTS.c.vcpus >= bindparam('want_vcpus'), _SLOTS.c.memory_mib >= bindparam('want_memory'))
    if session.connection().execute(fits.limit(1), params).first() is not None:
        held = session.connection().execute(
            select(_HELD.c.node_id, _HELD.c.slot_index).select_from(
                Allocation.__table__.join(_HELD, _HELD.c.id == Allocation.__table__.c.slot_id))
            .where(Allocation.__table__.c.tenant_id == bindparam('want_tenant'),
                   Allocation.__table__.c.state.in_(ACTIVE_STATES), _HELD.c.node_id.in_(_OVERLAY_NODES))
            .order_by(_HELD.c.node_id, _HELD.c.slot_index), params).all()
        return ('every free slot that fits%s has a slot index that tenant %s already holds on another node of its '
                'overlay (%s): slot i has the address 10.100.0.(10+i) on every node, so the tenant\'s slots on '
                'nodes with an underlay address must have distinct indices; release one of them, or ask again '
                'when a slot with another index is free' % (wanted, tenant_id, ', '.join(
                    '%s slot %d' % (node, index) for node, index in held)))
    largest = session.connection().execute(
        _candidates(select(_SLOTS.c.vcpus, _SLOTS.c.memory_mib), request.gpu_model is not None,
                    request.node_id is not None).where(_SLOTS.c.vcpus.is_not(None), _SLOTS.c.memory_mib.is_not(None))
        .order_by(_SLOTS.c.vcpus.desc(), _SLOTS.c.memory_mib.desc()).limit(1),
        {'want_model': request.gpu_model, 'want_node': request.node_id}).first()
    if largest is not None and (largest.vcpus < request.vcpus or largest.memory_mib < request.memory_mib):
        return ('no free slot%s fits %d vCPUs and %d MiB: the largest shape a free slot takes is %d vCPUs '
                'and %d MiB' % (wanted, request.vcpus, request.memory_mib, largest.vcpus, largest.memory_mib))
    return 'no free, approved slot on a schedulable node matches the request%s; try again later' % wanted


def _check_constraints(session, request: AllocationRequest):
    if request.node_id is not None and session.get(Node, request.node_id) is None:
        raise Invalid('unknown node %s' % show(request.node_id))
    if request.gpu_model is not None:
        if not GPU_MODEL_RE.match(request.gpu_model):
            raise Invalid('gpu_model %s is not vendor:device (4 hex digits each)'
                          % show(request.gpu_model))
        known = session.execute(select(Slot.id).where(
            Slot.approved.is_(True), Slot.gpu_model == request.gpu_model).limit(1)).first()
        if known is None:
            # The fleet's models are not the tenant's business: name only the one asked for.
            raise Invalid('no approved slot has GPU model %s' % request.gpu_model)


def reserve(session, actor: audit.Actor, request: AllocationRequest,
            default_max_gpus: int = -1, ranges: networks.Ranges | None = None) -> tuple[Allocation, bool]:
    """Reserve a slot for the actor's tenant in this transaction; (allocation, created).

    The tenant's row is locked first, so the quota count, the idempotency check and the slot
    indices it holds on the nodes of its overlay cannot race: one tenant's reservations wait
    for each other, different tenants' do not. The slot is chosen and taken in one
    statement (``_take_slot``, the lifecycle's free -> reserved edge), and the partial
    unique index on allocations(slot_id) refuses a second active allocation anyway.

    The hot path is SQLAlchemy Core on the session's connection, not the ORM's unit of work
    (which cost three quarters of a reservation's time, bench/bench_reservation.py): a
    SELECT of the quota, one UPDATE ... RETURNING, three INSERTs (allocation, outbox job,
    usage record), then ``lifecycle.move`` writes the event and the audit entry. The
    allocation returned is built from the values inserted, not read back.
    """
    if actor.role != ROLE_TENANT or not actor.tenant:
        raise Forbidden('allocations are made with a tenant token')
    connection = session.connection()
    params = {'tenant': actor.tenant}
    max_gpus = connection.execute(_TENANT_QUOTA, params).scalar_one_or_none()
    if max_gpus is None:
        max_gpus = ensure_tenant(session, actor.tenant, default_max_gpus).max_gpus
    else:
        # Locked: the quota count, the idempotency check and the slot indices the tenant holds
        # (``_distinct_index``) cannot race with the tenant's other reservations.
        max_gpus = connection.execute(_LOCK_TENANT, params).scalar_one()
    if request.idempotency_key:
        existing = session.execute(select(Allocation).where(
            Allocation.tenant_id == actor.tenant,
            Allocation.idempotency_key == request.idempotency_key)).scalar_one_or_none()
        if existing is not None:
            differ = request.differences(existing)
            if differ:
                raise Conflict('Idempotency-Key %s was used by allocation %s for another request '
                               '(%s differ): send a new key for a new request'
                               % (show(request.idempotency_key), existing.id, ', '.join(differ)))
            return existing, False
    _check_constraints(session, request)
    if max_gpus >= 0:
        used = active_count(session, actor.tenant)
        if used >= max_gpus:
            raise Conflict('tenant %s has used its GPU quota: %d of %d GPUs are allocated'
                           % (actor.tenant, used, max_gpus))

    # The tenant's network identifiers, given with its first reservation (networks.ensure).
    networks.ensure(session, actor, actor.tenant, ranges or networks.default_ranges())
    allocation_id = new_allocation_id()
    now = utcnow()
    slot = _take_slot(session, request, allocation_id, now, actor.tenant)
    if slot is None:
        raise Conflict(_explain_no_fit(session, request, actor.tenant))

    values = {
        'id': allocation_id, 'tenant_id': actor.tenant, 'slot_id': slot.id,
        'node_id': slot.node_id, 'state': REQUESTED, 'idempotency_key': request.idempotency_key,
        'image': request.image, 'image_checksum': request.image_checksum,
        'image_format': request.image_format, 'ssh_keys': list(request.ssh_keys),
        'vcpus': request.vcpus, 'memory_mib': request.memory_mib, 'disk_gib': request.disk_gib,
        'hostname': request.hostname, 'ssh_source_cidrs': list(request.ssh_source_cidrs),
        'request': request.constraints(), 'mac': slot.mac,
        'timings': {}, 'created_at': now, 'updated_at': now}
    try:
        connection.execute(_INSERT_ALLOCATION, values)
    except IntegrityError as exc:
        # The unique index caught what the code above should have prevented.
        raise Conflict('slot %s is already held by another allocation' % slot.id) from exc
    connection.execute(_INSERT_JOB, {
        'allocation_id': allocation_id, 'kind': JOB_ALLOCATE, 'status': JOB_PENDING,
        'attempts': 0, 'available_at': now, 'created_at': now, 'updated_at': now})
    connection.execute(_INSERT_USAGE, {
        'allocation_id': allocation_id, 'tenant_id': actor.tenant, 'slot_id': slot.id,
        'node_id': slot.node_id, 'gpu_model': slot.gpu_model, 'gpus': 1,
        'allocated_start': now})
    allocation = Allocation(**values)
    lifecycle.move(session, actor, allocation, REQUESTED, 'requested: slot %s reserved' % slot.id,
                   frm=None, data={'slot_id': slot.id}, now=now)
    return allocation, True


# -- reading and releasing -----------------------------------------------------------------

def get_allocation(session, actor: audit.Actor, allocation_id: str, lock=False) -> Allocation:
    """The allocation, if the actor may see it; a tenant gets NotFound for another's."""
    allocation = None
    if isinstance(allocation_id, str) and len(allocation_id) <= 64:
        allocation = session.get(Allocation, allocation_id, with_for_update=lock)
    if allocation is None or (actor.role != ROLE_OPERATOR and allocation.tenant_id != actor.tenant):
        raise NotFound('no allocation %s' % show(allocation_id))
    return allocation


def list_allocations(session, actor: audit.Actor, tenant: str | None = None,
                     state: str | None = None, limit: int = 100, offset: int = 0):
    query = select(Allocation)
    if actor.role != ROLE_OPERATOR:
        query = query.where(Allocation.tenant_id == actor.tenant)
    elif tenant:
        query = query.where(Allocation.tenant_id == tenant)
    if state:
        query = query.where(Allocation.state == state)
    query = query.order_by(Allocation.created_at.desc(), Allocation.id).limit(limit).offset(offset)
    return session.execute(query).scalars().all()


def request_release(session, actor: audit.Actor, allocation_id: str) -> Allocation:
    """Ask for the allocation's release (idempotent). A running allocate job is cancelled by
    its worker, which sees the state; the release job runs after it."""
    allocation = get_allocation(session, actor, allocation_id, lock=True)
    slot = session.get(Slot, allocation.slot_id, with_for_update=True)
    if allocation.state in (RELEASING, RELEASED):
        return allocation
    if allocation.state == FAILED:
        # A failed allocation whose release could not finish blocks its slot; an operator
        # asks again once the node is fixed.
        if not (actor.role == ROLE_OPERATOR and slot.state == SLOT_BLOCKED
                and slot.allocation_id == allocation.id):
            return allocation
    now = utcnow()
    allocation.release_requested_at = allocation.release_requested_at or now
    session.execute(update(OutboxJob).where(
        OutboxJob.allocation_id == allocation.id, OutboxJob.kind == JOB_ALLOCATE,
        OutboxJob.status == JOB_PENDING).values(status=JOB_CANCELLED, updated_at=now,
                                                finished_at=now,
                                                last_error='release requested before it ran'))
    session.add(OutboxJob(allocation_id=allocation.id, kind=JOB_RELEASE, status=JOB_PENDING,
                          attempts=0, available_at=now, created_at=now, updated_at=now))
    lifecycle.move(session, actor, allocation, RELEASING,
                   'releasing: release requested by %s' % actor.role, now=now)
    return allocation


def events_after(session, allocation_id: str, after_id: int = 0, limit: int = 500):
    return session.execute(select(Event).where(Event.allocation_id == allocation_id,
                                               Event.id > after_id)
                           .order_by(Event.id).limit(limit)).scalars().all()


# -- usage ---------------------------------------------------------------------------------

def _seconds(start, end, now, since, until):
    if start is None:
        return 0.0
    end = end or now
    start = max(start, since) if since else start
    end = min(end, until) if until else end
    return max(0.0, (end - start).total_seconds())


seconds_between = _seconds


def usage(session, tenant: str | None = None, since: dt.datetime | None = None,
          until: dt.datetime | None = None):
    """Per-allocation usage in [since, until): allocated, running and stopped GPU-seconds
    (running time less the periods the VM was stopped: ``power``)."""
    from gpuaas_control import power   # power builds on this module
    now = utcnow()
    query = select(UsageRecord).order_by(UsageRecord.allocated_start, UsageRecord.id)
    if tenant:
        query = query.where(UsageRecord.tenant_id == tenant)
    if until:
        query = query.where(UsageRecord.allocated_start < until)
    if since:
        query = query.where(and_(
            (UsageRecord.allocated_end.is_(None)) | (UsageRecord.allocated_end > since)))
    records = []
    for rec in session.execute(query).scalars():
        stopped = power.stopped_seconds(rec.stopped_periods, rec.running_end, now, since, until)
        records.append({
            'allocation_id': rec.allocation_id, 'tenant': rec.tenant_id, 'slot_id': rec.slot_id,
            'node_id': rec.node_id, 'gpu_model': rec.gpu_model, 'gpus': rec.gpus,
            'allocated_start': rec.allocated_start, 'allocated_end': rec.allocated_end,
            'running_start': rec.running_start, 'running_end': rec.running_end,
            'allocated_seconds': round(rec.gpus * _seconds(rec.allocated_start, rec.allocated_end,
                                                           now, since, until), 3),
            'running_seconds': round(rec.gpus * max(0.0, _seconds(rec.running_start, rec.running_end, now, since, until)
                                                    - stopped), 3),
            'stopped_seconds': round(rec.gpus * stopped, 3),
        })
    return records
