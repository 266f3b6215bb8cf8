# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The slot table as inventory data: the API's inventory document checked, and hosts, host
vars and groups made from it."""

from __future__ import annotations

import gc
import json

import pytest

from ansible_collections.gpuaas.slice.plugins.module_utils import _slot_inventory as inv


def _slot(node, index, **values):
    row = {'id': '%s-s%d' % (node, index), 'node_id': node, 'slot_index': index, 'state': 'free',
           'approved': True, 'allocation_id': None, 'state_reason': None, 'gpu_model': '10de:2330',
           'gpu_address': '0000:%02x:00.0' % (0x18 + index), 'companions': [], 'numa_node': 0,
           'cpulist': '0-7', 'nvme_address': None, 'fabric_pf_address': None,
           'fabric_vf_index': None, 'fabric_vf_pci_address': None, 'mac': '52:54:00:00:00:%02x' % index,
           'ip': '10.100.0.%d' % (10 + index), 'destructive_wipe_policy': 'zero',
           'capacity_metadata': {'storage_ownership': 'slice'}}
    row.update(values)
    return row


REACHABLE = {'reachable': True, 'unreachable_since': None, 'unreachable_error': None,
             'last_probe_at': None, 'next_probe_at': None}
UNREACHABLE = {'reachable': False, 'unreachable_since': '2026-12-02T10:00:00+00:00',
               'unreachable_error': 'ssh: connect to host n2 port 22: Connection refused',
               'last_probe_at': '2026-12-02T10:00:15+00:00', 'next_probe_at': '2026-12-02T10:00:45+00:00'}


def _node(node_id, schedulable=True, drain_reason=None, reach=None, **values):
    return dict(reach or REACHABLE, id=node_id, schedulable=schedulable, drain_reason=drain_reason, **values)


def test_hosts_groups_and_host_vars():
    approved = [{'slot_id': 'n1-s0', 'gpu_address': '0000:18:00.0'}]
    nodes = [_node('n2', False, 'bios', UNREACHABLE, approved_slots=None),
             _node('n1', approved_slots=approved)]
    slots = [_slot('n1', 1, state='reserved', allocation_id='alloc-1', numa_node=1),
             _slot('n1', 0),
             _slot('n2', 0, gpu_model='1002:74a1'),
             _slot('n2', 1, approved=False),
             _slot('gone', 0)]
    data = inv.parse(json.dumps({'nodes': nodes, 'slots': slots}).encode())
    assert data == inv.build(nodes, slots)
    assert sorted(data['hosts']) == ['n1', 'n2']
    n1 = data['hosts']['n1']
    assert n1['gpuaas_node_id'] == 'n1' and n1['gpuaas_schedulable'] is True
    assert n1['gpuaas_approved_slots'] == approved
    assert [s['slot_id'] for s in n1['gpuaas_slots']] == ['n1-s0', 'n1-s1']
    assert n1['gpuaas_slots'][1]['allocation_id'] == 'alloc-1'
    assert n1['gpuaas_slots'][0]['approved'] is True
    assert sorted(n1['gpuaas_slots'][0]) == sorted(inv.STATE_KEYS + inv.DEVICE_KEYS + ('slot_id',))
    # The approval's decisions are in the approved slot map alone, not repeated per slot.
    assert 'destructive_wipe_policy' not in n1['gpuaas_slots'][0]
    assert 'capacity_metadata' not in n1['gpuaas_slots'][0]
    assert n1['gpuaas_slot_counts'] == {'free': 1, 'reserved': 1}
    assert n1['gpuaas_reachable'] is True and n1['gpuaas_unreachable_since'] is None
    n2 = data['hosts']['n2']
    assert n2['gpuaas_schedulable'] is False and n2['gpuaas_drain_reason'] == 'bios'
    assert {key: n2['gpuaas_' + key] for key in inv.REACHABILITY_KEYS} == UNREACHABLE
    assert data['hosts']['n2']['gpuaas_approved_slots'] == []
    assert [s['slot_id'] for s in data['hosts']['n2']['gpuaas_slots']] == ['n2-s0']
    assert data['groups'] == {
        'gpuaas_nodes': ['n1', 'n2'],
        'gpuaas_schedulable': ['n1'],
        'gpuaas_drained': ['n2'],
        'gpuaas_reachable': ['n1'],
        'gpuaas_unreachable': ['n2'],
        'gpuaas_state_free': ['n1', 'n2'],
        'gpuaas_gpu_10de_2330': ['n1'],
        'gpuaas_numa_0': ['n1', 'n2'],
        'gpuaas_state_reserved': ['n1'],
        'gpuaas_numa_1': ['n1'],
        'gpuaas_gpu_1002_74a1': ['n2'],
    }
    withdrawn = inv.build(nodes, slots, include_unapproved=True)['hosts']['n2']['gpuaas_slots']
    assert [s['slot_id'] for s in withdrawn] == ['n2-s0', 'n2-s1']


def _states(row):
    """A slot as GET /v1/inventory/states answers it."""
    return dict((key, row[key]) for key in ('id', 'node_id') + inv.STATE_KEYS)


def test_only_a_true_reachable_is_reachable():
    """Fail closed: a node the answer does not say is reachable is in gpuaas_unreachable."""
    for value in (None, 'yes', 1, False):
        data = inv.build([_node('n1', reach=dict(REACHABLE, reachable=value))], [], details='none')
        assert data['hosts']['n1']['gpuaas_reachable'] is False
        assert data['groups']['gpuaas_unreachable'] == ['n1'] and 'gpuaas_reachable' not in data['groups']


def test_less_detail_leaves_out_host_vars_not_groups():
    approved = [{'slot_id': 'n1-s0', 'gpu_address': '0000:18:00.0'}]
    nodes = [_node('n1', False, 'bios', UNREACHABLE, approved_slots=approved)]
    slots = [_slot('n1', 0), _slot('n1', 1, state='reserved', allocation_id='a1', numa_node=1)]
    full = inv.build(nodes, slots)
    approved_only = inv.build(nodes, slots, details='approved')
    states_only = [dict((k, n[k]) for k in inv.NODE_KEYS) for n in nodes]
    none = inv.parse(json.dumps({'nodes': states_only, 'slots': [_states(s) for s in slots]}), details='none')
    assert none['groups'] == approved_only['groups'] == full['groups']
    assert approved_only['hosts']['n1'] == dict((k, v) for k, v in full['hosts']['n1'].items() if k != 'gpuaas_slots')
    assert approved_only['hosts']['n1']['gpuaas_approved_slots'] == approved
    assert none['hosts']['n1'] == dict({'gpuaas_' + key: value for key, value in UNREACHABLE.items()},
                                       gpuaas_node_id='n1', gpuaas_schedulable=False, gpuaas_drain_reason='bios',
                                       gpuaas_slot_counts={'free': 1, 'reserved': 1})


def test_each_level_asks_what_it_needs():
    assert inv.path('full') == inv.path('approved') == '/v1/inventory'
    assert inv.path('none') == '/v1/inventory/states'
    states = json.dumps({'nodes': [_node('n1')],
                         'slots': [_states(_slot('n1', 0))]})
    with pytest.raises(inv.InventoryError, match=r'nodes\[0\] lacks approved_slots'):
        inv.parse(states, details='approved')
    with pytest.raises(inv.InventoryError, match=r'slots\[0\] lacks gpu_address, companions'):
        inv.parse(states.replace('"drain_reason": null', '"drain_reason": null, "approved_slots": []'))
    with pytest.raises(inv.InventoryError, match=r'nodes\[0\] lacks last_probe_at'):
        inv.parse(states.replace('"last_probe_at": null, ', ''), details='none')
    with pytest.raises(inv.InventoryError, match="slot_details must be one of full, approved, none, not 'some'"):
        inv.build([], [], details='some')


def test_group_names_are_valid_names():
    assert inv.group_name('gpuaas_gpu', '10de:2330') == 'gpuaas_gpu_10de_2330'
    assert inv.group_name('x', 'a-b.c d') == 'x_a_b_c_d'


@pytest.mark.parametrize('raw, message', [
    (b'<html>', 'the answer is not JSON'),
    (b'[]', 'not a mapping with nodes and slots'),
    (b'{"slots": []}', "no list 'nodes'"),
    (b'{"nodes": {}, "slots": []}', "no list 'nodes'"),
    (b'{"nodes": ["n1"], "slots": []}', r'nodes\[0\] is not a mapping'),
    (b'{"nodes": [{"id": "n1"}], "slots": []}', r'nodes\[0\] lacks schedulable, drain_reason, reachable, .*, approved_slots'),
    (json.dumps({'nodes': [], 'slots': [{'id': 'n1-s0', 'node_id': 'n1'}]}).encode(),
     r'slots\[0\] lacks slot_index, state'),
])
def test_an_answer_that_is_not_an_inventory_is_refused(raw, message):
    with pytest.raises(inv.InventoryError, match=message):
        inv.parse(raw)


def test_api_refusals_say_what_to_do():
    assert inv.http_error(401, b'{"detail": "the token is not valid or was revoked"}') == (
        '401: the token is not valid or was revoked (set the token option or GPUAAS_API_TOKEN '
        'to a valid token)')
    assert inv.http_error(403, b'{"detail": "this endpoint is for operators"}').endswith(
        '(the inventory needs a reader or operator token)')
    assert inv.http_error(502, b'<html>bad gateway</html>') == '502: no JSON error detail'


@pytest.mark.parametrize('url, shown', [
    ('https://gpuaas.example.com/', 'https://gpuaas.example.com'),
    ('http://127.0.0.1:8000', 'http://127.0.0.1:8000'),
    ('HTTPS://api.example.com/gpuaas//', 'HTTPS://api.example.com/gpuaas'),
    ('https://awx:hunter2@gpuaas.example.com/api', 'https://gpuaas.example.com/api'),
])
def test_the_url_is_shown_without_its_credentials(url, shown):
    assert inv.check_url(url) == shown


@pytest.mark.parametrize('url, message', [
    ('gpuaas.example.com', "not 'gpuaas.example.com'"),
    ('ftp://awx:hunter2@gpuaas.example.com', "not 'ftp://gpuaas.example.com'"),
    ('https://gpuaas.example.com/?token=1', 'without a query'),
    ('https://gpuaas.example.com/#x', 'without a query'),
    ('https://', "not 'https://'"),
    (None, 'not None'),
])
def test_a_url_that_is_not_the_apis_is_refused(url, message):
    with pytest.raises(inv.InventoryError, match="^url must be the API's http:// or https:// address") as caught:
        inv.check_url(url)
    assert message in str(caught.value) and 'hunter2' not in str(caught.value)


def test_a_token_never_reaches_a_message():
    assert inv.scrub('refused gpuaas_abc by proxy', 'gpuaas_abc') == 'refused <token> by proxy'
    assert inv.scrub('refused', None) == 'refused'
    assert inv.http_error(302, b'') == ("302: no JSON error detail (a redirect: the token is sent to no other "
                                        "address, give the API's own url)")
    assert len(inv.http_error(500, json.dumps({'detail': 'x' * 5000}).encode())) < 600


def test_the_collector_is_paused_while_the_host_vars_are_made_and_restored():
    assert gc.isenabled()
    with pytest.raises(inv.InventoryError):
        with inv.collector_paused():
            assert not gc.isenabled()
            inv.parse(b'<html>')
    assert gc.isenabled()
    gc.disable()
    try:
        with inv.collector_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()   # left as it was found
    finally:
        gc.enable()
