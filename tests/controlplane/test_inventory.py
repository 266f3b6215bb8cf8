# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The gpuaas.slice.slots inventory plugin, run by the real ansible-inventory against the
control plane's HTTP API (a real uvicorn on 127.0.0.1) on SQLite and PostgreSQL: hosts,
groups, constructed vars, the cache, and clear errors for a wrong token, a tenant's token,
an API that is not there and an answer that is not an inventory."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest
import uvicorn
import yaml

from gpuaas_control import api, service
from gpuaas_control.config import Settings
from tests.controlplane.conftest import approved_map
from tests.controlplane.helpers import OPERATOR, add_node, add_tenant, make_token, request, tenant

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _plain(value):
    """ansible-inventory --list marks templated values as unsafe: {'__ansible_unsafe': v}."""
    if isinstance(value, dict):
        if list(value) == ['__ansible_unsafe']:
            return value['__ansible_unsafe']
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


@pytest.fixture
def api_url(db, db_url):
    """The API on a free port of 127.0.0.1, served by uvicorn in a thread."""
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(api.create_app(Settings(db_url=db_url), db),
                                           host='127.0.0.1', port=port, log_level='warning'))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), 'uvicorn did not start'
        time.sleep(0.05)
    yield 'http://127.0.0.1:%d' % port
    server.should_exit = True
    thread.join(30)


@pytest.fixture
def operator_token(db):
    return make_token(db, 'operator')['Authorization'].split()[1]


def _inventory(tmp_path, url, *args, token=None, **options):
    path = tmp_path / 'test.gpuaas_slots.yml'
    path.write_text(yaml.safe_dump(dict({'plugin': 'gpuaas.slice.slots', 'url': url}, **options)))
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=os.path.join(REPO, '.build', 'collections'),
               ANSIBLE_INVENTORY_UNPARSED_FAILED='true', ANSIBLE_CONFIG=os.path.join(REPO, 'ansible.cfg'))
    env.pop('GPUAAS_API_TOKEN', None)
    if token is not None:
        env['GPUAAS_API_TOKEN'] = token
    done = subprocess.run([os.path.join(os.path.dirname(sys.executable), 'ansible-inventory'),
                           '-i', str(path), '--list'] + list(args),
                          env=env, capture_output=True, text=True, timeout=120, check=False)
    return done


def test_the_slot_table_as_an_inventory(db, api_url, operator_token, tmp_path, hgx_discovery_factory):
    one, two = hgx_discovery_factory('gpu-node-01'), hgx_discovery_factory('gpu-node-02')
    add_node(db, one, approved_map(one))
    add_node(db, two, approved_map(two, only={'gpu-node-02-s4', 'gpu-node-02-s5'}))
    add_tenant(db, 'acme')
    allocation, _created = db.transact(service.reserve, tenant('acme'), request(node_id='gpu-node-02',
                                                                                numa_node=1))
    db.transact(service.set_drain, OPERATOR, 'gpu-node-02', True, 'bios update')
    cache_dir = tmp_path / 'cache'
    done = _inventory(tmp_path, api_url, token=operator_token,
                      compose={'ansible_host': "gpuaas_node_id ~ '.example.com'"},
                      keyed_groups=[{'key': 'gpuaas_slot_counts.free | default(0) | string',
                                     'prefix': 'free_slots'}],
                      cache=True, cache_plugin='ansible.builtin.jsonfile',
                      cache_connection=str(cache_dir))
    assert done.returncode == 0, done.stderr
    data = _plain(json.loads(done.stdout))
    hostvars = data['_meta']['hostvars']
    assert sorted(hostvars) == ['gpu-node-01', 'gpu-node-02']
    node2 = hostvars['gpu-node-02']
    assert node2['ansible_host'] == 'gpu-node-02.example.com'
    assert node2['gpuaas_schedulable'] is False and node2['gpuaas_drain_reason'] == 'bios update'
    assert node2['gpuaas_approved_slots'] == approved_map(two, only={'gpu-node-02-s4', 'gpu-node-02-s5'})
    assert [(s['slot_id'], s['state'], s['allocation_id']) for s in node2['gpuaas_slots']] == [
        ('gpu-node-02-s4', 'reserved', allocation.id), ('gpu-node-02-s5', 'free', None)]
    assert node2['gpuaas_slots'][0]['mac'] == allocation.mac
    assert node2['gpuaas_slots'][0]['fabric_vf_pci_address'] == \
        node2['gpuaas_approved_slots'][0]['capacity_metadata']['fabric_vf_pci_address']
    # The approval's decisions are in gpuaas_approved_slots alone.
    assert not {'destructive_wipe_policy', 'capacity_metadata'} & set(node2['gpuaas_slots'][0])
    assert len(hostvars['gpu-node-01']['gpuaas_slots']) == 8

    def hosts(group):
        return sorted(data.get(group, {}).get('hosts', []))
    assert hosts('gpuaas_state_free') == ['gpu-node-01', 'gpu-node-02']
    assert hosts('gpuaas_state_reserved') == ['gpu-node-02']
    assert hosts('gpuaas_gpu_10de_2330') == ['gpu-node-01', 'gpu-node-02']
    assert hosts('gpuaas_numa_0') == ['gpu-node-01']
    assert hosts('gpuaas_numa_1') == ['gpu-node-01', 'gpu-node-02']
    assert hosts('gpuaas_drained') == ['gpu-node-02'] and hosts('gpuaas_schedulable') == ['gpu-node-01']
    assert hosts('free_slots_8') == ['gpu-node-01'] and hosts('free_slots_1') == ['gpu-node-02']
    assert os.listdir(cache_dir)

    # The cache answers until it is flushed.
    db.transact(service.set_drain, OPERATOR, 'gpu-node-02', False)
    options = dict(cache=True, cache_plugin='ansible.builtin.jsonfile', cache_connection=str(cache_dir))
    cached = json.loads(_inventory(tmp_path, api_url, token=operator_token, **options).stdout)
    assert cached['_meta']['hostvars']['gpu-node-02']['gpuaas_schedulable'] is False
    fresh = json.loads(_inventory(tmp_path, api_url, '--flush-cache', token=operator_token,
                                  **options).stdout)
    assert fresh['_meta']['hostvars']['gpu-node-02']['gpuaas_schedulable'] is True


