# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What each caller is told: an Idempotency-Key names one request (issue 16, item 11); a
tenant reads stable reasons, an operator the node's words, and nobody learns the fleet's
models from a refusal (item 13); /docs works offline and /healthz says only that the
service is up (item 15); every route's answer has a model in the OpenAPI document."""

from __future__ import annotations

import json
import re

import pytest
from sqlalchemy import update

from gpuaas_control import service
from gpuaas_control.models import Allocation
from tests.controlplane.conftest import snapshot
from tests.controlplane.helpers import ssh_key

BODY = {'image': 'debian-12.qcow2', 'image_checksum': 'sha256:' + 'ab' * 32,
        'ssh_keys': [ssh_key()], 'vcpus': 4, 'memory_mib': 8192}
SECRET = 'fatal: /root/.ssh/id_rsa: stderr of the node'


@pytest.mark.parametrize('change, named', [
    ({'vcpus': 8}, 'vcpus'), ({'image': 'other.qcow2'}, 'image'),
    ({'ssh_keys': [ssh_key(comment='bob@example')]}, 'ssh_keys'),
    ({'image_format': 'raw'}, 'image_format'), ({'disk_gib': 21}, 'disk_gib'),
    ({'hostname': 'train-2'}, 'hostname'), ({'numa_node': 1}, 'numa_node'),
    ({'gpu_model': '10de:2330'}, 'gpu_model'), ({'node_id': 'n1'}, 'node_id'),
    ({'memory_mib': 4096, 'vcpus': 2}, 'vcpus, memory_mib'),
])
def test_an_idempotency_key_names_one_request(client, db, tokens, node, change, named):
    headers = dict(tokens['acme'], **{'Idempotency-Key': 'job-17'})
    first = client.post('/v1/allocations', json=BODY, headers=headers)
    assert first.status_code == 201
    before = snapshot(db)
    other = client.post('/v1/allocations', json=dict(BODY, **change), headers=headers)
    assert other.status_code == 409 and other.headers['content-type'] == 'application/json'
    assert other.json()['detail'] == (
        "Idempotency-Key 'job-17' was used by allocation %s for another request (%s differ): "
        'send a new key for a new request' % (first.json()['id'], named))
    assert snapshot(db) == before
    again = client.post('/v1/allocations', json=BODY, headers=headers)
    assert (again.status_code, again.json()['id']) == (200, first.json()['id'])
    # Another tenant's key is its own.
    assert client.post('/v1/allocations', json=dict(BODY, **change), headers=dict(
        tokens['globex'], **{'Idempotency-Key': 'job-17'})).status_code == 201


def _fail(db, allocation_id):
    """What the worker leaves when provisioning gave up: the reason, then the node's words."""
    def record(session):
        session.execute(update(Allocation).where(Allocation.id == allocation_id).values(
            error='provisioning failed: ' + SECRET, state='failed'))
        service.add_event(session, allocation_id, 'error',
                          'provisioning failed after 3 attempts; releasing the slot',
                          {'detail': SECRET})
    db.transact(record)


def _events(client, url, headers):
    reply = client.get(url + '/events?follow=false', headers=headers)
    return [json.loads(line[6:]) for line in reply.text.splitlines() if line.startswith('data: ')]


@pytest.mark.backends('sqlite')
def test_a_tenant_reads_the_reason_an_operator_the_detail(client, db, tokens, node):
    mine = client.post('/v1/allocations', json=BODY, headers=tokens['acme']).json()
    _fail(db, mine['id'])
    url = '/v1/allocations/' + mine['id']
    tenant_view = client.get(url, headers=tokens['acme'])
    assert SECRET not in tenant_view.text
    assert tenant_view.json()['error'] == 'provisioning failed' and 'error_detail' not in tenant_view.json()
    listed = client.get('/v1/allocations', headers=tokens['acme'])
    assert SECRET not in listed.text and listed.json()['allocations'][0]['error'] == 'provisioning failed'
    events = _events(client, url, tokens['acme'])
    assert events[-1]['message'] == 'provisioning failed after 3 attempts; releasing the slot'
    assert SECRET not in json.dumps(events) and 'detail' not in events[-1]['data']

    operator_view = client.get(url, headers=tokens['operator']).json()
    assert operator_view['error'] == 'provisioning failed'
    assert operator_view['error_detail'] == 'provisioning failed: ' + SECRET
    assert 'telemetry_token' not in operator_view
    assert _events(client, url, tokens['operator'])[-1]['data']['detail'] == SECRET


