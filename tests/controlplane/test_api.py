# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The HTTP API: authentication and roles, a tenant's view (404 for anything not its own),
operator endpoints (403 for a tenant), validation (422 with the reason, 413 for a huge body)
and every refusal changing nothing."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from sqlalchemy import select

from gpuaas_control import service
from gpuaas_control.models import ApiToken, utcnow
from tests.controlplane.conftest import approved_map, snapshot as _snapshot
from tests.controlplane.helpers import ssh_key

BODY = {'image': 'debian-12.qcow2', 'image_checksum': 'sha256:' + 'ab' * 32,
        'ssh_keys': [ssh_key()], 'vcpus': 4, 'memory_mib': 8192}


def test_openapi_document_and_health(client):
    doc = client.get('/openapi.json').json()
    for path in ('/v1/allocations', '/v1/allocations/{allocation_id}',
                 '/v1/allocations/{allocation_id}/events', '/v1/nodes/{node_id}/approval',
                 '/v1/tenants/{tenant_id}/quota', '/v1/usage', '/v1/audit/verify'):
        assert path in doc['paths']
    assert client.get('/docs').status_code == 200
    assert client.get('/healthz').json()['ok'] is True
    # The old ssh field stays, marked deprecated in favour of access.
    fields = doc['components']['schemas']['AllocationView']['properties']
    assert fields['ssh']['deprecated'] is True and fields['ssh']['description'].startswith('Deprecated: use access.')
    assert 'deprecated' not in fields['access']


def test_authentication(client, db, tokens):
    assert client.get('/v1/allocations').status_code == 401
    reply = client.get('/v1/allocations', headers={'Authorization': 'Bearer gpuaas_nope'})
    assert reply.status_code == 401 and reply.headers['www-authenticate'] == 'Bearer'
    assert client.get('/v1/allocations', headers={'Authorization': 'Basic eDp5'}).status_code == 401
    created = client.post('/v1/tokens', json={'role': 'tenant', 'tenant': 'initech'},
                          headers=tokens['operator']).json()
    mine = {'Authorization': 'Bearer ' + created['token']}
    assert client.get('/v1/allocations', headers=mine).status_code == 200
    assert client.delete('/v1/tokens/%d' % created['id'], headers=tokens['operator']).status_code == 200
    assert client.get('/v1/allocations', headers=mine).status_code == 401
    # Only the hash is kept.
    with db.read() as session:
        stored = session.execute(select(ApiToken.token_hash)).scalars().all()
    assert created['token'] not in stored and len(stored) == 4


def _bearer(token):
    return {'Authorization': 'Bearer ' + token}


def _set_token(db, token_id, **values):
    from sqlalchemy import update
    with db.write() as session:
        session.execute(update(ApiToken).where(ApiToken.id == token_id).values(**values))


def _token_row(db, token_id):
    with db.read() as session:
        return session.get(ApiToken, token_id)


def _expires_in(when, started, lifetime):
    """``when`` is ``lifetime`` after a moment between ``started`` and now."""
    assert started + lifetime <= dt.datetime.fromisoformat(when) <= utcnow() + lifetime


def test_token_lifetimes_and_the_401_of_an_expired_one(client, db, tokens):
    op = tokens['operator']
    started = utcnow()
    default = client.post('/v1/tokens', json={'role': 'tenant', 'tenant': 'acme'}, headers=op).json()
    _expires_in(default['expires_at'], started, dt.timedelta(days=90))
    short = client.post('/v1/tokens', json={'role': 'tenant', 'tenant': 'acme', 'expires_in_days': 1},
                        headers=op).json()
    _expires_in(short['expires_at'], started, dt.timedelta(days=1))
    never = client.post('/v1/tokens', json={'role': 'operator', 'expires_in_days': 0}, headers=op).json()
    assert never['expires_at'] is None
    assert client.get('/v1/allocations', headers=_bearer(short['token'])).status_code == 200

    # Past its expiry: 401, saying it expired and nothing more; an unknown token says otherwise.
    _set_token(db, short['id'], expires_at=utcnow() - dt.timedelta(seconds=1))
    before = _snapshot(db)
    expired = client.get('/v1/allocations', headers=_bearer(short['token']))
    assert expired.status_code == 401 and expired.headers['www-authenticate'] == 'Bearer'
    assert expired.json()['detail'] == 'the token expired'
    unknown = client.get('/v1/allocations', headers=_bearer(short['token'] + 'x'))
    assert unknown.status_code == 401 and unknown.json()['detail'] == 'the token is not valid or was revoked'
    assert _snapshot(db) == before
    # A revoked token that has also expired says revoked.
    assert client.delete('/v1/tokens/%d' % short['id'], headers=op).status_code == 200
    assert client.get('/v1/allocations', headers=_bearer(short['token'])).json()['detail'] == \
        'the token is not valid or was revoked'


