# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The gpuaas.slice.slots inventory plugin, run by the real ansible-inventory against the
control plane's HTTP API (a real uvicorn on 127.0.0.1) on SQLite and PostgreSQL: hosts,
groups, constructed vars, the cache, and clear errors for a wrong token, a tenant's token,
an API that is not there and an answer that is not an inventory."""

from __future__ import annotations

import datetime as dt
import http.server
import json
import os
import subprocess
import sys
import threading

import pytest
import yaml

from gpuaas_control import audit, fleet, service
from gpuaas_control.config import Settings
from gpuaas_control.models import utcnow
from tests.controlplane.conftest import approved_map, serve_api
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
def operator_token(db):
    """What the plugin is given: a reader token (it reads the operator views, nothing else)."""
    return make_token(db, 'reader')['Authorization'].split()[1]


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
    # gpu-node-01 stopped answering, and the worker's first probe found it still silent.
    since = utcnow()
    db.transact(fleet.node_unreachable, audit.SYSTEM, Settings(), 'gpu-node-01', 'ssh: Connection refused', since)
    db.transact(fleet.record_probe, audit.SYSTEM, Settings(), 'gpu-node-01', 'ssh: No route to host')
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
    # Each node's reachability, as the worker last found it.
    node1 = hostvars['gpu-node-01']
    assert node1['gpuaas_reachable'] is False and node1['gpuaas_schedulable'] is True
    assert node1['gpuaas_unreachable_since'] == since.isoformat()
    assert node1['gpuaas_unreachable_error'] == 'ssh: No route to host'
    assert since < dt.datetime.fromisoformat(node1['gpuaas_last_probe_at']) < \
        dt.datetime.fromisoformat(node1['gpuaas_next_probe_at'])
    assert node2['gpuaas_reachable'] is True
    times = ('gpuaas_unreachable_since', 'gpuaas_unreachable_error', 'gpuaas_last_probe_at', 'gpuaas_next_probe_at')
    assert [node2[k] for k in times] == [None] * 4

    def hosts(group):
        return sorted(data.get(group, {}).get('hosts', []))
    assert hosts('gpuaas_state_free') == ['gpu-node-01', 'gpu-node-02']
    assert hosts('gpuaas_state_reserved') == ['gpu-node-02']
    assert hosts('gpuaas_gpu_10de_2330') == ['gpu-node-01', 'gpu-node-02']
    assert hosts('gpuaas_numa_0') == ['gpu-node-01']
    assert hosts('gpuaas_numa_1') == ['gpu-node-01', 'gpu-node-02']
    assert hosts('gpuaas_drained') == ['gpu-node-02'] and hosts('gpuaas_schedulable') == ['gpu-node-01']
    assert hosts('gpuaas_unreachable') == ['gpu-node-01'] and hosts('gpuaas_reachable') == ['gpu-node-02']
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
                    'gpuaas_reachable': True, 'gpuaas_unreachable_since': None, 'gpuaas_unreachable_error': None,
                    'gpuaas_last_probe_at': None, 'gpuaas_next_probe_at': None,
                    'gpuaas_slot_counts': {'free': 1, 'reserved': 1}}
    # ... and the same groups.
    assert rendered['none'] == dict(rendered['full'], _meta=rendered['none']['_meta'])
    assert rendered['none']['gpuaas_state_reserved']['hosts'] == ['gpu-node-01']


@pytest.mark.backends('sqlite')
def test_the_states_are_the_inventory_without_details(client, tokens, node):
    node_keys = ('id', 'schedulable', 'drain_reason', 'reachable', 'unreachable_since', 'unreachable_error',
                 'last_probe_at', 'next_probe_at')
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
    assert states['nodes'][0]['drain_reason'] == 'bios' and states['nodes'][0]['reachable'] is True
    for path in ('/v1/inventory', '/v1/inventory/states'):
        reply = client.get(path, headers=tokens['acme'])
        assert reply.status_code == 403 and reply.json()['detail'] == 'this endpoint is for operators'
        assert client.get(path).status_code == 401


@pytest.mark.backends('sqlite')
def test_refusals_say_what_to_do(db, api_url, operator_token, tmp_path):
    cases = [
        ({'token': 'gpuaas_nope'}, api_url, '401: the token is not valid or was revoked (set the token'),
        ({'token': make_token(db, 'tenant', 'acme')['Authorization'].split()[1]}, api_url,
         '403: this endpoint is for operators (the inventory needs a reader or operator token)'),
        ({'token': operator_token}, api_url + '/v1/nodes', '404: '),
        ({'token': operator_token}, 'http://127.0.0.1:9', 'cannot reach the control plane at '
                                                          'http://127.0.0.1:9/v1/inventory'),
        ({'token': operator_token}, 'ftp://awx:hunter2@127.0.0.1/api',
         "url must be the API's http:// or https:// address without a query, not 'ftp://127.0.0.1/api'"),
        ({'token': operator_token}, api_url + '/?x=1', 'url must be'),
        ({}, api_url, 'token'),
        ({'token': ''}, api_url, 'no token: set the token option or GPUAAS_API_TOKEN'),
    ]
    for options, url, message in cases:
        done = _inventory(tmp_path, url, **options)
        assert done.returncode != 0 and message in ' '.join(done.stderr.split()), done.stderr
        assert 'Traceback' not in done.stderr and 'hunter2' not in done.stderr
        if options.get('token'):
            assert options['token'] not in done.stdout + done.stderr


class _Liar(http.server.BaseHTTPRequestHandler):
    """Answers every request with what the test set: a status, headers and a body, or
    nothing at all (the connection closed). Records the paths asked for."""

    answer = (200, {}, b'')
    asked = []

    def do_GET(self):  # noqa: N802 (http.server's name)
        type(self).asked.append((self.path, self.headers.get('Authorization')))
        status, headers, body = type(self).answer
        if status is None:
            self.close_connection = True
            return
        self.send_response(status)
        for key, value in dict({'Content-Length': str(len(body))}, **headers).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def liar():
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), _Liar)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Liar.asked = []
    yield _Liar, 'http://127.0.0.1:%d' % server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.mark.backends('sqlite')
@pytest.mark.parametrize('answer, message', [
    ((200, {'Content-Type': 'application/json'}, b'{"nodes": [{"id": "n1", '), 'the answer is not JSON'),
    ((200, {'Content-Type': 'application/json'}, b'[]'), 'the answer is not a mapping with nodes and slots'),
    ((200, {'Content-Type': 'application/json'}, b'{"nodes": [], "slots": [{"id": "n1-s0"}]}'),
     'slots[0] lacks node_id, slot_index'),
    ((502, {'Content-Type': 'text/html'}, b'<html>bad gateway</html>'), '502: no JSON error detail'),
    ((302, {'Location': '/elsewhere/v1/inventory'}, b''),
     '302: no JSON error detail (a redirect: the token is sent to no other address'),
    ((None, {}, b''), 'cannot reach the control plane at http://127.0.0.1:'),
])
def test_a_wrong_answer_fails_closed(tmp_path, liar, answer, message):
    """Whatever answers at the url, the inventory is an error with the cause, never a
    partial inventory or a traceback, and the token goes nowhere else."""
    handler, url = liar
    handler.answer = answer
    token = 'gpuaas_' + 'k' * 43
    done = _inventory(tmp_path, url, token=token)
    assert done.returncode != 0 and message in ' '.join(done.stderr.split()), done.stderr
    assert 'Traceback' not in done.stderr and token not in done.stdout + done.stderr
    assert not done.stdout.strip()
    # Asked once (no redirect followed), with the token, for the inventory.
    assert handler.asked == [('/v1/inventory?include_unapproved=false', 'Bearer ' + token)]


@pytest.fixture
def tls_api(db, db_url, tmp_path):
    """The API over TLS on 127.0.0.1, with a self-signed certificate for that address."""
    key, cert = tmp_path / 'api.key', tmp_path / 'api.crt'
    subprocess.run(['openssl', 'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1',
                    '-nodes', '-keyout', str(key), '-out', str(cert), '-days', '2', '-subj', '/CN=127.0.0.1',
                    '-addext', 'subjectAltName=IP:127.0.0.1'], check=True, capture_output=True)
    with serve_api(db, db_url, ssl_keyfile=str(key), ssl_certfile=str(cert)) as port:
        yield 'https://127.0.0.1:%d' % port, str(cert)


@pytest.mark.backends('sqlite')
def test_tls_is_checked(db, tls_api, operator_token, tmp_path, hgx_discovery_factory):
    url, cert = tls_api
    one = hgx_discovery_factory('gpu-node-01')
    add_node(db, one, approved_map(one))
    refused = _inventory(tmp_path, url, token=operator_token)
    assert refused.returncode != 0 and 'cannot reach the control plane at %s/v1/inventory' % url in \
        ' '.join(refused.stderr.split()), refused.stderr
    assert 'CERTIFICATE_VERIFY_FAILED' in refused.stderr and 'Traceback' not in refused.stderr
    for options in ({'ca_path': cert}, {'validate_certs': False}):
        done = _inventory(tmp_path, url, token=operator_token, **options)
        assert done.returncode == 0, done.stderr
        assert list(json.loads(done.stdout)['_meta']['hostvars']) == ['gpu-node-01']


@pytest.mark.backends('sqlite')
def test_the_awx_inventory_source_as_awx_runs_it(db, api_url, operator_token, hgx_discovery_factory):
    """inventory/awx.gpuaas_slots.yml with the environment the AWX credential type injects
    (docs/awx/job_templates.yml) and ANSIBLE_INVENTORY_UNPARSED_FAILED as AWX sets it."""
    one = hgx_discovery_factory('gpu-node-01')
    add_node(db, one, approved_map(one))
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=os.path.join(REPO, '.build', 'collections'),
               ANSIBLE_INVENTORY_UNPARSED_FAILED='True', GPUAAS_API=api_url, GPUAAS_API_TOKEN=operator_token)
    env.pop('ANSIBLE_CONFIG', None)
    done = subprocess.run([os.path.join(os.path.dirname(sys.executable), 'ansible-inventory'), '-i',
                           os.path.join('inventory', 'awx.gpuaas_slots.yml'), '--list', '--export'],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    data = _plain(json.loads(done.stdout))
    assert data['gpuaas_state_free']['hosts'] == ['gpu-node-01']
    assert data['_meta']['hostvars']['gpu-node-01']['gpuaas_approved_slots'] == approved_map(one)
