# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The telemetry sink on 127.0.0.1: token, source address, size and body checks."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import socket
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO

SINK = os.path.join(REPO, 'roles', 'host_prep', 'files', 'gpuaas_telemetry_sink.py')


def free_port():
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


@pytest.fixture
def sink(tmp_path):
    tokens, data = tmp_path / 'tokens', tmp_path / 'data'
    tokens.mkdir()
    (tokens / 'n-s0.json').write_text(json.dumps(
        {'allocation_id': 'a0', 'slot_id': 'n-s0', 'ip': '127.0.0.1', 'token': 'tok-a0-0123456789abcdef'}))
    (tokens / 'n-s1.json').write_text(json.dumps(
        {'allocation_id': 'a1', 'slot_id': 'n-s1', 'ip': '10.100.0.11', 'token': 'tok-a1-0123456789abcdef'}))
    # What telemetry_token writes: the sink needs only the digest.
    (tokens / 'n-s2.json').write_text(json.dumps(
        {'allocation_id': 'a2', 'slot_id': 'n-s2', 'ip': '127.0.0.1',
         'token_sha256': hashlib.sha256(b'tok-a2-0123456789abcdef').hexdigest()}))
    port = free_port()
    proc = subprocess.Popen([sys.executable, SINK, '--listen', '127.0.0.1', '--port', str(port),
                             '--token-dir', str(tokens), '--data-dir', str(data)], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(('127.0.0.1', port), 0.2).close()
            break
        except OSError:
            time.sleep(0.05)

    def post(token, body=b'{"metric": "gpu_util", "value": 97}', path='/metrics', headers=None):
        conn = http.client.HTTPConnection('127.0.0.1', port, timeout=5)
        conn.request('POST', path, body, dict({'Authorization': 'Bearer %s' % token} if token else {}, **(headers or {})))
        return conn.getresponse().status
    post.data, post.tokens, post.port = data, tokens, port
    yield post
    proc.terminate()
    proc.wait(5)


def test_a_sample_with_the_slots_token_is_stored(sink):
    assert sink('tok-a0-0123456789abcdef') == 200
    assert sink('tok-a0-0123456789abcdef', path='/v1/metrics') == 200
    lines = (sink.data / 'a0.jsonl').read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[0])['body'] == {'metric': 'gpu_util', 'value': 97}
    assert oct(os.stat(sink.data / 'a0.jsonl').st_mode & 0o777) == '0o600'


def test_refusals(sink):
    assert sink('tok-a1-0123456789abcdef') == 403          # a1's token, from another address
    assert sink('tok-unknown-0123456789ab') == 401
    assert sink(None) == 401
    assert sink('tok-a0-0123456789abcdef', body=b'[1, 2]') == 400
    assert sink('tok-a0-0123456789abcdef', body=b'{not json') == 400
    assert sink('tok-a0-0123456789abcdef', body=b'{"x": "' + b'y' * 70000 + b'"}') == 413
    assert sink('tok-a0-0123456789abcdef', path='/../../etc/passwd') == 404
    assert not (sink.data / 'a1.jsonl').exists() and not (sink.data / 'a0.jsonl').exists()


def test_a_revoked_token_stops_working_at_once(sink):
    assert sink('tok-a0-0123456789abcdef') == 200
    os.unlink(sink.tokens / 'n-s0.json')
    assert sink('tok-a0-0123456789abcdef') == 401


def test_the_digest_alone_admits_a_token(sink):
    assert sink('tok-a2-0123456789abcdef') == 200
    assert json.loads((sink.data / 'a2.jsonl').read_text())['slot_id'] == 'n-s2'
    assert sink(hashlib.sha256(b'tok-a2-0123456789abcdef').hexdigest()) == 401   # the digest is no token


def test_a_body_shorter_than_announced_is_refused(sink):
    with socket.create_connection(('127.0.0.1', sink.port), 5) as conn:
        conn.sendall(b'POST /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer tok-a0-0123456789abcdef\r\n'
                     b'Content-Length: 100\r\n\r\n{"a": 1}')
        conn.shutdown(socket.SHUT_WR)
        assert conn.recv(100).startswith(b'HTTP/1.0 400')
    assert not (sink.data / 'a0.jsonl').exists()