def test_last_use_is_recorded_to_the_minute_without_a_write_per_request(client, db, tokens):
    from sqlalchemy import event
    created = client.post('/v1/tokens', json={'role': 'tenant', 'tenant': 'acme'},
                          headers=tokens['operator']).json()
    assert _token_row(db, created['id']).last_used_at is None
    mine = _bearer(created['token'])
    started = utcnow()
    assert client.get('/v1/allocations', headers=mine).status_code == 200
    first = _token_row(db, created['id']).last_used_at
    assert started <= first <= utcnow()

    writes = []

    def count(_conn, _cursor, statement, *_args):
        if statement.lstrip().upper().startswith(('UPDATE', 'INSERT', 'DELETE')):
            writes.append(statement)
    event.listen(db.engine, 'before_cursor_execute', count)
    try:
        for _request in range(5):
            assert client.get('/v1/allocations', headers=mine).status_code == 200
        assert writes == [] and _token_row(db, created['id']).last_used_at == first
        # A minute on, the next request records it again (once).
        _set_token(db, created['id'], last_used_at=first - dt.timedelta(seconds=61))
        writes.clear()
        for _request in range(3):
            assert client.get('/v1/allocations', headers=mine).status_code == 200
        assert len(writes) == 1 and _token_row(db, created['id']).last_used_at > first
    finally:
        event.remove(db.engine, 'before_cursor_execute', count)
    # Requests in flight while it is stale: one of them (in this process) records it.
    _set_token(db, created['id'], last_used_at=first - dt.timedelta(seconds=120))
    with db.read() as session:
        assert service.authenticate(session, created['token'])[1] == created['id']
        assert service.authenticate(session, created['token'])[1] is None
        # If that one's write was lost, a request a minute on tries again.
        later = utcnow() + service.LAST_USED_EVERY
        assert service.authenticate(session, created['token'], later)[1] == created['id']
    listed = client.get('/v1/tokens', headers=tokens['operator']).json()['tokens']
    assert [t['last_used_at'] is not None for t in listed if t['id'] == created['id']] == [True]


