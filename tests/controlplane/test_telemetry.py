# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Allocation telemetry and slot acceptance in the control plane: what a node returns is
checked and kept per allocation, a failed acceptance is reported (and quarantines the slot by
policy), and GET /v1/allocations/{id}/telemetry shows it to the allocation's tenant and to
operators only."""

from __future__ import annotations

import copy

import pytest
from sqlalchemy import select, update

from gpuaas_control import telemetry
from gpuaas_control.models import Allocation, AllocationTelemetry, AuditEntry, Event, Slot
from tests.controlplane.helpers import OPERATOR

T0 = 1764675600.0
PASSED = {'kind': 'acceptance', 'status': 'passed', 'failed': [], 'measured': None, 'checks': [
    {'name': 'gpu_visible', 'status': 'passed', 'reason': 'GPU 10de:2330 at 0000:00:06.0'},
    {'name': 'link_width', 'status': 'passed', 'reason': 'link x16, approved x16'},
    {'name': 'h2d_GBps_pinned', 'status': 'skipped', 'reason': 'CUDA is not available in the guest'}]}
FAILED = copy.deepcopy(PASSED)
FAILED.update(status='failed', failed=['link_width'])
FAILED['checks'][1].update(status='failed', reason='link x8, approved x16')
HEALTH = {'kind': 'health', 'health': {'uptime_s': 61.2, 'load': [0.1, 0.2, 0.3]},
          'gpu': {'available': False, 'reason': 'nvidia-smi is not installed'}}


def summary(allocation_id, acceptance='passed', samples=2, **change):
    acceptance = PASSED if acceptance == 'passed' else acceptance
    value = {'allocation_id': allocation_id, 'slot_id': 'n1-s0', 'samples': samples, 'first_at': T0,
             'last_at': T0 + 60, 'health': {'received_at': T0 + 60, 'sample': HEALTH},
             'acceptance': {'received_at': T0, 'result': acceptance} if acceptance else None}
    value.update(change)
    return value


@pytest.fixture
def running(running_allocation):
    """The id of one running allocation of tenant acme on node n1."""
    return running_allocation.id


def record(db, allocation_id, entry, policy='report', node='n1'):
    return db.transact(telemetry.record, OPERATOR, node, [allocation_id], {allocation_id: entry}, policy)


def row(db, allocation_id):
    with db.read() as session:
        found = session.get(AllocationTelemetry, allocation_id)
        session.expunge_all()
        return found


def failure_reports(db, allocation_id):
    with db.read() as session:
        events = [(e.kind, e.message, e.data) for e in session.execute(select(Event).where(
            Event.allocation_id == allocation_id, Event.message.like('slot acceptance%'))).scalars()]
        audits = [(a.action, a.target_id, a.after) for a in session.execute(select(AuditEntry).where(
            AuditEntry.action.like('slot.%'), AuditEntry.action != 'slot.approve')).scalars()]
        slot = session.get(Slot, session.get(Allocation, allocation_id).slot_id)
        return events, audits, (slot.approved, slot.state_reason)


def test_a_summary_is_recorded(db, running):
    assert record(db, running, summary(running)) == {'recorded': 1, 'missing': 0, 'refused': 0,
                                                     'acceptance_failed': 0}
    got = row(db, running)
    assert got.samples == 2 and got.health == HEALTH and got.acceptance == PASSED
    assert got.acceptance_status == 'passed' and got.acceptance_at.timestamp() == T0
    assert got.last_at.timestamp() == T0 + 60 and got.error is None
    assert failure_reports(db, running) == ([], [], (True, None))


def test_nothing_posted_yet(db, running):
    assert record(db, running, {'missing': True})['missing'] == 1
    assert row(db, running).samples == 0 and row(db, running).acceptance is None


@pytest.mark.parametrize('entry, error', [
    ({'raw': None}, 'the node returned nothing for this allocation'),
    ({'raw': {'error': 'telemetry summary /x.json is not valid JSON'}},
     'the node could not read the summary: telemetry summary /x.json is not valid JSON'),
    ({'raw': {'allocation_id': 'other', 'samples': 1}}, 'the summary names allocation "other"'),
    ({'raw': 'SUMMARY'}, 'the summary is not an object'),
    ({'samples': -1}, 'samples -1 is not a count'),
    ({'samples': True}, 'samples true is not a count'),
    ({'first_at': float('inf')}, 'first_at Infinity is not a time'),
    ({'last_at': 'yesterday'}, 'last_at "yesterday" is not a time'),
    ({'health': {'received_at': T0, 'sample': 'x'}}, 'health is not {received_at, sample}'),
    ({'health': {'received_at': T0, 'sample': {'pad': 'x' * 70000}}}, 'the health sample is 70011 bytes, more than 65536'),
    ({'acceptance': dict(PASSED, status='fine')},
     'acceptance status "fine" is not one of passed, failed'),
    ({'acceptance': dict(PASSED, checks=[])}, 'acceptance checks must be a list'),
    ({'acceptance': dict(FAILED, status='passed')},
     'acceptance status "passed" disagrees with its checks (failed: link_width)'),
    ({'acceptance': dict(PASSED, checks=[{'name': 'x', 'status': 'ok', 'reason': ''}])},
     'acceptance checks[0] {"name": "x", "status": "ok", "reason": ""} is not {name, status, reason}'),
])
def test_a_bad_summary_is_not_recorded_and_says_why(db, running, entry, error):
    assert record(db, running, summary(running))['recorded'] == 1
    entry = entry['raw'] if 'raw' in entry else summary(running, **entry)
    assert record(db, running, entry)['refused'] == 1
    got = row(db, running)
    assert got.error.startswith(error), got.error
    assert got.acceptance == PASSED and got.samples == 2       # what was recorded before stays


def test_a_failed_acceptance_is_reported_once(db, running):
    assert record(db, running, summary(running, FAILED))['acceptance_failed'] == 1
    assert record(db, running, summary(running, FAILED, samples=3))['acceptance_failed'] == 0
    events, audits, slot = failure_reports(db, running)
    assert events == [('error', 'slot acceptance failed: link_width', {'failed': ['link_width']})]
    assert audits == [('slot.acceptance_failed', 'n1-s0',
                       {'allocation_id': running, 'failed': {'link_width': 'link x8, approved x16'}})]
    assert slot == (True, None)     # reported, not quarantined: the default policy


def test_the_quarantine_policy_unapproves_the_slot(db, running):
    record(db, running, summary(running, FAILED), policy='quarantine')
    _events, audits, (approved, reason) = failure_reports(db, running)
    assert [a[0] for a in audits] == ['slot.acceptance_failed', 'slot.quarantine']
    assert approved is False
    assert reason == ('quarantined: slot acceptance failed for allocation %s (link_width: link x8, approved x16); '
                      'approve the slot again once it is fixed' % running)


def test_another_nodes_answer_is_ignored(db, running):
    assert record(db, running, summary(running), node='n2') == {'recorded': 0, 'missing': 0, 'refused': 0,
                                                                'acceptance_failed': 0}
    assert row(db, running) is None


# -- the API -----------------------------------------------------------------------------------

@pytest.fixture
def api_running(client, db, tokens, node):
    reply = client.post('/v1/allocations', headers=tokens['acme'], json={
        'image': 'debian-12.qcow2', 'image_checksum': 'sha256:' + 'ab' * 32,
        'ssh_keys': [__import__('tests.controlplane.helpers', fromlist=['ssh_key']).ssh_key()],
        'vcpus': 4, 'memory_mib': 8192})
    assert reply.status_code == 201, reply.text
    allocation_id = reply.json()['id']
    db.transact(lambda s: s.execute(update(Allocation).where(Allocation.id == allocation_id).values(state='running')))
    return allocation_id


def test_the_tenant_reads_its_allocations_telemetry(client, db, tokens, api_running):
    path = '/v1/allocations/%s/telemetry' % api_running
    before = client.get(path, headers=tokens['acme'])
    assert before.status_code == 200
    assert before.json() == {'allocation_id': api_running, 'collected_at': None, 'samples': 0, 'first_at': None,
                             'last_at': None, 'health': None, 'health_at': None,
                             'acceptance': {'status': 'pending', 'at': None, 'failed': [], 'checks': [],
                                            'measured': None}}
    record(db, api_running, summary(api_running, FAILED))
    got = client.get(path, headers=tokens['acme']).json()
    assert got['samples'] == 2 and got['health'] == HEALTH and 'error' not in got
    assert got['acceptance']['status'] == 'failed' and got['acceptance']['failed'] == ['link_width']
    assert got['acceptance']['checks'] == FAILED['checks']
    assert got['acceptance']['at'].startswith('2025-12-02T11:40:00')


def test_another_tenant_gets_404_and_an_operator_sees_the_collection_error(client, db, tokens, api_running):
    path = '/v1/allocations/%s/telemetry' % api_running
    assert client.get(path, headers=tokens['globex']).status_code == 404
    assert client.get(path).status_code == 401
    assert client.get('/v1/allocations/nope/telemetry', headers=tokens['operator']).status_code == 404
    record(db, api_running, {'error': 'telemetry summary /x is not valid JSON'})
    operator = client.get(path, headers=tokens['operator']).json()
    assert operator['error'] == 'the node could not read the summary: telemetry summary /x is not valid JSON'
    assert 'error' not in client.get(path, headers=tokens['acme']).json()


def test_the_approved_facts_come_from_the_slot_and_its_discovery_and_the_seed_and_agent_take_them(
        db, running, hgx_discovery_factory):
    from ansible_collections.gpuaas.slice.plugins.module_utils import _seed
    from tests.unit.roles.h100_guest import load_agent
    discovery = hgx_discovery_factory('n1')
    with db.read() as session:
        slot = session.get(Slot, session.get(Allocation, running).slot_id)
        facts = telemetry.approved_facts(slot, discovery)
        gpu = next(g for g in discovery['gpus'] if g['address'] == slot.gpu_address)
        assert facts == {'gpu_model': slot.gpu_model, 'link_speed': gpu['link']['max_speed'],
                         'link_width': gpu['link']['max_width'], 'nvme': slot.nvme_address is not None,
                         'fabric_vf': slot.fabric_vf_pci_address is not None}
        assert telemetry.approved_facts(slot, {'gpus': [dict(gpu, link={})]}) is None
        assert telemetry.approved_facts(slot, None) is None
        for link in ({'max_speed': 'Unknown', 'max_width': 16}, {'max_speed': '32.0 GT/s PCIe', 'max_width': 0}):
            assert telemetry.approved_facts(slot, {'gpus': [dict(gpu, link=link)]}) is None
    assert _seed.check_approved(facts) == dict(facts, bars={})
    assert load_agent().check_approved(facts) == facts