def test_less_detail_for_fleet_scale_runs(db, api_url, operator_token, tmp_path, hgx_discovery_factory):
    one = hgx_discovery_factory('gpu-node-01')
    add_node(db, one, approved_map(one, only={'gpu-node-01-s0', 'gpu-node-01-s5'}))
    add_tenant(db, 'acme')
    db.transact(service.reserve, tenant('acme'), request(node_id='gpu-node-01', numa_node=1))
    cache = dict(cache=True, cache_plugin='ansible.builtin.jsonfile', cache_connection=str(tmp_path / 'cache'))
    rendered = {}
    for details in ('full', 'approved', 'none'):
        done = _inventory(tmp_path, api_url, token=operator_token, slot_details=details, **cache)
        assert done.returncode == 0, done.stderr
        rendered[details] = _plain(json.loads(done.stdout))
    full, approved, none = (rendered[d]['_meta']['hostvars']['gpu-node-01'] for d in ('full', 'approved', 'none'))
    # Each level from a fresh answer (the cache made with other options is not used)...
    assert approved == {k: v for k, v in full.items() if k != 'gpuaas_slots'}
    assert none == {'gpuaas_node_id': 'gpu-node-01', 'gpuaas_schedulable': True, 'gpuaas_drain_reason': None,
                    'gpuaas_slot_counts': {'free': 1, 'reserved': 1}}
    # ... and the same groups.
    assert rendered['none'] == dict(rendered['full'], _meta=rendered['none']['_meta'])
    assert rendered['none']['gpuaas_state_reserved']['hosts'] == ['gpu-node-01']


@pytest.mark.backends('sqlite')
def test_the_states_are_the_inventory_without_details(client, tokens, node):
    node_keys = ('id', 'schedulable', 'drain_reason')
    slot_keys = ('id', 'node_id', 'slot_index', 'state', 'approved', 'allocation_id', 'state_reason', 'absent_reason',
                 'gpu_model', 'numa_node')
    op = tokens['operator']
    assert client.post('/v1/nodes/n1/drain', json={'reason': 'bios'}, headers=op).status_code == 200
    full = client.get('/v1/inventory', headers=op)
    states = client.get('/v1/inventory/states', headers=op)
    assert full.headers['content-type'] == states.headers['content-type'] == 'application/json'
    full, states = full.json(), states.json()
    assert len(full['slots']) == len(states['slots']) == 8
    assert states['nodes'] == [{k: n[k] for k in node_keys} for n in full['nodes']]
    assert states['slots'] == [{k: s[k] for k in slot_keys} for s in full['slots']]
    assert states['nodes'][0]['drain_reason'] == 'bios'
    for path in ('/v1/inventory', '/v1/inventory/states'):
        reply = client.get(path, headers=tokens['acme'])
        assert reply.status_code == 403 and reply.json()['detail'] == 'this endpoint is for operators'
        assert client.get(path).status_code == 401


@pytest.mark.backends('sqlite')
def test_refusals_say_what_to_do(db, api_url, operator_token, tmp_path):
    cases = [
        ({'token': 'gpuaas_nope'}, api_url, '401: the token is not valid or was revoked (set the token'),
        ({'token': make_token(db, 'tenant', 'acme')['Authorization'].split()[1]}, api_url,
         '403: this endpoint is for operators (the inventory needs an operator token)'),
        ({'token': operator_token}, api_url + '/v1/nodes', '404: '),
        ({'token': operator_token}, 'http://127.0.0.1:9', 'cannot reach the control plane at '
                                                          'http://127.0.0.1:9/v1/inventory'),
        ({'token': operator_token}, api_url + '/docs/assets/favicon-32x32.png?', 'the answer is not JSON'),
        ({}, api_url, 'token'),
    ]
    for options, url, message in cases:
        done = _inventory(tmp_path, url, **options)
        assert done.returncode != 0 and message in ' '.join(done.stderr.split()), done.stderr
        if options.get('token'):
            assert options['token'] not in done.stdout + done.stderr