def test_rotation(client, db, tokens):
    op = tokens['operator']
    created = client.post('/v1/tokens', json={'role': 'tenant', 'tenant': 'acme', 'name': 'ci'},
                          headers=op).json()
    before = _token_row(db, created['id'])

    # With a grace period the old token works until it ends.
    started = utcnow()
    reply = client.post('/v1/tokens/%d/rotate' % created['id'], json={'grace_seconds': 3600,
                        'expires_in_days': 7}, headers=op)
    assert reply.status_code == 201, reply.text
    rotated = reply.json()
    assert (rotated['name'], rotated['role'], rotated['tenant'], rotated['replaces']) == \
        ('ci', 'tenant', 'acme', created['id'])
    assert rotated['token'] != created['token'] and rotated['id'] != created['id']
    _expires_in(rotated['expires_at'], started, dt.timedelta(days=7))
    _expires_in(rotated['replaces_until'], started, dt.timedelta(hours=1))
    for token in (created['token'], rotated['token']):
        assert client.get('/v1/allocations', headers=_bearer(token)).status_code == 200
    old = _token_row(db, created['id'])
    assert old.replaced_by == rotated['id'] and old.token_hash == before.token_hash
    # Rotated once: rotating it again is a conflict naming its successor.
    again = client.post('/v1/tokens/%d/rotate' % created['id'], headers=op)
    assert again.status_code == 409
    assert again.json()['detail'] == 'token %d was already rotated: token %d replaces it' % (
        created['id'], rotated['id'])
    # The grace period over, the old one has expired.
    _set_token(db, created['id'], expires_at=utcnow() - dt.timedelta(seconds=1))
    assert client.get('/v1/allocations', headers=_bearer(created['token'])).json()['detail'] == \
        'the token expired'

    # Without one (the default), at once; the new token gets the default lifetime.
    started = utcnow()
    third = client.post('/v1/tokens/%d/rotate' % rotated['id'], headers=op).json()
    _expires_in(third['expires_at'], started, dt.timedelta(days=90))
    _expires_in(third['replaces_until'], started, dt.timedelta(0))
    assert client.get('/v1/allocations', headers=_bearer(rotated['token'])).status_code == 401
    assert client.get('/v1/allocations', headers=_bearer(third['token'])).status_code == 200

    # Revoked, expired or unknown tokens are not rotated, and nothing changes.
    revoked = client.post('/v1/tokens', json={'role': 'operator'}, headers=op).json()
    client.delete('/v1/tokens/%d' % revoked['id'], headers=op)
    expired = client.post('/v1/tokens', json={'role': 'operator'}, headers=op).json()
    _set_token(db, expired['id'], expires_at=utcnow() - dt.timedelta(days=1))
    snapshot = _snapshot(db)
    for token_id, status, detail in (
            (revoked['id'], 409, 'token %d is revoked: create a new one' % revoked['id']),
            (expired['id'], 409, 'token %d expired at ' % expired['id']),
            (9999, 404, 'no token 9999')):
        reply = client.post('/v1/tokens/%d/rotate' % token_id, headers=op)
        assert reply.status_code == status and reply.json()['detail'].startswith(detail), reply.text
    assert _snapshot(db) == snapshot

    # Audited; listed with expiry, last use and successor, never the hash.
    entries = client.get('/v1/audit', headers=op).json()['entries']
    rotations = [e for e in entries if e['action'] == 'token.rotate']
    assert [(e['target_id'], e['after']['replaced_by'], e['after']['new']['name']) for e in rotations] \
        == [(str(created['id']), rotated['id'], 'ci'), (str(rotated['id']), third['id'], 'ci')]
    assert rotations[0]['before'] == {'expires_at': before.expires_at.isoformat(), 'replaced_by': None}
    listed = client.get('/v1/tokens', headers=op)
    assert before.token_hash not in listed.text and 'token_hash' not in listed.text
    shown = {t['id']: t for t in listed.json()['tokens']}
    assert shown[created['id']]['replaced_by'] == rotated['id']
    assert set(shown[third['id']]) == {'id', 'name', 'role', 'tenant', 'created_at', 'revoked_at',
                                       'expires_at', 'last_used_at', 'replaced_by'}


def test_a_tenant_sees_only_its_own(client, tokens, node):
    reply = client.post('/v1/allocations', json=BODY, headers=tokens['acme'])
    assert reply.status_code == 201, reply.text
    mine = reply.json()
    assert mine['state'] == 'requested' and mine['tenant'] == 'acme'
    assert reply.headers['location'] == '/v1/allocations/' + mine['id']
    url = '/v1/allocations/' + mine['id']
    got = client.get(url, headers=tokens['acme']).json()
    assert 'telemetry_token' in got and got['mac'].startswith('52:54:')
    for request in (lambda h: client.get(url, headers=h),
                    lambda h: client.delete(url, headers=h),
                    lambda h: client.get(url + '/events?follow=false', headers=h)):
        reply = request(tokens['globex'])
        assert reply.status_code == 404 and reply.json()['detail'] == 'no allocation %r' % mine['id']
    assert client.get('/v1/allocations', headers=tokens['globex']).json() == {'allocations': []}
    assert [a['id'] for a in client.get('/v1/allocations', headers=tokens['acme']).json()['allocations']] \
        == [mine['id']]
    assert client.get('/v1/allocations/alloc-00000000000000000000', headers=tokens['acme']).status_code == 404
    # The operator sees it, but not the guest's telemetry credential.
    seen = client.get(url, headers=tokens['operator']).json()
    assert seen['id'] == mine['id'] and 'telemetry_token' not in seen
    # A tenant's usage is its own.
    usage = client.get('/v1/usage', headers=tokens['globex']).json()
    assert usage['usage'] == []


