# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Tenant networks: each tenant's VNI, partition key, VLAN and fabric subnet, given with its
first reservation from the configured ranges, unique across tenants (also under a race, on
PostgreSQL too), kept; the plan the worker hands the node; the audit of fabric membership."""

from __future__ import annotations

import concurrent.futures
import datetime as dt

import pytest
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from gpuaas_control import networks, outcomes, service
from gpuaas_control.config import Settings, SettingsError
from gpuaas_control.errors import Conflict
from gpuaas_control.models import Allocation, AuditEntry, OutboxJob, Slot, TenantNetwork, utcnow
from gpuaas_control.runs import Outcome
from gpuaas_control.worker import Worker
from tests.conftest import REPO
from tests.controlplane.conftest import approved_map
from tests.controlplane.helpers import OPERATOR, add_node, add_tenant, request, tenant


@pytest.fixture
def nodes(db, hgx_discovery_factory):
    for node_id in ('n1', 'n2'):
        discovery = hgx_discovery_factory(node_id)
        add_node(db, discovery, approved_map(discovery))
    for name in ('acme', 'globex'):
        add_tenant(db, name)


def _network(db, tenant_id):
    with db.read() as session:
        return networks.view(session.get(TenantNetwork, tenant_id))


def _worker(db, tmp_path, **settings):
    inventory = tmp_path / 'inventory.yml'
    inventory.write_text('all: {}\n')
    return Worker(db, Settings(db_url='sqlite://', project_dir=REPO, inventory=str(inventory),
                               runs_dir=str(tmp_path / 'runs'), **settings))


# -- the ranges ------------------------------------------------------------------------------

@pytest.mark.parametrize('name, value, reason', [
    ('tenant_pkey_range', '0x0100-0x7fff', 'must lie within 0x0001-0x7ffe'),
    ('tenant_pkey_range', '0-0x10', 'must lie within 0x0001-0x7ffe'),
    ('tenant_vlan_range', '1-100', 'must lie within 2-4094'),
    ('tenant_vlan_range', '100-4095', 'must lie within 2-4094'),
    ('tenant_vlan_range', '200-100', 'low before high'),
    ('tenant_vni_range', '0-10', 'must lie within 1-16777215'),
    ('tenant_vni_range', '1-16777216', 'must lie within 1-16777215'),
    ('tenant_vni_range', 'off', 'the overlay needs a VNI range'),
    ('tenant_vlan_range', '100', "must be 'LOW-HIGH'"),
    ('tenant_vlan_range', 'a-b', "must be 'LOW-HIGH'"),
    ('tenant_fabric_pool', '10.224.0.1/12', 'has host bits set'),
    ('tenant_fabric_pool', '8.8.0.0/16', 'must be a private network'),
    ('tenant_fabric_pool', 'fd00::/64', "must be an IPv4 network"),
])
def test_a_range_outside_what_the_protocol_allows_is_refused_naming_it(name, value, reason):
    with pytest.raises(SettingsError) as refused:
        Settings.from_env(**{name: value})
    assert 'GPUAAS_%s=%r' % (name.upper(), value) in str(refused.value)
    assert reason in str(refused.value)


def test_a_tenant_subnet_must_fit_in_the_pool():
    with pytest.raises(SettingsError, match='GPUAAS_TENANT_FABRIC_PREFIX=12 is shorter than the pool 10.0.0.0/16'):
        Settings.from_env(tenant_fabric_pool='10.0.0.0/16', tenant_fabric_prefix=12)


def test_ranges_may_be_hex_and_the_fabric_ones_off():
    ranges = networks.Ranges.of(Settings.from_env(tenant_pkey_range='off', tenant_vlan_range='OFF',
                                                  tenant_fabric_pool='off', tenant_vni_range='0x10-0x20'))
    assert (ranges.vni, ranges.pkey, ranges.vlan, ranges.pool) == (range(16, 33), None, None, None)


# -- the tenant's record ---------------------------------------------------------------------

def test_the_first_reservation_gives_the_lowest_free_identifiers_and_they_are_kept(db, nodes):
    assert _network(db, 'acme') is None
    first, _created = db.transact(service.reserve, tenant('acme'), request())
    db.transact(service.reserve, tenant('globex'), request())
    acme, globex = _network(db, 'acme'), _network(db, 'globex')
    assert {k: acme[k] for k in ('vni', 'pkey', 'vlan', 'fabric_subnet')} == {
        'vni': 4096, 'pkey': '0x0100', 'vlan': 100, 'fabric_subnet': '10.224.0.0/24'}
    assert {k: globex[k] for k in ('vni', 'pkey', 'vlan', 'fabric_subnet')} == {
        'vni': 4097, 'pkey': '0x0101', 'vlan': 101, 'fabric_subnet': '10.224.1.0/24'}
    # Kept: the tenant's allocations end, its record stays; the next one gets the same.
    db.transact(lambda s: s.execute(update(Allocation).where(Allocation.tenant_id == 'acme')
                                    .values(state='released')))
    db.transact(service.reserve, tenant('acme'), request())
    assert _network(db, 'acme') == acme
    with db.read() as session:
        entries = session.execute(select(AuditEntry).where(AuditEntry.action == 'tenant_network.assign')
                                  .order_by(AuditEntry.seq)).scalars().all()
    assert [(e.target_id, e.after['vni'], e.after['pkey']) for e in entries] == [
        ('acme', 4096, '0x0100'), ('globex', 4097, '0x0101')]
    assert first.tenant_id == 'acme'


def test_configured_ranges_are_used_and_an_exhausted_one_refuses_naming_it(db, nodes):
    ranges = networks.Ranges.of(Settings(db_url='sqlite://', tenant_vlan_range='2-2',
                                         tenant_pkey_range='off', tenant_vni_range='7-9'))
    db.transact(service.reserve, tenant('acme'), request(), ranges=ranges)
    assert _network(db, 'acme')['vni'] == 7 and _network(db, 'acme')['vlan'] == 2
    assert _network(db, 'acme')['pkey'] is None
    with pytest.raises(Conflict, match=r'no free vlan is left for a new tenant network \(GPUAAS_TENANT_VLAN_RANGE\)'):
        db.transact(service.reserve, tenant('globex'), request(), ranges=ranges)
    # Refused as a whole: globex has no record and no allocation.
    assert _network(db, 'globex') is None
    with db.read() as session:
        assert session.execute(select(Allocation).where(Allocation.tenant_id == 'globex')).first() is None


def test_the_database_refuses_two_tenants_one_identifier(db, nodes):
    now = utcnow()
    db.transact(lambda s: s.add(TenantNetwork(tenant_id='acme', vni=5, pkey=5, vlan=5,
                                              fabric_subnet='10.224.0.0/24', created_at=now)))
    for duplicate in ({'vni': 5}, {'pkey': 5}, {'vlan': 5}, {'fabric_subnet': '10.224.0.0/24'}):
        values = dict({'vni': 6, 'pkey': 6, 'vlan': 6, 'fabric_subnet': '10.224.1.0/24'}, **duplicate)
        with pytest.raises(IntegrityError):
            db.transact(lambda s, v=values: s.add(TenantNetwork(tenant_id='globex', created_at=now, **v)))


def test_tenants_racing_for_their_first_reservation_get_distinct_identifiers(db, nodes):
    names = ['t%02d' % number for number in range(12)]
    for name in names:
        add_tenant(db, name)

    def one(name):
        try:
            return db.transact(service.reserve, tenant(name), request()).__getitem__(0).id
        except Conflict:   # 16 slots for 24 requests
            return None
    with concurrent.futures.ThreadPoolExecutor(max_workers=12) as pool:
        results = list(pool.map(one, names * 2))
    assert len([r for r in results if r]) == 16
    with db.read() as session:
        rows = session.execute(select(TenantNetwork)).scalars().all()
    assert len(rows) == len({r.vni for r in rows}) == len({r.pkey for r in rows}) == \
        len({r.vlan for r in rows}) == len({r.fabric_subnet for r in rows})
    assert {r.tenant_id for r in rows} <= set(names) and len(rows) >= 8


# -- the plan the node gets ------------------------------------------------------------------

def _claim_network(db, worker):
    """The next job claimed and marked done at once, so that its node's next job is claimable
    (one job per node at a time)."""
    claim = db.transact(worker._claim)
    db.transact(lambda s: s.execute(update(OutboxJob).where(OutboxJob.id == claim.job_id).values(status='done')))
    return claim, claim.allocation.get('network')


def test_the_allocate_job_carries_the_network_plan(db, nodes, tmp_path):
    worker = _worker(db, tmp_path)
    db.transact(service.set_underlay, OPERATOR, 'n1', '192.0.2.1')
    db.transact(service.set_underlay, OPERATOR, 'n2', '192.0.2.2')
    on_n1, on_n2, other = (db.transact(service.reserve, tenant(who), request(node_id=node_id))[0].id
                           for who, node_id in (('acme', 'n1'), ('acme', 'n2'), ('globex', 'n2')))
    claims, kinds = {}, []
    for _number in range(4):   # the three allocates and n1's network job (acme joined n2)
        claim, network = _claim_network(db, worker)
        kinds.append(claim.kind)
        if claim.kind == 'allocate':
            claims[claim.allocation_id] = network
    assert sorted(kinds) == ['allocate'] * 3 + ['network']
    assert claims[on_n1] == {'tenant': 'acme', 'vni': 4096, 'mtu': 1450,
                             'peers': [{'node_id': 'n2', 'underlay_ip': '192.0.2.2'}],
                             'pkey': '0x8100', 'vlan': 100, 'fabric': {'address': '10.224.0.1/24'}}
    assert claims[on_n2]['peers'] == [{'node_id': 'n1', 'underlay_ip': '192.0.2.1'}]
    assert claims[on_n2]['fabric'] == {'address': '10.224.0.2/24'}
    # globex alone: no peers (its only node is its own), its own partition, VLAN and subnet.
    assert claims[other] == {'tenant': 'globex', 'vni': 4097, 'mtu': 1450, 'peers': [],
                             'pkey': '0x8101', 'vlan': 101, 'fabric': {'address': '10.224.1.1/24'}}
    # A node without an underlay address is no peer.
    db.transact(service.set_underlay, OPERATOR, 'n2', None)
    with db.read() as session:
        allocation = session.get(Allocation, on_n1)
        assert networks.peers(session, allocation) == []


def test_the_release_job_carries_the_same_plan_and_the_host_is_reused_after(db, nodes, tmp_path):
    worker = _worker(db, tmp_path, tenant_overlay_mtu=8950)
    first = db.transact(service.reserve, tenant('acme'), request(node_id='n1'))[0].id
    _claim, planned = _claim_network(db, worker)
    db.transact(lambda s: s.execute(update(Allocation).where(Allocation.id == first).values(state='running')))
    db.transact(lambda s: s.execute(update(OutboxJob).values(status='done')))
    db.transact(service.request_release, tenant('acme'), first)
    db.transact(lambda s: s.execute(update(Allocation).where(Allocation.id == first).values(state='releasing')))
    claim, network = _claim_network(db, worker)
    assert claim.kind == 'release' and network == planned and network['mtu'] == 8950
    # Released: its host number is free for the tenant's next allocation.
    db.transact(lambda s: s.execute(update(Allocation).where(Allocation.id == first).values(state='released')))
    db.transact(service.reserve, tenant('acme'), request(node_id='n1'))
    _claim, again = _claim_network(db, worker)
    assert again['fabric'] == {'address': '10.224.0.1/24'}


def test_two_live_allocations_of_a_tenant_never_share_a_fabric_host(db, nodes):
    first, second = (db.transact(service.reserve, tenant('acme'), request())[0].id for _n in range(2))
    db.transact(lambda s: s.execute(update(Allocation).where(Allocation.id == first).values(fabric_host=3)))
    with pytest.raises(IntegrityError):
        db.transact(lambda s: s.execute(update(Allocation).where(Allocation.id == second).values(fabric_host=3)))
    # Another tenant's, or an ended one's, may.
    db.transact(lambda s: s.execute(update(Allocation).where(Allocation.id == first).values(state='released')))
    db.transact(lambda s: s.execute(update(Allocation).where(Allocation.id == second).values(fabric_host=3)))


def test_a_full_tenant_subnet_leaves_the_slot_without_a_fabric_address(db, nodes, tmp_path):
    worker = _worker(db, tmp_path, tenant_fabric_prefix=30)
    ranges = networks.Ranges.of(worker.settings)
    ids = [db.transact(service.reserve, tenant('acme'), request(), ranges=ranges)[0].id for _n in range(3)]
    addresses = {}
    for _number in ids:
        claim, network = _claim_network(db, worker)
        addresses[claim.allocation_id] = network['fabric']
    assert sorted(a['address'] for a in addresses.values() if a) == ['10.224.0.1/30', '10.224.0.2/30']
    assert list(addresses.values()).count(None) == 1


def test_a_tenant_without_a_record_gets_no_plan(db, nodes, tmp_path):
    """Allocations reserved before tenant networks existed run on as they were."""
    allocation, _c = db.transact(service.reserve, tenant('acme'), request())
    db.transact(lambda s: s.execute(TenantNetwork.__table__.delete()))
    claim = db.transact(_worker(db, tmp_path)._claim)
    assert claim.allocation_id == allocation.id and 'network' not in claim.allocation


# -- audit -----------------------------------------------------------------------------------

def test_joining_and_leaving_the_fabric_are_audited(db, nodes, tmp_path):
    worker = _worker(db, tmp_path)
    allocation_id = db.transact(service.reserve, tenant('acme'), request())[0].id
    claim = db.transact(worker._claim)
    result = {'state': 'running', 'slot_id': claim.slot_id, 'address': claim.slot_ip}
    outcome = Outcome(status='successful', rc=0, result=result, error=None, seconds=1.0)

    def record(session, joined):
        allocation = session.get(Allocation, allocation_id)
        now = utcnow() + dt.timedelta(seconds=1)
        if joined:
            outcomes.allocated(session, worker.actor, claim, allocation, outcome, now)
        else:
            allocation.state = 'releasing'
            outcomes.released(session, worker.actor, claim, allocation, outcome, now)
    db.transact(record, True)
    db.transact(record, False)
    with db.read() as session:
        slot = session.get(Slot, claim.slot_id)
        entries = session.execute(select(AuditEntry).where(AuditEntry.action.like('fabric.%'))
                                  .order_by(AuditEntry.seq)).scalars().all()
    member = {'allocation_id': allocation_id, 'slot_id': slot.id, 'node_id': slot.node_id,
              'fabric_pf_address': slot.fabric_pf_address, 'fabric_vf_index': slot.fabric_vf_index,
              'pkey': '0x0100', 'vlan': 100, 'fabric_address': '10.224.0.1/24'}
    assert slot.fabric_pf_address is not None
    assert [(e.action, e.target_id, e.before, e.after) for e in entries] == [
        ('fabric.join', 'acme', None, member), ('fabric.leave', 'acme', member, None)]


# -- the operators' view ---------------------------------------------------------------------

def test_operators_see_each_tenants_network(client, tokens, node):
    op = tokens['operator']
    assert client.get('/v1/tenants', headers=op).json()['tenants'][0]['network'] is None
    body = {'image': 'debian-12.qcow2', 'image_checksum': 'sha256:' + 'ab' * 32,
            'ssh_keys': [request().ssh_keys[0]], 'vcpus': 4, 'memory_mib': 8192}
    assert client.post('/v1/allocations', json=body, headers=tokens['globex']).status_code == 201
    tenants = {t['id']: t for t in client.get('/v1/tenants', headers=op).json()['tenants']}
    assert tenants['acme']['network'] is None
    network = tenants['globex']['network']
    assert {k: network[k] for k in ('vni', 'pkey', 'vlan', 'fabric_subnet')} == {
        'vni': 4096, 'pkey': '0x0100', 'vlan': 100, 'fabric_subnet': '10.224.0.0/24'}
    assert client.get('/v1/tenants', headers=tokens['acme']).status_code == 403


@pytest.mark.parametrize('value', ['127.0.0.1', '224.0.0.1', '0.0.0.0', '169.254.1.1', '10.0.0.01',
                                   '10.0.0.1/24', 'fe80::1', 'node-2'])
def test_a_bad_underlay_address_is_refused_naming_it(client, tokens, node, value):
    reply = client.put('/v1/nodes/n1/underlay', json={'underlay_ip': value}, headers=tokens['operator'])
    assert reply.status_code == 422
    assert 'underlay_ip' in reply.text and value in reply.text
    assert client.get('/v1/nodes/n1', headers=tokens['operator']).json()['underlay_ip'] is None


def test_the_underlay_address_is_set_audited_and_removed(db, client, tokens, node):
    op = tokens['operator']
    reply = client.put('/v1/nodes/n1/underlay', json={'underlay_ip': '198.51.100.7'}, headers=op)
    assert reply.status_code == 200 and reply.json()['underlay_ip'] == '198.51.100.7'
    assert client.put('/v1/nodes/n1/underlay', json={'underlay_ip': '198.51.100.7'}, headers=op).status_code == 200
    assert client.put('/v1/nodes/n1/underlay', json={'underlay_ip': None}, headers=op).json()['underlay_ip'] is None
    with db.read() as session:
        entries = session.execute(select(AuditEntry).where(AuditEntry.action == 'node.underlay')
                                  .order_by(AuditEntry.seq)).scalars().all()
    assert [(e.before, e.after) for e in entries] == [
        ({'underlay_ip': None}, {'underlay_ip': '198.51.100.7'}),
        ({'underlay_ip': '198.51.100.7'}, {'underlay_ip': None})]


# -- slot indices across the nodes of a tenant's overlay ---------------------------------------

def _slot_of(db, who, **constraints):
    return db.transact(service.reserve, tenant(who), request(**constraints))[0].slot_id


def _underlays(db):
    db.transact(service.set_underlay, OPERATOR, 'n1', '192.0.2.1')
    db.transact(service.set_underlay, OPERATOR, 'n2', '192.0.2.2')


def test_a_tenants_slots_on_two_nodes_of_its_overlay_get_distinct_indices(db, nodes):
    _underlays(db)
    assert _slot_of(db, 'acme', node_id='n1') == 'n1-s0'
    assert _slot_of(db, 'acme', node_id='n2') == 'n2-s1'     # n2-s0 would be 10.100.0.10 twice
    assert _slot_of(db, 'globex', node_id='n2') == 'n2-s0'   # another tenant: another overlay
    assert _slot_of(db, 'acme', node_id='n1') == 'n1-s2'     # s1 is acme's on n2
    assert _slot_of(db, 'acme') == 'n1-s3'


def test_without_an_underlay_address_a_node_is_no_overlay_peer_and_indices_may_repeat(db, nodes):
    db.transact(service.set_underlay, OPERATOR, 'n1', '192.0.2.1')
    assert _slot_of(db, 'acme', node_id='n1') == 'n1-s0'
    assert _slot_of(db, 'acme', node_id='n2') == 'n2-s0'


def test_when_only_colliding_slots_fit_the_reservation_is_refused_naming_why(db, nodes):
    _underlays(db)
    held = [_slot_of(db, 'acme', node_id='n1') for _number in range(6)]
    assert held == ['n1-s%d' % index for index in range(6)]
    assert _slot_of(db, 'acme', node_id='n2') == 'n2-s6'
    assert _slot_of(db, 'acme', node_id='n2') == 'n2-s7'
    with pytest.raises(Conflict) as refused:
        _slot_of(db, 'acme', node_id='n2')
    message = str(refused.value)
    assert 'slot index that tenant acme already holds on another node of its overlay' in message, message
    assert 'n1 slot 0' in message and 'distinct indices' in message, message
    # Free slots are still there for another tenant, and for acme once one of its indices is free.
    assert _slot_of(db, 'globex', node_id='n2') == 'n2-s0'
    with db.write() as session:
        session.execute(update(Allocation).where(Allocation.slot_id == 'n1-s1').values(state='released'))
    assert _slot_of(db, 'acme', node_id='n2') == 'n2-s1'


def test_a_tenants_reservations_racing_on_two_nodes_never_share_an_index(db, nodes):
    _underlays(db)

    def one(node_id):
        try:
            return _slot_of(db, 'acme', node_id=node_id)
        except Conflict:
            return None
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        taken = [slot for slot in pool.map(one, ['n1', 'n2'] * 8) if slot]
    indices = [slot.split('-s')[1] for slot in taken]
    assert len(indices) == len(set(indices)) == 8, taken


def test_a_moved_allocation_keeps_its_index_free_of_its_own_old_slot(db, nodes):
    _underlays(db)
    allocation = db.transact(service.reserve, tenant('acme'), request(node_id='n1'))[0]
    with db.write() as session:
        session.execute(update(service.Node).where(service.Node.id == 'n1').values(unreachable_since=utcnow()))
        moved = service.take_slot(session, service.AllocationRequest(
            image='x', image_checksum='x', ssh_keys=[], vcpus=1, memory_mib=1024), allocation.id, utcnow(), 'acme')
    assert moved.id == 'n2-s0'
