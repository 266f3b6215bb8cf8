# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Hostile input against the HTTP API, on SQLite and PostgreSQL: every bad value is a 4xx
JSON error naming the field, never a 500, and nothing changes in the database.

The classes (issue 16, item 10): integers past the columns (offsets, ids, event and ledger
cursors, 2^31 to 2^64 and beyond, negatives) or past their range (token lifetimes and grace
periods, NaN and Infinity among them), times that overflow in UTC or fall outside
years 1-9999, NUL bytes in any string (PostgreSQL refuses them), non-mapping entries in a
discovery, and bodies over the limit (413, JSON too)."""

from __future__ import annotations

import json

import pytest

from tests.controlplane.conftest import snapshot
from tests.controlplane.helpers import ssh_key

BODY = {'image': 'debian-12.qcow2', 'image_checksum': 'sha256:' + 'ab' * 32,
        'ssh_keys': [ssh_key()], 'vcpus': 4, 'memory_mib': 8192}
HUGE = (2 ** 31, 2 ** 63, 2 ** 64, 2 ** 64 + 1, 10 ** 30, -1)
OVERFLOW = ('9999-12-31T23:59:59-14:00', '0001-01-01T00:00:00+14:00', '0000-01-01T00:00:00Z',
            '10000-01-01T00:00:00Z', '9999-12-31T23:59:59', 'yesterday')
NUL = 'a\x00b'

# (who, method, url, request options, field the answer must name, status)
CASES = []
for number in HUGE:
    CASES += [
        ('acme', 'get', '/v1/allocations', {'params': {'offset': number}}, 'offset', 422),
        ('acme', 'get', '/v1/allocations', {'params': {'limit': number}}, 'limit', 422),
        ('acme', 'get', '/v1/allocations/{id}/events', {'params': {'after': number, 'follow': 0}},
         'after', 422),
        ('acme', 'get', '/v1/allocations/{id}/events',
         {'params': {'follow': 0}, 'headers': {'Last-Event-ID': str(number)}}, 'last-event-id', 422),
        ('operator', 'get', '/v1/audit', {'params': {'after': number}}, 'after', 422),
        ('operator', 'delete', '/v1/tokens/%d' % number, {}, 'token_id', 422),
        ('operator', 'post', '/v1/tokens/%d/rotate' % number, {}, 'token_id', 422),
        ('operator', 'post', '/v1/tokens', {'json': {'role': 'operator', 'expires_in_days': number}},
         'expires_in_days', 422),
        ('operator', 'post', '/v1/tokens/1/rotate', {'json': {'expires_in_days': number}},
         'expires_in_days', 422),
        ('operator', 'post', '/v1/tokens/1/rotate', {'json': {'grace_seconds': number}},
         'grace_seconds', 422),
        ('operator', 'put', '/v1/tenants/acme/quota', {'json': {'max_gpus': number if number != -1 else -2}},
         'max_gpus', 422),
        ('acme', 'post', '/v1/allocations', {'json': dict(BODY, vcpus=number)}, 'vcpus', 422),
        ('acme', 'post', '/v1/allocations', {'json': dict(BODY, numa_node=number)}, 'numa_node', 422),
    ]
for value in ('abc', '1e3', '0x10', ''):
    CASES.append(('acme', 'get', '/v1/allocations/{id}/events',
                  {'params': {'follow': 0}, 'headers': {'Last-Event-ID': value}}, 'last-event-id', 422))
CASES.append(('acme', 'get', '/v1/allocations/{id}/events', {'params': {'follow': 0, 'timeout': 'nan'}},
              'timeout', 422))
# Token lifetimes and grace periods: whole numbers only (Python's JSON reads NaN and Infinity).
for raw in ('NaN', 'Infinity', '-Infinity', '1e400', '3650.5', '1e3', '"30"', 'true', '[1]'):
    for url, field, extra in (('/v1/tokens', 'expires_in_days', '"role": "operator", '),
                              ('/v1/tokens/1/rotate', 'expires_in_days', ''),
                              ('/v1/tokens/1/rotate', 'grace_seconds', '')):
        CASES.append(('operator', 'post', url, {
            'content': '{%s"%s": %s}' % (extra, field, raw),
            'headers': {'content-type': 'application/json'}}, field, 422))
CASES += [('operator', 'post', '/v1/tokens', {'json': {'role': 'operator', 'expires_in_days': 3651}},
           'expires_in_days', 422),
          ('operator', 'post', '/v1/tokens/1/rotate', {'json': {'grace_seconds': 7 * 86400 + 1}},
           'grace_seconds', 422),
          ('operator', 'post', '/v1/tokens/1/rotate', {'json': {'grace': 60}}, 'grace', 422)]
for when in OVERFLOW:
    for name in ('since', 'until'):
        CASES.append(('operator', 'get', '/v1/usage', {'params': {name: when}}, name, 422))
        CASES.append(('acme', 'get', '/v1/usage', {'params': {name: when}}, name, 422))
for who, method, url, options, field in [
        ('operator', 'get', '/v1/allocations', {'params': {'tenant': NUL}}, 'tenant'),
        ('operator', 'get', '/v1/usage', {'params': {'tenant': NUL}}, 'tenant'),
        ('operator', 'get', '/v1/slots', {'params': {'node_id': NUL}}, 'node_id'),
        ('acme', 'get', '/v1/allocations/alloc-%00', {}, 'allocation_id'),
        ('acme', 'delete', '/v1/allocations/alloc-%00', {}, 'allocation_id'),
        ('acme', 'get', '/v1/allocations/alloc-%00/events', {}, 'allocation_id'),
        ('operator', 'get', '/v1/nodes/n1%00', {}, 'node_id'),
        ('operator', 'put', '/v1/nodes/n1%00/discovery', {'json': {}}, 'node_id'),
        ('operator', 'put', '/v1/nodes/n1%00/approval', {'json': {'approved_slots': []}}, 'node_id'),
        ('operator', 'post', '/v1/nodes/n1%00/drain', {}, 'node_id'),
        ('operator', 'post', '/v1/nodes/n1%00/undrain', {}, 'node_id'),
        ('operator', 'put', '/v1/tenants/acme%00/quota', {'json': {'max_gpus': 1}}, 'tenant_id'),
        ('operator', 'post', '/v1/nodes/n1/drain', {'json': {'reason': NUL}}, 'reason'),
        ('operator', 'post', '/v1/tokens', {'json': {'role': 'tenant', 'tenant': NUL}}, 'tenant'),
        ('operator', 'post', '/v1/tokens', {'json': {'role': 'operator', 'name': NUL}}, 'name'),
        ('acme', 'post', '/v1/allocations', {'json': dict(BODY, image=NUL)}, 'image'),
        ('acme', 'post', '/v1/allocations', {'json': dict(BODY, hostname=NUL)}, 'hostname'),
        ('acme', 'post', '/v1/allocations', {'json': dict(BODY, node_id=NUL)}, 'node_id'),
        ('acme', 'post', '/v1/allocations', {'json': dict(BODY, gpu_model=NUL)}, 'gpu_model'),
        ('acme', 'post', '/v1/allocations', {'json': dict(BODY, ssh_keys=[ssh_key() + '\x00'])},
         'ssh_keys'),
        ('acme', 'post', '/v1/allocations', {'json': dict(BODY, image_checksum=NUL)}, 'image_checksum')]:
    CASES.append((who, method, url, options, field, 422))


def _discovery_cases(discovery):
    """Discovery bodies with entries that are not mappings, or values no discovery makes."""
    cases = []
    for bad in ('x', 1, None, ['n1-s0'], True):
        cases.append((dict(discovery, slots=[bad] + discovery['slots'][1:]), 'slots[0]'))
        cases.append((dict(discovery, gpus=[bad] + discovery['gpus'][1:]), 'gpus[0]'))
    first = discovery['slots'][0]
    for key, value in (('slot_index', 2 ** 64), ('numa_node', 2 ** 64), ('gpu_address', NUL),
                       ('cpulist', '0-7' + NUL), ('companions', 'x'),
                       ('slot_id', NUL)):
        cases.append((dict(discovery, slots=[dict(first, **{key: value})] + discovery['slots'][1:]),
                      'slots[0]'))
    cases.append((dict(discovery, slots='x'), 'discovery'))
    cases.append((dict(discovery, node_id=NUL), 'node_id'))
    return cases


@pytest.fixture
def allocation(client, tokens, node):
    reply = client.post('/v1/allocations', json=BODY, headers=tokens['acme'])
    assert reply.status_code == 201, reply.text
    return reply.json()


def _refused(reply, status, field):
    assert reply.status_code == status, reply.text
    assert reply.headers['content-type'] == 'application/json'
    body = reply.json()
    text = ' '.join([body['detail']] + body['problems']).lower()
    assert field.lower() in text, body
    return body


@pytest.mark.parametrize('who, method, url, options, field, status', CASES)
def test_bad_input_is_a_4xx_json_error_naming_the_field(client, db, tokens, allocation,
                                                        who, method, url, options, field, status):
    before = snapshot(db)
    options = dict(options)
    options['headers'] = dict(tokens[who], **options.get('headers', {}))
    reply = client.request(method, url.replace('{id}', allocation['id']), **options)
    _refused(reply, status, field)
    assert snapshot(db) == before


def test_discovery_entries_that_are_not_mappings_or_not_discovery(client, db, tokens, node):
    cases = _discovery_cases(node)
    before = snapshot(db)
    for body, field in cases:
        reply = client.put('/v1/nodes/n1/discovery', json=body, headers=tokens['operator'])
        _refused(reply, 422, field)
        reply = client.put('/v1/nodes/n2/discovery', json=body, headers=tokens['operator'])
        assert reply.status_code == 422, reply.text
    for entries in (['x'], [1], [None], [['n1-s0']]):
        reply = client.put('/v1/nodes/n1/approval', json={'approved_slots': entries},
                           headers=tokens['operator'])
        _refused(reply, 422, 'approved_slots')
    for key, value in (('approved_by', NUL), ('note', NUL), ('destructive_wipe_policy', 'zero' + NUL),
                       ('approved_at', '9999-12-31T23:59:59-14:00'), ('approved_at', '0000-01-01')):
        entry = dict(slot_id='n1-s0', gpu_address=node['slots'][0]['gpu_address'],
                     destructive_wipe_policy='zero',
                     capacity_metadata=dict(node['slots'][0]['capacity_metadata']))
        entry[key] = value
        reply = client.put('/v1/nodes/n1/approval', json={'approved_slots': [entry]},
                           headers=tokens['operator'])
        _refused(reply, 422, key)
    assert snapshot(db) == before


def test_a_body_over_the_limit_is_413_json(client, db, tokens, node):
    before = snapshot(db)
    big = json.dumps(dict(BODY, image='x' * 70000))
    reply = client.post('/v1/allocations', content=big, headers=dict(
        tokens['acme'], **{'content-type': 'application/json'}))
    _refused(reply, 413, 'larger than 65536 bytes')

    def chunks():
        yield b'{"image": "'
        for _chunk in range(100):
            yield b'x' * 4096
        yield b'"}'
    for url, method in (('/v1/allocations', 'post'), ('/v1/nodes/n1/discovery', 'put'),
                        ('/v1/nodes/n1/approval', 'put')):
        headers = dict(tokens['operator' if method == 'put' else 'acme'],
                       **{'content-type': 'application/json'})
        _refused(client.request(method, url, content=chunks(), headers=headers), 413, 'larger than')
        _refused(client.request(method, url, content=big, headers=headers), 413, 'larger than')
    assert snapshot(db) == before