OPERATOR_CALLS = [
    ('get', '/v1/nodes', None), ('get', '/v1/nodes/n1', None),
    ('put', '/v1/nodes/n1/discovery', {}), ('put', '/v1/nodes/n1/approval', {'approved_slots': []}),
    ('post', '/v1/nodes/n1/drain', None), ('post', '/v1/nodes/n1/undrain', None),
    ('get', '/v1/slots', None), ('get', '/v1/tenants', None),
    ('put', '/v1/tenants/acme/quota', {'max_gpus': 100}), ('get', '/v1/tokens', None),
    ('post', '/v1/tokens', {'role': 'operator'}), ('delete', '/v1/tokens/1', None),
    ('post', '/v1/tokens/1/rotate', None),
    ('get', '/v1/audit', None), ('get', '/v1/audit/verify', None),
]


@pytest.mark.backends('sqlite')
@pytest.mark.parametrize('method, path, body', OPERATOR_CALLS)
def test_operator_endpoints_refuse_a_tenant(client, db, tokens, node, method, path, body):
    before = _snapshot(db)
    kwargs = {'json': body} if body is not None else {}
    reply = client.request(method, path, headers=tokens['acme'], **kwargs)
    assert reply.status_code == 403 and reply.json()['detail'] == 'this endpoint is for operators'
    assert _snapshot(db) == before


def test_an_operator_does_not_allocate(client, tokens, node):
    assert client.post('/v1/allocations', json=BODY, headers=tokens['operator']).status_code == 403


HOSTILE = [
    ({'image': '../../etc/passwd'}, 'image'),
    ({'image': '/var/lib/gpuaas/images/x.qcow2'}, 'image'),
    ({'image': 'x.qcow2; rm -rf /'}, 'image'),
    ({'image_checksum': 'sha256:' + 'ab' * 31}, 'image_checksum'),
    ({'image_checksum': 'sha256:' + 'ab' * 32 + '\n'}, 'image_checksum'),
    ({'image_checksum': 'md5:abc'}, 'image_checksum'),
    ({'image_format': 'vmdk'}, 'image_format'),
    ({'hostname': 'a;reboot'}, 'hostname'),
    ({'hostname': '<evil/>'}, 'hostname'),
    ({'hostname': 'x' * 64}, 'hostname'),
    ({'ssh_keys': ['command="rm -rf /" ' + ssh_key()]}, 'ssh_keys'),
    ({'ssh_keys': [ssh_key() + '\nssh-ed25519 AAAA x']}, 'ssh_keys'),
    ({'ssh_keys': [ssh_key(comment='$(reboot)')]}, 'ssh_keys'),
    ({'ssh_keys': ['ssh-rsa ' + ssh_key().split()[1]]}, 'ssh_keys'),
    ({'ssh_keys': []}, 'ssh_keys'),
    ({'vcpus': '4'}, 'vcpus'),
    ({'vcpus': True}, 'vcpus'),
    ({'vcpus': 0}, 'vcpus'),
    ({'memory_mib': 10 ** 12}, 'memory_mib'),
    ({'gpu_model': "10de:2330' OR 1=1"}, 'gpu_model'),
    ({'node_id': '../n1'}, 'node_id'),
    ({'numa_node': -1}, 'numa_node'),
    ({'tenant': 'globex'}, 'tenant'),
    ({'ssh_source_cidrs': ['0.0.0.0/0; flush ruleset']}, "ssh_source_cidrs[0] '0.0.0.0/0; flush ruleset' is not an IPv4"),
    ({'ssh_source_cidrs': ['2001:db8::/32']}, 'is IPv6'),
    ({'ssh_source_cidrs': ['10.0.0.1/8']}, 'has host bits set'),
    ({'ssh_source_cidrs': '10.0.0.0/8'}, 'ssh_source_cidrs'),
    ({'ssh_source_cidrs': ['10.%d.0.0/16' % i for i in range(33)]}, 'ssh_source_cidrs'),
]


