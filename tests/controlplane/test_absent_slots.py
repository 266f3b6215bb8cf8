# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A GPU that falls off the bus: its slot is absent (never reserved, reported), the others stay as they were.

The discoveries are the collection's, of the sample 8-GPU host with one GPU's sysfs directory
removed as the kernel removes it (tests/sysfs/builder.remove_device), run with the approved map.
"""

from __future__ import annotations

import pytest
from sqlalchemy import select

from ansible_collections.gpuaas.slice.plugins.module_utils._discovery import Discovery
from gpuaas_control import service
from gpuaas_control.models import Event, Slot
from gpuaas_control.schemas.views import AllocationView
from tests.controlplane.conftest import approved_map
from tests.controlplane.helpers import OPERATOR, add_node, add_tenant, request, tenant
from tests.sysfs import hosts
from tests.sysfs.builder import remove_device


@pytest.fixture(scope='module')
def lost_gpu(tmp_path_factory, hgx_discovery_factory):
    """(the full discovery, its map, the discovery with n1-s2's GPU gone, that GPU's address)."""
    full = hgx_discovery_factory('n1')
    entries = approved_map(full)
    for entry, slot in zip(entries, full['slots']):
        entry['fingerprint'] = slot['fingerprint']
    sysfs, proc = hosts.build_hgx(str(tmp_path_factory.mktemp('lost') / 'hgx'))
    lost = full['slots'][2]['gpu_address']
    remove_device(sysfs, lost)
    return full, entries, Discovery('n1', sysfs, proc, approved_slots=entries).run(), lost


def _slots(db):
    with db.read() as session:
        return dict((s.id, (s.mac, s.ip, s.gpu_address, s.approved, s.state, s.absent_reason))
                    for s in session.execute(select(Slot)).scalars())


def _lose(db, discovery, entries):
    db.transact(service.record_discovery, OPERATOR, 'n1', discovery)
    return db.transact(service.approve, OPERATOR, 'n1', entries)


def test_an_absent_slot_is_not_reserved_and_the_others_are(db, lost_gpu):
    full, entries, gone, lost = lost_gpu
    add_node(db, full, entries)
    before = _slots(db)
    _lose(db, gone, entries)
    after = _slots(db)
    reason = gone['absent'][0]['reason']
    assert reason.startswith('GPU %s of approved slot n1-s2 is not on the PCI bus' % lost)
    # The lost slot keeps its row, id, MAC, IP and approval, and says why; the others are untouched.
    assert after == dict(before, **{'n1-s2': before['n1-s2'][:5] + (reason,)})
    add_tenant(db, 'acme')
    taken = [db.transact(service.reserve, tenant('acme'), request())[0].slot_id for _count in range(7)]
    assert sorted(taken) == ['n1-s0', 'n1-s1', 'n1-s3', 'n1-s4', 'n1-s5', 'n1-s6', 'n1-s7']
    with pytest.raises(service.Conflict, match='no free, approved slot'):
        db.transact(service.reserve, tenant('acme'), request())
    with pytest.raises(service.Conflict, match='no free, approved slot'):
        db.transact(service.reserve, tenant('acme'), request(node_id='n1', numa_node=0))


def test_the_gpu_returning_makes_its_slot_reservable_again(db, lost_gpu):
    full, entries, gone, _lost = lost_gpu
    add_node(db, full, entries)
    _lose(db, gone, entries)
    add_node(db, full, entries)
    assert all(state[5] is None for state in _slots(db).values())
    add_tenant(db, 'acme')
    taken = [db.transact(service.reserve, tenant('acme'), request())[0].slot_id for _count in range(8)]
    assert 'n1-s2' in taken


def test_an_allocation_on_a_slot_whose_gpu_is_lost_is_reported(db, lost_gpu):
    full, entries, gone, lost = lost_gpu
    add_node(db, full, entries)
    add_tenant(db, 'acme')
    held = [db.transact(service.reserve, tenant('acme'), request())[0] for _count in range(3)]
    victim = next(a for a in held if a.slot_id == 'n1-s2')
    # Approval does not refuse the map for the held slot: it is absent, not withdrawn, and stays held.
    slots = _lose(db, gone, entries)
    assert [(s.id, s.state, s.allocation_id) for s in slots if s.id == 'n1-s2'] == [('n1-s2', 'reserved', victim.id)]
    reason = gone['absent'][0]['reason']
    with db.read() as session:
        allocation = service.get_allocation(session, OPERATOR, victim.id)
        assert AllocationView.of(allocation, OPERATOR).slot_absent == reason
        assert AllocationView.of(allocation, tenant('acme')).model_dump().get('slot_absent') is None
        assert 'slot_absent' not in AllocationView.of(allocation, tenant('acme')).model_dump()
        others = [service.get_allocation(session, OPERATOR, a.id) for a in held if a is not victim]
        assert [AllocationView.of(a, OPERATOR).slot_absent for a in others] == [None, None]
        (event,) = session.execute(select(Event).where(Event.allocation_id == victim.id,
                                                       Event.kind == 'slot_absent')).scalars()
        assert event.message == "the slot's GPU is no longer there; the operator is told"
        assert event.data['detail'] == reason + '; operator: release the allocation'
    # Approving the same map again reports nothing new.
    _lose(db, gone, entries)
    with db.read() as session:
        assert len(session.execute(select(Event).where(Event.kind == 'slot_absent')).scalars().all()) == 1
    assert lost in reason


@pytest.mark.backends('sqlite')
def test_the_api_shows_the_absent_slot(client, tokens, lost_gpu):
    full, entries, gone, _lost = lost_gpu
    op = tokens['operator']
    for discovery in (full, gone):
        assert client.put('/v1/nodes/n1/discovery', json=discovery, headers=op).status_code == 200
        reply = client.put('/v1/nodes/n1/approval', json={'approved_slots': entries}, headers=op)
        assert reply.status_code == 200, reply.text
    slots = dict((s['id'], s) for s in reply.json()['slots'])
    assert slots['n1-s2']['absent_reason'] == gone['absent'][0]['reason'] and slots['n1-s2']['approved']
    assert [s['absent_reason'] for i, s in sorted(slots.items()) if i != 'n1-s2'] == [None] * 7
    listed = dict((s['id'], s['absent_reason']) for s in client.get('/v1/slots', headers=op).json()['slots'])
    assert listed['n1-s2'] == gone['absent'][0]['reason']
    (summary,) = client.get('/v1/nodes', headers=op).json()['nodes']
    assert (summary['approved_slots'], summary['free_slots']) == (8, 7)
    inventory = client.get('/v1/inventory', headers=op).json()
    assert [s['absent_reason'] is not None for s in inventory['slots']] == [i == 2 for i in range(8)]


def test_without_fingerprints_a_held_slots_devices_never_move(db, lost_gpu, tmp_path):
    """A map without fingerprints keeps the fabric PFs (by their VF) but not the NVMe drives: the slot
    beside the lost GPU would get its drive. Free, it is re-paired; held, the map is refused."""
    full, entries, _gone, lost = lost_gpu
    bare = [dict((k, v) for k, v in e.items() if k != 'fingerprint') for e in entries]
    sysfs, proc = hosts.build_hgx(str(tmp_path / 'hgx'))
    remove_device(sysfs, lost)
    gone = Discovery('n1', sysfs, proc, approved_slots=bare).run()
    now = dict((s['slot_id'], s) for s in gone['slots'])
    assert now['n1-s3']['fabric_pf_address'] == full['slots'][3]['fabric_pf_address']
    assert now['n1-s3']['nvme_address'] == full['slots'][2]['nvme_address']
    add_node(db, full, bare)
    add_tenant(db, 'acme')
    held = [db.transact(service.reserve, tenant('acme'), request())[0].slot_id for _count in range(4)]
    assert 'n1-s3' in held
    db.transact(service.record_discovery, OPERATOR, 'n1', gone)
    with pytest.raises(service.Conflict) as refused:
        db.transact(service.approve, OPERATOR, 'n1', bare)
    s3 = full['slots'][3]
    was = {'nvme_address': s3['nvme_address'], 'fabric_pf_address': s3['fabric_pf_address'],
           'fabric_vf_pci_address': s3['fabric_vf_pci_address'], 'companions': []}
    assert refused.value.problems == [
        "slot n1-s3 is reserved and its devices changed from %s to %s: release it first (keep the fingerprints "
        "in the map, so a lost GPU moves no other slot's devices)"
        % (was, dict(was, nvme_address=full['slots'][2]['nvme_address']))]
