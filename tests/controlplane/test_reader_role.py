# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The ``reader`` role (issue 19, item 3): a token for the inventory plugin, AWX and
dashboards that reads every operator view and changes nothing. Every route of the OpenAPI
document that does not read answers a reader 403 and leaves the database as it was, so a
route added later is covered without this file knowing it."""

from __future__ import annotations

import pytest

from gpuaas_control import audit, deps, service
from gpuaas_control.errors import Forbidden, Invalid
from tests.controlplane.conftest import snapshot
from tests.controlplane.helpers import OPERATOR, make_token, ssh_key

READ_DETAIL = 'a reader token only reads (GET): %s needs an operator token'
ALLOCATIONS_DETAIL = ('allocations are for their tenant and operators: a reader token reads '
                      'the operator views only')
BODY = {'image': 'debian-12.qcow2', 'image_checksum': 'sha256:' + 'ab' * 32,
        'ssh_keys': [ssh_key()], 'vcpus': 4, 'memory_mib': 8192}


@pytest.fixture
def reader(db):
    return make_token(db, 'reader')


@pytest.fixture
def allocation_id(client, tokens, node):
    reply = client.post('/v1/allocations', json=BODY, headers=tokens['acme'])
    assert reply.status_code == 201, reply.text
    return reply.json()['id']


def _routes(client):
    """(method, path) of every route the API documents."""
    paths = client.app.openapi()['paths']
    return [(method.upper(), path) for path, item in sorted(paths.items()) for method in sorted(item)]


def _fill(path, allocation_id):
    return (path.replace('{node_id}', 'n1').replace('{tenant_id}', 'acme').replace('{token_id}', '1')
            .replace('{slot_id}', 'n1-s0').replace('{allocation_id}', allocation_id))


def test_every_route_that_acts_refuses_a_reader_and_changes_nothing(client, db, tokens, node, allocation_id,
                                                                    reader):
    acting = [(m, p) for m, p in _routes(client) if m not in ('GET', 'HEAD')]
    # The routes an operator or a tenant changes things with: all of them are here.
    assert {('POST', '/v1/allocations'), ('DELETE', '/v1/allocations/{allocation_id}'),
            ('PUT', '/v1/nodes/{node_id}/discovery'), ('PUT', '/v1/nodes/{node_id}/approval'),
            ('POST', '/v1/nodes/{node_id}/drain'), ('POST', '/v1/nodes/{node_id}/undrain'),
            ('PUT', '/v1/tenants/{tenant_id}/quota'), ('POST', '/v1/tokens'),
            ('POST', '/v1/tokens/{token_id}/rotate'), ('DELETE', '/v1/tokens/{token_id}'),
            ('POST', '/v1/cleanups/{slot_id}/retry'), ('POST', '/v1/cleanups/{slot_id}/mark-clean')} <= set(acting)
    before = snapshot(db)
    for method, path in acting:
        reply = client.request(method, _fill(path, allocation_id), json={}, headers=reader)
        assert reply.status_code == 403, (method, path, reply.text)
        assert reply.json()['detail'] == READ_DETAIL % method, (method, path)
    # Nothing written: no allocation, job, event or audit entry, no token or node changed.
    assert snapshot(db) == before


def test_a_reader_reads_every_operator_view(client, db, tokens, node, allocation_id, reader):
    operator = tokens['operator']
    reads = ['/v1/nodes', '/v1/nodes/n1', '/v1/slots', '/v1/slots?state=reserved', '/v1/inventory',
             '/v1/inventory/states?include_unapproved=true', '/v1/tenants', '/v1/audit',
             '/v1/audit/verify', '/v1/tokens', '/v1/usage', '/v1/cleanups']
    # Every documented GET route of the operator views is in the list.
    documented = {p for m, p in _routes(client) if m == 'GET' and p.startswith('/v1/')
                  and not p.startswith('/v1/allocations')}
    assert documented == {_fill(p, '').split('?', maxsplit=1)[0].replace('/n1', '/{node_id}') for p in reads}
    for path in reads:
        as_operator = client.get(path, headers=operator)
        as_reader = client.get(path, headers=reader)
        assert as_operator.status_code == as_reader.status_code == 200, (path, as_reader.text)
        # Not the same twice: the reader's token was used since (its last_used_at), and the
        # allocation's seconds grew.
        if path not in ('/v1/tokens', '/v1/usage'):
            assert as_reader.json() == as_operator.json(), path
    # Usage: every tenant's, as an operator sees it.
    assert [r['allocation_id'] for r in client.get('/v1/usage', headers=reader).json()['usage']] == [allocation_id]


@pytest.mark.parametrize('path', ['/v1/allocations', '/v1/allocations/{allocation_id}',
                                  '/v1/allocations/{allocation_id}/telemetry',
                                  '/v1/allocations/{allocation_id}/events?follow=false'])
def test_the_allocation_routes_are_not_a_readers(client, allocation_id, reader, path):
    """They act for a tenant and show it its telemetry token; a reader has no tenant."""
    reply = client.get(path.replace('{allocation_id}', allocation_id), headers=reader)
    assert (reply.status_code, reply.json()['detail']) == (403, ALLOCATIONS_DETAIL)


def test_the_operator_routes_that_act_refuse_a_reader_by_role_too():
    """Behind the method check, the operator dependency itself: an operator route that reads
    by GET but acts (none today) would still be the operators' alone."""
    with pytest.raises(Forbidden, match='this endpoint is for operators'):
        deps.get_operator(audit.Actor('token:9:dash', 'reader'))
    assert deps.get_operator_view(audit.Actor('token:9:dash', 'reader')).role == 'reader'
    with pytest.raises(Forbidden, match='this endpoint is for operators'):
        deps.get_operator_view(audit.Actor('token:3:acme', 'tenant', 'acme'))


def test_reader_tokens_are_made_by_operators_and_belong_to_no_tenant(client, db, tokens, reader):
    reply = client.post('/v1/tokens', json={'role': 'reader', 'name': 'awx-inventory'},
                        headers=tokens['operator'])
    assert reply.status_code == 201, reply.text
    made = reply.json()
    assert (made['role'], made['tenant']) == ('reader', None)
    assert client.get('/v1/inventory', headers={'Authorization': 'Bearer ' + made['token']}).status_code == 200
    # A reader cannot make itself a better token (nor any token).
    refused = client.post('/v1/tokens', json={'role': 'operator'}, headers=reader)
    assert (refused.status_code, refused.json()['detail']) == (403, READ_DETAIL % 'POST')
    with pytest.raises(Invalid, match='^a reader token belongs to no tenant$'):
        db.transact(service.create_token, OPERATOR, 'reader', 'acme')
    with pytest.raises(Invalid, match="^role must be one of operator, reader, tenant, not 'admin'$"):
        db.transact(service.create_token, OPERATOR, 'admin')
    wrong = client.post('/v1/tokens', json={'role': 'auditor'}, headers=tokens['operator'])
    assert wrong.status_code == 422 and 'role' in wrong.text