@pytest.mark.backends('sqlite')
@pytest.mark.parametrize('change, field', HOSTILE)
def test_hostile_or_bad_input_is_422_and_changes_nothing(client, db, tokens, node, change, field):
    before = _snapshot(db)
    reply = client.post('/v1/allocations', json=dict(BODY, **change), headers=tokens['acme'])
    assert reply.status_code == 422, reply.text
    body = reply.json()
    assert body['detail'].startswith('invalid request: ') and field in body['detail']
    assert _snapshot(db) == before


@pytest.mark.backends('sqlite')
@pytest.mark.backends('sqlite')
def test_ssh_source_cidrs_are_kept_normalised_and_default_to_any(client, db, tokens, node):
    made = client.post('/v1/allocations', json=dict(BODY, ssh_source_cidrs=['203.0.113.0/24', '198.51.100.7']),
                       headers=tokens['acme'])
    assert made.status_code == 201, made.text
    assert made.json()['ssh_source_cidrs'] == ['198.51.100.7/32', '203.0.113.0/24']
    assert made.json()['access'] is None   # known once the node has opened the slot's port
    plain = client.post('/v1/allocations', json=dict(BODY, ssh_source_cidrs=[]),
                        headers=dict(tokens['acme'], **{'Idempotency-Key': 'k2'}))
    assert plain.status_code == 201 and plain.json()['ssh_source_cidrs'] == []
    # Left out is the same request as empty; other sources are another request.
    again = client.post('/v1/allocations', json=BODY, headers=dict(tokens['acme'], **{'Idempotency-Key': 'k2'}))
    assert again.status_code == 200 and again.json()['id'] == plain.json()['id']
    other = client.post('/v1/allocations', json=dict(BODY, ssh_source_cidrs=['192.0.2.0/24']),
                        headers=dict(tokens['acme'], **{'Idempotency-Key': 'k2'}))
    assert other.status_code == 409 and '(ssh_source_cidrs differ)' in other.json()['detail'], other.text


def test_unknown_node_malformed_json_and_wrong_types(client, db, tokens, node):
    before = _snapshot(db)
    reply = client.post('/v1/allocations', json=dict(BODY, node_id='n9'), headers=tokens['acme'])
    assert reply.status_code == 422 and reply.json()['detail'] == "unknown node 'n9'"
    reply = client.post('/v1/allocations', content=b'{"image": ', headers=dict(
        tokens['acme'], **{'content-type': 'application/json'}))
    assert reply.status_code == 422 and 'not valid JSON' in reply.json()['detail']
    reply = client.post('/v1/allocations', json=[BODY], headers=tokens['acme'])
    assert reply.status_code == 422
    reply = client.put('/v1/nodes/n1/discovery', json=['x'], headers=tokens['operator'])
    assert reply.status_code == 422
    reply = client.post('/v1/allocations', json=BODY, headers=dict(tokens['acme'],
                                                                   **{'Idempotency-Key': 'a b'}))
    assert reply.status_code == 422
    assert _snapshot(db) == before


@pytest.mark.backends('sqlite')
def test_huge_bodies_are_413(client, db, tokens, node):
    before = _snapshot(db)
    huge = dict(BODY, ssh_keys=[ssh_key()] * 2, padding='x' * 100000)
    reply = client.post('/v1/allocations', json=huge, headers=tokens['acme'])
    assert reply.status_code == 413
    # Streamed without a length: cut off as it arrives.

    def chunks():
        yield b'{"image": "'
        for _chunk in range(100):
            yield b'x' * 4096
        yield b'"}'
    reply = client.post('/v1/allocations', content=chunks(), headers=dict(
        tokens['acme'], **{'content-type': 'application/json'}))
    assert reply.status_code == 413
    reply = client.put('/v1/nodes/n1/discovery', content=json.dumps({'x': 'y' * 70000}),
                       headers=dict(tokens['operator'], **{'content-type': 'application/json'}))
    assert reply.status_code == 413
    assert _snapshot(db) == before


