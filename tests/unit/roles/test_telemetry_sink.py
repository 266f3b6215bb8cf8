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
