# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Discovery results and approval: the collection's approved-slot-map rules decide, all or
nothing, and a refusal changes nothing."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from gpuaas_control import audit, service
from gpuaas_control.collection import contract
from gpuaas_control.models import AuditEntry, Slot
from tests.controlplane.conftest import approved_map
from tests.controlplane.helpers import OPERATOR, add_node, add_tenant, request, tenant


def _state(db):
    with db.read() as session:
        slots = sorted((s.id, s.approved, s.state, s.destructive_wipe_policy)
                       for s in session.execute(select(Slot)).scalars())
        entries = session.execute(select(func.count()).select_from(AuditEntry)).scalar()
    return slots, entries


@pytest.mark.backends('sqlite')
def test_approval_creates_slots_with_the_collections_layout(db, hgx_discovery_factory):
    discovery = hgx_discovery_factory('n1')
    slots = add_node(db, discovery, approved_map(discovery))
    assert [s.id for s in slots] == ['n1-s%d' % i for i in range(8)]
    for slot in slots:
        assert slot.mac == contract.Slot('n1', slot.slot_index).mac
        assert slot.ip == '10.100.0.%d' % (10 + slot.slot_index)
        assert slot.gpu_model == '10de:2330' and slot.state == 'free' and slot.approved
        assert slot.capacity_metadata['fabric_claim_mode'] == 'per_slot_vf'


def _mutate(entries, key, value, index=0):
    entries[index][key] = value
    return entries


@pytest.mark.parametrize('change, expect', [
    (lambda e: _mutate(e, 'destructive_wipe_policy', ''), 'destructive_wipe_policy must be set'),
    (lambda e: _mutate(e, 'destructive_wipe_policy', 'rm -rf /'), "is not one of"),
    (lambda e: _mutate(e, 'gpu_address', '0000:99:00.0'), 'gpu_address is'),
    (lambda e: _mutate(e, 'capacity_metadata', {'storage_ownership': 'slice',
                                                'fabric_claim_mode': 'per_slot_vf',
                                                'fabric_vf_pci_address': '0000:1a:00.7'}),
     'discovery says the slot\'s VF is 0000:1a:00.1'),
    (lambda e: _mutate(e, 'capacity_metadata', {'storage_ownership': 'slice'}),
     'capacity_metadata lacks'),
    (lambda e: _mutate(e, 'wipe', 'zero'), 'unknown keys wipe'),
    (lambda e: _mutate(e, 'slot_id', 'n1-s99'), 'no such slot'),
    (lambda e: e + [dict(e[0])], 'approved twice'),
    (lambda e: _mutate(e, 'note', 'line\nbreak'), 'without control characters'),
])
def test_the_collections_refusals_change_nothing(db, hgx_discovery_factory, change, expect):
    discovery = hgx_discovery_factory('n1')
    add_node(db, discovery, approved_map(discovery, policy='zero'))
    before = _state(db)
    with pytest.raises(service.Invalid) as info:
        db.transact(service.approve, OPERATOR, 'n1', change(approved_map(discovery)))
    assert any(expect in p for p in info.value.problems + [info.value.message]), info.value.problems
    assert _state(db) == before


def test_an_ineligible_slot_is_refused_with_its_reasons(db, hgx_discovery_factory):
    discovery = hgx_discovery_factory('n1')
    discovery['slots'][2]['eligible'] = False
    discovery['slots'][2]['reasons'] = ['the IOMMU is off']
    db.transact(service.record_discovery, OPERATOR, 'n1', discovery)
    with pytest.raises(service.Invalid) as info:
        db.transact(service.approve, OPERATOR, 'n1', approved_map(hgx_discovery_factory('n1')))
    assert info.value.problems == ['slot n1-s2: discovery says the slot is not eligible: the IOMMU is off']
    assert _state(db) == ([], 1)


@pytest.mark.parametrize('field, value, expect', [
    ('gpu_address', '0000:18:00.0"/><evil/>', 'is not a PCI address'),
    ('nvme_address', '../../etc/passwd', 'is not a PCI address'),
    ('cpulist', '0-3; rm -rf /', 'is not a CPU list'),
    ('slot_id', 'n1-s0; reboot', 'slot_id'),
    ('numa_node', 'zero', 'is not a NUMA node'),
])
@pytest.mark.backends('sqlite')
def test_hostile_discovery_fields_are_refused(db, hgx_discovery_factory, field, value, expect):
    discovery = hgx_discovery_factory('n1')
    discovery['slots'][0][field] = value
    with pytest.raises(service.Invalid) as info:
        db.transact(service.record_discovery, OPERATOR, 'n1', discovery)
    assert expect in ' '.join(info.value.problems)
    with db.read() as session:
        assert session.get(service.Node, 'n1') is None


@pytest.mark.backends('sqlite')
def test_discovery_must_be_a_discovery_of_that_node(db, hgx_discovery_factory):
    with pytest.raises(service.Invalid, match='not a gpuaas.slice.slot_discovery_info result'):
        db.transact(service.record_discovery, OPERATOR, 'n1', {'node_id': 'n1', 'slots': []})
    with pytest.raises(service.Invalid, match='is of node'):
        db.transact(service.record_discovery, OPERATOR, 'n2', hgx_discovery_factory('n1'))
    with pytest.raises(service.Invalid, match='node_id'):
        db.transact(service.record_discovery, OPERATOR, '../n1', hgx_discovery_factory('n1'))


def test_a_slot_in_use_cannot_be_withdrawn(db, hgx_discovery_factory):
    discovery = hgx_discovery_factory('n1')
    add_node(db, discovery, approved_map(discovery))
    add_tenant(db, 'acme')
    allocation, _created = db.transact(service.reserve, tenant('acme'), request())
    before = _state(db)
    others = {s['slot_id'] for s in discovery['slots']} - {allocation.slot_id}
    with pytest.raises(service.Conflict) as info:
        db.transact(service.approve, OPERATOR, 'n1', approved_map(discovery, only=others))
    assert 'cannot be withdrawn' in info.value.problems[0]
    assert _state(db) == before
    # Re-approving the same map changes no slot, and says so in the audit entry.
    db.transact(service.approve, OPERATOR, 'n1', approved_map(discovery))
    with db.read() as session:
        last = session.execute(select(AuditEntry).order_by(AuditEntry.seq.desc())).scalars().first()
        assert last.after['changed'] == [] and audit.verify(session).ok