def test_conflicts_quota_and_idempotency(client, db, tokens, node):
    op = tokens['operator']
    assert client.put('/v1/tenants/acme/quota', json={'max_gpus': 2}, headers=op).json() == {
        'id': 'acme', 'max_gpus': 2}
    first = client.post('/v1/allocations', json=BODY, headers=dict(tokens['acme'], **{'Idempotency-Key': 'k1'}))
    again = client.post('/v1/allocations', json=BODY, headers=dict(tokens['acme'], **{'Idempotency-Key': 'k1'}))
    assert (first.status_code, again.status_code) == (201, 200) and first.json()['id'] == again.json()['id']
    assert client.post('/v1/allocations', json=BODY, headers=tokens['acme']).status_code == 201
    reply = client.post('/v1/allocations', json=BODY, headers=tokens['acme'])
    assert reply.status_code == 409 and 'quota' in reply.json()['detail']
    for _attempt in range(6):
        assert client.post('/v1/allocations', json=BODY, headers=tokens['globex']).status_code == 201
    reply = client.post('/v1/allocations', json=BODY, headers=tokens['globex'])
    assert reply.status_code == 409 and 'no free, approved slot' in reply.json()['detail']
    tenants = client.get('/v1/tenants', headers=op).json()['tenants']
    assert {t['id']: t['allocated_gpus'] for t in tenants} == {'acme': 2, 'globex': 6}


def test_release_is_accepted_once_and_idempotent(client, tokens, node):
    mine = client.post('/v1/allocations', json=BODY, headers=tokens['acme']).json()
    url = '/v1/allocations/' + mine['id']
    first = client.delete(url, headers=tokens['acme'])
    again = client.delete(url, headers=tokens['acme'])
    assert (first.status_code, again.status_code) == (202, 202)
    assert first.json()['state'] == again.json()['state'] == 'releasing'
    events = client.get(url + '/events?follow=false', headers=tokens['acme'])
    assert events.headers['content-type'].startswith('text/event-stream')
    kinds = [line for line in events.text.splitlines() if line.startswith('data: ')]
    messages = [json.loads(line[6:])['message'] for line in kinds]
    assert messages[0].startswith('requested: slot n1-s') and messages[1].startswith('releasing')


def test_operator_endpoints(client, db, tokens, node):
    op = tokens['operator']
    nodes = client.get('/v1/nodes', headers=op).json()['nodes']
    assert [(n['id'], n['approved_slots'], n['free_slots']) for n in nodes] == [('n1', 8, 8)]
    assert client.post('/v1/nodes/n1/drain', json={'reason': 'firmware update'}, headers=op).json()[
        'schedulable'] is False
    assert client.post('/v1/allocations', json=BODY, headers=tokens['acme']).status_code == 409
    assert client.post('/v1/nodes/n1/undrain', headers=op).json()['schedulable'] is True
    assert client.post('/v1/nodes/n9/drain', headers=op).status_code == 404
    slots = client.get('/v1/slots?state=free', headers=op).json()['slots']
    assert len(slots) == 8 and slots[0]['ip'] == '10.100.0.10'
    refused = client.put('/v1/nodes/n1/approval', json={'approved_slots': [
        dict(approved_map(node)[0], destructive_wipe_policy='')]}, headers=op)
    assert refused.status_code == 422
    assert refused.json()['problems'][0].startswith('slot n1-s0: destructive_wipe_policy must be set')
    assert client.put('/v1/nodes/n2/approval', json={'approved_slots': []}, headers=op).status_code == 404
    entries = client.get('/v1/audit', headers=op).json()['entries']
    assert [e['action'] for e in entries][-3:] == ['node.approve', 'node.drain', 'node.undrain']
    assert entries[-1]['actor'].startswith('token:') and entries[-1]['role'] == 'operator'
    verified = client.get('/v1/audit/verify', headers=op).json()
    assert verified['ok'] is True and verified['entries'] == len(entries)
    usage = client.get('/v1/usage?since=2020-01-01T00:00:00Z', headers=op).json()
    assert usage == {'usage': [], 'totals': {'allocated_seconds': 0, 'running_seconds': 0, 'stopped_seconds': 0}}
    assert client.get('/v1/usage?since=2020-01-01T00:00:00', headers=op).status_code == 422