@pytest.mark.backends('sqlite')
def test_an_unknown_gpu_model_does_not_list_the_fleet(client, tokens, node):
    reply = client.post('/v1/allocations', json=dict(BODY, gpu_model='1002:74a1'), headers=tokens['acme'])
    assert reply.status_code == 422
    assert reply.json()['detail'] == 'no approved slot has GPU model 1002:74a1'
    assert '10de' not in reply.text


@pytest.mark.backends('sqlite')
def test_docs_work_offline(client):
    page = client.get('/docs')
    assert page.status_code == 200 and page.headers['content-type'].startswith('text/html')
    urls = re.findall(r'''(?:src|href)=["']([^"']+)''', page.text) + \
        re.findall(r'''url: ?["']([^"']+)''', page.text)
    assert len(urls) == 4, urls
    assert 'http' not in page.text.replace('http-equiv', '')
    for url in urls:
        assert url.startswith('/') and not url.startswith('//'), url
        reply = client.get(url)
        assert reply.status_code == 200 and len(reply.content) > 100, url
    assert client.get('/docs/assets/../../etc/passwd').status_code == 404
    assert client.get('/docs/assets/index.j2').status_code == 404
    assert client.get('/redoc').status_code == 404


@pytest.mark.backends('sqlite')
def test_healthz_says_only_that_it_is_up(client):
    reply = client.get('/healthz')
    assert (reply.status_code, reply.json()) == (200, {'ok': True})


@pytest.mark.backends('sqlite')
def test_every_route_answers_a_model(client):
    doc = client.get('/openapi.json').json()
    for path, methods in doc['paths'].items():
        for method, operation in methods.items():
            ok = [code for code in operation['responses'] if code.startswith('2')]
            assert ok, (method, path)
            content = operation['responses'][ok[0]].get('content', {})
            schemas = [c.get('schema', {}) for c in content.values()]
            assert any('$ref' in s for s in schemas), (method, path, content)
    views = doc['components']['schemas']
    assert 'telemetry_token' in views['AllocationView']['properties']
    assert {'nodes', 'slots'} <= set(views['Inventory']['properties'])


@pytest.mark.backends('postgresql')
def test_a_database_that_dropped_its_connections_is_a_json_503_then_it_recovers(db_url, tokens, pg_cluster, caplog):
    """A server restart under the API's pooled connections (none pinged: they were busy): the
    request that meets a dead connection is told to retry, not handed a 500; the next one works."""
    from fastapi.testclient import TestClient

    from gpuaas_control import api
    from gpuaas_control.config import Settings
    from gpuaas_control.db import Database
    from tests.controlplane.test_reservation import _drop_connections
    database = Database(db_url, ping_after_idle=3600)
    try:
        with TestClient(api.create_app(Settings(db_url=db_url), database)) as client:
            assert client.get('/v1/slots', headers=tokens['operator']).status_code == 200
            _drop_connections(pg_cluster, db_url)
            failed = client.get('/v1/slots', headers=tokens['operator'])
            assert failed.status_code == 503 and failed.headers['retry-after'] == '2'
            assert failed.json() == {'detail': 'the database is not reachable at the moment: try again',
                                     'problems': []}
            assert 'the database failed' in caplog.text
            assert client.get('/v1/slots', headers=tokens['operator']).status_code == 200
    finally:
        database.dispose()