def test_a_token_revoked_right_after_it_was_read_stops_working(sink):
    """Two changes of the token directory within one clock tick leave its mtime equal."""
    assert sink('tok-a0-0123456789abcdef') == 200
    stamp = os.stat(sink.tokens).st_mtime_ns
    os.unlink(sink.tokens / 'n-s0.json')
    os.utime(sink.tokens, ns=(stamp, stamp))   # as if within the same tick
    assert sink('tok-a0-0123456789abcdef') == 401


@pytest.mark.parametrize('body, status', [
    (b'{"value": NaN}', 400),
    (b'{"value": Infinity}', 400),
    (b'{"value": -Infinity}', 400),
    (b'{"value": 1e999}', 400),                         # a float that overflows to infinity
    (b'{"values": [' + b','.join([b'1'] * 5000) + b']}', 413),   # too many values
    (b'{"a": ' * 20 + b'1' + b'}' * 20, 413),           # nested too deep
    (b'[' * 30000 + b']' * 30000, 413),                 # deeper than the parser's recursion
])
def test_hostile_samples_are_refused(sink, body, status):
    assert sink('tok-a0-0123456789abcdef', body=body) == status
    assert not (sink.data / 'a0.jsonl').exists()


def test_the_reason_is_in_the_answer(sink):
    conn = http.client.HTTPConnection('127.0.0.1', sink.port, timeout=5)
    conn.request('POST', '/metrics', b'{"gpu": {"power_w": NaN}}', {'Authorization': 'Bearer tok-a0-0123456789abcdef'})
    answer = conn.getresponse()
    assert answer.status == 400
    assert json.loads(answer.read())['message'] == \
        'the body holds a non-finite number (NaN): numbers must be finite'


ACCEPTANCE = {'kind': 'acceptance', 'status': 'failed', 'failed': ['link_width'], 'checks': [
    {'name': 'gpu_visible', 'status': 'passed', 'reason': 'GPU 10de:2330 at 0000:00:06.0'},
    {'name': 'link_width', 'status': 'failed', 'reason': 'link x8, approved x16'}]}


@pytest.mark.parametrize('change', [
    {'status': 'maybe'},
    {'checks': []},
    {'checks': [{'name': 'x', 'status': 'ok', 'reason': ''}]},
    {'checks': [{'name': 'x', 'status': 'passed'}]},
    {'status': 'passed'},                                  # disagrees with its failed check
])
def test_a_malformed_acceptance_result_is_refused(sink, change):
    assert sink('tok-a0-0123456789abcdef', body=json.dumps(dict(ACCEPTANCE, **change)).encode()) == 400
    assert not (sink.data / 'a0.summary.json').exists()


def test_the_summary_keeps_the_last_health_sample_and_the_acceptance_result(sink):
    health = {'kind': 'health', 'health': {'uptime_s': 12.5}, 'gpu': {'available': False, 'reason': 'no GPU visible'}}
    assert sink('tok-a0-0123456789abcdef', body=json.dumps(ACCEPTANCE).encode()) == 200
    assert sink('tok-a0-0123456789abcdef', body=json.dumps(health).encode()) == 200
    assert sink('tok-a0-0123456789abcdef', body=b'{"metric": "probe"}') == 200
    summary = json.loads((sink.data / 'a0.summary.json').read_text())
    assert summary['samples'] == 3 and summary['allocation_id'] == 'a0' and summary['slot_id'] == 'n-s0'
    assert summary['acceptance']['result'] == ACCEPTANCE and summary['health']['sample'] == health
    assert summary['first_at'] <= summary['acceptance']['received_at'] <= summary['last_at']
    assert oct(os.stat(sink.data / 'a0.summary.json').st_mode & 0o777) == '0o600'


def test_a_series_is_bounded(sink, monkeypatch):
    sys.path.insert(0, os.path.dirname(SINK))
    try:
        import gpuaas_telemetry_sink as module
    finally:
        sys.path.pop(0)
    monkeypatch.setattr(module, 'MAX_SERIES', 1000)
    record = {'allocation_id': 'a9', 'slot_id': 'n-s9'}
    for n in range(20):
        module.store(str(sink.data), record, {'n': n, 'pad': 'x' * 100}, 1000.0 + n)
    current, older = (sink.data / 'a9.jsonl'), (sink.data / 'a9.jsonl.1')
    assert current.stat().st_size <= 1000 and older.stat().st_size <= 1000
    assert json.loads(current.read_text().splitlines()[-1])['body']['n'] == 19
    assert json.loads((sink.data / 'a9.summary.json').read_text())['samples'] == 20
